"""``--impl streams`` (the default): the seed's server on ``asyncio.start_server``.

Each connection gets asyncio's StreamReader and a writer over asyncio's StreamWriter,
and :meth:`StreamsServer.handle_connection` runs the seed's ``handle_stream`` loop on
them: a partial read of up to 20 bytes, the double reply written, ``drain()``, and
``over`` closes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from echo20.protocol import MAX_BATCH_SIZE, EchoSession
from echo20.servers.base import EchoServer, log_chunks
from echo20.streams import CoalescingWriter, closed_stream_errors, read_partial

__all__ = ["StreamConnection", "StreamsServer"]


class StreamsServer(EchoServer):
    """``--impl streams``: the seed's server on ``asyncio.start_server``.

    Example::

        server = StreamsServer()
        await server.listen(0, "127.0.0.1")
        port = server.sockets[0].getsockname()[1]

    Each connection gets asyncio's StreamReader and StreamWriter, as
    ``asyncio.start_server`` makes them, and :meth:`handle_connection` runs the seed's
    loop on them. Under TLS the same pair is built by the same lines over the port's
    own TLS layer, because asyncio's TLS transport drops the replies owed after the
    client's ``close_notify``.
    """

    async def handle_connection(
        self, reader: asyncio.StreamReader, writer: CoalescingWriter, session: EchoSession
    ) -> None:
        """The seed's ``handle_stream``: read up to 20 bytes, send them and their
        reversal, and close after ``over``.

        ``read_partial`` is ``reader.read(20)`` raising ``StreamClosedError`` at the end,
        as Tornado's ``read_bytes(20, partial=True)`` does; the session makes the double
        reply and knows the ``over`` rule. The writer sends one loop turn's replies in one
        ``send``; ``drain()`` waits while the client is not reading.
        """
        address = writer.get_extra_info("peername")
        size = session.read_size
        verbose = self.verbose
        while not session.closing:
            chunk = await read_partial(reader, size)
            if verbose:
                log_chunks(session, chunk, address)
            writer.write(session.answer(chunk))
            await writer.drain()

    # --- listening: asyncio.start_server, and the same lines under TLS ---------------

    async def create_server(
        self,
        ssl: ssl.SSLContext | None,
        ssl_handshake_timeout: float | None,
        *,
        unix: bool = False,
        **where: Any,
    ) -> asyncio.Server:
        if ssl is not None:
            return await super().create_server(ssl, ssl_handshake_timeout, unix=unix, **where)
        start = asyncio.start_unix_server if unix else asyncio.start_server
        return await start(self._client_connected, limit=MAX_BATCH_SIZE, **where)

    def make_protocol(self) -> asyncio.BaseProtocol:
        # What asyncio.start_server makes for each connection; used under TLS only,
        # inside the port's TLSTransport (see ConnectionServer._protocol_factory).
        reader = asyncio.StreamReader(limit=MAX_BATCH_SIZE)
        return _HalfCloseStreamProtocol(reader, self._client_connected)

    def _client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain function, not a coroutine: on Python 3.11 start_server reports a
        # handler task cancelled at shutdown as a traceback ("Exception in callback"),
        # so the handler runs as the server's own task (ConnectionServer.run_handler).
        connection = StreamConnection(reader, CoalescingWriter(writer), EchoSession(text=self.text))
        # Past --max-connections track_connection closes it: then no handler runs.
        if self.track_connection(connection):
            self.run_handler(
                connection,
                connection.serve(self.handle_connection),
                writer.get_extra_info("peername"),
            )


class _HalfCloseStreamProtocol(asyncio.StreamReaderProtocol):
    """asyncio's StreamReaderProtocol, kept open after the client's end of stream under TLS.

    asyncio's returns False from ``eof_received`` over TLS because asyncio's TLS
    transport cannot write after it; the port's TLSTransport can, and the replies owed
    for the last bytes must still go out, as on plain TCP.
    """

    def eof_received(self) -> bool:
        super().eof_received()
        return True


StreamHandler = Callable[
    [asyncio.StreamReader, CoalescingWriter, EchoSession], Coroutine[Any, Any, None]
]


class StreamConnection:
    """One connection of the streams server, as TCPServer counts and shuts it down."""

    __slots__ = ("_lingering", "reader", "session", "writer")

    def __init__(
        self, reader: asyncio.StreamReader, writer: CoalescingWriter, session: EchoSession
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.session = session
        self._lingering = False

    async def serve(self, handler: StreamHandler) -> None:
        """Run ``handler(reader, writer, session)``; after a shutdown's lingering close,
        read and discard the client's input until its end of stream."""
        await handler(self.reader, self.writer, self.session)
        if self._lingering:
            with closed_stream_errors():
                while await self.reader.read(MAX_BATCH_SIZE):
                    pass

    @property
    def bytes_read(self) -> int:
        return self.session.bytes_received

    @property
    def bytes_written(self) -> int:
        return self.writer.bytes_written

    def close(self) -> None:
        self.writer.close()

    def close_lingering(self) -> None:
        # Answer nothing more; send what is queued and the FIN; the handler then ends
        # at its next chunk and serve() discards input until the client's FIN, so no
        # reset destroys the replies on their way.
        self.session.stop()
        self._lingering = self.writer.close_lingering()
        if not self._lingering:
            self.writer.close()

    def abort(self) -> None:
        self.writer.abort()

    async def wait_closed(self) -> None:
        await self.writer.wait_closed()

    def writing(self) -> bool:
        return self.writer.buffered_size > 0
