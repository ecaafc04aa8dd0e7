"""The echo/reverse server of the Tornado seed, on native asyncio.

Run it::

    python echo_server.py --port 8888
    python echo_client.py -m hello -m over --port 8888

Two implementations share the listener, the shutdown and the protocol core
(``protocol.py``), chosen with ``--impl``:

* ``streams`` (default): :class:`EchoServer`, the seed's ``MyTcpServer`` on the IOStream
  port: the same loop of ``read_bytes(20, partial=True)`` and writes.
* ``protocol``: :class:`FastEchoServer`, an ``asyncio.BufferedProtocol`` with no stream
  and no task per connection: each received batch is answered with one write.

Both put the same bytes on the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
from collections.abc import Callable
from typing import Any, cast

import cli
import supervisor
from iostream import (
    Connection,
    IOStream,
    TCPServer,
    abort_with_reset,
    close_gracefully,
    format_address,
    start_lingering_close,
)
from protocol import (
    CHUNK_SIZE,
    MAX_BATCH_SIZE,
    EchoSession,
    ReplyBuffer,
    build_text_reply,
    describe_error,
    double_reply,
    is_close_chunk,
    iter_chunks,
    iter_text_chunks,
    text_batch_closes,
    tornado_batches,
)

__all__ = [
    "IMPLEMENTATIONS",
    "BufferedEchoProtocol",
    "EchoProtocol",
    "EchoServer",
    "FastEchoServer",
    "main",
]

log = logging.getLogger("echoverse.server")

PROGRAM = "echoverse-server"


# Seconds a server stays without connections before it hands freed memory back.
MEMORY_RELEASE_DELAY = 0.5


class EchoServer(TCPServer):
    """For every chunk of up to 20 bytes: the chunk, then the chunk reversed; ``over`` closes.

    Example::

        server = EchoServer()
        await server.listen(0, "127.0.0.1")
        port = server.sockets[0].getsockname()[1]
    """

    def __init__(self, *, verbose: bool = False, text: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.verbose = verbose
        self.text = text
        self._memory_release: asyncio.TimerHandle | None = None

    def forget_connection(self, connection: Connection) -> None:
        super().forget_connection(connection)
        if not self.connections and self._memory_release is None:
            # Idle: give the memory of the last burst back to the system, once things
            # settle (a trim walks the heap: not on every disconnect of a busy server).
            self._memory_release = asyncio.get_running_loop().call_later(
                MEMORY_RELEASE_DELAY, self._release_memory_if_idle
            )

    def _release_memory_if_idle(self) -> None:
        self._memory_release = None
        if not self.connections:
            cli.release_free_memory()

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        if self.text:
            await self._handle_text_stream(stream, address)
            return
        # The seed's loop. It writes the chunk and its reversal separately; here they go
        # as one write, which leaves in the same send as the seed's two would with
        # writes coalesced per loop turn. StreamClosedError ends the loop in TCPServer.
        read, write, verbose = stream.read_bytes, stream.write, self.verbose
        while True:
            chunk = await read(CHUNK_SIZE, partial=True)
            if verbose:
                log.info("%r from %s", chunk, address)
            await write(double_reply(chunk))
            if is_close_chunk(chunk):
                stream.close()
                return

    async def _handle_text_stream(self, stream: IOStream, address: Any) -> None:
        # A text-mode chunk must see past byte 20 to avoid cutting a character, so this
        # takes all buffered bytes as one batch, as the fast path does, and lets the
        # core cut it.
        while True:
            batch = await stream.read_bytes(stream.read_chunk_size, partial=True)
            if self.verbose:
                for chunk in iter_text_chunks(batch):
                    log.info("%r from %s", chunk, address)
            await stream.write(build_text_reply(batch))
            if text_batch_closes(batch):
                stream.close()
                return


class FastEchoServer(EchoServer):
    """The fast path (``--impl protocol``): :class:`EchoProtocol` answers each batch.

    It never runs :meth:`handle_stream`; it shares the listener, the counters and the
    shutdown of :class:`~iostream.TCPServer`.
    """

    # asyncio's own receive size for stream transports: big batches, few system calls.
    RECV_BUFFER_SIZE = 256 * 1024

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.write_bytes_only = False
        # Shared by every connection on the stdlib loop (BufferedEchoProtocol): a
        # transport fills it and hands it over at once.
        self.recv_buffer = memoryview(bytearray(self.RECV_BUFFER_SIZE))

    def _make_protocol(self) -> asyncio.BaseProtocol:
        loop = asyncio.get_running_loop()
        if isinstance(loop, asyncio.BaseEventLoop):
            return BufferedEchoProtocol(self)
        # rloop 0.5's transport.write costs about 21 ns per byte for anything but
        # bytes (measured: 680 us for a 32 KiB memoryview, 12.5 us as bytes), so
        # large replies, which the NumPy builder returns as views, are copied first.
        self.write_bytes_only = type(loop).__module__.startswith("rloop")
        return EchoProtocol(self)


class EchoProtocol(asyncio.Protocol):
    """One connection of the fast path: asyncio's protocol object driving an EchoSession.

    Each batch asyncio receives (``data_received``) is cut and answered by the core and
    sent with one ``transport.write``. While the transport holds more unsent replies than its
    high-water mark, reading pauses, so a client that sends without reading cannot grow
    the server's memory. A client that shuts down its sending side has had every batch
    answered already; the transport closes once those replies are sent.
    """

    def __init__(self, server: FastEchoServer) -> None:
        self._server = server
        self._session = EchoSession(text=server.text)
        # Read per batch: kept here rather than looked up on the server each time.
        self._verbose = server.verbose
        self._write_bytes_only = server.write_bytes_only
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
        self._session.closing = True
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
        self._address = transport.get_extra_info("peername")
        self._lost = asyncio.get_running_loop().create_future()
        if not self._server.track_connection(self):
            # Refused past --max-connections (and closed): ignore anything it sends.
            self._session.closing = True

    def data_received(self, batch: bytes) -> None:
        # The hot path: a few hundred nanoseconds of Python per batch (measured), so
        # lookups are kept out of it.
        if self._session.closing:
            # Bytes after ``over`` are discarded, as the seed discards them by closing.
            return
        session = self._session
        if self._verbose:
            self._log_chunks(batch)
        if len(batch) <= MAX_BATCH_SIZE:
            reply = session.answer(batch)
            if self._write_bytes_only and type(reply) is not bytes:
                reply = bytes(reply)
            self._write(reply)
        else:
            # One write per Tornado-sized batch: joining the replies of a large receive
            # into one buffer twice its size measured slower (1 MiB: ~170 vs ~200 MiB/s).
            for piece in tornado_batches(batch):
                reply = session.answer(piece)
                if self._write_bytes_only and type(reply) is not bytes:
                    reply = bytes(reply)
                self._write(reply)
        if session.closing:
            assert self._transport is not None
            close_gracefully(self._transport)

    def _log_chunks(self, batch: bytes) -> None:
        for chunk in iter_text_chunks(batch) if self._server.text else iter_chunks(batch):
            log.info("%r from %s", chunk, self._address)

    def eof_received(self) -> bool:
        self._session.receive_eof()
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
    about 3x the CPU per round trip (CPython issue 85451). uvloop and rloop hand over
    exact-size bytes cheaply, and there plain ``data_received`` measured about 12-15%
    less CPU per round trip than this copy out of a shared buffer.
    """

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._server.recv_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._server.recv_buffer[:nbytes]))


def _not_connected(reply: ReplyBuffer) -> None:
    raise RuntimeError("data before connection_made")


# ``--impl`` choices: the same words label the conformance targets and the benchmark.
IMPLEMENTATIONS: dict[str, type[EchoServer]] = {
    "streams": EchoServer,
    "protocol": FastEchoServer,
}


# File descriptors kept free beyond --max-connections' default, for the listening
# sockets, logging and the odd file, so accept() never fails for want of one.
RESERVED_FDS = 64

# Tornado's listen backlog (tornado.netutil._DEFAULT_BACKLOG).
DEFAULT_BACKLOG = 128


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        help="streams: the seed's loop on the IOStream port; protocol: the fast path",
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
        help="serve from N processes sharing the port (SO_REUSEPORT); 0: one per CPU",
    )
    processes.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT")
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


async def serve(args: argparse.Namespace, loop_name: str, tls: ssl.SSLContext | None) -> int:
    """Listen, print the ready line, serve until SIGINT/SIGTERM, then shut down."""
    cli.install_exception_handler()
    open_files = cli.raise_open_file_limit()
    cli.raise_malloc_mmap_threshold()
    server = IMPLEMENTATIONS[args.impl](
        verbose=args.verbose,
        text=args.text,
        max_connections=args.max_connections or max(1, open_files - RESERVED_FDS),
        idle_timeout=args.idle_timeout,
    )
    try:
        if args.unix:
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
    cli.install_stop_signals(stop)
    address = args.unix or server.sockets[0].getsockname()
    print(cli.ready_line(address, loop_name), flush=True)
    await stop.wait()
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
    if args.workers != 1:
        if args.unix:
            parser.error("--workers needs a TCP port, not --unix")
        return supervisor.run(PROGRAM, __file__, sys.argv[1:] if argv is None else argv, args)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(args, loop_name, tls))


if __name__ == "__main__":
    sys.exit(main())
