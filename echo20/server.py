"""The ``echo20-server`` command (``python echo_server.py`` in a checkout).

Parses the command line, listens with the chosen implementation (``--impl``, see
``echo20.servers``), prints one ready line, and serves until SIGINT/SIGTERM; with
``--workers`` it supervises several processes instead (``echo20.supervisor``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import ssl
import sys
from typing import Any

from echo20 import cli, runtime, supervisor
from echo20.netutil import DEFAULT_BACKLOG, DEFAULT_KEEPALIVE, format_address, inherited_sockets
from echo20.servers import DEFAULT_IMPLEMENTATION, IMPLEMENTATIONS, EchoServer

__all__ = ["build_parser", "main", "serve"]

log = logging.getLogger("echo20.server")

PROGRAM = "echo20-server"


# File descriptors kept free beyond --max-connections' default, for the listening
# sockets, logging and the odd file, so accept() never fails for want of one.
RESERVED_FDS = 64


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
        default=DEFAULT_IMPLEMENTATION,
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
        "--keepalive",
        type=cli.non_negative_int,
        default=DEFAULT_KEEPALIVE,
        metavar="SECONDS",
        help="TCP keepalive: probe a connection silent this long, so a client whose reset "
        "was lost is dropped; 0: off",
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


async def listen(
    server: EchoServer,
    args: argparse.Namespace,
    tls: ssl.SSLContext | None,
    inherited: list[socket.socket] | None,
) -> None:
    """Start accepting where the command line says: inherited sockets, a Unix socket, or
    ``--host``/``--port``. Raises OSError when that cannot be done."""
    where: dict[str, Any] = {
        "backlog": args.backlog,
        "ssl": tls,
        "ssl_handshake_timeout": args.handshake_timeout,
    }
    if inherited:
        await server.add_sockets(inherited, **where)
    elif args.unix:
        await server.listen_unix(args.unix, **where)
    else:
        await server.listen(args.port, args.host, reuse_port=args.reuse_port, **where)


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
        keepalive=args.keepalive or None,
    )
    try:
        await listen(server, args, tls, inherited)
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
    tls = cli.server_tls_context(parser, args)
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
        own_argv = sys.argv[1:] if argv is None else argv
        return supervisor.run(PROGRAM, "echo20.server", own_argv, settings)
    try:
        inherited = inherited_sockets(args.fd or [])
    except ValueError as error:
        parser.error(f"--fd: {error}")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(args, loop_name, tls, inherited))


if __name__ == "__main__":
    sys.exit(main())
