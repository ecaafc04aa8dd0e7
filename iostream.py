"""Tornado's IOStream, TCPServer and TCPClient, ported to native asyncio.

The API and its semantics follow ``tornado/iostream.py`` (Tornado 6): ``read_bytes``,
``read_until``, ``read_until_regex``, ``read_until_close``, ``write``, ``close``,
``closed``, ``set_close_callback``; a read or write on a closed stream raises
:class:`~protocol.StreamClosedError` whoever closed it; bytes received before the peer
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
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import socket
import ssl as ssl_module
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from protocol import StreamBufferFullError, StreamClosedError, UnsatisfiableReadError

__all__ = [
    "IOStream",
    "TCPClient",
    "TCPServer",
    "TLSTransport",
    "abort_with_reset",
    "close_gracefully",
    "format_address",
    "start_lingering_close",
]

log = logging.getLogger("echoverse.iostream")

# Tornado's defaults: 64 KiB per socket read, and 100 MiB of buffered input at most for a
# read that waits for a delimiter or the end of stream.
DEFAULT_READ_CHUNK_SIZE = 64 * 1024
DEFAULT_MAX_BUFFER_SIZE = 100 * 1024 * 1024

# Received bytes nobody is reading yet: above this much, stop reading from the socket
# until a read takes some (backpressure; Tornado instead closes at max_buffer_size).
DEFAULT_READ_HIGH_WATER = 4 * DEFAULT_READ_CHUNK_SIZE

# Queued writes are handed to the transport at the end of the loop turn, or at once when
# this many bytes are waiting (asyncio's own default high-water mark for transports).
WRITE_FLUSH_THRESHOLD = 64 * 1024

# asyncio's defaults for TLS: the handshake's time limit, and the most decrypted bytes
# handed to a protocol at once.
DEFAULT_HANDSHAKE_TIMEOUT = 60.0
TLS_READ_SIZE = 256 * 1024

# SO_LINGER on, timeout 0: close() sends a reset and drops unsent bytes.
_LINGER_ZERO = struct.pack("ii", 1, 0)

# A read that never wakes for new data, only for the end of stream or a close.
_WAKE_ONLY_AT_END = sys.maxsize


def _is_connection_reset(error: BaseException | None) -> bool:
    """Errors that mean "the peer went away", which Tornado treats as a normal close."""
    return isinstance(error, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError))


def close_gracefully(transport: asyncio.Transport) -> None:
    """Close after the queued bytes are sent, and send the end of stream (FIN) too.

    ``close()`` alone does both on asyncio and uvloop; rloop 0.5 needs ``write_eof()``
    first, or it sends neither what is queued nor the FIN. On the wire it is the same.
    """
    if not transport.is_closing() and transport.can_write_eof():
        # A peer that has reset the connection, before the loop has told the transport,
        # makes asyncio's shutdown() fail with ENOTCONN: there is no end of stream left to
        # send, and close() must still close (and never raise a raw OSError).
        with contextlib.suppress(OSError):
            transport.write_eof()
    transport.close()


def start_lingering_close(transport: asyncio.Transport) -> bool:
    """Send the queued bytes and the FIN, but keep reading: the caller discards the input
    and closes when the peer's end of stream arrives. Returns False when that cannot be
    done (TLS, or the transport is already closing): the caller just closes.

    Closing a socket while the peer's bytes wait unread makes the kernel reset the
    connection, and a reset throws away replies still queued for the peer. A server
    that stops (SIGTERM) while a client is still sending must linger instead.
    """
    if transport.is_closing() or not transport.can_write_eof():
        return False
    try:
        transport.write_eof()
    except OSError:
        return False
    # Reading may be paused by backpressure; the peer's input must drain now.
    transport.resume_reading()
    return True


def abort_with_reset(transport: asyncio.Transport) -> None:
    """Close at once, dropping queued bytes, so that the peer sees a reset.

    asyncio's and uvloop's ``abort()`` drop the queued bytes but then close the socket
    normally: the peer would read a truncated reply followed by a clean end of stream.
    Linger 0 makes the close a reset (RST), which says "cut off".
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


def format_address(address: Any) -> str:
    """``host:port`` for IPv4, ``[host]:port`` for IPv6, ``unix:PATH`` for a Unix socket."""
    if isinstance(address, (tuple, list)) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(address, (str, bytes)) and address:
        return f"unix:{os.fsdecode(address)}"
    # A Unix socket's clients have no name of their own.
    return "unix client" if address in ("", b"") else "unknown"


# What a TLSTransport's protocol becomes once the connection is lost.
_GONE = asyncio.BaseProtocol()


class TLSTransport(asyncio.Protocol, asyncio.Transport):
    """TLS over a plain transport, that keeps writing after the peer's end of stream.

    To the transport underneath (TCP or a Unix socket) this is a protocol; to the
    protocol above (an :class:`IOStream`, or the fast path's) it is the transport.
    It encrypts with ``ssl.MemoryBIO``, as Tornado's ``SSLIOStream`` does TLS on its
    own socket rather than leaving it to the event loop.

    Why not asyncio's own TLS (``create_server(ssl=...)``)? Its transport, and uvloop's
    copy of it, shuts the connection down as soon as the peer's ``close_notify`` or FIN
    arrives and drops every later write ("returning true from eof_received() has no
    effect when using ssl"). The IOStream handler answers the last bytes on a later loop
    turn, so a client that sent a message and half-closed lost its reply. Here the end
    of stream (``close_notify``, or a bare FIN) is handed to the protocol as on plain
    TCP, and a protocol that keeps the connection open (``eof_received`` returns true)
    may still write; ``close()`` then sends ``close_notify`` and the FIN. The other way
    round, ``write_eof()`` sends them and reading goes on (TLS 1.3 half-close), so a
    server's lingering close works under TLS too. Anything else follows asyncio: a
    handshake that fails or takes longer than ``handshake_timeout`` drops the
    connection, logged at debug level only; the protocol hears of the connection only
    once the handshake is done.
    """

    def __init__(
        self,
        protocol: asyncio.BaseProtocol,
        context: ssl_module.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        asyncio.Transport.__init__(self)
        self.protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._context = context
        self._incoming = ssl_module.MemoryBIO()
        self._outgoing = ssl_module.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self._handshake_timeout = (
            DEFAULT_HANDSHAKE_TIMEOUT if handshake_timeout is None else handshake_timeout
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._raw: asyncio.Transport | None = None
        self._timeout_handle: asyncio.TimerHandle | None = None
        self._handshaken = False
        self._handshake_error: BaseException | None = None
        self._handshake_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._fin_received = False
        self._peer_ended = False
        self._eof_sent = False
        self._closing = False

    async def handshake(self) -> None:
        """Wait for the handshake; raise what made it fail (an ``ssl.SSLError``...)."""
        if not self._handshaken and self._handshake_error is None:
            assert self._loop is not None
            self._handshake_waiter = self._loop.create_future()
            await self._handshake_waiter
        if self._handshake_error is not None:
            raise self._handshake_error

    # --- the plain transport's protocol -----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self._timeout_handle = self._loop.call_later(
            self._handshake_timeout, self._handshake_timed_out
        )
        self._do_handshake()

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self._handshaken:
            if self._handshake_error is not None:
                return
            self._do_handshake()
            if not self._handshaken:
                return
        self._read_plaintext()

    def eof_received(self) -> bool:
        if not self._handshaken:
            self._handshake_failed(
                ConnectionResetError("connection closed during the TLS handshake")
            )
            return False
        # A FIN without close_notify (a client that half-closed its socket) ends the
        # stream as well. OpenSSL is not told: it would call that an error, and refuse
        # to encrypt the replies still owed.
        self._fin_received = True
        # The plaintext still inside, then the end of stream (unless reading is paused:
        # resume_reading gets there).
        self._read_plaintext()
        # We close, once the protocol above is done writing.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timeout()
        if self._handshaken:
            self.protocol.connection_lost(exc)
        elif self._handshake_error is None:
            self._handshake_failed(exc or ConnectionResetError("connection lost"))
        # Break the cycle with the protocol above (its transport is us), as asyncio's
        # transports drop their protocol: otherwise every closed connection, with its
        # TLS buffers, waits for the cyclic garbage collector (the soak saw +47 MiB).
        self.protocol = _GONE
        self._raw = None

    def pause_writing(self) -> None:
        if self._handshaken:
            self.protocol.pause_writing()

    def resume_writing(self) -> None:
        if self._handshaken:
            self.protocol.resume_writing()

    # --- TLS ----------------------------------------------------------------------------

    def _do_handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl_module.SSLWantReadError:
            self._send_outgoing()
            return
        except (ssl_module.SSLError, ssl_module.CertificateError) as error:
            self._send_outgoing()  # the alert that says why
            self._handshake_failed(error)
            return
        self._handshaken = True
        self._cancel_timeout()
        self._send_outgoing()
        waiter = self._handshake_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.protocol.connection_made(self)

    def _handshake_timed_out(self) -> None:
        if not self._handshaken:
            self._handshake_failed(
                TimeoutError(f"TLS handshake not done after {self._handshake_timeout:g} s")
            )

    def _handshake_failed(self, error: BaseException) -> None:
        if self._handshake_error is not None:
            return
        self._handshake_error = error
        self._cancel_timeout()
        log.debug("TLS handshake failed: %s", error)
        waiter = self._handshake_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._closing = True
        if self._raw is not None and not self._raw.is_closing():
            close_gracefully(self._raw)

    def _cancel_timeout(self) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None

    def _read_plaintext(self) -> None:
        """Hand the decrypted bytes up in one call; then the end of stream, if it came."""
        if self._peer_ended or self._closing:
            return
        ended = False
        try:
            if self._buffered:
                ended = self._read_into_buffer(cast(asyncio.BufferedProtocol, self.protocol))
            else:
                ended = self._read_copied(cast(asyncio.Protocol, self.protocol))
        except ssl_module.SSLError as error:
            # A corrupt record or an alert from the peer: nothing more can be read.
            log.debug("TLS error: %s", error)
            self.abort()
            return
        # Reading may answer with TLS records of its own (key updates).
        self._send_outgoing()
        ended = ended or (self._fin_received and not self._reading_paused)
        if ended and not self._closing:
            self._peer_ended = True
            if not cast(asyncio.Protocol, self.protocol).eof_received():
                self.close()

    def _read_into_buffer(self, protocol: asyncio.BufferedProtocol) -> bool:
        """Fill the protocol's buffer; True when the end of stream is reached."""
        while not self._reading_paused and not self._closing:
            buffer = memoryview(protocol.get_buffer(-1))
            size = len(buffer)
            filled = 0
            ended = False
            try:
                while filled < size:
                    # (typeshed says bytes; with a buffer it is the count.)
                    count = cast(int, self._tls.read(size - filled, buffer[filled:]))
                    if not count:  # close_notify
                        ended = True
                        break
                    filled += count
            except (ssl_module.SSLWantReadError, ssl_module.SSLWantWriteError):
                pass
            except ssl_module.SSLZeroReturnError:  # close_notify
                ended = True
            if filled:
                protocol.buffer_updated(filled)
            if ended or filled < size:
                return ended
        return False

    def _read_copied(self, protocol: asyncio.Protocol) -> bool:
        pieces: list[bytes] = []
        ended = False
        try:
            while True:
                piece = self._tls.read(TLS_READ_SIZE)
                if not piece:
                    ended = True
                    break
                pieces.append(piece)
        except (ssl_module.SSLWantReadError, ssl_module.SSLWantWriteError):
            pass
        except ssl_module.SSLZeroReturnError:  # close_notify
            ended = True
        if pieces:
            protocol.data_received(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        return ended

    def _send_outgoing(self) -> None:
        if self._outgoing.pending and self._raw is not None and not self._raw.is_closing():
            self._raw.write(self._outgoing.read())

    # --- the transport the protocol above sees ------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._closing or not data:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[self._tls.write(view) :]
        except ssl_module.SSLError as error:
            log.debug("TLS error: %s", error)
            self.abort()
            return
        self._send_outgoing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Half-close: ``close_notify`` and the FIN after the queued bytes; reading goes on.

        (TLS 1.3 allows it; so does OpenSSL, which reads on after sending close_notify.)
        """
        if self._eof_sent or self._closing:
            return
        self._eof_sent = True
        if self._handshaken:
            with contextlib.suppress(ssl_module.SSLError):
                self._tls.unwrap()
            self._send_outgoing()
        if self._raw is not None and not self._raw.is_closing() and self._raw.can_write_eof():
            self._raw.write_eof()

    def close(self) -> None:
        """Send ``close_notify`` after the queued bytes, then the FIN; then close."""
        if self._closing:
            return
        self._closing = True
        self._cancel_timeout()
        if self._handshaken and not self._eof_sent:
            # The peer's close_notify is not awaited (asyncio waits up to 30 s for it).
            with contextlib.suppress(ssl_module.SSLError):
                self._tls.unwrap()
            self._send_outgoing()
        if self._raw is not None:
            close_gracefully(self._raw)

    def abort(self) -> None:
        self._closing = True
        self._cancel_timeout()
        if self._raw is not None:
            self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        self._reading_paused = True
        if self._raw is not None and not self._raw.is_closing():
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._raw is not None and not self._raw.is_closing():
            self._raw.resume_reading()
        # Decrypted bytes, or the end of stream, may be waiting with nothing new to come.
        assert self._loop is not None
        self._loop.call_soon(self._read_plaintext)

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def get_write_buffer_size(self) -> int:
        if self._raw is None:
            return 0
        return self._raw.get_write_buffer_size() + self._outgoing.pending

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._raw is not None:
            self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        assert self._raw is not None
        return self._raw.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """As asyncio's TLS transport: ``sslcontext``, ``ssl_object``, ``peercert``,
        ``cipher``, ``compression``; anything else from the transport underneath."""
        if name == "sslcontext":
            return self._context
        if name == "ssl_object":
            return self._tls
        if name == "peercert":
            return self._tls.getpeercert()
        if name == "cipher":
            return self._tls.cipher()
        if name == "compression":
            return self._tls.compression()
        if self._raw is None:
            return default
        return self._raw.get_extra_info(name, default)


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

        self._write_pending: list[bytes] = []
        self._write_pending_size = 0
        self._flush_scheduled = False
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
        self._write_pending.clear()
        self._write_pending_size = 0
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
        if self.error is not None and not _is_connection_reset(self.error):
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
        if self._write_pending:
            # Nothing more to answer until bytes arrive: send the replies now rather
            # than at the end of the loop turn.
            self._flush()
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
            chunk = data if type(data) is bytes else bytes(data)
            self._write_pending.append(chunk)
            self._write_pending_size += len(chunk)
            if self._write_pending_size >= WRITE_FLUSH_THRESHOLD:
                self._flush()
            elif not self._flush_scheduled:
                self._flush_scheduled = True
                assert self._loop is not None
                self._loop.call_soon(self._flush)
        if self._paused_writing:
            assert self._loop is not None
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._drain_waiters.append(waiter)
            return waiter
        assert self._write_done is not None
        return self._write_done

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending = self._write_pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._write_pending_size = 0
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
            self._flush()
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
        self._flush()
        if not start_lingering_close(transport):
            self.close()
            return
        self._lingering = True
        self._paused_reading = False
        self._mark_closed()

    def abort(self) -> None:
        """Close at once, dropping queued writes (the peer sees a reset)."""
        self._write_pending.clear()
        self._write_pending_size = 0
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
        return bool(self._write_pending) or (
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


class Connection(Protocol):
    """What :class:`TCPServer` needs of a connection to count it and shut it down.

    An :class:`IOStream` is one; so is a fast-path protocol that answers without a
    stream (``echo_server.EchoProtocol``), so both share one listener and one shutdown.
    """

    @property
    def bytes_read(self) -> int: ...

    @property
    def bytes_written(self) -> int: ...

    def close(self) -> None: ...

    def close_lingering(self) -> None: ...

    def abort(self) -> None: ...

    async def wait_closed(self) -> None: ...

    def writing(self) -> bool: ...


class TCPServer:
    """Accepts connections and runs :meth:`handle_stream` for each, as Tornado's does.

    Subclass it and override :meth:`handle_stream`. Example::

        class UpperServer(TCPServer):
            async def handle_stream(self, stream, address):
                line = await stream.read_until(b"\\n")
                await stream.write(line.upper())

        server = UpperServer()
        await server.listen(8888)
        ...
        await server.close()

    Differences from Tornado: :meth:`listen` is a coroutine (binding is asynchronous in
    asyncio) and :meth:`close` shuts down the open connections too. Beyond Tornado:
    ``max_connections`` closes connections past the limit at once, and
    ``idle_timeout`` closes a connection that has received nothing for that long.
    """

    def __init__(
        self,
        *,
        max_buffer_size: int | None = None,
        read_chunk_size: int | None = None,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.max_buffer_size = max_buffer_size
        self.read_chunk_size = read_chunk_size or DEFAULT_READ_CHUNK_SIZE
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._servers: list[asyncio.Server] = []
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle_sweeper: asyncio.Task[None] | None = None
        # Connections refused since the limit was last reached (logged once per burst).
        self._refused_in_burst = 0
        self.connections_refused = 0
        # One receive buffer for every stream of this server (see IOStream.__init__).
        self._recv_buffer = bytearray(self.read_chunk_size)
        self.connections_served = 0
        self.bytes_received = 0
        self.bytes_sent = 0

    async def listen(
        self,
        port: int = 8888,
        address: str | None = "127.0.0.1",
        *,
        backlog: int = 128,
        reuse_port: bool = False,
        ssl: ssl_module.SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
    ) -> None:
        """Start accepting connections on ``address:port`` (port 0 picks a free port).

        A name with several addresses (``localhost``: 127.0.0.1 and ::1) listens on each;
        with port 0 they all get the port chosen for the first, as Tornado's
        ``bind_sockets`` does, so the one ready line is true for all of them.
        """
        loop = asyncio.get_running_loop()
        hosts: list[str | None] = [address]
        if port == 0 and address:
            infos = await loop.getaddrinfo(
                address, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            hosts = list(dict.fromkeys(str(info[4][0]) for info in infos)) or hosts
        for host in hosts:
            server = await loop.create_server(
                self._protocol_factory(ssl, ssl_handshake_timeout),
                host=host,
                port=port,
                backlog=backlog,
                reuse_address=True,
                reuse_port=reuse_port or None,
            )
            self._started(server)
            port = port or server.sockets[0].getsockname()[1]

    async def listen_unix(
        self,
        path: str,
        *,
        backlog: int = 128,
        ssl: ssl_module.SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
    ) -> None:
        """Start accepting connections on the Unix socket ``path`` (a stale one is replaced)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(
            self._protocol_factory(ssl, ssl_handshake_timeout), path, backlog=backlog
        )
        self._started(server)

    def _protocol_factory(
        self, ssl: ssl_module.SSLContext | None, handshake_timeout: float | None
    ) -> Callable[[], asyncio.BaseProtocol]:
        """Each connection's protocol; under TLS, wrapped in our :class:`TLSTransport`
        (not asyncio's, which drops replies owed after the client's end of stream)."""
        if ssl is None:
            return self._make_protocol
        return lambda: TLSTransport(
            self._make_protocol(), ssl, server_side=True, handshake_timeout=handshake_timeout
        )

    def _started(self, server: asyncio.Server) -> None:
        self._servers.append(server)
        if self.idle_timeout is not None and self._idle_sweeper is None:
            self._idle_sweeper = asyncio.get_running_loop().create_task(self._close_idle())

    async def _close_idle(self) -> None:
        """Close connections idle for ``idle_timeout``, looking a few times per timeout.

        A connection is idle while its byte count stays put and nothing it is owed is
        still leaving. One sweep for all connections, comparing counters, instead of a
        timer or a clock reading per received batch, which would cost more than the
        echo itself.
        """
        assert self.idle_timeout is not None
        loop = asyncio.get_running_loop()
        interval = min(1.0, self.idle_timeout / 4)
        # Connection -> (bytes read at the last sweep, when that count last changed).
        seen: dict[Connection, tuple[int, float]] = {}
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            current: dict[Connection, tuple[int, float]] = {}
            for connection in list(self._connections):
                count, since = seen.get(connection, (-1, now))
                if connection.bytes_read != count or connection.writing():
                    count, since = connection.bytes_read, now
                elif now - since >= self.idle_timeout:
                    log.debug("closing a connection idle for %.1f s", self.idle_timeout)
                    connection.close()
                current[connection] = (count, since)
            seen = current

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (to learn the port chosen for port 0)."""
        return [sock for server in self._servers for sock in server.sockets]

    def _make_protocol(self) -> asyncio.BaseProtocol:
        """A protocol for one new connection; a fast path overrides this."""
        return IOStream(
            max_buffer_size=self.max_buffer_size,
            read_chunk_size=self.read_chunk_size,
            recv_buffer=self._recv_buffer,
            on_connect=self._start_handler,
        )

    def _start_handler(self, stream: IOStream) -> None:
        address = stream.get_extra_info("peername")
        if not self.track_connection(stream):
            return
        task = asyncio.get_running_loop().create_task(self._run_handler(stream, address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, stream: IOStream, address: Any) -> None:
        try:
            await self.handle_stream(stream, address)
        except StreamClosedError as error:
            # The peer went away mid-conversation: an ordinary end, not a fault.
            log.debug("connection from %s closed: %s", format_address(address), error)
        except Exception:
            log.exception("error handling connection from %s", format_address(address))
        finally:
            stream.close()
            self.forget_connection(stream)

    def track_connection(self, connection: Connection) -> bool:
        """Count ``connection`` as open, or close it at once past ``max_connections``.

        Returns False for a refused connection: the caller must not serve it.
        """
        if self.max_connections is not None and len(self._connections) >= self.max_connections:
            connection.close()
            self.connections_refused += 1
            if not self._refused_in_burst:
                log.warning(
                    "connection limit (%d) reached: closing new connections", self.max_connections
                )
            self._refused_in_burst += 1
            return False
        if self._refused_in_burst:
            log.warning(
                "below the connection limit again; %d connections were closed at the limit",
                self._refused_in_burst,
            )
            self._refused_in_burst = 0
        self._connections.add(connection)
        return True

    def forget_connection(self, connection: Connection) -> None:
        """``connection`` has ended: add it to the totals."""
        if connection in self._connections:
            self._connections.discard(connection)
            self.connections_served += 1
            self.bytes_received += connection.bytes_read
            self.bytes_sent += connection.bytes_written

    @property
    def connections(self) -> int:
        """How many connections are open."""
        return len(self._connections)

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        """Serve one connection; override this. Returning closes the stream."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop accepting connections; open ones carry on."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self._idle_sweeper is not None:
            self._idle_sweeper.cancel()
            self._idle_sweeper = None

    async def close(self, timeout: float = 1.0) -> None:
        """Stop accepting, close every open connection, wait at most ``timeout`` seconds.

        Queued replies still go out, and input still arriving is read and discarded
        (a lingering close, so that no reset destroys replies on their way);
        connections that have not finished by then are aborted. This does not use
        ``Server.wait_closed()``, which on Python 3.12+ waits for every client to leave.
        """
        self.stop()
        connections = list(self._connections)
        for connection in connections:
            connection.close_lingering()
        pending = [asyncio.ensure_future(connection.wait_closed()) for connection in connections]
        pending.extend(self._tasks)
        if pending:
            _, still_open = await asyncio.wait(pending, timeout=timeout)
            for connection in connections:
                connection.abort()
            for task in still_open:
                task.cancel()
            if still_open:
                await asyncio.wait(still_open, timeout=0.1)


class TCPClient:
    """Opens connections, as Tornado's ``TCPClient``. Example::

    stream = await TCPClient().connect("127.0.0.1", 8888, timeout=5)
    """

    def __init__(
        self, *, max_buffer_size: int | None = None, read_chunk_size: int | None = None
    ) -> None:
        self.max_buffer_size = max_buffer_size
        self.read_chunk_size = read_chunk_size

    def _make_stream(self) -> IOStream:
        return IOStream(max_buffer_size=self.max_buffer_size, read_chunk_size=self.read_chunk_size)

    async def connect(
        self,
        host: str,
        port: int,
        *,
        timeout: float | None = None,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> IOStream:
        """Connect to ``host:port`` (over TLS with ``ssl``).

        Failures raise :class:`StreamClosedError` whose ``real_error`` is the cause
        (``ConnectionRefusedError``, a ``TimeoutError``, an ``ssl.SSLError``...).
        """
        loop = asyncio.get_running_loop()
        factory = self._protocol_factory(ssl, server_hostname or host)
        return await _open(loop.create_connection(factory, host, port), timeout)

    async def connect_unix(
        self,
        path: str,
        *,
        timeout: float | None = None,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> IOStream:
        """Connect to the Unix socket ``path``; failures as in :meth:`connect`."""
        loop = asyncio.get_running_loop()
        factory = self._protocol_factory(ssl, server_hostname or "localhost")
        return await _open(loop.create_unix_connection(factory, path), timeout)

    def _protocol_factory(
        self, ssl: ssl_module.SSLContext | None, server_hostname: str
    ) -> Callable[[], asyncio.BaseProtocol]:
        if ssl is None:
            return self._make_stream
        return lambda: TLSTransport(
            self._make_stream(), ssl, server_side=False, server_hostname=server_hostname
        )


async def _open(
    connecting: Awaitable[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]],
    timeout: float | None,
) -> IOStream:
    try:
        async with asyncio.timeout(timeout):
            _, protocol = await connecting
            if isinstance(protocol, TLSTransport):
                tls, protocol = protocol, protocol.protocol
                await tls.handshake()
    except TimeoutError as error:
        raise StreamClosedError(
            real_error=TimeoutError(f"connect timed out after {timeout:g} s")
        ) from error
    except OSError as error:
        raise StreamClosedError(real_error=error) from error
    assert isinstance(protocol, IOStream)
    return protocol
