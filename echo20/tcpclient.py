"""Tornado's ``TCPClient`` on asyncio: connect, over TLS if asked, and get an IOStream."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from echo20.errors import ConnectTimeoutError, StreamClosedError
from echo20.iostream import IOStream
from echo20.netutil import format_address
from echo20.tls import TLSTransport

__all__ = ["Resolver", "TCPClient"]


class Resolver(Protocol):
    """Tornado's resolver interface: ``(family, address)`` pairs for ``host:port``
    (``tornado.netutil.Resolver`` and its subclasses are resolvers)."""

    def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> Awaitable[list[tuple[int, Any]]]: ...


class TCPClient:
    """Opens connections, as Tornado's ``TCPClient``. Example::

    stream = await TCPClient().connect("127.0.0.1", 8888, timeout=5)

    Names are resolved by the event loop, or by ``resolver`` (Tornado's interface) when
    one is given; its addresses are then tried one after another.
    """

    def __init__(
        self,
        resolver: Resolver | None = None,
        *,
        max_buffer_size: int | None = None,
        read_chunk_size: int | None = None,
    ) -> None:
        self.resolver = resolver
        self.max_buffer_size = max_buffer_size
        self.read_chunk_size = read_chunk_size

    def close(self) -> None:
        """As Tornado's: nothing to release here (names are resolved by the event loop)."""

    async def connect(
        self,
        host: str,
        port: int,
        *,
        af: socket.AddressFamily = socket.AF_UNSPEC,
        ssl_options: ssl_module.SSLContext | None = None,
        max_buffer_size: int | None = None,
        source_ip: str | None = None,
        source_port: int | None = None,
        timeout: float | datetime.timedelta | None = None,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> IOStream:
        """Connect to ``host:port``, over TLS with ``ssl_options`` (or ``ssl``).

        Tornado's parameters, keyword-only after ``port``, and ``server_hostname`` (the
        name the certificate must carry; ``host`` by default).

        ``af`` limits the address family (``socket.AF_INET``...); ``source_ip`` and
        ``source_port`` bind the local end first (a port without an address binds the
        loopback address of the family, as Tornado does). ``timeout`` (seconds or a
        ``timedelta``) bounds the whole connect, TLS handshake included.

        Failures raise :class:`StreamClosedError` whose ``real_error`` is the cause
        (``ConnectionRefusedError``, an ``ssl.SSLError``...). A timeout raises
        :class:`ConnectTimeoutError`, a ``TimeoutError`` as in Tornado (and a
        ``StreamClosedError`` as here), with Tornado's message. A connect cancelled or
        timed out during the TLS handshake closes its connection at once.
        """
        loop = asyncio.get_running_loop()
        context = ssl_options if ssl_options is not None else ssl
        factory = self._protocol_factory(context, server_hostname or host, max_buffer_size)
        local_addr: tuple[str, int] | None = None
        if source_ip is not None or source_port:
            # As Tornado: a port without an address binds the family's loopback address.
            loopback = "::1" if af == socket.AF_INET6 else "127.0.0.1"
            local_addr = (source_ip or loopback, source_port or 0)
        where = format_address((host, port))
        resolver = self.resolver

        async def connect() -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
            if resolver is None:
                return await loop.create_connection(
                    factory, host, port, family=af, local_addr=local_addr
                )
            addresses = await resolver.resolve(host, port, af)
            stages.connecting()
            return await _connect_each(addresses, factory, source_ip, source_port)

        stages = _Stages(where, host if resolver is not None else None)
        return await _open(connect, _seconds(timeout), stages)

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
        factory = self._protocol_factory(ssl, server_hostname or "localhost", None)
        return await _open(
            lambda: loop.create_unix_connection(factory, path), timeout, _Stages(path, None)
        )

    def _protocol_factory(
        self,
        ssl: ssl_module.SSLContext | None,
        server_hostname: str,
        max_buffer_size: int | None,
    ) -> Callable[[], asyncio.BaseProtocol]:
        def make_stream() -> IOStream:
            return IOStream(
                max_buffer_size=max_buffer_size or self.max_buffer_size,
                read_chunk_size=self.read_chunk_size,
            )

        if ssl is None:
            return make_stream
        return lambda: TLSTransport(
            make_stream(), ssl, server_side=False, server_hostname=server_hostname
        )


def _seconds(timeout: float | datetime.timedelta | None) -> float | None:
    if isinstance(timeout, datetime.timedelta):
        return timeout.total_seconds()
    return timeout


class _Stages:
    """Where a connect is, for the message of its timeout (Tornado's words)."""

    def __init__(self, where: str, resolving: str | None) -> None:
        self.where = where
        self.message = f"Timeout while resolving {resolving}" if resolving else ""

    def connecting(self) -> None:
        self.message = f"Timeout while connecting to {self.where}"

    def handshaking(self) -> None:
        self.message = f"Timeout during TLS handshake with {self.where}"


async def _connect_each(
    addresses: list[tuple[int, Any]],
    factory: Callable[[], asyncio.BaseProtocol],
    source_ip: str | None,
    source_port: int | None,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    """Connect to the first of a resolver's addresses that takes the connection."""
    loop = asyncio.get_running_loop()
    error: OSError = OSError(f"no address to connect to among {addresses!r}")
    for family, address in addresses:
        local_addr = None
        if source_ip is not None or source_port:
            loopback = "::1" if family == socket.AF_INET6 else "127.0.0.1"
            local_addr = (source_ip or loopback, source_port or 0)
        try:
            return await loop.create_connection(
                factory, address[0], address[1], family=family, local_addr=local_addr
            )
        except OSError as failed:
            # (An IPv4 source address cannot bind an IPv6 socket: the next address may.)
            error = failed
    raise error


async def _open(
    connect: Callable[[], Any],
    timeout: float | None,
    stages: _Stages,
) -> IOStream:
    """Run ``connect`` (the loop's create_connection) and the TLS handshake, if any."""
    transport: asyncio.BaseTransport | None = None
    protocol: asyncio.BaseProtocol | None = None
    try:
        async with asyncio.timeout(timeout):
            if not stages.message:
                stages.connecting()
            transport, protocol = await connect()
            if isinstance(protocol, TLSTransport):
                stages.handshaking()
                await protocol.handshake()
                protocol = protocol.protocol
    except TimeoutError as error:
        _abandon(transport)
        raise ConnectTimeoutError(stages.message) from error
    except OSError as error:
        _abandon(transport)
        raise StreamClosedError(real_error=error) from error
    except BaseException:
        # Cancelled: the connection must not wait for the TLS handshake's own timeout.
        _abandon(transport)
        raise
    assert isinstance(protocol, IOStream)
    return protocol


def _abandon(transport: asyncio.BaseTransport | None) -> None:
    """Close a connection whose connect will not complete (Tornado's fix for a TLS
    handshake abandoned by a timeout or a cancellation)."""
    if transport is not None:
        transport.close()
