"""echo20 servers that each break the protocol in one way: the suite must fail them.

Each ``--defect`` is a mistake an implementation could plausibly make; the tests run
the conformance runner against it and check which scenarios catch it::

    python tests/conformance/broken_servers.py --defect answers-after-over --port 8888

* ``answers-after-over``: after ``over``'s reply, answers whatever arrives for another
  300 ms, then closes (every scenario but ``bytes_after_over_get_no_answer`` passes it);
* ``drops-queue-on-eof``: reads as fast as bytes come and queues replies the socket
  cannot take yet; at the end of stream it drops that queue and closes (the kernel
  holds a 100 kB reply whole, so only the 8 MiB half-close catches it);
* ``drops-queue-on-over``: the same, when ``over`` arrives;
* ``no-reversal``: sends each chunk twice instead of the chunk and its reversal;
* ``chunks-of-21``: cuts 21-byte chunks;
* ``closes-on-lookalike``: closes on any chunk that holds ``over`` in any case
  (``OVER``, ``over\\n``, ``overtime``, ``game over``...), not only on ``over`` itself;
* ``watches-the-stream``: closes when the bytes received so far end in ``over``, chunk
  or not (``o``, ``v``, ``e``, ``r`` trickled one at a time close it);
* ``never-closes``: answers ``over`` but keeps the connection open;
* ``resets-after-over``: closes with a reset (SO_LINGER 0) after ``over``'s reply, where
  the end of stream belongs;
* ``ignores-eof``: never closes when the client ends its stream (half-close);
* ``text-not-bytes``: decodes each batch as UTF-8 (undecodable bytes replaced) and cuts
  and reverses characters, not bytes;
* ``stops-at-nul``: takes a NUL byte for the end of the input, as a C string: answers
  what came before it and closes;
* ``serves-one-at-a-time``: serves one connection until it closes before it reads the
  next (an iterative server);
* ``drops-everyone-on-reset``: a client's reset closes every connection, as if the
  error were the server's own;
* ``exits-on-over``: the whole process exits (status 9) at the first ``over``: a server
  that dies in the middle of a run.

Like most servers it prints nothing and has no ready line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import struct
import sys
from collections import deque
from typing import ClassVar

from echo20.conformance.wire import batch_reply

CHUNK_SIZE = 20
CLOSE_CHUNK = b"over"
# How long the answers-after-over server goes on answering after over's reply.
LINGER = 0.3

DEFECTS = (
    "answers-after-over",
    "drops-queue-on-eof",
    "drops-queue-on-over",
    "no-reversal",
    "chunks-of-21",
    "closes-on-lookalike",
    "watches-the-stream",
    "never-closes",
    "resets-after-over",
    "ignores-eof",
    "text-not-bytes",
    "stops-at-nul",
    "serves-one-at-a-time",
    "drops-everyone-on-reset",
    "exits-on-over",
)

# The exits-on-over server's exit status.
EXIT_STATUS = 9


def cut(data: bytes, size: int = CHUNK_SIZE) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class Broken(asyncio.Protocol):
    """One connection, broken in the way ``defect`` says."""

    # serves-one-at-a-time: the connection being served, and those waiting their turn.
    serving: ClassVar[Broken | None] = None
    waiting: ClassVar[deque[Broken]] = deque()
    # drops-everyone-on-reset: every open connection.
    everyone: ClassVar[set[Broken]] = set()

    def __init__(self, defect: str) -> None:
        self.defect = defect
        self.transport: asyncio.Transport | None = None
        # Replies the socket could not take yet (our own queue, as in a server that does
        # its own flow control), flushed when the transport asks for more.
        self.queue: deque[bytes] = deque()
        self.paused = False
        self.over_at: float | None = None
        # watches-the-stream: the last bytes received, across batches.
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        Broken.everyone.add(self)
        if self.defect == "serves-one-at-a-time":
            if Broken.serving is None:
                Broken.serving = self
            else:
                transport.pause_reading()
                Broken.waiting.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        Broken.everyone.discard(self)
        if self.defect == "drops-everyone-on-reset" and isinstance(exc, ConnectionResetError):
            for other in list(Broken.everyone):
                if other.transport is not None:
                    other.transport.close()
        if self in Broken.waiting:
            Broken.waiting.remove(self)
        if Broken.serving is self:
            Broken.serving = Broken.waiting.popleft() if Broken.waiting else None
            if Broken.serving is not None and Broken.serving.transport is not None:
                Broken.serving.transport.resume_reading()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        if self.paused or self.queue:
            self.queue.append(data)
        else:
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.paused = False
        while self.queue and not self.paused:
            self.transport.write(self.queue.popleft())

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        if self.over_at is not None and loop.time() - self.over_at > LINGER:
            return
        ends_at_nul = self.defect == "stops-at-nul" and b"\0" in data
        if ends_at_nul:
            data = data[: data.index(b"\0")]
            if not data:
                self.close()
                return
        size = CHUNK_SIZE + 1 if self.defect == "chunks-of-21" else CHUNK_SIZE
        chunks = cut(data, size)
        # One write per batch, built in bulk, as a fast server does: it reads megabytes
        # before a slow client has read one. ``over`` can only end a batch.
        if self.defect == "no-reversal":
            self.send(b"".join(chunk + chunk for chunk in chunks))
        elif self.defect == "chunks-of-21":
            self.send(b"".join(chunk + chunk[::-1] for chunk in chunks))
        elif self.defect == "text-not-bytes":
            text = data.decode("utf-8", "replace")
            parts = [text[i : i + CHUNK_SIZE] for i in range(0, len(text), CHUNK_SIZE)]
            self.send("".join(part + part[::-1] for part in parts).encode())
        else:
            self.send(batch_reply(data))
        if ends_at_nul:
            self.close()
            return
        last = chunks[-1]
        closes = last == CLOSE_CHUNK
        if self.defect == "closes-on-lookalike":
            closes = CLOSE_CHUNK in last.lower()
        elif self.defect == "watches-the-stream":
            self.tail = (self.tail + data)[-len(CLOSE_CHUNK) :]
            closes = self.tail == CLOSE_CHUNK
        if not closes or self.defect == "never-closes":
            return
        if self.defect == "exits-on-over":
            os._exit(EXIT_STATUS)
        if self.defect == "resets-after-over":
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
            return
        if self.defect == "answers-after-over":
            self.over_at = loop.time()
            loop.call_later(LINGER, self.transport.close)
            return
        if self.defect == "drops-queue-on-over" and self.queue:
            self.queue.clear()
            self.transport.write(last + last[::-1])
        self.close()

    def eof_received(self) -> bool:
        if self.defect == "ignores-eof":
            return True
        if self.defect == "drops-queue-on-eof":
            self.queue.clear()
        self.close()
        return True

    def close(self) -> None:
        assert self.transport is not None
        if self.queue and self.defect not in ("drops-queue-on-eof", "drops-queue-on-over"):
            # A correct server would send its queue first; only the two "drops" defects
            # are meant to lose anything.
            self.transport.write(b"".join(self.queue))
            self.queue.clear()
        self.transport.close()


async def serve(defect: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Broken(defect), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defect", choices=DEFECTS, required=True)
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.defect, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
