"""Tornado's IOStream and SSLIOStream, ported to native asyncio (its server and client:
``tcpserver.py``, ``tcpclient.py``; TLS: ``tls.py``).

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
* Reads return bytes already buffered without a trip through the event loop. Every
  read starts when called, as in Tornado; one that waits returns a future, but
  ``read_bytes`` served from the buffer returns a coroutine holding the bytes (a
  resolved future would cost the iostream server about 10 % per 200-byte round trip).

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
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from echo20.coalescing import WriteBuffer, WriteCoalescer
from echo20.errors import StreamBufferFullError, StreamClosedError, UnsatisfiableReadError
from echo20.netutil import (
    abort_with_reset,
    close_gracefully,
    format_address,
    is_connection_reset,
    start_lingering_close,
)
from echo20.protocol import MAX_BATCH_SIZE
from echo20.tls import TLSTransport, ssl_context_from_options

__all__ = [
    "DEFAULT_MAX_BUFFER_SIZE",
    "DEFAULT_READ_CHUNK_SIZE",
    "DEFAULT_READ_HIGH_WATER",
    "IOStream",
    "SSLIOStream",
]

log = logging.getLogger("echo20.iostream")

_T = TypeVar("_T")
# For annotations inside IOStream, whose ``socket`` attribute hides the module there.
_Socket = socket.socket

# Tornado's defaults: 64 KiB per socket read (the core's MAX_BATCH_SIZE, the longest batch
# Tornado cuts into chunks, is this same read), and 100 MiB of buffered input at most for
# a read that waits for a delimiter or the end of stream.
DEFAULT_READ_CHUNK_SIZE = MAX_BATCH_SIZE
DEFAULT_MAX_BUFFER_SIZE = 100 * 1024 * 1024

# Received bytes nobody is reading yet: above this much, stop reading from the socket
# until a read takes some (backpressure; Tornado instead closes at max_buffer_size).
DEFAULT_READ_HIGH_WATER = 4 * DEFAULT_READ_CHUNK_SIZE


class IOStream(asyncio.BufferedProtocol):
    """A TCP (or Unix socket) connection with Tornado's read and write methods.

    Streams come from :meth:`TCPClient.connect` or are handed to
    :meth:`TCPServer.handle_stream`. Example::

        stream = await TCPClient().connect("127.0.0.1", 8888)
        await stream.write(b"hello")
        reply = await stream.read_bytes(10)
        stream.close()

    As in Tornado, a stream may also be made from a socket: ``IOStream(sock)`` takes
    over a connected socket (one from ``accept()``), and for one not yet connected
    :meth:`connect` connects it. Reads and writes made before the connection is up wait
    for it.

    Each read starts when it is called and returns a future (``fut =
    stream.read_bytes(5)``; the bytes that arrive from then on are its own, awaited or
    not). Only one read may be in progress at a time, as in Tornado.
    """

    def __init__(
        self,
        socket: _Socket | None = None,
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

        # Tornado's IOStream(socket) is made inside the event loop, or before it runs
        # (then on the loop that will run it); other streams learn theirs on connecting.
        self._loop: asyncio.AbstractEventLoop | None = (
            None if socket is None else asyncio.get_event_loop()
        )
        self._transport: asyncio.Transport | None = None
        self._socket = socket
        self._read_buffer = bytearray()
        # Where later receives start, as offsets in the whole stream: Tornado reads the
        # socket only when its buffer cannot satisfy a read, so bytes that arrive while
        # unread bytes wait form a batch of their own, and a partial read never takes
        # bytes from two batches. _consumed is the stream offset of the buffer's start.
        self._batch_starts: collections.deque[int] = collections.deque()
        self._consumed = 0
        # The read in progress, as in Tornado: its future and what completes it. A
        # future already done here is a read its caller cancelled; it is forgotten.
        self._read_future: asyncio.Future[Any] | None = None
        self._read_bytes: int | None = None
        self._read_partial = False
        self._read_delimiter: bytes | None = None
        self._read_regex: re.Pattern[bytes] | None = None
        self._read_max_bytes: int | None = None
        self._read_until_close = False
        # read_into: the caller's buffer and how much of it is filled. Only the object is
        # kept, never a view of it, so the caller may resize it once the read is over.
        self._read_into: Any = None
        self._read_into_size = 0
        self._read_into_filled = 0
        # Where the next delimiter search starts (the buffer only grows while a read
        # waits, so each search resumes where the last could have missed a delimiter).
        self._scan_from = 0
        self._paused_reading = False
        self._eof = False
        self._connection_lost = False
        # Closed by close_lingering(): input is discarded until the peer's end of stream.
        self._lingering = False
        self._closed = False
        self.error: BaseException | None = None

        # The writes of one loop turn leave in one transport.write (coalescing.py);
        # those made before the connection is up wait in _unsent.
        self._writes = WriteCoalescer(self._send, self._loop)
        self._unsent: list[WriteBuffer] = []
        # Until the connection is up, writes wait (as they do while the transport is
        # above its high-water mark): connection_made resumes them.
        self._paused_writing = True
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._write_done: asyncio.Future[None] | None = None
        self._lost_waiter: asyncio.Future[None] | None = None
        self._connect_future: asyncio.Future[IOStream] | None = None
        self._connecting: asyncio.Task[None] | None = None

        self._close_callback: Callable[[], None] | None = None
        self.bytes_read = 0
        self.bytes_written = 0

        if self._loop is not None and socket is not None:
            try:
                socket.getpeername()
            except OSError:
                return  # not connected yet: connect() does it
            self._connecting = self._loop.create_task(self._connect(socket))

    @property
    def socket(self) -> Any:
        """The connection's socket (``None`` before there is one), as Tornado's attribute.

        For a stream made by a server or a client this is the transport's socket object
        (asyncio's ``TransportSocket``, which forbids reading and writing behind the
        transport's back)."""
        if self._socket is not None:
            return self._socket
        return self.get_extra_info("socket")

    def connect(self, address: Any, server_hostname: str | None = None) -> asyncio.Future[IOStream]:
        """Connect the socket this stream was made with to ``address``, as Tornado's.

        Returns a future that resolves to the stream once connected; reads and writes
        may start before. A failure closes the stream: the future raises
        :class:`StreamClosedError` and :attr:`error` holds the cause (a
        ``ConnectionRefusedError``, a ``socket.gaierror``...). ``server_hostname`` is
        accepted for Tornado's signature; TLS is :meth:`TCPClient.connect`'s.
        """
        sock = self._socket
        if sock is None:
            raise ValueError("connect() needs a stream made with a socket: IOStream(sock)")
        if self._loop is None:
            self._loop = asyncio.get_event_loop()
        future = self._connect_future = self._loop.create_future()
        self._connecting = self._loop.create_task(self._connect(sock, address))
        return future

    async def _connect(self, sock: _Socket, address: Any = None) -> None:
        """Connect ``sock`` to ``address`` (unless it is connected already), then make
        its transport, with this stream its protocol (over TLS for an SSLIOStream)."""
        loop = asyncio.get_running_loop()
        try:
            if address is not None:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
            protocol = self._protocol_for_transport()
            await loop.connect_accepted_socket(lambda: protocol, sock)
        except asyncio.CancelledError:
            sock.close()
            raise
        except Exception as error:
            sock.close()
            self._connect_failed(error)
            return
        if isinstance(protocol, TLSTransport):
            await self._finish_handshake(protocol)
        else:
            self._connecting = None

    def _protocol_for_transport(self) -> asyncio.BaseProtocol:
        """What the transport of this stream's socket talks to: the stream itself."""
        return self

    async def _finish_handshake(self, tls: TLSTransport) -> None:
        try:
            await tls.handshake()
        except asyncio.CancelledError:
            tls.abort()
            raise
        except Exception as error:
            self._connect_failed(error)
            return
        self._connecting = None

    def _connect_failed(self, error: Exception) -> None:
        self._connecting = None
        self.close(error)

    def start_tls(
        self,
        server_side: bool,
        ssl_options: ssl.SSLContext | dict[str, Any] | None = None,
        server_hostname: str | None = None,
    ) -> asyncio.Future[SSLIOStream]:
        """Turn this connection into a TLS one (STARTTLS), as Tornado's.

        The stream must be idle: no read or write in progress, nothing buffered. It
        lets go of the connection (it is closed from then on, without closing the
        connection) and the future gives a new :class:`SSLIOStream` on it once the
        handshake is done, or raises the ``ssl`` error that made it fail. Cancelling
        the future closes the connection.
        """
        transport = self._transport
        if (
            transport is None
            or self._closed
            or self._connection_lost
            or self.reading()
            or self.writing()
            or self._read_buffer
        ):
            raise ValueError("IOStream is not idle; cannot convert to SSL")
        context = ssl_context_from_options(ssl_options, server_side)
        stream = SSLIOStream(
            max_buffer_size=self.max_buffer_size, read_chunk_size=self.read_chunk_size
        )
        stream._loop = self._loop
        stream._socket = self._socket
        stream._close_callback, self._close_callback = self._close_callback, None
        handshake = stream.wait_for_handshake()
        tls = stream._tls = TLSTransport(
            stream, context, server_side=server_side, server_hostname=server_hostname
        )
        # This stream lets go of the connection without closing it.
        self._transport = self._socket = None
        self._closed = True
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)
        if self._paused_reading:
            self._paused_reading = False
            transport.resume_reading()
        transport.set_protocol(tls)
        tls.connection_made(transport)
        loop = asyncio.get_running_loop()
        stream._connecting = loop.create_task(stream._finish_handshake(tls))
        handshake.add_done_callback(lambda done: tls.abort() if done.cancelled() else None)
        return handshake

    # --- asyncio protocol callbacks --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's and rloop's transports do not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            # Closed while the connection was being made (Tornado's close() while
            # connecting closes the socket).
            transport.close()
            return
        # Writes that need not wait all return this one resolved future.
        self._write_done = loop.create_future()
        self._write_done.set_result(None)
        self._lost_waiter = loop.create_future()
        if self._recv_buffer is None:
            self._recv_buffer = bytearray(self.read_chunk_size)
        self._recv_view = memoryview(self._recv_buffer)
        connected = self._connect_future
        if connected is not None:
            # Resolved before the writes made while connecting, as in Tornado.
            self._connect_future = None
            if not connected.done():
                connected.set_result(self)
        if self._unsent:
            for data in self._unsent:
                self._send(data)
            self._unsent.clear()
        self._writes.flush()
        self.resume_writing()
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
        future = self._read_future
        if future is None or future.done():
            if buffer:
                # Tornado would not have read these yet (see _batch_starts).
                self._batch_starts.append(self._consumed + len(buffer))
            buffer += self._recv_view[:nbytes]
            self.bytes_read += nbytes
            if len(buffer) >= self._read_high_water:
                # Nobody is reading: uvloop reads a socket up to 32 times per event and
                # TLS hands up whole records, so without this one loop turn could buffer
                # megabytes, and a later reader then hold the loop for seconds working
                # through them (seen at shutdown).
                self._pause_reading()
            return
        buffer += self._recv_view[:nbytes]
        self.bytes_read += nbytes
        num_bytes = self._read_bytes
        if self._read_partial and num_bytes is not None and self._read_into is None:
            # The seed's read, waiting on an empty buffer: this batch is its answer.
            # Spelled out, as it runs once per batch the servers receive.
            self._read_future = self._read_bytes = None
            self._read_partial = False
            future.set_result(self._consume(min(num_bytes, len(buffer))))
            return
        # Never raise here: on rloop an exception from a protocol callback aborts the
        # process. Past max_buffer_size the waiting read decides: it completes if it
        # can, or fails with StreamBufferFullError.
        self._continue_read(arrived=True)

    def eof_received(self) -> bool:
        self._eof = True
        if self._lingering and self._transport is not None:
            self._transport.close()
            return True
        if self.reading():
            # The read waiting cannot be satisfied (it would have been): Tornado sees the
            # end of stream here, and closes.
            self.close()
        elif not self._read_buffer and not self.writing():
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
        if self.reading():
            self.close()
        else:
            self._fail_drain_waiters()
            if not self._closed and not self._read_buffer:
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

    def read_bytes(self, num_bytes: int, partial: bool = False) -> Awaitable[bytes]:
        """Read ``num_bytes`` bytes; with ``partial``, 1 to ``num_bytes`` as soon as any arrive.

        Raises :class:`StreamClosedError` at once on a closed stream whose buffer
        cannot satisfy the read, as Tornado's does.
        """
        buffer = self._read_buffer
        size = len(buffer)
        if (size >= num_bytes or (partial and size)) and self._read_future is None:
            # Served from the buffer at once: the common case, inline because the
            # seed's server calls this once per 20-byte chunk.
            if partial and self._batch_starts:
                size = self._batch_starts[0] - self._consumed
            if size > num_bytes:
                size = num_bytes
            if size < len(buffer) and not self._batch_starts and not self._paused_reading:
                # _consume's usual case, spelled out: this is the hottest line of the
                # iostream server (two small copies beat a memoryview here).
                data = bytes(buffer[:size])
                del buffer[:size]
                self._consumed += size
                return _ready(data)
            return _ready(self._consume(size))
        if (
            not size
            and self._read_future is None
            and self._transport is not None
            and not (self._closed or self._eof or self._connection_lost)
        ):
            # Nothing buffered: the read waits for the next batch. _start_read's and
            # _continue_read's usual case, spelled out: the servers wait here once per
            # batch (and asyncio.Future() skips asyncio's Python-level create_future).
            future = self._read_future = asyncio.Future(loop=self._loop)
            self._read_bytes = num_bytes
            self._read_partial = partial
            if self._paused_reading:
                self._resume_reading()
            if self._writes.queued_size:
                # Nothing more to answer until bytes arrive: send the replies now
                # rather than at the end of the loop turn.
                self._writes.flush()
            return future
        future = self._start_read()
        self._read_bytes = num_bytes
        self._read_partial = partial
        self._continue_read()
        return future

    def read_into(self, buf: Any, partial: bool = False) -> Awaitable[int]:
        """Fill the writable buffer ``buf``; the future gives how many bytes it got.

        Without ``partial`` that is ``len(buf)``; with it, 1 or more, as soon as any
        arrive. Bytes already buffered are copied into ``buf`` at once.
        """
        future = self._start_read()
        with memoryview(buf) as view:
            self._read_into_size = view.nbytes
        self._read_into = buf
        self._read_into_filled = 0
        self._read_partial = partial
        self._continue_read()
        return future

    def read_until(self, delimiter: bytes, max_bytes: int | None = None) -> Awaitable[bytes]:
        """Read up to and including ``delimiter``.

        With ``max_bytes``, a delimiter that does not end within that many bytes closes
        the stream, and the read raises ``StreamClosedError`` whose ``real_error`` is an
        :class:`UnsatisfiableReadError`.
        """
        future = self._start_read()
        self._read_delimiter = delimiter
        self._read_max_bytes = max_bytes
        self._scan_from = 0
        self._continue_read()
        return future

    def read_until_regex(
        self, regex: bytes | re.Pattern[bytes], max_bytes: int | None = None
    ) -> Awaitable[bytes]:
        """Read up to and including the first match of ``regex`` (``max_bytes`` as above)."""
        future = self._start_read()
        self._read_regex = re.compile(regex)
        self._read_max_bytes = max_bytes
        self._continue_read()
        return future

    def read_until_close(self) -> Awaitable[bytes]:
        """Read everything until the peer closes; a reset counts as a close, as in Tornado."""
        future = self._start_read()
        if self._closed:
            self._finish_read(len(self._read_buffer))
            return future
        self._read_until_close = True
        self._continue_read()
        return future

    def _start_read(self) -> asyncio.Future[Any]:
        future = self._read_future
        if future is not None and not future.done():
            if self._closed:
                raise StreamClosedError(real_error=self.error)
            raise RuntimeError("Already reading")
        if self._loop is None:
            self._loop = asyncio.get_event_loop()
        future = self._read_future = self._loop.create_future()
        return future

    def _continue_read(self, arrived: bool = False) -> None:
        """Complete the read in progress from the buffer if it can be; else fail it if no
        more bytes can come, or wait for them.

        ``arrived``: bytes just came from the transport (Tornado's "error on read" case).
        """
        try:
            position = self._find_read_position()
        except UnsatisfiableReadError as error:
            log.info("Unsatisfiable read, closing connection: %s", error)
            self.close(error)
            return
        if position is not None:
            self._finish_read(position)
            return
        if self._closed:
            # Tornado raises at once for a read on a closed stream the buffer cannot
            # satisfy (the future is forgotten; nobody will ask it).
            future, self._read_future = self._read_future, None
            self._clear_read()
            if future is not None:
                future.cancel()
            raise StreamClosedError(real_error=self.error)
        if self._eof or self._connection_lost:
            # The end of stream, seen (as in Tornado) only once the buffered bytes
            # cannot satisfy the read. They stay buffered for reads that fit.
            self.close()
            return
        if len(self._read_buffer) > self.max_buffer_size:
            # Tornado checks after each socket read (at most 64 KiB, or max_buffer_size /
            # 2), before it looks at the bytes, so a read completed by the very bytes
            # that overflow fails there; here the read gets to look first (asyncio hands
            # over bigger batches).
            full = StreamBufferFullError("Reached maximum read buffer size")
            log.error("Reached maximum read buffer size")
            if arrived:
                log.warning("error on read: %s", full)
            self.close(full)
            return
        if self._paused_reading:
            self._resume_reading()
        if self._writes.queued_size:
            # Nothing more to answer until bytes arrive: send the replies now rather
            # than at the end of the loop turn.
            self._writes.flush()

    def _find_read_position(self) -> int | None:
        """How many buffered bytes complete the read in progress, or None if they cannot.

        For ``read_into`` this moves what it can into the caller's buffer first.
        """
        buffer = self._read_buffer
        if self._read_into is not None:
            return self._fill_read_into()
        num_bytes = self._read_bytes
        if num_bytes is not None:
            size = len(buffer)
            if size >= num_bytes:
                if self._read_partial and self._batch_starts:
                    return min(num_bytes, self._batch_starts[0] - self._consumed)
                return num_bytes
            if self._read_partial and size:
                if self._batch_starts:
                    return self._batch_starts[0] - self._consumed
                return size
            return None
        if not buffer:
            # Tornado searches only a non-empty buffer: an empty delimiter, or a pattern
            # that matches the empty string, waits for a byte.
            return None
        max_bytes = self._read_max_bytes
        delimiter = self._read_delimiter
        if delimiter is not None:
            location = buffer.find(delimiter, self._scan_from)
            if location != -1:
                end = location + len(delimiter)
                _check_max_bytes(delimiter, end, max_bytes)
                return end
            _check_max_bytes(delimiter, len(buffer), max_bytes)
            self._scan_from = max(0, len(buffer) - len(delimiter) + 1)
            return None
        pattern = self._read_regex
        if pattern is not None:
            match = pattern.search(buffer)
            if match is not None:
                _check_max_bytes(pattern.pattern, match.end(), max_bytes)
                return match.end()
            _check_max_bytes(pattern.pattern, len(buffer), max_bytes)
        # read_until_close: complete only at the end (close() does it).
        return None

    def _fill_read_into(self) -> int | None:
        """Move buffered bytes into read_into's buffer; its size once the read is done."""
        buffer = self._read_buffer
        wanted = self._read_into_size - self._read_into_filled
        size = min(wanted, len(buffer))
        if size and self._read_partial and self._batch_starts:
            size = min(size, self._batch_starts[0] - self._consumed)
        if size:
            start = self._read_into_filled
            with memoryview(self._read_into) as view, view.cast("B") as target:
                target[start : start + size] = buffer[:size]
            self._read_into_filled += size
            self._consume(size)
        filled = self._read_into_filled
        if filled == self._read_into_size or (self._read_partial and filled):
            return filled
        return None

    def _finish_read(self, size: int) -> None:
        """Complete the read in progress: ``size`` bytes from the buffer (a count for
        ``read_into``)."""
        future, self._read_future = self._read_future, None
        result: bytes | int = size if self._read_into is not None else self._consume(size)
        self._clear_read()
        if future is not None and not future.done():
            future.set_result(result)

    def _clear_read(self) -> None:
        self._read_bytes = self._read_delimiter = self._read_regex = None
        self._read_max_bytes = None
        self._read_partial = self._read_until_close = False
        self._read_into = None

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
        transport = self._transport
        if transport is not None and not self._connection_lost:
            transport.write(data)
            self.bytes_written += len(data)
        elif transport is None and not self._closed:
            # Not connected yet: connection_made sends them.
            self._unsent.append(data)

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

    def close(
        self,
        exc_info: BaseException
        | bool
        | tuple[type[BaseException] | None, BaseException | None, Any]
        | None = None,
    ) -> None:
        """Close the stream: queued writes still go out, then the connection closes.

        ``exc_info`` becomes :attr:`error`, the ``real_error`` later reads and writes
        report (as in Tornado, ``True`` means the exception being handled, and a
        ``sys.exc_info()`` tuple its exception). On a stream already closed this does
        nothing: the first reason sticks, as in Tornado (a ``max_bytes`` overrun found
        after the end of stream reports ``real_error`` None, not the overrun).

        A read in progress completes if the buffered bytes satisfy it, and otherwise
        fails with :class:`StreamClosedError`; a ``read_until_close()`` gets the buffered
        bytes, unless the stream closes for an error other than a reset.
        """
        if self._closed:
            # Nothing more, but a read started since fails (as Tornado's close() signals
            # the closed state again).
            self._mark_closed()
            return
        if isinstance(exc_info, BaseException):
            self.error = exc_info
        elif isinstance(exc_info, tuple):
            self.error = exc_info[1]
        elif exc_info:
            self.error = sys.exc_info()[1] or self.error
        if self.reading():
            self._complete_read_at_close()
        transport = self._transport
        if transport is None:
            self._close_socket()
        elif not self._connection_lost:
            self._writes.flush()
            close_gracefully(transport)
        self._mark_closed()

    def _close_socket(self) -> None:
        """Closed before there is a transport: stop connecting, close the socket."""
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._socket is not None:
            self._socket.close()

    def _complete_read_at_close(self) -> None:
        """Resolve the read in progress if it can be, as Tornado's close() does."""
        if self._read_until_close:
            if self.error is None or is_connection_reset(self.error):
                # A reset counts as a normal close; any other error fails the read
                # (_mark_closed), so a truncated result never passes for a whole one.
                self._finish_read(len(self._read_buffer))
            return
        try:
            position = self._find_read_position()
        except UnsatisfiableReadError:
            return
        if position is not None:
            self._finish_read(position)

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
        self._unsent.clear()
        if self._transport is None:
            self._close_socket()
        elif not self._connection_lost:
            abort_with_reset(self._transport)
        self._mark_closed()

    def _mark_closed(self) -> None:
        self._closed = True
        future, self._read_future = self._read_future, None
        self._clear_read()
        for waiter in (future, self._connect_future):
            if waiter is not None and not waiter.done():
                waiter.set_exception(StreamClosedError(real_error=self.error))
                # Like Tornado: a read nobody awaits must not log "never retrieved".
                waiter.exception()
        self._connect_future = None
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
        """True while a read is in progress (started, not yet complete)."""
        future = self._read_future
        return future is not None and not future.done()

    def writing(self) -> bool:
        """True while written bytes have not all been handed to the kernel."""
        transport = self._transport
        return bool(self._writes.queued_size or self._unsent) or (
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


class SSLIOStream(IOStream):
    """Tornado's ``SSLIOStream``: an :class:`IOStream` over TLS (:class:`TLSTransport`).

    Made from an ``ssl.SSLSocket`` that has not done its handshake (``wrap_socket(...,
    do_handshake_on_connect=False)``, as Tornado's servers make them), it does the
    handshake on that connection with the socket's context and side. Made from a plain
    socket, :meth:`connect` connects it and does the client's handshake with
    ``ssl_options`` (an ``SSLContext``, or Tornado's dictionary of ``ssl`` options).
    Reads and writes may start before the handshake is done; :meth:`wait_for_handshake`
    waits for it. A failed handshake is logged as ``SSL Error`` (a warning, as in
    Tornado) and closes the stream with the ``ssl`` error.
    """

    def __init__(
        self,
        socket: _Socket | None = None,
        *,
        ssl_options: ssl.SSLContext | dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """``options``: :class:`IOStream`'s (``max_buffer_size``...)."""
        self._server_side = False
        self._server_hostname: str | None = None
        # (Made into a context only when needed: a server's streams come with theirs.)
        self._ssl_options: ssl.SSLContext | dict[str, Any] | None = ssl_options
        if isinstance(socket, ssl.SSLSocket):
            self._ssl_options = socket.context
            self._server_side = socket.server_side
            self._server_hostname = socket.server_hostname
            # The same connection as a plain socket: TLSTransport does the TLS.
            socket = _Socket(fileno=socket.detach())
        self._tls: TLSTransport | None = None
        self._handshake_future: asyncio.Future[SSLIOStream] | None = None
        super().__init__(socket, **options)

    def connect(  # type: ignore[override]
        self, address: Any, server_hostname: str | None = None
    ) -> asyncio.Future[SSLIOStream]:
        """Connect and do the handshake; the future gives the stream once it is done,
        or raises what failed (the ``ssl`` error itself, as in Tornado)."""
        self._server_hostname = server_hostname
        super().connect(address)
        return self.wait_for_handshake()

    def wait_for_handshake(self) -> asyncio.Future[SSLIOStream]:
        """A future that gives the stream once the TLS handshake is done.

        Raises ``RuntimeError`` while another such wait is pending, as Tornado's.
        """
        if self._handshake_future is not None:
            raise RuntimeError("Already waiting")
        if self._loop is None:
            self._loop = asyncio.get_event_loop()
        future: asyncio.Future[SSLIOStream] = self._loop.create_future()
        if self._transport is not None:
            future.set_result(self)
        elif self._closed:
            future.set_exception(self.error or StreamClosedError())
            future.exception()
        else:
            self._handshake_future = future
        return future

    def _protocol_for_transport(self) -> asyncio.BaseProtocol:
        self._tls = TLSTransport(
            self,
            ssl_context_from_options(self._ssl_options, self._server_side),
            server_side=self._server_side,
            server_hostname=self._server_hostname,
        )
        return self._tls

    @property
    def socket(self) -> Any:
        """The connection's socket, with the TLS methods of Tornado's ``SSLSocket``
        (``cipher()``, ``getpeercert()``, ``version()``...) from the TLS layer."""
        tls = self._tls or self._transport
        ssl_object = None if tls is None else tls.get_extra_info("ssl_object")
        return _TLSSocket(super().socket, ssl_object)

    def _connect_failed(self, error: Exception) -> None:
        if isinstance(error, ssl.SSLError):
            log.warning("SSL Error on %s: %s", self._peer(), error)
        super()._connect_failed(error)

    def _peer(self) -> str:
        try:
            return format_address(self._socket.getpeername() if self._socket else None)
        except OSError:
            return "unknown"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (The handshake is done.) Resolved before the writes made meanwhile, as the
        # connect future of a plain stream is.
        future, self._handshake_future = self._handshake_future, None
        if future is not None and not future.done() and not self._closed:
            future.set_result(self)
        super().connection_made(transport)

    def _close_socket(self) -> None:
        if self._tls is not None:
            # The socket is the TLS layer's transport's: close that.
            if self._connecting is not None:
                self._connecting.cancel()
                self._connecting = None
            self._tls.abort()
            return
        super()._close_socket()

    def _mark_closed(self) -> None:
        future, self._handshake_future = self._handshake_future, None
        if future is not None and not future.done():
            future.set_exception(self.error or StreamClosedError())
            future.exception()
        super()._mark_closed()


class _TLSSocket:
    """A socket and its TLS object as one, as an ``ssl.SSLSocket`` looks."""

    _TLS_METHODS = frozenset(
        (
            "cipher",
            "compression",
            "getpeercert",
            "get_channel_binding",
            "selected_alpn_protocol",
            "shared_ciphers",
            "version",
        )
    )

    def __init__(self, sock: Any, ssl_object: ssl.SSLObject | None) -> None:
        self._sock = sock
        self._ssl_object = ssl_object

    def __getattr__(self, name: str) -> Any:
        if name in self._TLS_METHODS:
            if self._ssl_object is None:
                return lambda *args: None
            return getattr(self._ssl_object, name)
        return getattr(self._sock, name)


async def _ready(value: _T) -> _T:
    """An awaitable of a value already there (see :meth:`IOStream.read_bytes`)."""
    return value


def _check_max_bytes(delimiter: object, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise UnsatisfiableReadError(f"delimiter {delimiter!r} not found within {max_bytes} bytes")
