"""Tornado's IOStream, ported to native asyncio (its server and client: ``tcpserver.py``,
``tcpclient.py``; TLS: ``tls.py``).

The API and its semantics follow ``tornado/iostream.py`` (Tornado 6): ``read_bytes``,
``read_until``, ``read_until_regex``, ``read_until_close``, ``write``, ``close``,
``closed``, ``set_close_callback``; a read or write on a closed stream raises
:class:`~echo20.errors.StreamClosedError` whoever closed it; bytes received before the peer
went away stay readable; a ``max_bytes`` overrun closes the stream.

Words: an :class:`IOStream` *is* an asyncio ``BufferedProtocol`` (the object asyncio's
transport calls with received bytes), just as a connection in websockets is a protocol in
asyncio. It sits directly on the transport rather than on ``asyncio.StreamReader``,
because ``StreamReader.read()`` raises a stored connection error before it returns the
bytes already buffered, and Tornado hands those bytes out first.

Where asyncio and Tornado differ underneath, the port keeps Tornado's observable
behaviour and asyncio's speed:

* Tornado reads the socket only when a read needs more bytes, so it sees the end of
  stream once its buffer is used up. asyncio reads eagerly; the stream records the end
  and reports it at the same moment Tornado would: when a read cannot be satisfied.
* Writes made in one turn of the event loop leave in one ``transport.write`` call (one
  send), so the seed's two writes per 20-byte chunk cost one system call per batch. A
  write's future resolves once its bytes are queued and the transport is below its
  high-water mark; Tornado's resolves once they reached the kernel.
* Reads return bytes already buffered without a trip through the event loop.

What eager reading makes observably different (``tests/test_differential.py`` names each
one in ``DIVERGENCES`` and shows it against Tornado): bytes that arrived before our
``close()`` stay readable, and the peer then sees an end of stream rather than a reset;
the peer's end of stream or reset closes an idle stream at once, close callback or not;
a partial read returns whatever had arrived; ``close()`` still sends queued writes; and a
read waiting past ``max_buffer_size`` looks at the bytes before it fails. Tornado's
quirks (a failed read left pending, a failed read's delimiter lingering) are not copied.
``docs/tornado-semantics.md`` sets each point beside Tornado's, with the test that pins it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import socket
import sys
from collections.abc import Callable
from typing import Any, cast

from echo20.coalescing import WriteBuffer, WriteCoalescer
from echo20.errors import StreamBufferFullError, StreamClosedError, UnsatisfiableReadError
from echo20.netutil import (
    abort_with_reset,
    close_gracefully,
    is_connection_reset,
    start_lingering_close,
)

__all__ = [
    "DEFAULT_MAX_BUFFER_SIZE",
    "DEFAULT_READ_CHUNK_SIZE",
    "DEFAULT_READ_HIGH_WATER",
    "IOStream",
]

log = logging.getLogger("echo20.iostream")

# Tornado's defaults: 64 KiB per socket read, and 100 MiB of buffered input at most for a
# read that waits for a delimiter or the end of stream.
DEFAULT_READ_CHUNK_SIZE = 64 * 1024
DEFAULT_MAX_BUFFER_SIZE = 100 * 1024 * 1024

# Received bytes nobody is reading yet: above this much, stop reading from the socket
# until a read takes some (backpressure; Tornado instead closes at max_buffer_size).
DEFAULT_READ_HIGH_WATER = 4 * DEFAULT_READ_CHUNK_SIZE

# A read that never wakes for new data, only for the end of stream or a close.
_WAKE_ONLY_AT_END = sys.maxsize


class IOStream(asyncio.BufferedProtocol):
    """A TCP (or Unix socket) connection with Tornado's read and write methods.

    Streams come from :meth:`TCPClient.connect` or are handed to
    :meth:`TCPServer.handle_stream`; they are not made directly. Example::

        stream = await TCPClient().connect("127.0.0.1", 8888)
        await stream.write(b"hello")
        reply = await stream.read_bytes(10)
        stream.close()

    Only one read may be in progress at a time, as in Tornado.
    """

    def __init__(
        self,
        *,
        max_buffer_size: int | None = None,
        read_chunk_size: int | None = None,
        read_high_water: int | None = None,
        recv_buffer: bytearray | None = None,
        on_connect: Callable[[IOStream], None] | None = None,
    ) -> None:
        self.max_buffer_size = max_buffer_size or DEFAULT_MAX_BUFFER_SIZE
        self.read_chunk_size = read_chunk_size or DEFAULT_READ_CHUNK_SIZE
        self._read_high_water = read_high_water or DEFAULT_READ_HIGH_WATER
        # The bytes asyncio receives into. A server shares one among all its streams: a
        # transport fills it and hands it over synchronously (get_buffer, recv_into,
        # buffer_updated), and keeping one per idle connection would cost 64 KiB each.
        self._recv_buffer = recv_buffer
        self._recv_view: memoryview | None = None
        self._on_connect = on_connect

        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._read_buffer = bytearray()
        # Where later receives start, as offsets in the whole stream: Tornado reads the
        # socket only when its buffer cannot satisfy a read, so bytes that arrive while
        # unread bytes wait form a batch of their own, and a partial read never takes
        # bytes from two batches. _consumed is the stream offset of the buffer's start.
        self._batch_starts: collections.deque[int] = collections.deque()
        self._consumed = 0
        self._reading = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._wake_size = 0
        self._paused_reading = False
        self._eof = False
        self._connection_lost = False
        # Closed by close_lingering(): input is discarded until the peer's end of stream.
        self._lingering = False
        self._closed = False
        self.error: BaseException | None = None

        # The writes of one loop turn leave in one transport.write (coalescing.py).
        self._writes = WriteCoalescer(self._send)
        self._paused_writing = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._write_done: asyncio.Future[None] | None = None
        self._lost_waiter: asyncio.Future[None] | None = None

        self._close_callback: Callable[[], None] | None = None
        self.bytes_read = 0
        self.bytes_written = 0

    # --- asyncio protocol callbacks --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's and rloop's transports do not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        loop = self._loop = asyncio.get_running_loop()
        # Writes that need not wait all return this one resolved future.
        self._write_done = loop.create_future()
        self._write_done.set_result(None)
        self._lost_waiter = loop.create_future()
        if self._recv_buffer is None:
            self._recv_buffer = bytearray(self.read_chunk_size)
        self._recv_view = memoryview(self._recv_buffer)
        if self._on_connect is not None:
            on_connect, self._on_connect = self._on_connect, None
            on_connect(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        assert self._recv_view is not None
        return self._recv_view

    def buffer_updated(self, nbytes: int) -> None:
        assert self._recv_view is not None
        if self._lingering:
            return
        buffer = self._read_buffer
        waiter = self._read_waiter
        if buffer and (waiter is None or waiter.done()):
            # Tornado would not have read these yet (see _batch_starts).
            self._batch_starts.append(self._consumed + len(buffer))
        buffer += self._recv_view[:nbytes]
        self.bytes_read += nbytes
        if waiter is not None and not waiter.done():
            # Past max_buffer_size the waiting read decides: it completes if it can,
            # or fails with StreamBufferFullError. (Never raise here: on rloop an
            # exception from a protocol callback aborts the process.)
            if len(buffer) >= self._wake_size or len(buffer) > self.max_buffer_size:
                waiter.set_result(None)
        elif len(buffer) >= self._read_high_water:
            # Nobody is reading, or the woken reader has not run yet: uvloop reads a
            # socket up to 32 times per event and TLS hands up whole records, so
            # without this one loop turn could buffer megabytes, and the reader then
            # hold the loop for seconds working through them (seen at shutdown).
            self._pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        if self._lingering and self._transport is not None:
            self._transport.close()
            return True
        self._wake_reader()
        if not self._read_buffer and not self._reading and not self.writing():
            # Tornado listens for the end of stream while a connection is idle and
            # closes it (running the close callback) as soon as the peer has gone.
            self.close()
        # Keep the transport open for writing: replies still owed to a peer that only
        # shut down its sending side must reach it (half-close), under TLS too
        # (TLSTransport; asyncio's own TLS transport cannot).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection_lost = True
        if exc is not None and self.error is None and not self._closed:
            # After close() the first reason sticks, as in close() itself.
            self.error = exc
        self._writes.clear()
        self._wake_reader()
        self._fail_drain_waiters()
        if not self._closed and not self._read_buffer and not self._reading:
            self._mark_closed()
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- reading --------------------------------------------------------------------

    async def read_bytes(self, num_bytes: int, partial: bool = False) -> bytes:
        """Read ``num_bytes`` bytes; with ``partial``, 1 to ``num_bytes`` as soon as any arrive."""
        buffer = self._read_buffer
        size = len(buffer)
        if size and (partial or size >= num_bytes) and not self._reading:
            # The common case, served without a trip through the event loop, inline
            # because the seed's server calls this once per 20-byte chunk.
            if partial and self._batch_starts:
                size = self._batch_starts[0] - self._consumed
            if size > num_bytes:
                size = num_bytes
            if size < len(buffer) and not self._batch_starts and not self._paused_reading:
                # _consume's usual case, spelled out: this is the hottest line of the
                # streams server (two small copies beat a memoryview here).
                data = bytes(buffer[:size])
                del buffer[:size]
                self._consumed += size
                return data
            return self._consume(size)
        needed = min(num_bytes, 1) if partial else num_bytes
        # _read's loop, spelled out for the one read the seed's loop waits in once per
        # batch: no closure and one coroutine frame less.
        self._start_read()
        try:
            while True:
                size = len(self._read_buffer)
                if size >= needed:
                    if partial and self._batch_starts:
                        size = self._batch_starts[0] - self._consumed
                    return self._consume(min(num_bytes, size))
                self._check_readable()
                await self._wait_for_data(needed)
        finally:
            self._reading = False

    async def read_until(self, delimiter: bytes, max_bytes: int | None = None) -> bytes:
        """Read up to and including ``delimiter``.

        With ``max_bytes``, a delimiter that does not end within that many bytes closes
        the stream, and the read raises ``StreamClosedError`` whose ``real_error`` is an
        :class:`UnsatisfiableReadError`.
        """
        # The buffer only grows while this read waits, so each search resumes where the
        # last one could still have missed a delimiter that straddles new bytes.
        scan_from = 0

        def find() -> int | None:
            nonlocal scan_from
            buffer = self._read_buffer
            if not buffer:
                # Tornado searches only a non-empty buffer (an empty delimiter waits).
                return None
            location = buffer.find(delimiter, scan_from)
            if location != -1:
                end = location + len(delimiter)
                _check_max_bytes(delimiter, end, max_bytes)
                return end
            _check_max_bytes(delimiter, len(buffer), max_bytes)
            scan_from = max(0, len(buffer) - len(delimiter) + 1)
            return None

        return await self._read(find, 1, grows=True)

    async def read_until_regex(
        self, regex: bytes | re.Pattern[bytes], max_bytes: int | None = None
    ) -> bytes:
        """Read up to and including the first match of ``regex`` (``max_bytes`` as above)."""
        pattern = re.compile(regex)

        def find() -> int | None:
            buffer = self._read_buffer
            if not buffer:
                # As Tornado: a pattern that matches the empty string waits for a byte.
                return None
            match = pattern.search(buffer)
            if match is not None:
                _check_max_bytes(pattern.pattern, match.end(), max_bytes)
                return match.end()
            _check_max_bytes(pattern.pattern, len(buffer), max_bytes)
            return None

        return await self._read(find, 1, grows=True)

    async def read_until_close(self) -> bytes:
        """Read everything until the peer closes; a reset counts as a close, as in Tornado."""
        if self._closed:
            return self._consume(len(self._read_buffer))
        self._start_read()
        try:
            while not (self._closed or self._eof or self._connection_lost):
                if self._buffer_overflowing():
                    break
                await self._wait_for_data(_WAKE_ONLY_AT_END)
        finally:
            self._reading = False
        if self.error is not None and not is_connection_reset(self.error):
            self.close()
            raise StreamClosedError(real_error=self.error)
        self.close()
        return self._consume(len(self._read_buffer))

    async def _read(
        self, find: Callable[[], int | None], wake_size: int, grows: bool = False
    ) -> bytes:
        """Wait until ``find`` returns a position in the buffer, then consume up to it.

        ``wake_size`` is how many buffered bytes are worth a look; ``grows`` means every
        new byte is (delimiter searches).
        """
        self._start_read()
        try:
            while True:
                try:
                    position = find()
                except UnsatisfiableReadError as error:
                    log.info("Unsatisfiable read, closing connection: %s", error)
                    self.close(error)
                    raise StreamClosedError(real_error=self.error) from error
                if position is not None:
                    return self._consume(position)
                self._check_readable()
                await self._wait_for_data(len(self._read_buffer) + 1 if grows else wake_size)
        finally:
            self._reading = False

    def _check_readable(self) -> None:
        """Raise for a read the buffered bytes cannot satisfy, if no more can come."""
        if self._closed or self._eof or self._connection_lost:
            # The end of stream, seen (as in Tornado) only once the buffered bytes
            # cannot satisfy the read. They stay buffered for reads that fit.
            self.close()
            raise StreamClosedError(real_error=self.error)
        if self._buffer_overflowing():
            raise StreamClosedError(real_error=self.error)

    def _buffer_overflowing(self) -> bool:
        """Close with StreamBufferFullError if a read waits on more than max_buffer_size.

        Tornado checks after each socket read of at most 64 KiB (or max_buffer_size / 2),
        before it looks at the bytes, so a read completed by the very bytes that overflow
        fails there; here the read gets to look first (asyncio hands over bigger batches).
        """
        if len(self._read_buffer) <= self.max_buffer_size:
            return False
        log.error("Reached maximum read buffer size")
        self.close(StreamBufferFullError("Reached maximum read buffer size"))
        return True

    def _start_read(self) -> None:
        if self._reading:
            raise RuntimeError("Already reading")
        self._reading = True

    async def _wait_for_data(self, wake_size: int) -> None:
        assert self._loop is not None
        self._wake_size = wake_size
        if self._paused_reading:
            self._resume_reading()
        if self._writes.queued_size:
            # Nothing more to answer until bytes arrive: send the replies now rather
            # than at the end of the loop turn.
            self._writes.flush()
        waiter = self._read_waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._read_waiter = None

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _consume(self, size: int) -> bytes:
        buffer = self._read_buffer
        if size == len(buffer):
            data = bytes(buffer)
            buffer.clear()
        else:
            # Two small copies beat a memoryview (which would also have to be released
            # before the bytearray may shrink). Deleting from the front of a bytearray
            # moves a start offset, not the bytes.
            data = bytes(buffer[:size])
            del buffer[:size]
        self._consumed += size
        if self._batch_starts:
            self._drop_batch_starts()
        if self._paused_reading:
            self._maybe_resume_reading()
        return data

    def _drop_batch_starts(self) -> None:
        """Forget batch starts the reads have reached: those batches are merged or gone."""
        starts = self._batch_starts
        while starts and starts[0] <= self._consumed:
            starts.popleft()

    def _maybe_resume_reading(self) -> None:
        if len(self._read_buffer) < self._read_high_water // 2:
            self._resume_reading()

    def _pause_reading(self) -> None:
        transport = self._transport
        if transport is not None and not self._paused_reading and not transport.is_closing():
            self._paused_reading = True
            transport.pause_reading()

    def _resume_reading(self) -> None:
        transport = self._transport
        self._paused_reading = False
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    # --- writing --------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> asyncio.Future[None]:
        """Queue ``data``; the returned future resolves when the stream can take more.

        Raises :class:`StreamClosedError` at once on a stream that is closed.
        """
        if self._closed or self._connection_lost:
            self.close()
            raise StreamClosedError(real_error=self.error)
        if data:
            # Keep our own copy: the caller may reuse a bytearray before the flush.
            self._writes.add(data if type(data) is bytes else bytes(data))
        if self._paused_writing:
            assert self._loop is not None
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._drain_waiters.append(waiter)
            return waiter
        assert self._write_done is not None
        return self._write_done

    def _send(self, data: WriteBuffer) -> None:
        # The coalesced writes of one loop turn.
        if self._transport is not None and not self._connection_lost:
            self._transport.write(data)
            self.bytes_written += len(data)

    def _fail_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(StreamClosedError(real_error=self.error))
                # Like Tornado: a write nobody awaited must not log "never retrieved".
                waiter.exception()

    # --- state and closing ----------------------------------------------------------

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (soon, from the event loop) when the stream closes."""
        self._close_callback = callback
        if callback is not None and self._closed:
            self._run_close_callback()

    def close(self, exc_info: BaseException | None = None) -> None:
        """Close the stream: queued writes still go out, then the connection closes.

        ``exc_info`` becomes :attr:`error`, the ``real_error`` later reads and writes
        report. On a stream already closed this does nothing: the first reason sticks,
        as in Tornado (a ``max_bytes`` overrun found after the end of stream reports
        ``real_error`` None, not the overrun).
        """
        if self._closed:
            return
        if exc_info is not None:
            self.error = exc_info
        transport = self._transport
        if transport is not None and not self._connection_lost:
            self._writes.flush()
            close_gracefully(transport)
        self._mark_closed()

    def close_lingering(self) -> None:
        """Close for the application, but let the peer finish: a server's shutdown.

        Queued writes and the end of stream go out; whatever the peer still sends is
        read and discarded until its own end of stream, so that no reset destroys
        replies on their way (see :func:`start_lingering_close`). Where that is not
        possible this is :meth:`close`.
        """
        transport = self._transport
        if self._closed or transport is None or self._connection_lost:
            self.close()
            return
        self._writes.flush()
        if not start_lingering_close(transport):
            self.close()
            return
        self._lingering = True
        self._paused_reading = False
        self._mark_closed()

    def abort(self) -> None:
        """Close at once, dropping queued writes (the peer sees a reset)."""
        self._writes.clear()
        if self._transport is not None and not self._connection_lost:
            abort_with_reset(self._transport)
        self._mark_closed()

    def _mark_closed(self) -> None:
        self._closed = True
        self._wake_reader()
        self._fail_drain_waiters()
        self._run_close_callback()

    def _run_close_callback(self) -> None:
        callback, self._close_callback = self._close_callback, None
        if callback is not None and self._loop is not None:
            self._loop.call_soon(callback)

    async def wait_closed(self) -> None:
        """Wait until the connection is gone (after ``close()``, once queued bytes left)."""
        if self._lost_waiter is not None:
            await asyncio.shield(self._lost_waiter)

    def closed(self) -> bool:
        """True once the stream is closed, by us or by a read that found the end."""
        return self._closed

    def reading(self) -> bool:
        """True while a read is waiting."""
        return self._reading

    def writing(self) -> bool:
        """True while written bytes have not all been handed to the kernel."""
        transport = self._transport
        return bool(self._writes.queued_size) or (
            transport is not None
            and not self._connection_lost
            and transport.get_write_buffer_size() > 0
        )

    def set_nodelay(self, value: bool) -> None:
        """Set ``TCP_NODELAY`` (asyncio already turns it on for every TCP connection)."""
        sock = self.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(value))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's extra info (``peername``, ``sockname``, ``socket``...)."""
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    @property
    def buffered_size(self) -> int:
        """How many received bytes wait in the read buffer."""
        return len(self._read_buffer)


def _check_max_bytes(delimiter: object, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise UnsatisfiableReadError(f"delimiter {delimiter!r} not found within {max_bytes} bytes")
