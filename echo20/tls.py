"""TLS of our own over a plain transport (``ssl.MemoryBIO``), as Tornado's ``SSLIOStream``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
from typing import Any, cast

from echo20.netutil import close_gracefully

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "TLSTransport", "ssl_context_from_options"]

log = logging.getLogger("echo20.tls")

# asyncio's defaults for TLS: the handshake's time limit, and the most decrypted bytes
# handed to a protocol at once.
DEFAULT_HANDSHAKE_TIMEOUT = 60.0
TLS_READ_SIZE = 256 * 1024

# The keys of Tornado's ``ssl_options`` dictionaries (``ssl.wrap_socket``'s arguments).
_SSL_OPTION_KEYS = frozenset(
    ("ssl_version", "certfile", "keyfile", "cert_reqs", "ca_certs", "ciphers")
)


def ssl_context_from_options(
    options: ssl_module.SSLContext | dict[str, Any] | None, server_side: bool
) -> ssl_module.SSLContext:
    """An ``SSLContext`` from Tornado's ``ssl_options``: a context is used as it is; a
    dictionary of ``ssl.wrap_socket``'s arguments (``certfile``, ``keyfile``,
    ``cert_reqs``, ``ca_certs``, ``ciphers``, ``ssl_version``) makes one, as Tornado's
    ``ssl_options_to_context`` does; None gives the default context for the side."""
    if isinstance(options, ssl_module.SSLContext):
        return options
    if options is None:
        purpose = ssl_module.Purpose.CLIENT_AUTH if server_side else ssl_module.Purpose.SERVER_AUTH
        return ssl_module.create_default_context(purpose)
    unknown = set(options) - _SSL_OPTION_KEYS
    if unknown:
        raise ValueError(f"unknown ssl_options: {', '.join(sorted(unknown))}")
    default = ssl_module.PROTOCOL_TLS_SERVER if server_side else ssl_module.PROTOCOL_TLS_CLIENT
    context = ssl_module.SSLContext(options.get("ssl_version", default))
    if "certfile" in options:
        context.load_cert_chain(options["certfile"], options.get("keyfile"))
    if "cert_reqs" in options:
        if options["cert_reqs"] == ssl_module.CERT_NONE:
            # PROTOCOL_TLS_CLIENT checks host names, which CERT_NONE cannot.
            context.check_hostname = False
        context.verify_mode = options["cert_reqs"]
    if "ca_certs" in options:
        context.load_verify_locations(options["ca_certs"])
    if "ciphers" in options:
        context.set_ciphers(options["ciphers"])
    context.options |= ssl_module.OP_NO_COMPRESSION
    return context


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
                    # Nothing left to decrypt: stop here rather than have OpenSSL say so
                    # with an SSLWantReadError, an exception raised and caught per
                    # received batch.
                    if not self._incoming.pending and not self._tls.pending():
                        break
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
                if not self._incoming.pending and not self._tls.pending():
                    break  # as in _read_into_buffer: no SSLWantReadError per batch
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
