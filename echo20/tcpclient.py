"""Tornado's ``TCPClient`` on asyncio: connect, over TLS if asked, and get an IOStream."""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Awaitable, Callable

from echo20.errors import StreamClosedError
from echo20.iostream import IOStream
from echo20.tls import TLSTransport

__all__ = ["TCPClient"]


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
