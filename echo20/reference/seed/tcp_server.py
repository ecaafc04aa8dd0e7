"""The seed's ``tcp_server.py`` on Python 3 and Tornado 6, and nothing more.

The Tornado example this project starts from, kept as the seed wrote it: it listens on
port 8888 on every interface, takes no flags and prints nothing; every chunk of up to
20 bytes it reads comes back, then reversed; a chunk ``over`` closes the connection.
Ctrl-C stops it (the seed printed a traceback). Run it, and test it::

    python examples/seed/tcp_server.py
    echo20-conformance --server-cmd "python examples/seed/tcp_server.py" --port 8888

It ships in the wheel (``echo20/reference/seed/``, which ``examples/seed/`` links to),
so that ``echo20-conformance compare seed`` runs it wherever echo20 is installed.

What Python 3 and Tornado 6 changed, and nothing else:

* ``@gen.coroutine`` with ``yield`` is ``async def`` with ``await``: the same steps;
* ``msg`` is bytes, so ``'over'`` is ``b"over"`` and ``str(msg)`` is ``msg``;
* ``print msg, 'from', address`` is gone: the server prints nothing, as this example
  is meant to show a server without a ready line (and a line per 20-byte chunk would
  be 50,000 lines for a megabyte);
* ``server.start()`` and ``IOLoop.current().start()`` are ``asyncio.run``: Tornado 6
  runs on asyncio, and both calls are deprecated there.
"""

import asyncio
import contextlib

from tornado import iostream
from tornado.tcpserver import TCPServer


class MyTcpServer(TCPServer):
    async def handle_stream(self, stream, address):
        try:
            while True:
                msg = await stream.read_bytes(20, partial=True)
                stream.write(msg)
                await stream.write(msg[::-1])
                if msg == b"over":
                    stream.close()
        except iostream.StreamClosedError:
            pass


async def serve(port=8888, address=""):
    server = MyTcpServer()
    server.listen(port, address)
    await asyncio.Event().wait()


def main(port=8888, address=""):
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(port, address))


if __name__ == "__main__":
    main()
