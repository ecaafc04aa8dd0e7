"""The echo/reverse server of the Tornado seed, on native asyncio.

Run it::

    python echo_server.py --port 8888
    python echo_client.py -m hello -m over --port 8888

Three implementations put the same bytes on the wire and share the listener, the
limits, the shutdown and the protocol core (``protocol.py``); ``--impl`` chooses:

* ``streams`` (default): :class:`StreamsEchoServer`, the seed's handler written with
  ``asyncio.start_server``'s StreamReader and StreamWriter: a partial read of 20 bytes,
  the chunk and its reversal written, ``drain()``, and ``over`` closes.
* ``iostream``: :class:`~echoverse.servers.EchoServer`, the seed's ``handle_stream``
  on the port of Tornado's IOStream, for people moving Tornado code.
* ``protocol``: :class:`~echoverse.servers.FastEchoServer`, the fast path: an asyncio
  protocol with no stream and no task per connection, one write per received batch.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from echoverse import cli, runtime, supervisor
from echoverse.errors import describe_error
from echoverse.netutil import format_address
from echoverse.servers import EchoServer, FastEchoServer, log_chunks
from echoverse.streams import READ_LIMIT, CoalescingWriter, closed_stream_errors, read_partial
from protocol import CHUNK_SIZE, MAX_BATCH_SIZE, EchoSession

__all__ = ["IMPLEMENTATIONS", "StreamsEchoServer", "main"]

log = logging.getLogger("echoverse.server")

PROGRAM = "echoverse-server"


class StreamsEchoServer(EchoServer):
    """``--impl streams``: the seed's server on ``asyncio.start_server``.

    Example::

        server = StreamsEchoServer()
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
        # Text mode: a chunk must see past byte 20 not to cut a character, so all that
        # is buffered is read as one batch and the session cuts it.
        size = MAX_BATCH_SIZE if self.text else CHUNK_SIZE
        verbose = self.verbose
        while not session.closing:
            chunk = await read_partial(reader, size)
            if verbose:
                log_chunks(session, chunk, address)
            writer.write(session.answer(chunk))
            await writer.drain()

    # --- listening: asyncio.start_server, and the same lines under TLS ---------------

    async def _create_server(
        self,
        ssl: ssl.SSLContext | None,
        ssl_handshake_timeout: float | None,
        *,
        unix: bool = False,
        **where: Any,
    ) -> asyncio.Server:
        if ssl is not None:
            return await super()._create_server(ssl, ssl_handshake_timeout, unix=unix, **where)
        start = asyncio.start_unix_server if unix else asyncio.start_server
        return await start(self._client_connected, limit=READ_LIMIT, **where)

    def _make_protocol(self) -> asyncio.BaseProtocol:
        # What asyncio.start_server makes for each connection; used under TLS only,
        # inside the port's TLSTransport (see TCPServer._protocol_factory).
        reader = asyncio.StreamReader(limit=READ_LIMIT)
        return _HalfCloseStreamProtocol(reader, self._client_connected)

    def _client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain function, not a coroutine: on Python 3.11 start_server reports a
        # handler task cancelled at shutdown as a traceback ("Exception in callback"),
        # so the handler runs as the server's own task (TCPServer.run_handler).
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
                while await self.reader.read(READ_LIMIT):
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


# ``--impl`` choices: the same words label the conformance targets and the benchmark.
IMPLEMENTATIONS: dict[str, type[EchoServer]] = {
    "streams": StreamsEchoServer,
    "iostream": EchoServer,
    "protocol": FastEchoServer,
}


# File descriptors kept free beyond --max-connections' default, for the listening
# sockets, logging and the odd file, so accept() never fails for want of one.
RESERVED_FDS = 64

# Tornado's listen backlog (tornado.netutil._DEFAULT_BACKLOG).
DEFAULT_BACKLOG = 128


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=PROGRAM,
        description="Echo every chunk of up to 20 bytes, then the chunk reversed; 'over' closes.",
        formatter_class=cli.HelpFormatter,
    )
    cli.add_connection_arguments(parser)
    parser.add_argument(
        "--unix", metavar="PATH", help="listen on this Unix socket instead of --host/--port"
    )
    parser.add_argument(
        "--impl",
        choices=tuple(IMPLEMENTATIONS),
        default="streams",
        help="streams: the seed's loop on asyncio.start_server streams; iostream: the same "
        "loop on the port of Tornado's IOStream; protocol: the fast path",
    )
    parser.add_argument(
        "--text",
        action="store_true",
        help="text mode: never cut a UTF-8 character, reverse by character (not the seed's wire)",
    )
    cli.add_logging_arguments(parser)
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-connections",
        type=cli.positive_int,
        metavar="N",
        help="close connections beyond N at once (default: the open-file limit minus "
        f"{RESERVED_FDS})",
    )
    limits.add_argument(
        "--idle-timeout",
        type=cli.positive_float,
        metavar="SECONDS",
        help="close a connection that sent nothing for this long (default: never, as Tornado)",
    )
    limits.add_argument(
        "--backlog", type=cli.positive_int, default=DEFAULT_BACKLOG, help="listen queue length"
    )
    limits.add_argument(
        "--shutdown-timeout",
        type=cli.positive_float,
        default=1.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, time for in-flight replies before connections are cut",
    )
    processes = parser.add_argument_group("processes")
    processes.add_argument(
        "--workers",
        type=cli.non_negative_int,
        default=1,
        metavar="N",
        help="serve from N processes sharing one listening socket; 0: one per CPU",
    )
    processes.add_argument(
        "--reuse-port",
        action="store_true",
        help="set SO_REUSEPORT; with --workers: one socket per worker instead of one shared",
    )
    processes.add_argument(
        "--fd",
        type=cli.non_negative_int,
        action="append",
        metavar="FD",
        help="serve the inherited listening socket FD instead of --host/--port (repeatable; "
        "--workers hands its socket to each worker so)",
    )
    # Set by --workers in each worker: the worker stops when this process is gone.
    processes.add_argument("--supervisor-pid", type=cli.positive_int, help=argparse.SUPPRESS)
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--certfile", help="serve TLS with this certificate chain (PEM)")
    tls.add_argument("--keyfile", help="the certificate's private key (PEM; default: in certfile)")
    tls.add_argument(
        "--handshake-timeout",
        type=cli.positive_float,
        default=10.0,
        metavar="SECONDS",
        help="drop TLS clients that have not finished the handshake by then",
    )
    return parser


def server_tls_context(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> ssl.SSLContext | None:
    """The TLS context for --certfile/--keyfile, or exit 2 with one line if they are bad."""
    if args.certfile is None:
        if args.keyfile is not None:
            parser.error("--keyfile needs --certfile")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.certfile, args.keyfile)
    except (OSError, ssl.SSLError) as error:
        parser.error(f"cannot load the certificate: {describe_error(error)}")
    return context


async def serve(
    args: argparse.Namespace,
    loop_name: str,
    tls: ssl.SSLContext | None,
    inherited: list[socket.socket] | None = None,
) -> int:
    """Listen (or serve the ``inherited`` listening sockets), print the ready line, serve
    until SIGINT/SIGTERM (or the supervisor's end, for a worker), then shut down."""
    runtime.install_exception_handler()
    open_files = runtime.raise_open_file_limit()
    runtime.raise_malloc_mmap_threshold()
    server = IMPLEMENTATIONS[args.impl](
        verbose=args.verbose,
        text=args.text,
        max_connections=args.max_connections or max(1, open_files - RESERVED_FDS),
        idle_timeout=args.idle_timeout,
    )
    try:
        if inherited:
            await server.add_sockets(
                inherited,
                backlog=args.backlog,
                ssl=tls,
                ssl_handshake_timeout=args.handshake_timeout,
            )
        elif args.unix:
            await server.listen_unix(
                args.unix,
                backlog=args.backlog,
                ssl=tls,
                ssl_handshake_timeout=args.handshake_timeout,
            )
        else:
            await server.listen(
                args.port,
                args.host,
                backlog=args.backlog,
                reuse_port=args.reuse_port,
                ssl=tls,
                ssl_handshake_timeout=args.handshake_timeout,
            )
    except OSError as error:
        cli.listen_error_line(PROGRAM, args.unix or format_address((args.host, args.port)), error)
        return 1
    stop = asyncio.Event()
    runtime.install_stop_signals(stop)
    watcher = None
    if args.supervisor_pid is not None:
        watcher = supervisor.watch_supervisor(args.supervisor_pid, stop)
    address = args.unix or server.sockets[0].getsockname()
    print(cli.ready_line(address, loop_name), flush=True)
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    await server.close(timeout=args.shutdown_timeout)
    log.info(
        "stopped: %d connections served, %d bytes in, %d bytes out",
        server.connections_served,
        server.bytes_received,
        server.bytes_sent,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.configure_logging(args.log_level)
    loop_name, factory = cli.resolve_loop(parser, args.loop)
    tls = server_tls_context(parser, args)
    if args.fd and (args.unix or args.workers != 1):
        parser.error("--fd serves one process on inherited sockets: not with --unix or --workers")
    if args.workers != 1:
        if args.unix:
            parser.error("--workers needs a TCP port, not --unix")
        settings = supervisor.Settings(
            host=args.host,
            port=args.port,
            workers=args.workers,
            backlog=args.backlog,
            reuse_port=args.reuse_port,
            shutdown_timeout=args.shutdown_timeout,
        )
        return supervisor.run(PROGRAM, __file__, sys.argv[1:] if argv is None else argv, settings)
    try:
        inherited = supervisor.inherited_sockets(args.fd or [])
    except ValueError as error:
        parser.error(f"--fd: {error}")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(args, loop_name, tls, inherited))


if __name__ == "__main__":
    sys.exit(main())
