"""Tornado's ``TCPServer`` on asyncio: listening, one task per connection, limits and shutdown.

:class:`ConnectionServer` listens, counts connections, enforces the limits and shuts
down; what a connection *is* comes from its :meth:`~ConnectionServer.make_protocol`.
:class:`TCPServer` is Tornado's: each connection is an :class:`IOStream` handed to
:meth:`~TCPServer.handle_stream`. The echo servers (``echo20.servers``) build on the
first; only the ``iostream`` one on the second.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from echo20.errors import StreamClosedError
from echo20.iostream import DEFAULT_READ_CHUNK_SIZE, IOStream, SSLIOStream
from echo20.netutil import DEFAULT_BACKLOG, enable_keepalive, format_address
from echo20.resetwatch import ResetWatch
from echo20.tls import TLSTransport

__all__ = ["Connection", "ConnectionServer", "TCPServer"]

log = logging.getLogger("echo20.tcpserver")


class Connection(Protocol):
    """What :class:`TCPServer` needs of a connection to count it and shut it down.

    An :class:`IOStream` is one; so are the streams server's connections and the fast
    path's protocol (``echo20.servers.protocol.EchoProtocol``), so all three share one
    listener and one shutdown.
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


class ConnectionServer:
    """Listens, tracks connections and shuts down; subclasses say what a connection is.

    A subclass overrides :meth:`make_protocol` (the asyncio protocol of each new
    connection), or :meth:`create_server` to listen another way (the streams server
    listens through ``asyncio.start_server``). Connections are counted with
    :meth:`track_connection` and :meth:`forget_connection`; a task serving one runs
    under :meth:`run_handler`, so that :meth:`close` can wait for it.

    Beyond Tornado: ``max_connections`` closes connections past the limit at once,
    ``idle_timeout`` closes a connection that has received nothing for that long, and
    ``keepalive`` has the kernel probe a connection silent for that many seconds, so a
    client gone without a trace (its reset lost) is found within about that time (see
    :func:`~echo20.netutil.enable_keepalive`).
    """

    def __init__(
        self,
        *,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        keepalive: int | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self._servers: list[asyncio.Server] = []
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle_sweeper: asyncio.Task[None] | None = None
        # Connections refused since the limit was last reached (logged once per burst).
        self._refused_in_burst = 0
        self.connections_refused = 0
        self.connections_served = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        # Off (None) unless ECHO20_RESET_WATCH is set: a debug facility.
        self._reset_watch = ResetWatch.from_environment(self)

    async def listen(
        self,
        port: int = 8888,
        address: str | None = "127.0.0.1",
        *,
        backlog: int = DEFAULT_BACKLOG,
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
            server = await self.create_server(
                ssl,
                ssl_handshake_timeout,
                host=host,
                port=port,
                backlog=backlog,
                reuse_address=True,
                reuse_port=reuse_port or None,
            )
            self._started(server)
            port = port or server.sockets[0].getsockname()[1]

    async def add_sockets(
        self,
        sockets: Iterable[socket.socket],
        *,
        backlog: int = DEFAULT_BACKLOG,
        ssl: ssl_module.SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
    ) -> None:
        """Start accepting connections on sockets that already listen, as Tornado's.

        For sockets bound elsewhere: inherited from a supervisor that started several
        processes on one port (``--workers``), or from a service manager. Processes
        serving the same socket share one queue of incoming connections. The sockets
        become the server's: :meth:`stop` closes them (in this process).
        """
        for sock in sockets:
            server = await self.create_server(
                ssl, ssl_handshake_timeout, sock=sock, backlog=backlog
            )
            self._started(server)

    async def listen_unix(
        self,
        path: str,
        *,
        backlog: int = DEFAULT_BACKLOG,
        ssl: ssl_module.SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
    ) -> None:
        """Start accepting connections on the Unix socket ``path`` (a stale one is replaced)."""
        server = await self.create_server(
            ssl, ssl_handshake_timeout, unix=True, path=path, backlog=backlog
        )
        self._started(server)

    async def create_server(
        self,
        ssl: ssl_module.SSLContext | None,
        ssl_handshake_timeout: float | None,
        *,
        unix: bool = False,
        **where: Any,
    ) -> asyncio.Server:
        """One listening server: the loop's ``create_server`` (``create_unix_server``
        with ``unix``) given ``where`` (host and port, a listening sock, or a path, and
        the backlog). A subclass may listen another way; the protocols come from
        :meth:`make_protocol`."""
        loop = asyncio.get_running_loop()
        create = loop.create_unix_server if unix else loop.create_server
        return await create(self._protocol_factory(ssl, ssl_handshake_timeout), **where)

    def _protocol_factory(
        self, ssl: ssl_module.SSLContext | None, handshake_timeout: float | None
    ) -> Callable[[], asyncio.BaseProtocol]:
        """Each connection's protocol; under TLS, wrapped in our :class:`TLSTransport`
        (not asyncio's, which drops replies owed after the client's end of stream)."""
        if ssl is None:
            return self.make_protocol
        return lambda: TLSTransport(
            self.make_protocol(), ssl, server_side=True, handshake_timeout=handshake_timeout
        )

    def _started(self, server: asyncio.Server) -> None:
        self._servers.append(server)
        if self.keepalive:
            # On the listening sockets: the accepted ones inherit it, at no cost per
            # connection.
            for sock in server.sockets:
                enable_keepalive(sock, self.keepalive)
        if self._reset_watch is not None:
            self._reset_watch.start()
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

    def make_protocol(self) -> asyncio.BaseProtocol:
        """The asyncio protocol of one new connection; override this."""
        raise NotImplementedError

    def run_handler(self, connection: Connection, handler: Awaitable[Any], address: Any) -> None:
        """Run ``handler`` as the task serving ``connection``; close and count the
        connection when it ends. Shutdown (:meth:`close`) waits for these tasks."""
        task = asyncio.get_running_loop().create_task(
            self._run_handler(connection, handler, address)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._reset_watch is not None:
            self._reset_watch.handled_by(connection, task)

    async def _run_handler(
        self, connection: Connection, handler: Awaitable[Any], address: Any
    ) -> None:
        try:
            await handler
        except StreamClosedError as error:
            # The peer went away mid-conversation: an ordinary end, not a fault.
            log.debug("connection from %s closed: %s", format_address(address), error)
        except Exception:
            # The task's boundary: one report with the traceback, and the connection
            # goes. The words are Tornado's (its IOLoop's report of a failed callback).
            log.exception(
                "Exception in callback handling the connection from %s",
                format_address(address),
            )
        finally:
            connection.close()
            self.forget_connection(connection)

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
        if self._reset_watch is not None:
            self._reset_watch.watch(connection)
        return True

    def forget_connection(self, connection: Connection) -> None:
        """``connection`` has ended: add it to the totals."""
        if connection in self._connections:
            self._connections.discard(connection)
            self.connections_served += 1
            self.bytes_received += connection.bytes_read
            self.bytes_sent += connection.bytes_written

    def is_tracked(self, connection: Connection) -> bool:
        """True while ``connection`` is counted as open."""
        return connection in self._connections

    def tracked_connections(self) -> list[Connection]:
        """The connections counted as open."""
        return list(self._connections)

    @property
    def connections(self) -> int:
        """How many connections are open."""
        return len(self._connections)

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


class TCPServer(ConnectionServer):
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
    asyncio) and :meth:`close` shuts down the open connections too.
    """

    def __init__(
        self,
        *,
        max_buffer_size: int | None = None,
        read_chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_buffer_size = max_buffer_size
        self.read_chunk_size = read_chunk_size or DEFAULT_READ_CHUNK_SIZE
        # One receive buffer for every stream of this server (see IOStream.__init__).
        self._recv_buffer = bytearray(self.read_chunk_size)

    def make_protocol(self) -> asyncio.BaseProtocol:
        """An :class:`IOStream` that starts :meth:`handle_stream` once connected."""
        return IOStream(
            max_buffer_size=self.max_buffer_size,
            read_chunk_size=self.read_chunk_size,
            recv_buffer=self._recv_buffer,
            on_connect=self._start_handler,
        )

    def _protocol_factory(
        self, ssl: ssl_module.SSLContext | None, handshake_timeout: float | None
    ) -> Callable[[], asyncio.BaseProtocol]:
        """Under TLS the streams are :class:`SSLIOStream` s, as Tornado's, their
        handshake done before :meth:`handle_stream` sees them."""
        if ssl is None:
            return self.make_protocol

        def make_tls_stream() -> asyncio.BaseProtocol:
            stream = SSLIOStream(
                max_buffer_size=self.max_buffer_size,
                read_chunk_size=self.read_chunk_size,
                recv_buffer=self._recv_buffer,
                on_connect=self._start_handler,
            )
            return TLSTransport(stream, ssl, server_side=True, handshake_timeout=handshake_timeout)

        return make_tls_stream

    def _start_handler(self, stream: IOStream) -> None:
        address = stream.get_extra_info("peername")
        if not self.track_connection(stream):
            return
        try:
            handler = self.handle_stream(stream, address)
        except Exception as error:
            # Never raise from a protocol callback (rloop aborts the process).
            handler = _raised(error)
        if handler is None:
            # A plain function, as Tornado allows: the stream is now the function's (it
            # may have handed it on), and stays open until someone closes it.
            handler = stream.wait_closed()
        self.run_handler(stream, handler, address)

    def handle_stream(self, stream: IOStream, address: Any) -> Awaitable[Any] | None:
        """Serve one connection; override this, as a coroutine or a plain function.

        A coroutine (or anything awaitable it returns) serves the connection until it
        returns, which closes the stream. A plain function that returns None leaves
        the stream open for whoever it handed it to, as in Tornado.
        """
        raise NotImplementedError


async def _raised(error: Exception) -> None:
    """Report an exception raised by a plain handle_stream where a coroutine's goes."""
    raise error
