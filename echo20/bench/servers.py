"""The bench-only server: ``floor``, the least a Python server can do on a loop.

Each received batch is answered with one write of its reply (``build_reply``) and
nothing else: no counters, limits, ``over`` or flow control. Not a product: it shows how
much of a target's ratio to the C server is the event loop's own cost, which no server
code can remove.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

from echo20 import cli, loops, runtime
from echo20.protocol import build_reply

__all__ = ["command_serve_floor"]

PROGRAM = "echo20-bench serve-floor"


class FloorProtocol(asyncio.Protocol):
    """Each received batch answered with one write, nothing else."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.write = cast(asyncio.Transport, transport).write

    def data_received(self, data: bytes) -> None:
        self.write(build_reply(data))


class BufferedFloorProtocol(asyncio.BufferedProtocol):
    """The same on the stdlib loop, receiving into one shared buffer as the fast path
    does there (a fresh 256 KiB buffer per receive costs ~3x: python/cpython#85451)."""

    buffer = memoryview(bytearray(256 * 1024))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.write = cast(asyncio.Transport, transport).write

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.write(build_reply(bytes(self.buffer[:nbytes])))


class BytesFloorProtocol(FloorProtocol):
    """The same on rloop, whose transports write anything but bytes slowly (loops.py)."""

    def data_received(self, data: bytes) -> None:
        reply = build_reply(data)
        self.write(reply if type(reply) is bytes else bytes(reply))


# The floor's protocol class for each loop's receive style, as the fast path chooses its own.
FLOOR_PROTOCOLS: dict[loops.ReceiveStyle, type[asyncio.BaseProtocol]] = {
    loops.ReceiveStyle.PLAIN: FloorProtocol,
    loops.ReceiveStyle.SHARED_BUFFER: BufferedFloorProtocol,
    loops.ReceiveStyle.BYTES_WRITES: BytesFloorProtocol,
}


def floor_protocol(loop: asyncio.AbstractEventLoop) -> type[asyncio.BaseProtocol]:
    """The floor's protocol class for this loop."""
    return FLOOR_PROTOCOLS[loops.receive_style(loop)]


async def serve_floor(host: str, port: int, loop_name: str) -> int:
    """Listen, print the ready line, serve until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(floor_protocol(loop), host, port)
    except OSError as error:
        cli.listen_error_line(PROGRAM, f"{host}:{port}", error)
        return 1
    stop = asyncio.Event()
    runtime.install_stop_signals(stop)
    # No serve_forever(): on rloop 0.5 it stops the server from accepting.
    print(cli.ready_line(server.sockets[0].getsockname(), loop_name), flush=True)
    await stop.wait()
    server.close()
    return 0


def command_serve_floor(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    cli.configure_logging(args.log_level)
    runtime.raise_open_file_limit()
    runtime.raise_malloc_mmap_threshold()
    loop_name, factory = cli.resolve_loop(parser, args.loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve_floor(args.host, args.port, loop_name))
