"""``--impl protocol``: the fast path, an asyncio protocol per connection.

No stream and no task per connection: each batch the transport receives goes through
the core's ``EchoSession.answer`` and leaves with one ``transport.write``. (Words: the
``protocol`` implementation is an asyncio *protocol* object driving the echo20 *protocol*
core, ``echo20.protocol``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from echo20 import loops
from echo20.netutil import abort_with_reset, close_gracefully, start_lingering_close
from echo20.protocol import MAX_BATCH_SIZE, EchoSession, ReplyBuffer
from echo20.servers.base import EchoServer, log_chunks

__all__ = ["BufferedEchoProtocol", "EchoProtocol", "ProtocolServer"]


class ProtocolServer(EchoServer):
    """The fast path (``--impl protocol``): :class:`EchoProtocol` answers each batch.

    Example::

        server = ProtocolServer()
        await server.listen(0, "127.0.0.1")
        port = server.sockets[0].getsockname()[1]
    """

    # asyncio's own receive size for stream transports: big batches, few system calls.
    RECV_BUFFER_SIZE = 256 * 1024

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.write_bytes_only = False
        # Shared by every connection on the stdlib loop (BufferedEchoProtocol): a
        # transport fills it and hands it over at once.
        self.recv_buffer = memoryview(bytearray(self.RECV_BUFFER_SIZE))

    def make_protocol(self) -> asyncio.BaseProtocol:
        style = loops.receive_style(asyncio.get_running_loop())
        if style is loops.ReceiveStyle.SHARED_BUFFER:
            return BufferedEchoProtocol(self)
        # Large replies, which the pure-Python builder returns as bytearrays, are copied
        # to bytes first where only bytes are written cheaply.
        self.write_bytes_only = style is loops.ReceiveStyle.BYTES_WRITES
        return EchoProtocol(self)


class EchoProtocol(asyncio.Protocol):
    """One connection of the fast path: asyncio's protocol object driving an EchoSession.

    Each batch asyncio receives (``data_received``) is cut and answered by the core and
    sent with one ``transport.write``. While the transport holds more unsent replies than its
    high-water mark, reading pauses, so a client that sends without reading cannot grow
    the server's memory. A client that shuts down its sending side has had every batch
    answered already; the transport closes once those replies are sent.
    """

    def __init__(self, server: ProtocolServer) -> None:
        self._server = server
        self._session = EchoSession(text=server.text)
        # Read per batch: kept here rather than looked up on the server each time.
        self._verbose = server.verbose
        self._transport: asyncio.Transport | None = None
        self._write: Callable[[ReplyBuffer], None] = _not_connected
        self._address: Any = None
        self._lost: asyncio.Future[None] | None = None
        self._gone = False

    # Connection interface, for TCPServer's counters and shutdown.

    @property
    def bytes_read(self) -> int:
        return self._session.bytes_received

    @property
    def bytes_written(self) -> int:
        return self._session.bytes_sent

    def close(self) -> None:
        if self._transport is not None and not self._gone:
            close_gracefully(self._transport)

    def close_lingering(self) -> None:
        # Stop answering; send what is queued and the FIN; discard input until the
        # peer's end of stream, where eof_received closes (see start_lingering_close).
        self._session.stop()
        transport = self._transport
        if transport is not None and not self._gone and not start_lingering_close(transport):
            close_gracefully(transport)

    def abort(self) -> None:
        # A transport that already closed must not be aborted (asyncio's raises then).
        if self._transport is not None and not self._gone:
            abort_with_reset(self._transport)

    async def wait_closed(self) -> None:
        if self._lost is not None:
            await asyncio.shield(self._lost)

    def writing(self) -> bool:
        transport = self._transport
        return transport is not None and transport.get_write_buffer_size() > 0

    # asyncio protocol callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's and rloop's transports do not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        self._write = self._transport.write
        if self._server.write_bytes_only:
            self._write = _bytes_writer(self._transport)
        self._address = transport.get_extra_info("peername")
        self._lost = asyncio.get_running_loop().create_future()
        if not self._server.track_connection(self):
            # Refused past --max-connections (and closed): ignore anything it sends.
            self._session.stop()

    def data_received(self, batch: bytes) -> None:
        # The hot path: a few hundred nanoseconds of Python per batch (measured), so
        # lookups are kept out of it.
        if self._session.closing:
            # Bytes after ``over`` are discarded, as the seed discards them by closing.
            return
        session = self._session
        if self._verbose:
            log_chunks(session, batch, self._address)
        if len(batch) <= MAX_BATCH_SIZE:
            self._write(session.answer(batch))
        else:
            for reply in session.answer_batches(batch):
                self._write(reply)
        if session.closing:
            assert self._transport is not None
            close_gracefully(self._transport)

    def eof_received(self) -> bool:
        # Every batch is answered already: close once the replies are out. (Returning
        # False would do on asyncio and uvloop, not on rloop; see close_gracefully.)
        self.close()
        return False

    def pause_writing(self) -> None:
        # Not while closing: a lingering close must keep draining the peer's input.
        if (
            self._transport is not None
            and not self._transport.is_closing()
            and not self._session.closing
        ):
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        self._server.forget_connection(self)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)


class BufferedEchoProtocol(EchoProtocol, asyncio.BufferedProtocol):
    """:class:`EchoProtocol` receiving into the server's one buffer, for the stdlib loop.

    asyncio's own loop receives each ``data_received`` batch into a fresh 256 KiB
    buffer, which glibc maps and unmaps per receive until its mmap threshold rises:
    about 3x the CPU per round trip (python/cpython#85451). uvloop and rloop hand over
    exact-size bytes cheaply, and there plain ``data_received`` measured about 12-15%
    less CPU per round trip than this copy out of a shared buffer.
    """

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._server.recv_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._server.recv_buffer[:nbytes]))


def _bytes_writer(transport: asyncio.Transport) -> Callable[[ReplyBuffer], None]:
    """``transport.write`` for a loop whose writes are cheap only for ``bytes`` (rloop)."""
    write = transport.write

    def write_bytes(reply: ReplyBuffer) -> None:
        write(reply if type(reply) is bytes else bytes(reply))

    return write_bytes


def _not_connected(reply: ReplyBuffer) -> None:
    raise RuntimeError("data before connection_made")
