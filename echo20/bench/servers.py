"""The bench-only servers: ``floor`` and ``sockets``, two bounds for the echo20 servers.

* ``floor`` (``echo20-bench serve-floor``): the least a Python server can do on a loop.
  Each received batch is answered with one write of its reply (``build_reply``) and
  nothing else: no counters, limits, ``over`` or flow control. Not a product: it shows
  how much of a target's ratio to the C server is the event loop's own cost, which no
  server code can remove.
* ``sockets`` (``echo20-bench serve-sockets``): the echo20 server in vmbench's third
  shape, on the loop's socket calls (``loop.sock_accept``, ``loop.sock_recv``,
  ``loop.sock_sendall``) with a task per connection, no transports or protocols,
  driving the one core (``EchoSession.answer``). It does not fit ``ConnectionServer``,
  which is built on the loop's ``asyncio.Server`` and transports, so it lives here.

With ``--certfile`` both serve TLS: the floor with the loop's own TLS
(``create_server(ssl=...)``: asyncio's sslproto, uvloop's, aiofastnet's), the sockets
server by hand (``ssl.MemoryBIO`` between ``sock_recv`` and ``sock_sendall``, which have
no TLS of their own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import ssl
import stat
from typing import Any, cast

from echo20 import cli, loops, runtime
from echo20.netutil import DEFAULT_BACKLOG, format_address
from echo20.protocol import EchoSession, build_reply

__all__ = ["command_serve_floor", "command_serve_sockets"]

# Bytes asked of each sock_recv: asyncio's own read size, and the C server's.
RECV_SIZE = 256 * 1024


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


class Listening:
    """What a bench server listens with; ``close`` stops it and its connections."""

    def __init__(self, address: object) -> None:
        self.address = address

    async def close(self) -> None:
        raise NotImplementedError


class FloorListening(Listening):
    def __init__(self, server: asyncio.Server) -> None:
        super().__init__(server.sockets[0].getsockname())
        self.server = server

    async def close(self) -> None:
        self.server.close()


async def listen_floor(args: argparse.Namespace, tls: ssl.SSLContext | None) -> Listening:
    loop = asyncio.get_running_loop()
    protocol = floor_protocol(loop)
    try:
        if args.unix:
            remove_stale_socket(args.unix)
            return FloorListening(await loop.create_unix_server(protocol, args.unix, ssl=tls))
        return FloorListening(await loop.create_server(protocol, args.host, args.port, ssl=tls))
    except NotImplementedError:
        # rloop 0.5: no Unix sockets and no TLS; "cannot listen" in one line, as for a
        # loop that says so with an OSError.
        lacking = "TLS" if tls is not None else "Unix sockets"
        raise OSError(f"the loop has no {lacking}") from None


def remove_stale_socket(path: str) -> None:
    """A socket file left by an earlier server is replaced, as ``echo20-server`` does."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


async def serve_socket(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, tls: ssl.SSLContext | None
) -> None:
    """One connection of the sockets server: receive, answer, send, until ``over`` or
    the client's end of stream."""
    session = EchoSession()
    with sock:
        # A reset peer (or a failed TLS handshake: SSLError is an OSError) ends the
        # connection, no more.
        with contextlib.suppress(OSError):
            if tls is not None:
                await SocketTLS(loop, sock, tls).serve(session)
            else:
                while not session.closing:
                    data = await loop.sock_recv(sock, RECV_SIZE)
                    if not data:
                        break
                    await loop.sock_sendall(sock, session.answer(data))
        # Shut down before closing: veloxloop 0.2's sock_* calls keep a duplicate of the
        # descriptor, so close() alone would leave the client waiting for the end.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class SocketTLS:
    """TLS by hand between ``sock_recv`` and ``sock_sendall``: ciphertext in and out of
    ``ssl.MemoryBIO``, as an event loop's own TLS does under its transports."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, context: ssl.SSLContext
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.ended = False

    async def serve(self, session: EchoSession) -> None:
        """The handshake, then each batch of decrypted bytes answered, as on plain TCP."""
        await self.handshake()
        while not session.closing:
            data = await self.recv()
            if not data:
                break
            self.tls.write(session.answer(data))
            await self.flush()
        with contextlib.suppress(ssl.SSLError):
            self.tls.unwrap()  # close_notify; the client's own is not waited for
        await self.flush()

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                await self.flush()
                if not await self.fill():
                    raise ConnectionResetError("end of stream in the TLS handshake") from None
                continue
            await self.flush()
            return

    async def recv(self) -> bytes:
        """Every record waiting, decrypted, as one batch (one sock_recv takes every byte
        waiting); ``b""`` at the end of stream."""
        while True:
            chunks: list[bytes] = []
            while not self.ended:
                try:
                    chunk = self.tls.read(RECV_SIZE)
                except ssl.SSLWantReadError:
                    break
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    self.ended = True
                    break
                if not chunk:
                    self.ended = True
                    break
                chunks.append(chunk)
            await self.flush()  # what reading made TLS say (session tickets, key updates)
            if chunks or self.ended:
                return b"".join(chunks)
            await self.fill()

    async def fill(self) -> bool:
        """Ciphertext from the socket into TLS; False at the end of stream."""
        data = await self.loop.sock_recv(self.sock, RECV_SIZE)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    async def flush(self) -> None:
        data = self.outgoing.read()
        if data:
            await self.loop.sock_sendall(self.sock, data)


class SocketsListening(Listening):
    """A listening socket, the task accepting on it and a task per connection."""

    def __init__(self, listener: socket.socket, tls: ssl.SSLContext | None) -> None:
        super().__init__(listener.getsockname())
        self.listener = listener
        self.tls = tls
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepting = asyncio.get_running_loop().create_task(self.accept())

    async def accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self.listener)
            except OSError:
                continue  # the client left before it was accepted (ECONNABORTED)
            sock.setblocking(False)
            # The listener's family, not the new socket's: veloxloop 0.2 labels a Unix
            # connection AF_INET.
            if self.listener.family != socket.AF_UNIX:
                # As asyncio's transports and the C server set it.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(serve_socket(loop, sock, self.tls))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        self.accepting.cancel()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(self.accepting, *self.tasks, return_exceptions=True)
        self.listener.close()


async def listen_sockets(args: argparse.Namespace, tls: ssl.SSLContext | None) -> Listening:
    loop = asyncio.get_running_loop()
    address: str | tuple[Any, ...]
    if args.unix:
        remove_stale_socket(args.unix)
        family, kind, proto, address = socket.AF_UNIX, socket.SOCK_STREAM, 0, args.unix
    else:
        family, kind, proto, _, address = (
            await loop.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
        )[0]
    listener = socket.socket(family, kind, proto)
    try:
        if family != socket.AF_UNIX:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(DEFAULT_BACKLOG)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return SocketsListening(listener, tls)


async def serve(
    args: argparse.Namespace, program: str, loop_name: str, tls: ssl.SSLContext | None
) -> int:
    """Listen, print the ready line, serve until SIGINT/SIGTERM."""
    listen = listen_sockets if args.shape == "sockets" else listen_floor
    try:
        listening = await listen(args, tls)
    except OSError as error:
        cli.listen_error_line(program, args.unix or format_address((args.host, args.port)), error)
        return 1
    stop = asyncio.Event()
    runtime.install_stop_signals(stop)
    # No serve_forever(): on rloop 0.5 it stops the server from accepting.
    print(cli.ready_line(listening.address, loop_name), flush=True)
    await stop.wait()
    await listening.close()
    return 0


def run_bench_server(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    cli.configure_logging(args.log_level)
    runtime.raise_open_file_limit()
    runtime.raise_malloc_mmap_threshold()
    loop_name, factory = cli.resolve_loop(parser, args.loop)
    tls = cli.server_tls_context(parser, args)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(args, parser.prog, loop_name, tls))


def command_serve_floor(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    args.shape = "floor"
    return run_bench_server(args, parser)


def command_serve_sockets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    args.shape = "sockets"
    return run_bench_server(args, parser)
