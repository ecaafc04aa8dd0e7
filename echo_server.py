"""The echo/reverse server of the Tornado seed, on native asyncio.

Run it::

    python echo_server.py --port 8888
    python echo_client.py -m hello -m over --port 8888

``EchoServer`` is the seed's ``MyTcpServer`` on the IOStream port: the same loop of
``read_bytes(20, partial=True)`` and writes, driving the protocol core in ``protocol.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

import cli
from iostream import IOStream, TCPServer, format_address
from protocol import CHUNK_SIZE, double_reply, is_close_chunk

__all__ = ["EchoServer", "main"]

log = logging.getLogger("echoverse.server")

PROGRAM = "echoverse-server"


class EchoServer(TCPServer):
    """For every chunk of up to 20 bytes: the chunk, then the chunk reversed; ``over`` closes.

    Example::

        server = EchoServer()
        await server.listen(0, "127.0.0.1")
        port = server.sockets[0].getsockname()[1]
    """

    def __init__(self, *, verbose: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.verbose = verbose

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        # The seed's loop. It writes the chunk and its reversal separately; here they go
        # as one write, which leaves in the same send as the seed's two would with
        # writes coalesced per loop turn. StreamClosedError ends the loop in TCPServer.
        while True:
            chunk = await stream.read_bytes(CHUNK_SIZE, partial=True)
            if self.verbose:
                log.info("%r from %s", chunk, address)
            await stream.write(double_reply(chunk))
            if is_close_chunk(chunk):
                stream.close()
                return


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Echo every chunk of up to 20 bytes, then the chunk reversed; 'over' closes.",
        formatter_class=cli.HelpFormatter,
    )
    cli.add_connection_arguments(parser)
    cli.add_logging_arguments(parser)
    parser.add_argument(
        "--shutdown-timeout",
        type=cli.positive_float,
        default=1.0,
        help="seconds that open connections get to finish on SIGINT/SIGTERM",
    )
    return parser


async def serve(args: argparse.Namespace, loop_name: str) -> int:
    """Listen, print the ready line, serve until SIGINT/SIGTERM, then shut down."""
    server = EchoServer(verbose=args.verbose)
    try:
        await server.listen(args.port, args.host)
    except OSError as error:
        where = format_address((args.host, args.port))
        cli.error_line(PROGRAM, f"cannot listen on {where}: {error.strerror or error}")
        return 1
    stop = asyncio.Event()
    remove_signals = cli.install_stop_signals(stop)
    print(cli.ready_line(server.sockets[0].getsockname(), loop_name), flush=True)
    try:
        await stop.wait()
        await server.close(timeout=args.shutdown_timeout)
    finally:
        remove_signals()
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
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(args, loop_name))


if __name__ == "__main__":
    sys.exit(main())
