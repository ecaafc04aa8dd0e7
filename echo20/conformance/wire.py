"""The echo20 protocol seen from the wire: a reply checker and two raw TCP clients.

Black box on purpose: nothing here imports the rest of echo20, so the suite judges
every server, the Tornado reference and this project's own included, by the same
yardstick, the rules of ``docs/protocol.md``:

* the server answers each chunk ``c`` of 1 to 20 bytes with ``c`` then ``c`` reversed;
* the ``c`` parts join to what the client sent, so N bytes earn exactly 2N;
* a chunk equal to ``b"over"`` is answered, then the server closes; nothing else closes.

Every wait on the network is bounded by the suite's timeout; a wait that runs out is an
``AssertionError`` that says what was missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import struct
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, ParamSpec

__all__ = [
    "CHUNK_SIZE",
    "CLOSE_CHUNK",
    "Peer",
    "SlowPeer",
    "batch_reply",
    "batch_sizes",
    "check_reply",
    "double_reply",
    "one_batch_chunks",
    "run_async",
    "sample",
    "shown_reversed",
]

CHUNK_SIZE = 20
CLOSE_CHUNK = b"over"

# asyncio's StreamReader pauses the socket above twice its limit; the largest reply the
# Peer reads at once is 2 MiB, so let it sit in the reader's buffer whole.
READ_LIMIT = 4 * 1024 * 1024

# The fast path of check_reply compares this many full chunks at a time (80 KiB of
# message, 160 KiB of reply): big enough that a megabyte takes a dozen comparisons,
# small enough that finding where a window stops matching costs nothing.
WINDOW_CHUNKS = 4096

# The exhaustive search runs in Python, chunk by chunk: about a second per megabyte.
SEARCH_LIMIT = 1024 * 1024

P = ParamSpec("P")


def run_async(func: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an ``async def`` scenario on a fresh asyncio loop, as a plain test function.

    The scenarios are coroutines, but the suite must not depend on which asyncio plugin
    (if any) the pytest that runs it has: a plain function is the same everywhere.
    """

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(func(*args, **kwargs))

    return run


def sample(size: int, seed: int = 0) -> bytes:
    """``size`` reproducible random bytes with no ``over`` in them (so nothing closes)."""
    data = random.Random(seed).randbytes(size).replace(CLOSE_CHUNK, b"OVER")
    assert CLOSE_CHUNK not in data
    return data


# --- what a correct reply looks like ------------------------------------------------


def one_batch_chunks(message: bytes) -> list[bytes]:
    """The chunks of a message the server received in one batch: 20, 20, ..., the rest.

    A send of a few kilobytes on loopback arrives whole, so this is the exact cut for
    the small messages of the suite (45 bytes waiting are cut 20, 20, 5).
    """
    return [message[i : i + CHUNK_SIZE] for i in range(0, len(message), CHUNK_SIZE)]


def double_reply(chunks: list[bytes]) -> bytes:
    """``c1 rev(c1) c2 rev(c2) ...``: the bytes a server owes for these chunks."""
    return b"".join(chunk + chunk[::-1] for chunk in chunks)


def shown_reversed(chunks: list[bytes]) -> bytes:
    """The reversed halves joined: the second line a client prints for a reply."""
    return b"".join(chunk[::-1] for chunk in chunks)


def _double_full_chunks(block: bytes) -> bytearray:
    """The double reply to ``block`` cut in full chunks (its length a multiple of 20).

    Forty strided slice copies instead of a Python loop per chunk: a megabyte takes
    milliseconds, so the 8 MiB scenarios check their 16 MiB reply in well under a second.
    """
    out = bytearray(2 * len(block))
    step = 2 * CHUNK_SIZE
    for offset in range(CHUNK_SIZE):
        out[offset::step] = block[offset::CHUNK_SIZE]
        out[CHUNK_SIZE + offset :: step] = block[CHUNK_SIZE - 1 - offset :: CHUNK_SIZE]
    return out


def batch_reply(batch: bytes) -> bytes:
    """The double reply to one batch cut 20, 20, ..., the rest, built in bulk.

    For test servers that must answer fast: megabytes per second more than a loop per
    chunk.
    """
    full = len(batch) - len(batch) % CHUNK_SIZE
    rest = batch[full:]
    return bytes(_double_full_chunks(batch[:full])) + rest + rest[::-1]


def check_reply(sent: bytes, received: bytes, *, closes: bool = False) -> list[int]:
    """The chunk sizes that explain ``received`` as the reply to ``sent``, or AssertionError.

    ``closes=False``: every byte sent is answered (``len(received) == 2 * len(sent)``) and
    no chunk is ``over``. ``closes=True``: the reply ends with the ``over`` chunk (the
    server closed after it), no earlier chunk is ``over``, and the chunks join to the
    start of what was sent (bytes after ``over`` are discarded, never answered).

    The client cannot see where the server cut, so this finds a cut that fits: runs of
    full chunks are compared a window at a time, and where a batch ended (a shorter
    chunk) the longest chunk that fits is taken. If that greedy walk gets stuck on a
    message of up to a megabyte, an exhaustive search (longest chunks first, dead ends
    remembered, linear even on data like ``b"\\0" * 10**6``) decides; on random data,
    which is all the suite sends in bulk, the greedy walk is never wrong.
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
    if closes and not (message.endswith(CLOSE_CHUNK) and received.endswith(b"overrevo")):
        raise AssertionError(
            f"the reply to {len(sent)} bytes does not end with over's reply: {received[-48:]!r}"
        )
    sizes = _greedy_cut(message, received, ends_with_close=closes)
    if sizes is None and len(message) <= SEARCH_LIMIT:
        sizes = _search_cut(message, received, ends_with_close=closes)
    if sizes is None:
        raise AssertionError(
            f"reply to {len(sent)} bytes is not chunks each followed by its reversal: "
            + _diagnose(message, received, closes=closes)
        )
    return sizes


def _full_chunks_matching(message: bytes, reply: bytes, position: int) -> int:
    """How many full chunks from ``position`` on the reply answers as such."""
    count = 0
    while True:
        chunks = min(WINDOW_CHUNKS, (len(message) - position) // CHUNK_SIZE)
        if not chunks:
            return count
        expected = _double_full_chunks(message[position : position + chunks * CHUNK_SIZE])
        start = 2 * position
        got = reply[start : start + len(expected)]
        if got == expected:
            count += chunks
            position += chunks * CHUNK_SIZE
            continue
        # Bisect for the first byte that differs: every chunk before it matched.
        low, high = 0, len(expected)
        while high - low > 1:
            middle = (low + high) // 2
            if got[:middle] == expected[:middle]:
                low = middle
            else:
                high = middle
        return count + low // (2 * CHUNK_SIZE)


def _greedy_cut(message: bytes, reply: bytes, *, ends_with_close: bool) -> list[int] | None:
    """Runs of full chunks, and the longest fitting chunk where a run breaks; None if stuck."""
    sizes: list[int] = []
    position, total = 0, len(message)
    while position < total:
        run = _full_chunks_matching(message, reply, position)
        if run:
            sizes += [CHUNK_SIZE] * run
            position += run * CHUNK_SIZE
            continue
        length = next(_fitting(message, reply, position), 0)
        if not length:
            return None
        following = position + length
        if message[position:following] == CLOSE_CHUNK and not (
            ends_with_close and following == total
        ):
            return None
        sizes.append(length)
        position = following
    if ends_with_close and not (sizes and message[total - sizes[-1] :] == CLOSE_CHUNK):
        return None
    return sizes


def _search_cut(message: bytes, reply: bytes, *, ends_with_close: bool) -> list[int] | None:
    total = len(message)
    sizes: list[int] = []
    dead_ends: set[int] = set()
    stack: list[tuple[int, Iterator[int]]] = [(0, _fitting(message, reply, 0))]
    while stack:
        position, lengths = stack[-1]
        if position == total and (
            not ends_with_close or (sizes and message[total - sizes[-1] :] == CLOSE_CHUNK)
        ):
            return sizes
        length = next(lengths, 0) if position < total else 0
        if not length:
            if position < total:
                dead_ends.add(position)
            stack.pop()
            if sizes:
                sizes.pop()
            continue
        following = position + length
        chunk = message[position:following]
        # ``over`` closes the connection, so it can only be the very last chunk.
        if following in dead_ends or (chunk == CLOSE_CHUNK and following != total):
            continue
        if chunk == CLOSE_CHUNK and not ends_with_close:
            continue
        sizes.append(length)
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
    last = b""
    while position < len(message):
        length = next(_fitting(message, reply, position), 0)
        if not length:
            return (
                f"nothing fits at sent byte {position}: sent "
                f"{message[position : position + 24]!r}, got "
                f"{reply[2 * position : 2 * position + 48]!r}"
            )
        last = message[position : position + length]
        position += length
    if closes and last != CLOSE_CHUNK:
        return f"the server closed, but the last chunk answered was {last!r}, not {CLOSE_CHUNK!r}"
    return f"it answers a chunk equal to {CLOSE_CHUNK!r}, after which the server must close"


def chunks_of(message: bytes, sizes: list[int]) -> list[bytes]:
    """The chunks themselves, from their sizes."""
    chunks, start = [], 0
    for size in sizes:
        chunks.append(message[start : start + size])
        start += size
    return chunks


def batch_sizes(sizes: list[int]) -> list[int]:
    """The batches a reply shows: runs of full chunks, each ended by a shorter one.

    A batch whose size is a multiple of 20 cannot be told from the next one, so these are
    upper bounds: even a run longer than Tornado's 64 KiB read may be a batch of 30,720
    bytes followed by one of 65,536.
    """
    batches, run = [], 0
    for size in sizes:
        run += size
        if size < CHUNK_SIZE:
            batches.append(run)
            run = 0
    return [*batches, run] if run else batches


# --- a raw TCP client ---------------------------------------------------------------


@dataclass
class Peer:
    """One client connection on asyncio streams; it keeps what it sent and received."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    timeout: float
    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    # How the server cut the last reply that exchange() checked.
    last_sizes: list[int] = field(default_factory=list)

    @classmethod
    async def connect(cls, address: tuple[str, int], timeout: float) -> Peer:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(*address, limit=READ_LIMIT)
        except TimeoutError:
            raise AssertionError(f"no connection to {address} within {timeout:g} s") from None
        except OSError as error:
            raise AssertionError(f"cannot connect to {address}: {error}") from None
        return cls(reader, writer, timeout)

    def write(self, data: bytes) -> None:
        """Queue ``data``; asyncio sends it in the background while the peer reads."""
        self.sent += data
        self.writer.write(data)

    async def send(self, data: bytes) -> None:
        """Write ``data`` and wait until asyncio has handed it to the kernel."""
        self.write(data)
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
        except TimeoutError:
            raise AssertionError(
                f"the server took none of our bytes for {self.timeout:g} s"
            ) from None

    async def receive(self, size: int) -> bytes:
        """Exactly ``size`` bytes; AssertionError if the server closes or stalls first."""
        try:
            async with asyncio.timeout(self.timeout):
                data = await self.reader.readexactly(size)
        except asyncio.IncompleteReadError as error:
            self.received += error.partial
            raise AssertionError(
                f"end of stream after {len(error.partial)} of {size} expected bytes: "
                f"{bytes(error.partial[-48:])!r}"
            ) from None
        except TimeoutError:
            raise AssertionError(f"no {size} bytes within {self.timeout:g} s") from None
        except ConnectionError as error:
            raise AssertionError(
                f"the connection broke while {size} bytes were owed: {error!r}"
            ) from None
        self.received += data
        return data

    async def exchange(self, message: bytes) -> bytes:
        """Send ``message``, read the 2N bytes it earns, check them; the reply."""
        self.write(message)
        reply = await self.receive(2 * len(message))
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()
        self.last_sizes = check_reply(message, reply)
        return reply

    async def receive_until_eof(self, *, reset_ok: bool = False) -> bytes:
        """Everything up to the server's end of stream (AssertionError after the timeout).

        With ``reset_ok``, a reset in place of the end of stream is accepted too.
        """
        try:
            async with asyncio.timeout(self.timeout):
                data = await self.reader.read()
        except TimeoutError:
            raise AssertionError(f"no end of stream within {self.timeout:g} s") from None
        except ConnectionResetError:
            if not reset_ok:
                raise AssertionError("a reset where the end of stream was expected") from None
            data = b""
        self.received += data
        return data

    async def assert_eof(self) -> None:
        """The server closed: end of stream with no byte before it."""
        rest = await self.receive_until_eof()
        assert rest == b"", f"expected end of stream, got {len(rest)} more bytes: {rest[:48]!r}"

    async def shutdown_write(self) -> None:
        """Half-close: send our end of stream (FIN) once queued bytes are out."""
        self.writer.write_eof()
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()

    def reset(self) -> None:
        """Vanish abruptly: SO_LINGER 0 makes the close a reset (RST), not a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.wait_closed()
        except (ConnectionError, TimeoutError):
            self.writer.transport.abort()


# --- a client that reads late and slowly: replies pile up in the server ----------------

# The slow reader's receive buffer, set before connecting so that the window it
# advertises stays small from the first segment on (Linux doubles the value; the
# default grows to megabytes).
SLOW_RECEIVE_BUFFER = 64 * 1024
# What it takes per read, and how long it rests between reads: at most 128 KiB per
# millisecond, and less in practice (a read returns what the small window let through),
# so a server that answers faster keeps replies queued; 16 MiB of reply still take only
# a second or two.
SLOW_READ_SIZE = 128 * 1024
SLOW_READ_PAUSE = 0.001
# Slower still (at most 32 KiB a millisecond) until the reply reaches the mark a scenario
# sets (``slow_until``): the stretch in which the server must be the faster side, even on
# a busy machine, for replies to pile up in it.
SLOWER_READ_SIZE = 32 * 1024
# The reader starts once the writer is done, or has sent nothing for this long: a
# server that stops reading while its replies wait (as Tornado's does) has then filled
# every buffer and waits for the client to read. A pace, not a synchronisation.
WRITER_STUCK = 0.25
# The writer hands the kernel this much at a time.
SEND_PIECE = 256 * 1024


class SlowPeer:
    """A raw socket that reads late and slowly while it sends a large message.

    Its reading task waits until the writer is done (or stuck), then reads at a slow
    pace. A server that reads all it can meanwhile has megabytes of replies queued in
    its own memory when the end of stream (or ``over``) arrives: the case that kernel
    buffers hide when a client reads at once and quickly.
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.received = bytearray()
        # Reads are SLOWER_READ_SIZE until this many reply bytes have arrived.
        self.slow_until = 0
        self.eof = asyncio.Event()
        self.reset = False
        self._start_reading = asyncio.Event()
        self._progress = asyncio.Event()
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls, address: tuple[str, int], timeout: float, *, slow_until: int = 0
    ) -> SlowPeer:
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RECEIVE_BUFFER)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, address)
        except (OSError, TimeoutError) as error:
            sock.close()
            raise AssertionError(f"cannot connect to {address}: {error!r}") from None
        peer = cls(sock, timeout)
        peer.slow_until = slow_until
        return peer

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        await self._start_reading.wait()
        try:
            while True:
                size = SLOWER_READ_SIZE if len(self.received) < self.slow_until else SLOW_READ_SIZE
                data = await loop.sock_recv(self.sock, size)
                if not data:
                    break
                self.received += data
                self._progress.set()
                await asyncio.sleep(SLOW_READ_PAUSE)  # sleep-ok: the reader's pace
        except ConnectionResetError:
            self.reset = True
        finally:
            self.eof.set()
            self._progress.set()

    async def send_all(self, data: bytes) -> None:
        """Send every byte; AssertionError when the server takes none for the timeout.

        The reader starts as soon as one piece waits longer than WRITER_STUCK, and at
        the end in any case.
        """
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        try:
            for start in range(0, len(view), SEND_PIECE):
                sending = asyncio.ensure_future(
                    loop.sock_sendall(self.sock, view[start : start + SEND_PIECE])
                )
                done, _ = await asyncio.wait({sending}, timeout=WRITER_STUCK)
                if not done:
                    self._start_reading.set()
                    try:
                        async with asyncio.timeout(self.timeout):
                            await sending
                    except TimeoutError:
                        raise AssertionError(
                            f"the server stopped taking bytes: {start:,} of {len(data):,} "
                            f"sent, {len(self.received):,} reply bytes read, none for "
                            f"{self.timeout:g} s"
                        ) from None
                sending.result()
        except OSError as error:
            raise AssertionError(f"sending broke: {error!r}") from None
        finally:
            self._start_reading.set()

    async def wait_received(self, size: int) -> None:
        """Until ``size`` reply bytes arrived (or the end); bounded per step, not in total."""
        await self._wait_for(
            lambda: len(self.received) >= size or self.eof.is_set(),
            lambda before: (
                f"the reply stalled at {before:,} of {size:,} bytes for {self.timeout:g} s"
            ),
        )

    async def wait_eof(self) -> None:
        """Until the server's end of stream (or reset), with progress bounded as above."""
        await self._wait_for(
            self.eof.is_set,
            lambda before: (
                f"no end of stream: the reply stopped at {before:,} bytes for {self.timeout:g} s"
            ),
        )

    async def _wait_for(self, done: Callable[[], bool], stalled: Callable[[int], str]) -> None:
        # Each wait for progress is bounded, not the whole: a large reply may take long,
        # but never self.timeout without a byte.
        while not done():
            self._progress.clear()
            before = len(self.received)
            try:
                async with asyncio.timeout(self.timeout):
                    await self._progress.wait()
            except TimeoutError:
                raise AssertionError(stalled(before)) from None

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    async def close(self) -> None:
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        self.sock.close()
