"""The seed's Tornado echo/reverse server, ported to Python 3 and current Tornado.

This is the reference the asyncio port is measured against: the conformance suite and
the benchmark run it next to ``echo20-server``. Run it::

    python -m echo20.reference.tornado_server --port 8888
    python -m echo20.reference.tornado_client -m hello -m over --port 8888

It needs the ``tornado`` extra (``pip install 'echo20[tornado]'``); nothing else in
echo20 imports Tornado.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from tornado import iostream
from tornado.netutil import bind_sockets
from tornado.tcpserver import TCPServer

from echo20 import cli, runtime
from echo20.netutil import format_address

__all__ = ["MyTcpServer", "main"]

log = logging.getLogger("echo20.tornado_server")

PROGRAM = "tornado-server"

# The loops Tornado 6 runs on here: it drives whatever asyncio loop is running. The
# first is the default, the seed's own (Tornado's IOLoop is asyncio's default loop).
LOOP_CHOICES = ("asyncio", "uvloop", "auto")


class MyTcpServer(TCPServer):
    """The seed's ``tcp_server.py``: for every chunk of up to 20 bytes, the chunk and then
    the chunk reversed, as two writes; ``over`` closes.

    The seed's name is kept so the two can be read side by side. Example::

        server = MyTcpServer()
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]

    ``nodelay=True`` sets ``TCP_NODELAY`` on every stream. The seed does not: Tornado's
    ``TCPServer`` leaves Nagle's algorithm on, so the second small write waits for the
    client's delayed ACK (about 40 ms per exchange). The flag exists for a fair
    benchmark; it changes timing only, never the bytes.
    """

    def __init__(self, *, verbose: bool = False, nodelay: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.verbose = verbose
        self.nodelay = nodelay
        # Open streams and their handlers, so that a shutdown can close them: the seed
        # never stops, Tornado's TCPServer does not track its streams.
        self._open_streams: set[iostream.IOStream] = set()
        self._handler_tasks: set[asyncio.Task[Any]] = set()

    async def handle_stream(self, stream: iostream.IOStream, address: Any) -> None:
        if self.nodelay:
            stream.set_nodelay(True)
        handler = asyncio.current_task()
        if handler is not None:
            self._handler_tasks.add(handler)
        self._open_streams.add(stream)
        # The seed's loop, line for line (Python 3: bytes, not str).
        try:
            while True:
                msg = await stream.read_bytes(20, partial=True)
                if self.verbose:
                    # The seed prints ``msg, 'from', address``; here it goes to the log,
                    # in the same words as echo20-server's.
                    log.info("%r from %s", msg, address)
                # Not awaited, as in the seed: the echo is queued, then the reversal is
                # written and awaited. Tornado keeps the two writes in order.
                stream.write(msg)
                await stream.write(msg[::-1])
                if msg == b"over":
                    # Not awaited either; the next read_bytes raises StreamClosedError.
                    stream.close()
        except iostream.StreamClosedError:
            pass
        finally:
            self._open_streams.discard(stream)
            if handler is not None:
                self._handler_tasks.discard(handler)

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, close every open stream, give the handlers ``timeout`` seconds."""
        self.stop()
        for stream in list(self._open_streams):
            stream.close()
        handlers = list(self._handler_tasks)
        if handlers:
            _, still_running = await asyncio.wait(handlers, timeout=timeout)
            for handler in still_running:
                handler.cancel()


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=PROGRAM,
        description=(
            "The seed's Tornado server: echo every chunk of up to 20 bytes, then the chunk\n"
            "reversed; 'over' closes. The reference for echo20-server."
        ),
        formatter_class=cli.HelpFormatter,
    )
    cli.add_connection_arguments(parser, loop_choices=LOOP_CHOICES)
    cli.add_logging_arguments(parser)
    parser.add_argument(
        "--nodelay",
        action="store_true",
        help="set TCP_NODELAY on every connection (the seed leaves Nagle on: ~40 ms per exchange)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=cli.positive_float,
        default=1.0,
        help="seconds that open connections get to finish on SIGINT/SIGTERM",
    )
    return parser


async def serve(args: argparse.Namespace, loop_name: str) -> int:
    """Listen, print the ready line, serve until SIGINT/SIGTERM, then shut down."""
    server = MyTcpServer(verbose=args.verbose, nodelay=args.nodelay)
    try:
        sockets = bind_sockets(args.port, args.host)
    except OSError as error:
        cli.listen_error_line(PROGRAM, format_address((args.host, args.port)), error)
        return 1
    server.add_sockets(sockets)
    stop = asyncio.Event()
    runtime.install_stop_signals(stop)
    print(cli.ready_line(sockets[0].getsockname(), loop_name), flush=True)
    await stop.wait()
    await server.shutdown(args.shutdown_timeout)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.configure_logging(args.log_level)
    loop_name, factory = cli.resolve_loop(parser, args.loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(args, loop_name))


if __name__ == "__main__":
    sys.exit(main())
