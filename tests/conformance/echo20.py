"""The echo20 protocol seen from the wire: an invariant checker and a raw TCP client.

Black box on purpose: nothing here imports echoverse (no ``protocol.py``, no
``iostream.py``). The rules below are re-stated from ``SPEC.md``, so the suite judges
any server, the Tornado reference included, by the same independent yardstick:

* the server answers each chunk ``c`` of 1 to 20 bytes with ``c`` then ``c`` reversed;
* the ``c`` parts join to what the client sent, so N bytes earn exactly 2N;
* a chunk equal to ``b"over"`` is answered, then the server closes; nothing else closes.

Every wait on the network is bounded by ``support.TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from support import TIMEOUT

CHUNK_SIZE = 20
CLOSE_CHUNK = b"over"

# Tornado's IOStream reads the socket only when its buffer is used up (or a pending read
# needs more), ``read_chunk_size`` = 64 KiB per ``recv``. The seed's loop has a read
# pending except while a write waits for the socket, so with more bytes waiting its
# chunks restart at every 64 KiB boundary.
TORNADO_READ_CHUNK_SIZE = 64 * 1024

# asyncio's StreamReader pauses the socket above twice its limit; the largest reply the
# suite reads at once is 2 MiB, so let it sit in the reader's buffer whole.
READ_LIMIT = 4 * 1024 * 1024


# --- what a correct reply looks like ------------------------------------------------


def one_batch_chunks(message: bytes) -> list[bytes]:
    """The chunks of a message the server received in one batch: 20, 20, ..., the rest.

    A send of a few kilobytes on loopback arrives whole, so this is the exact cut for
    the small messages of the suite (SPEC: "with 45 bytes waiting the chunks are 20,
    20, 5").
    """
    return [message[i : i + CHUNK_SIZE] for i in range(0, len(message), CHUNK_SIZE)]


def double_reply(chunks: list[bytes]) -> bytes:
    """``c1 rev(c1) c2 rev(c2) ...``: the bytes a server owes for these chunks."""
    return b"".join(chunk + chunk[::-1] for chunk in chunks)


def shown_reversed(chunks: list[bytes]) -> bytes:
    """The reversed halves joined, as the clients print their second line."""
    return b"".join(chunk[::-1] for chunk in chunks)


def check_reply(sent: bytes, received: bytes, *, closes: bool = False) -> list[bytes]:
    """The chunks that explain ``received`` as the reply to ``sent``, or AssertionError.

    ``closes=False``: every byte sent is answered (``len(received) == 2 * len(sent)``) and
    no chunk is ``over``. ``closes=True``: the reply ends with the ``over`` chunk (the
    server closed after it), no earlier chunk is ``over``, and the chunks join to the
    start of what was sent (bytes after ``over`` are discarded, never answered).

    The client cannot see where the server cut, so this searches for a cut that fits,
    longest chunks first, as a server cuts; positions shown to lead nowhere are
    remembered, which keeps the search linear even on data like ``b"\\0" * 10**6``.
    """
    answered = len(received) // 2
    if len(received) % 2:
        raise AssertionError(f"odd reply length {len(received)}: every byte comes back twice")
    if closes:
        if answered > len(sent):
            raise AssertionError(f"{len(received)} reply bytes for only {len(sent)} sent")
    elif answered != len(sent):
        raise AssertionError(
            f"{len(sent)} bytes sent earned {len(received)} reply bytes, expected {2 * len(sent)}"
        )
    message = sent[:answered]
    chunks = _find_cut(message, received, ends_with_close=closes)
    if chunks is None:
        raise AssertionError(
            f"reply to {len(sent)} bytes is not chunks each followed by its reversal: "
            + _diagnose(message, received, closes=closes)
        )
    return chunks


def _find_cut(message: bytes, reply: bytes, *, ends_with_close: bool) -> list[bytes] | None:
    total = len(message)
    chunks: list[bytes] = []
    dead_ends: set[int] = set()
    stack: list[tuple[int, Iterator[int]]] = [(0, _fitting(message, reply, 0))]
    while stack:
        position, lengths = stack[-1]
        if position == total and (not ends_with_close or (chunks and chunks[-1] == CLOSE_CHUNK)):
            return chunks
        length = next(lengths, 0) if position < total else 0
        if not length:
            if position < total:
                dead_ends.add(position)
            stack.pop()
            if chunks:
                chunks.pop()
            continue
        following = position + length
        chunk = message[position:following]
        # ``over`` closes the connection, so it can only be the very last chunk.
        if following in dead_ends or (chunk == CLOSE_CHUNK and following != total):
            continue
        if chunk == CLOSE_CHUNK and not ends_with_close:
            continue
        chunks.append(chunk)
        stack.append((following, _fitting(message, reply, following)))
    return None


def _fitting(message: bytes, reply: bytes, position: int) -> Iterator[int]:
    """Chunk lengths that explain the reply at ``position``, longest first."""
    start = 2 * position
    for length in range(min(CHUNK_SIZE, len(message) - position), 0, -1):
        chunk = message[position : position + length]
        if (
            reply[start : start + length] == chunk
            and reply[start + length : start + 2 * length] == chunk[::-1]
        ):
            yield length


def _diagnose(message: bytes, reply: bytes, *, closes: bool) -> str:
    """What is wrong with a reply that no cut explains (for the error message only)."""
    position = 0
    chunks: list[bytes] = []
    while position < len(message):
        length = next(_fitting(message, reply, position), 0)
        if not length:
            return (
                f"nothing fits at sent byte {position}: sent "
                f"{message[position : position + 24]!r}, got "
                f"{reply[2 * position : 2 * position + 48]!r}"
            )
        chunks.append(message[position : position + length])
        position += length
    if closes and (not chunks or chunks[-1] != CLOSE_CHUNK):
        last = chunks[-1] if chunks else b""
        return f"the server closed, but the last chunk answered was {last!r}, not {CLOSE_CHUNK!r}"
    return f"it answers a chunk equal to {CLOSE_CHUNK!r}, after which the server must close"


def batch_sizes(chunks: list[bytes]) -> list[int]:
    """The batches a reply shows: runs of full chunks, each ended by a shorter one.

    A batch whose size is a multiple of 20 cannot be told from the next one, so these are
    upper bounds; a run longer than Tornado's 64 KiB read is still proof of a bigger batch.
    """
    sizes, run = [], 0
    for chunk in chunks:
        run += len(chunk)
        if len(chunk) < CHUNK_SIZE:
            sizes.append(run)
            run = 0
    return [*sizes, run] if run else sizes


# --- a raw TCP client ---------------------------------------------------------------


@dataclass
class Peer:
    """One client connection on asyncio streams; it keeps what it sent and received."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    # How the server cut the last reply that exchange() checked.
    last_chunks: list[bytes] = field(default_factory=list)

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> Peer:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection(*address, limit=READ_LIMIT)
        return cls(reader, writer)

    def write(self, data: bytes) -> None:
        """Queue ``data``; asyncio sends it in the background while the peer reads."""
        self.sent += data
        self.writer.write(data)

    async def send(self, data: bytes) -> None:
        """Write ``data`` and wait until asyncio has handed it to the kernel."""
        self.write(data)
        async with asyncio.timeout(TIMEOUT):
            await self.writer.drain()

    async def receive(self, size: int) -> bytes:
        """Exactly ``size`` bytes; AssertionError if the server closes or stalls first."""
        try:
            async with asyncio.timeout(TIMEOUT):
                data = await self.reader.readexactly(size)
        except asyncio.IncompleteReadError as error:
            self.received += error.partial
            raise AssertionError(
                f"end of stream after {len(error.partial)} of {size} expected bytes: "
                f"{bytes(error.partial[-48:])!r}"
            ) from None
        except TimeoutError:
            raise AssertionError(f"no {size} bytes within {TIMEOUT:g} s") from None
        self.received += data
        return data

    async def exchange(self, message: bytes) -> bytes:
        """Send ``message``, read the 2N bytes it earns, check them; the reply."""
        self.write(message)
        reply = await self.receive(2 * len(message))
        async with asyncio.timeout(TIMEOUT):
            await self.writer.drain()
        self.last_chunks = check_reply(message, reply)
        return reply

    async def receive_until_eof(self) -> bytes:
        """Everything up to the server's end of stream (AssertionError after TIMEOUT)."""
        try:
            async with asyncio.timeout(TIMEOUT):
                data = await self.reader.read()
        except TimeoutError:
            raise AssertionError(f"no end of stream within {TIMEOUT:g} s") from None
        self.received += data
        return data

    async def assert_eof(self) -> None:
        """The server closed: end of stream with no byte before it."""
        rest = await self.receive_until_eof()
        assert rest == b"", f"expected end of stream, got {len(rest)} more bytes: {rest[:48]!r}"

    async def shutdown_write(self) -> None:
        """Half-close: send our end of stream (FIN) once queued bytes are out."""
        self.writer.write_eof()
        async with asyncio.timeout(TIMEOUT):
            await self.writer.drain()

    def reset(self) -> None:
        """Vanish abruptly: SO_LINGER 0 makes the close a reset (RST), not a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(TIMEOUT):
                await self.writer.wait_closed()
        except (ConnectionError, TimeoutError):
            self.writer.transport.abort()
