"""A correct echo20 server with the oddest timing allowed: the suite must pass it.

TCP is a byte stream, so a server may put its replies on the wire in any segments, at
any pace: these are all correct, and a scenario that fails this server is wrong. Per
connection, its first chunks go out in turn:

* the echo and the reversal in one write;
* the echo and the reversal as separate segments;
* the echo, then the reversal after a pause (2 ms, 10 ms or 50 ms);
* one byte per segment.

After those it answers each batch in one write, so the megabyte scenarios stay quick.
It prints nothing and needs ``--port`` (as most servers, it has no ready line)::

    python tests/conformance/odd_timing_server.py --port 8888
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys

from echo20.conformance.wire import batch_reply

CHUNK_SIZE = 20
CLOSE_CHUNK = b"over"
# Tornado's read size: batches of at most 64 KiB, cut 20, 20, ..., the rest.
READ_SIZE = 64 * 1024
# Chunks per connection delivered oddly; the rest of a connection is plain.
ODD_CHUNKS = 100
# The pauses between an echo and its reversal, in turn (seconds).
PAUSES = (0.002, 0.01, 0.05)


async def deliver(writer: asyncio.StreamWriter, chunk: bytes, style: int, pause: float) -> None:
    """Send one chunk's double reply in the given style (0 to 3, as the module says)."""
    if style == 0:
        writer.write(chunk + chunk[::-1])
    elif style == 1:
        writer.write(chunk)
        await writer.drain()
        writer.write(chunk[::-1])
    elif style == 2:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(pause)  # sleep-ok: the delayed half is the point
        writer.write(chunk[::-1])
    else:
        # asyncio sends each write at once when nothing is queued: one byte a segment.
        for byte in chunk + chunk[::-1]:
            writer.write(bytes([byte]))
            await writer.drain()
    await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    styles = itertools.cycle(range(4))
    pauses = itertools.cycle(PAUSES)
    answered = 0
    try:
        while batch := await reader.read(READ_SIZE):
            chunks = [batch[i : i + CHUNK_SIZE] for i in range(0, len(batch), CHUNK_SIZE)]
            odd = max(0, min(len(chunks), ODD_CHUNKS - answered))
            for chunk in chunks[:odd]:
                await deliver(writer, chunk, next(styles), next(pauses))
            writer.write(batch_reply(batch[odd * CHUNK_SIZE :]))
            await writer.drain()
            answered += len(chunks)
            # ``over`` can only be a batch's last chunk (the ones before it are full).
            if chunks[-1] == CLOSE_CHUNK:
                break
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
