"""The seed's ``tcp_client.py`` on Python 3 and Tornado 6, its defects kept on purpose.

A client that fails the conformance suite, to show what the suite catches::

    python examples/seed/tcp_client.py          # talks to port 8888, as the seed
    echo20-conformance --client-cmd "python examples/seed/tcp_client.py {port}"

It ships in the wheel beside the seed's server (``echo20/reference/seed/``, which
``examples/seed/`` links to): ``echo20-conformance compare`` knows it as ``seed-client``.

Its defects, all the seed's own: it reads each reply with two ``read_bytes(20,
partial=True)`` calls, as if the echo and its reversal always arrived as two reads of
at most 20 bytes. When both arrive in one segment the first read takes both and the
second waits for bytes that never come: it hangs. A message over 20 bytes earns more
than two reads' worth, so it shows part of the reply and takes the rest for the next
message's. It prints ``TCPClient`` (the class) before every prompt, shows the second
read before the first, and ends with a traceback when its input runs out.

What Python 3 and Tornado 6 changed, and nothing else: ``raw_input`` is ``input``; the
bytes are encoded and decoded (UTF-8, undecodable bytes as ``\\xNN``); ``@gen.coroutine``
is ``async def``; ``IOLoop.current().run_sync`` is ``asyncio.run``. The one addition: an
optional port argument (default 8888, the seed's), so the suite can point it at its
scripted servers.
"""

import asyncio
import sys

from tornado import iostream
from tornado.tcpclient import TCPClient


async def Trans(port=8888):
    stream = await TCPClient().connect("127.0.0.1", port)
    try:
        while True:
            print(TCPClient)
            DATA = input("Enter your input: ")  # noqa: ASYNC250  (the seed blocks its loop here)
            await stream.write(DATA.encode())
            back = await stream.read_bytes(20, partial=True)
            msg = await stream.read_bytes(20, partial=True)
            print(msg.decode("utf-8", "backslashreplace"))
            print(back.decode("utf-8", "backslashreplace"))
            if DATA == "over":
                break
    except iostream.StreamClosedError:
        pass


if __name__ == "__main__":
    asyncio.run(Trans(int(sys.argv[1]) if len(sys.argv) > 1 else 8888))
