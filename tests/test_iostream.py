"""The IOStream port's semantics, one behaviour per test, over real sockets on 127.0.0.1.

The specification is ``docs/tornado-semantics.md``: what Tornado 6 does, where the port
differs, and which test here pins each point (``test_differential.py`` checks the same
against Tornado itself). Most tests put the port's
:class:`~echo20.iostream.IOStream` on one end of a connection and a plain socket, the
*peer*, on the other, so the peer can do exactly what a test needs: half-close, reset,
stop reading. Server and client tests use :class:`~echo20.tcpserver.TCPServer` and
:class:`~echo20.tcpclient.TCPClient`. Every async test runs once per event loop
(``conftest.py``).

Nothing waits by sleeping. Where a test needs the port to have received what the peer
sent, it makes a round trip (:func:`round_trip`): the event loop reads every socket that
is ready in one pass, before it runs what that pass woke up, so once the peer has our
reply, our side has read everything the peer sent before it. Every wait is bounded by
``TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import socket
import ssl
import struct
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from typing import Any, TypeVar, cast

import pytest
import trustme
from support import TIMEOUT

from echo20.errors import StreamBufferFullError, StreamClosedError, UnsatisfiableReadError
from echo20.iostream import DEFAULT_READ_HIGH_WATER, IOStream, SSLIOStream
from echo20.tcpclient import TCPClient
from echo20.tcpserver import TCPServer
from echo20.tls import TLSTransport, ssl_context_from_options

T = TypeVar("T")

# Kernel buffers for tests that fill them: set explicitly they stop Linux growing them
# (to tens of MiB on loopback), so a few MiB are enough to fill them.
SMALL_BUFFER = 64 * 1024
# asyncio's and uvloop's default high-water mark for a transport's write buffer.
TRANSPORT_HIGH_WATER = 64 * 1024


# --- the peer: a plain socket driven through the event loop ---------------------------


class Peer:
    """The far end of a connection, a non-blocking socket the test drives."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def recv_exactly(self, size: int) -> bytes:
        chunks: list[bytes] = []
        while size > 0:
            chunk = await self.loop.sock_recv(self.sock, min(size, 1 << 20))
            if not chunk:
                raise AssertionError(f"end of stream with {size} bytes still expected")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    async def recv_all(self) -> bytes:
        """Everything until the end of stream (a reset raises ConnectionResetError)."""
        chunks: list[bytes] = []
        while chunk := await self.loop.sock_recv(self.sock, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    async def wait_readable(self) -> None:
        """Until bytes have arrived, without reading them."""
        ready: asyncio.Future[None] = self.loop.create_future()

        def on_readable() -> None:
            if not ready.done():
                ready.set_result(None)

        self.loop.add_reader(self.sock, on_readable)
        try:
            await ready
        finally:
            self.loop.remove_reader(self.sock)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Close with a reset (RST) instead of an end of stream."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


@asynccontextmanager
async def connection(
    *, small_buffers: bool = False, make_stream: Callable[[], IOStream] = IOStream
) -> AsyncIterator[tuple[IOStream, Peer, asyncio.Transport]]:
    """A stream under test, connected over 127.0.0.1 to a :class:`Peer`; bounded by TIMEOUT."""
    async with asyncio.timeout(TIMEOUT):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            local = socket.socket()
            if small_buffers:
                # Accepted sockets inherit the listener's buffer sizes.
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
                local.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
                local.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
            local.connect(listener.getsockname()[:2])
            remote, _ = listener.accept()
        local.setblocking(False)
        remote.setblocking(False)
        # The peer's small sends leave at once (Nagle could hold them back).
        remote.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = Peer(remote)
        loop = asyncio.get_running_loop()
        transport, stream = await loop.create_connection(make_stream, sock=local)
        try:
            yield stream, peer, transport
        finally:
            stream.abort()
            await stream.wait_closed()
            if peer.sock.fileno() != -1:
                peer.close()


async def round_trip(stream: IOStream, peer: Peer) -> None:
    """Once this returns, the stream has received everything the peer sent before."""
    await stream.write(b"!")
    assert await peer.recv_exactly(1) == b"!"


async def start(coro: Awaitable[T]) -> asyncio.Task[T]:
    """Run ``coro`` as a task; return once it has run up to its first wait."""
    started = asyncio.Event()

    async def run() -> T:
        started.set()
        return await coro

    task = asyncio.ensure_future(run())
    await started.wait()
    return task


ReadCall = Callable[[IOStream], Coroutine[Any, Any, bytes]]

# One read of each kind that two buffered bytes cannot satisfy.
UNSATISFIED_READS: list[Any] = [
    pytest.param(lambda s: s.read_bytes(10), id="read_bytes"),
    pytest.param(lambda s: s.read_bytes(10, partial=True), id="read_bytes_partial"),
    pytest.param(lambda s: s.read_until(b"\n"), id="read_until"),
    pytest.param(lambda s: s.read_until_regex(rb"\d"), id="read_until_regex"),
]


# --- delimiters and max_bytes -------------------------------------------------------------


async def test_read_until_returns_the_data_including_the_delimiter() -> None:
    async with connection() as (stream, peer, _):
        await peer.send(b"hello\r\nworld\r\n")
        assert await stream.read_until(b"\r\n") == b"hello\r\n"
        assert await stream.read_until(b"\r\n") == b"world\r\n"


async def test_read_until_finds_a_delimiter_split_across_sends() -> None:
    async with connection() as (stream, peer, _):
        reading = await start(stream.read_until(b"\r\n"))
        await peer.send(b"hello\r")
        await round_trip(stream, peer)
        await peer.send(b"\nrest")
        assert await reading == b"hello\r\n"


async def test_read_until_regex_returns_the_data_including_the_match() -> None:
    async with connection() as (stream, peer, _):
        await peer.send(b"abc123def")
        assert await stream.read_until_regex(rb"\d\d\d") == b"abc123"


async def test_read_until_regex_matching_the_empty_string_waits_for_a_byte() -> None:
    # Tornado searches only a non-empty buffer.
    async with connection() as (stream, peer, _):
        reading = await start(stream.read_until_regex(rb"a*"))
        await round_trip(stream, peer)
        assert not reading.done()
        await peer.send(b"b")
        assert await reading == b""
        assert await stream.read_bytes(1) == b"b"


MAX_BYTES_READS: list[Any] = [
    pytest.param(lambda s, m: s.read_until(b"\n", max_bytes=m), id="read_until"),
    pytest.param(lambda s, m: s.read_until_regex(rb"\n", max_bytes=m), id="read_until_regex"),
]


@pytest.mark.parametrize("read", MAX_BYTES_READS)
async def test_delimiter_ending_exactly_at_max_bytes_succeeds(
    read: Callable[[IOStream, int], Coroutine[Any, Any, bytes]],
) -> None:
    async with connection() as (stream, peer, _):
        await peer.send(b"abcd\nefgh")
        assert await read(stream, 5) == b"abcd\n"
        assert not stream.closed()


@pytest.mark.parametrize("read", MAX_BYTES_READS)
async def test_exactly_max_bytes_buffered_without_delimiter_waits(
    read: Callable[[IOStream, int], Coroutine[Any, Any, bytes]],
) -> None:
    async with connection() as (stream, peer, _):
        await peer.send(b"abcde")
        reading = await start(read(stream, 5))
        await round_trip(stream, peer)
        assert not reading.done()
        # Still waiting, not overrun: the end of stream is what ends it.
        peer.shutdown_write()
        with pytest.raises(StreamClosedError) as raised:
            await reading
        assert raised.value.real_error is None


OVERRUNS: list[Any] = [
    pytest.param(b"abcdef\n", id="delimiter-past-max_bytes"),
    pytest.param(b"abcdef", id="no-delimiter-past-max_bytes"),
]


@pytest.mark.parametrize("payload", OVERRUNS)
@pytest.mark.parametrize("read", MAX_BYTES_READS)
async def test_max_bytes_overrun_raises_stream_closed_with_unsatisfiable_read(
    read: Callable[[IOStream, int], Coroutine[Any, Any, bytes]], payload: bytes
) -> None:
    async with connection() as (stream, peer, _):
        await peer.send(payload)
        with pytest.raises(StreamClosedError) as raised:
            await read(stream, 5)
        assert isinstance(raised.value.real_error, UnsatisfiableReadError)
        assert not isinstance(raised.value, UnsatisfiableReadError)
        assert stream.closed()


async def test_after_max_bytes_overrun_write_raises_the_same() -> None:
    async with connection() as (stream, peer, _):
        await peer.send(b"abcdef")
        with pytest.raises(StreamClosedError):
            await stream.read_until(b"\n", max_bytes=5)
        with pytest.raises(StreamClosedError) as raised:
            stream.write(b"x")
        assert isinstance(raised.value.real_error, UnsatisfiableReadError)


async def test_after_max_bytes_overrun_read_until_close_returns_the_buffered_bytes() -> None:
    async with connection() as (stream, peer, _):
        await peer.send(b"abcdef")
        with pytest.raises(StreamClosedError):
            await stream.read_until(b"\n", max_bytes=5)
        assert await stream.read_until_close() == b"abcdef"


async def test_max_bytes_overrun_after_the_end_of_stream_keeps_the_first_reason() -> None:
    # As in Tornado: the stream closed at the end of stream, real_error stays None.
    async with connection() as (stream, peer, _):
        await peer.send(b"abcdef")
        peer.shutdown_write()
        with pytest.raises(StreamClosedError):
            await stream.read_bytes(100)
        with pytest.raises(StreamClosedError) as raised:
            await stream.read_until(b"\n", max_bytes=5)
        assert raised.value.real_error is None


# --- max_buffer_size ----------------------------------------------------------------------


async def test_read_waiting_past_max_buffer_size_fails_with_buffer_full() -> None:
    async with connection(make_stream=lambda: IOStream(max_buffer_size=1024)) as (
        stream,
        peer,
        _,
    ):
        reading = await start(stream.read_until(b"\n"))
        await peer.send(b"x" * 2000)
        with pytest.raises(StreamClosedError) as raised:
            await reading
        assert isinstance(raised.value.real_error, StreamBufferFullError)
        assert stream.closed()


async def test_read_until_close_past_max_buffer_size_fails_with_buffer_full() -> None:
    async with connection(make_stream=lambda: IOStream(max_buffer_size=1024)) as (
        stream,
        peer,
        _,
    ):
        reading = await start(stream.read_until_close())
        await peer.send(b"x" * 2000)
        with pytest.raises(StreamClosedError) as raised:
            await reading
        assert isinstance(raised.value.real_error, StreamBufferFullError)


async def test_read_completed_by_the_bytes_past_max_buffer_size_succeeds() -> None:
    async with connection(make_stream=lambda: IOStream(max_buffer_size=1024)) as (
        stream,
        peer,
        _,
    ):
        reading = await start(stream.read_until(b"\n"))
        await peer.send(b"ab\n" + b"x" * 2000)
        assert await reading == b"ab\n"
        assert not stream.closed()


# --- the end of stream ----------------------------------------------------------------------


async def test_read_at_the_end_of_stream_raises_with_no_real_error() -> None:
    async with connection() as (stream, peer, _):
        peer.shutdown_write()
        with pytest.raises(StreamClosedError) as raised:
            await stream.read_bytes(1)
        assert raised.value.real_error is None
        assert stream.closed()


@pytest.mark.parametrize("end", ["shutdown", "close"])
async def test_end_of_stream_keeps_the_bytes_a_read_could_not_use(end: str) -> None:
    async with connection() as (stream, peer, _):
        await peer.send(b"abc")
        peer.shutdown_write() if end == "shutdown" else peer.close()
        with pytest.raises(StreamClosedError) as raised:
            await stream.read_bytes(5)
        assert raised.value.real_error is None
        assert await stream.read_bytes(2) == b"ab"
        assert await stream.read_until_close() == b"c"


async def test_end_of_stream_seen_by_a_read_makes_write_raise_at_once() -> None:
    async with connection() as (stream, peer, _):
        await peer.send(b"abc")
        peer.shutdown_write()
        with pytest.raises(StreamClosedError):
            await stream.read_until(b"\n")
        assert stream.closed()
        with pytest.raises(StreamClosedError) as raised:
            stream.write(b"x")
        assert raised.value.real_error is None


async def test_read_until_close_returns_everything_up_to_the_end_of_stream() -> None:
    async with connection() as (stream, peer, _):
        await peer.send(b"abc")
        await peer.send(b"def")
        peer.shutdown_write()
        assert await stream.read_until_close() == b"abcdef"
        assert stream.closed()


# --- partial reads ---------------------------------------------------------------------------


async def test_read_bytes_partial_returns_what_is_buffered() -> None:
    async with connection() as (stream, peer, _):
        await peer.send(b"abc")
        await round_trip(stream, peer)
        assert await stream.read_bytes(10, partial=True) == b"abc"


async def test_read_bytes_partial_returns_at_most_num_bytes() -> None:
    async with connection() as (stream, peer, _):
        await peer.send(b"abc")
        await round_trip(stream, peer)
        assert await stream.read_bytes(2, partial=True) == b"ab"
        assert await stream.read_bytes(2, partial=True) == b"c"


async def test_read_bytes_partial_waits_for_the_first_byte() -> None:
    async with connection() as (stream, peer, _):
        reading = await start(stream.read_bytes(10, partial=True))
        await round_trip(stream, peer)
        assert not reading.done()
        await peer.send(b"a")
        assert await reading == b"a"


async def test_read_bytes_partial_with_nothing_buffered_and_the_peer_gone_raises() -> None:
    async with connection() as (stream, peer, _):
        peer.close()
        with pytest.raises(StreamClosedError) as raised:
            await stream.read_bytes(10, partial=True)
        assert raised.value.real_error is None


# --- our own close() ---------------------------------------------------------------------------


@pytest.mark.parametrize("read", UNSATISFIED_READS)
async def test_close_fails_a_pending_read(read: ReadCall) -> None:
    async with connection() as (stream, _, _):
        reading = await start(read(stream))
        stream.close()
        with pytest.raises(StreamClosedError) as raised:
            await reading
        assert raised.value.real_error is None


@pytest.mark.parametrize("buffered", [b"", b"abc"])
async def test_close_resolves_a_pending_read_until_close_with_the_buffered_bytes(
    buffered: bytes,
) -> None:
    async with connection() as (stream, peer, _):
        if buffered:
            await peer.send(buffered)
            await round_trip(stream, peer)
        reading = await start(stream.read_until_close())
        stream.close()
        assert await reading == buffered


@pytest.mark.parametrize("read", UNSATISFIED_READS)
async def test_read_after_close_with_nothing_buffered_raises(read: ReadCall) -> None:
    async with connection() as (stream, _, _):
        stream.close()
        with pytest.raises(StreamClosedError) as raised:
            await read(stream)
        assert raised.value.real_error is None


async def test_bytes_received_before_close_stay_readable() -> None:
    # Tornado reads the socket only when a read asks, so there the bytes may still be
    # in the kernel and are lost (test_differential: "unread-bytes-at-close").
    async with connection() as (stream, peer, _):
        await peer.send(b"abc")
        await round_trip(stream, peer)
        stream.close()
        assert await stream.read_bytes(2) == b"ab"
        assert await stream.read_until_close() == b"c"


async def test_read_until_close_after_close_returns_nothing() -> None:
    async with connection() as (stream, _, _):
        stream.close()
        assert await stream.read_until_close() == b""


async def test_write_after_close_raises() -> None:
    async with connection() as (stream, _, _):
        stream.close()
        with pytest.raises(StreamClosedError) as raised:
            stream.write(b"x")
        assert raised.value.real_error is None


async def test_close_twice_does_nothing_more() -> None:
    async with connection() as (stream, peer, _):
        stream.close()
        stream.close()
        assert stream.closed()
        assert await peer.recv_all() == b""


async def test_close_sends_what_was_written_then_the_end_of_stream() -> None:
    async with connection() as (stream, peer, _):
        stream.write(b"last words")
        stream.close()
        assert await peer.recv_all() == b"last words"


# --- the peer goes away ----------------------------------------------------------------------


async def reset_by_peer_after(stream: IOStream, peer: Peer, data: bytes) -> None:
    """The peer sends ``data``, then closes with our bytes unread: a reset (RST)."""
    await peer.send(data)
    await stream.write(b"never read")
    await peer.wait_readable()
    peer.close()


async def test_reset_with_unread_data_still_delivers_every_byte_sent_before() -> None:
    async with connection() as (stream, peer, _):
        await reset_by_peer_after(stream, peer, b"hello")
        assert await stream.read_bytes(5) == b"hello"
        with pytest.raises(StreamClosedError) as raised:
            await stream.read_bytes(1)
        assert isinstance(raised.value.real_error, ConnectionResetError)


async def test_read_until_close_treats_a_reset_as_a_close() -> None:
    async with connection() as (stream, peer, _):
        await reset_by_peer_after(stream, peer, b"hello")
        assert await stream.read_until_close() == b"hello"
        assert isinstance(stream.error, ConnectionResetError)


async def test_write_after_the_peer_closed_eventually_fails() -> None:
    # The first bytes reach the kernel, the peer answers them with a reset, and the
    # write still in progress fails with it. The peer's byte stays unread, so the
    # stream is not idle and does not close by itself at the end of stream.
    async with connection(small_buffers=True) as (stream, peer, _):
        await peer.send(b"x")
        await round_trip(stream, peer)
        peer.close()
        with pytest.raises(StreamClosedError) as raised:
            await stream.write(b"y" * (4 << 20))
        assert isinstance(raised.value.real_error, (BrokenPipeError, ConnectionResetError))
        with pytest.raises(StreamClosedError):
            stream.write(b"z")
        assert await stream.read_bytes(1) == b"x"


# --- close callbacks ----------------------------------------------------------------------------


async def test_close_callback_runs_on_our_close() -> None:
    async with connection() as (stream, _, _):
        closed = asyncio.Event()
        stream.set_close_callback(closed.set)
        stream.close()
        await closed.wait()


@pytest.mark.parametrize(("end", "real_error"), [("close", None), ("abort", ConnectionResetError)])
async def test_close_callback_runs_when_the_peer_leaves_an_idle_stream(
    end: str, real_error: type[BaseException] | None
) -> None:
    async with connection() as (stream, peer, _):
        closed = asyncio.Event()
        stream.set_close_callback(closed.set)
        peer.close() if end == "close" else peer.abort()
        await closed.wait()
        assert stream.closed()
        assert stream.error is None if real_error is None else isinstance(stream.error, real_error)


async def test_close_callback_set_on_a_closed_stream_runs() -> None:
    async with connection() as (stream, _, _):
        stream.close()
        closed = asyncio.Event()
        stream.set_close_callback(closed.set)
        await closed.wait()


# --- both ends ours: TCPServer and TCPClient -----------------------------------------------------


class HandOverServer(TCPServer):
    """Hands every accepted stream to the test and keeps it open until ``done``."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: asyncio.Queue[IOStream] = asyncio.Queue()
        self.done = asyncio.Event()

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        await self.streams.put(stream)
        await self.done.wait()


def port_of(server: TCPServer) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


@asynccontextmanager
async def stream_pair(
    server_ssl: ssl.SSLContext | None = None, client_ssl: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[IOStream, IOStream]]:
    """(server side, client side) of one connection (over TLS with the contexts given,
    for the name ``localhost``); bounded by TIMEOUT."""
    async with asyncio.timeout(TIMEOUT):
        server = HandOverServer()
        await server.listen(0, "127.0.0.1", ssl=server_ssl)
        client = await TCPClient().connect(
            "127.0.0.1", port_of(server), ssl=client_ssl, server_hostname="localhost"
        )
        try:
            yield await server.streams.get(), client
        finally:
            server.done.set()
            client.close()
            await server.close()


@pytest.mark.parametrize("closer", ["server", "client"])
async def test_whoever_closes_both_sides_see_stream_closed(closer: str) -> None:
    async with stream_pair() as (server_side, client_side):
        closing_side, other = (
            (server_side, client_side) if closer == "server" else (client_side, server_side)
        )
        closing_side.close()
        with pytest.raises(StreamClosedError):
            await closing_side.read_bytes(1)
        with pytest.raises(StreamClosedError):
            closing_side.write(b"x")
        with pytest.raises(StreamClosedError) as raised:
            await other.read_bytes(1)
        assert raised.value.real_error is None
        with pytest.raises(StreamClosedError):
            other.write(b"x")


class EchoServer(TCPServer):
    """Sends back what it reads, in whatever batches it reads; records how it ended."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: asyncio.Future[StreamClosedError] | None = None

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        self.ended = asyncio.get_running_loop().create_future()
        try:
            while True:
                await stream.write(await stream.read_bytes(65536, partial=True))
        except StreamClosedError as error:
            self.ended.set_result(error)
            raise


async def test_half_close_peer_still_gets_every_reply() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    async with asyncio.timeout(TIMEOUT):
        server = EchoServer()
        await server.listen(0, "127.0.0.1")
        with closing(socket.create_connection(("127.0.0.1", port_of(server)))) as sock:
            sock.setblocking(False)
            peer = Peer(sock)

            async def send_then_shut() -> None:
                await peer.send(payload)
                peer.shutdown_write()

            sending = asyncio.ensure_future(send_then_shut())
            assert await peer.recv_all() == payload
            await sending
        assert server.ended is not None
        ended = await server.ended
        assert ended.real_error is None
        await server.close()


# --- backpressure --------------------------------------------------------------------------------


async def test_write_futures_stop_resolving_while_the_peer_does_not_read() -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    async with connection(small_buffers=True) as (stream, peer, transport):
        written = 0
        while (future := stream.write(chunk)).done():
            written += len(chunk)
            assert written < 64 << 20, "the stream never pushed back"
        written += len(chunk)
        # What the stream holds beyond the kernel's buffers is bounded.
        assert transport.get_write_buffer_size() <= TRANSPORT_HIGH_WATER + len(chunk)
        assert stream.writing()
        assert not future.done()
        received = asyncio.ensure_future(peer.recv_exactly(written))
        await future
        assert await received == chunk * (written // len(chunk))


class PauseObserved(IOStream):
    """An IOStream that tells the test when it stops reading from the socket."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = asyncio.Event()

    def _pause_reading(self) -> None:
        super()._pause_reading()
        self.paused.set()


async def test_reading_pauses_while_nobody_reads_and_nothing_is_lost() -> None:
    payload = bytes(range(256)) * (32 << 10)  # 8 MiB, far beyond every buffer
    async with connection(small_buffers=True, make_stream=PauseObserved) as (
        stream,
        peer,
        transport,
    ):
        assert isinstance(stream, PauseObserved)
        sending = asyncio.ensure_future(peer.send(payload))
        await stream.paused.wait()
        assert not transport.is_reading()
        # Bounded: the high-water mark plus at most one receive beyond it.
        assert stream.buffered_size <= DEFAULT_READ_HIGH_WATER + stream.read_chunk_size
        assert not sending.done()
        assert await stream.read_bytes(len(payload)) == payload
        await sending


# --- TCPServer -----------------------------------------------------------------------------------


async def test_server_listens_on_port_zero_and_serves() -> None:
    async with asyncio.timeout(TIMEOUT):
        server = EchoServer()
        await server.listen(0, "127.0.0.1")
        assert port_of(server) != 0
        client = await TCPClient().connect("127.0.0.1", port_of(server))
        await client.write(b"ping")
        assert await client.read_bytes(4) == b"ping"
        client.close()
        await server.close()


async def test_server_stop_refuses_new_connections_and_keeps_open_ones() -> None:
    async with asyncio.timeout(TIMEOUT):
        server = EchoServer()
        await server.listen(0, "127.0.0.1")
        port = port_of(server)
        client = await TCPClient().connect("127.0.0.1", port)
        # Served already: a connection still in the listener's queue would go with it.
        await client.write(b"ping")
        assert await client.read_bytes(4) == b"ping"
        server.stop()
        with pytest.raises(StreamClosedError) as raised:
            await TCPClient().connect("127.0.0.1", port)
        assert isinstance(raised.value.real_error, ConnectionRefusedError)
        await client.write(b"still here")
        assert await client.read_bytes(10) == b"still here"
        client.close()
        await server.close()


async def test_server_close_closes_open_connections() -> None:
    async with asyncio.timeout(TIMEOUT):
        server = EchoServer()
        await server.listen(0, "127.0.0.1")
        client = await TCPClient().connect("127.0.0.1", port_of(server))
        await client.write(b"hi")
        assert await client.read_bytes(2) == b"hi"
        await server.close()
        assert server.connections == 0
        assert await client.read_until_close() == b""


class FloodServer(TCPServer):
    """Writes far more than a client that does not read can take."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = asyncio.Event()

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        written = stream.write(b"z" * (16 << 20))
        self.writing.set()
        await written


async def test_server_close_aborts_connections_still_open_after_the_timeout() -> None:
    async with asyncio.timeout(TIMEOUT):
        server = FloodServer()
        await server.listen(0, "127.0.0.1")
        with closing(socket.socket()) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port_of(server)))
            await server.writing.wait()
            await server.close(timeout=0.1)
            assert server.connections == 0
            # Not the end of stream: the queued bytes were dropped with a reset.
            with pytest.raises(ConnectionResetError):
                await Peer(sock).recv_all()


class FailingServer(TCPServer):
    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        raise ValueError("handler bug")


async def test_handler_exception_is_logged_once_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = FailingServer()
        await server.listen(0, "127.0.0.1")
        client = await TCPClient().connect("127.0.0.1", port_of(server))
        assert await client.read_until_close() == b""
        await server.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], ValueError)


class ReadingServer(TCPServer):
    """Waits for a byte that never comes; says when it started and when it ended."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.ended = asyncio.Event()

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        self.reading.set()
        try:
            await stream.read_bytes(1)
        finally:
            self.ended.set()


async def test_stream_closed_in_a_handler_is_not_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = ReadingServer()
        await server.listen(0, "127.0.0.1")
        client = await TCPClient().connect("127.0.0.1", port_of(server))
        await server.reading.wait()
        client.close()
        await server.ended.wait()
        await server.close()
    assert server.connections_served == 1
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --- TCPClient -----------------------------------------------------------------------------------


async def test_connect_refused_raises_stream_closed_with_connection_refused() -> None:
    # A bound socket that does not listen: the port is ours, and nobody accepts on it.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(StreamClosedError) as raised:
                await TCPClient().connect("127.0.0.1", unused.getsockname()[1])
    assert isinstance(raised.value.real_error, ConnectionRefusedError)


@contextmanager
def port_that_never_answers() -> Iterator[int]:
    """A listener whose accept queue is full: Linux drops further connection requests,
    so the handshake never completes."""
    with socket.socket() as listener, socket.socket() as queued:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        queued.settimeout(TIMEOUT)
        queued.connect(listener.getsockname())
        yield listener.getsockname()[1]


async def test_connect_timeout_raises_stream_closed_with_timeout() -> None:
    with port_that_never_answers() as port:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(StreamClosedError) as raised:
                await TCPClient().connect("127.0.0.1", port, timeout=0.1)
    assert isinstance(raised.value.real_error, TimeoutError)


def test_listen_port_0_gives_every_address_the_same_port() -> None:
    """A name with two addresses, port 0: both listen on one port, as Tornado's do.

    The resolver is patched to answer 127.0.0.1 and ::1 for a made-up name, so the test
    does not depend on this machine's /etc/hosts; it runs on the stdlib loop, whose
    getaddrinfo can be replaced.
    """

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        real_getaddrinfo = loop.getaddrinfo

        async def getaddrinfo(host: Any, port: Any, **kwargs: Any) -> Any:
            if host == "dual-stack.test":
                return [
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0)),
                    (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
                ]
            return await real_getaddrinfo(host, port, **kwargs)

        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
        server = _EchoOnce()
        await server.listen(0, "dual-stack.test")
        try:
            names = [sock.getsockname() for sock in server.sockets]
            assert {name[0] for name in names} == {"127.0.0.1", "::1"}
            assert len({name[1] for name in names}) == 1, names
        finally:
            await server.close()

    asyncio.run(scenario())


class _EchoOnce(TCPServer):
    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        await stream.write(await stream.read_bytes(1))


class _FakeTransport(asyncio.Transport):
    """Just enough transport to feed an IOStream by hand, without a socket."""

    paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: Any) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _receive(stream: IOStream, data: bytes) -> None:
    """What a transport does for one receive: fill the stream's buffer, report the size."""
    view = stream.get_buffer(len(data))
    view[: len(data)] = data
    stream.buffer_updated(len(data))


def test_reading_pauses_when_receives_outrun_a_woken_reader() -> None:
    """Receives that come before a woken reader runs count against the high-water mark.

    uvloop reads a socket up to 32 times per readiness event, and a TLS transport hands
    up every record it has: one loop turn can bring megabytes while the reader's task
    waits to run. Without the pause they all pile up, and the seed's loop then works
    through them in one task step (seconds under TLS, blocking the loop).
    """

    async def scenario() -> None:
        stream = IOStream()
        transport = _FakeTransport()
        stream.connection_made(transport)
        read = await start(stream.read_bytes(20, partial=True))
        for _ in range(2 * DEFAULT_READ_HIGH_WATER // len(CHUNK_OF_64K)):
            _receive(stream, CHUNK_OF_64K)
        assert transport.paused
        assert await read == CHUNK_OF_64K[:20]
        # The reader drains; below half the mark reading resumes.
        while stream.buffered_size >= DEFAULT_READ_HIGH_WATER // 2:
            await stream.read_bytes(64 * 1024)
        assert not transport.paused

    asyncio.run(scenario())


CHUNK_OF_64K = bytes(range(256)) * 256


def test_partial_reads_never_take_bytes_of_two_receives() -> None:
    """Bytes received while unread bytes wait (no read pending) start a batch of their own.

    Tornado reads the socket only when its buffer is used up, so the seed's
    ``read_bytes(20, partial=True)`` never returns the end of one receive joined to the
    start of the next; chunks restart at every receive.
    """

    async def scenario() -> None:
        stream = IOStream()
        stream.connection_made(_FakeTransport())
        _receive(stream, b"a" * 25)
        assert await stream.read_bytes(20, partial=True) == b"a" * 20
        _receive(stream, b"b" * 30)
        assert await stream.read_bytes(20, partial=True) == b"a" * 5
        assert await stream.read_bytes(20, partial=True) == b"b" * 20
        assert await stream.read_bytes(20, partial=True) == b"b" * 10
        # Reads that are not partial take what they need across receives.
        _receive(stream, b"c" * 5)
        _receive(stream, b"d" * 5)
        assert await stream.read_bytes(8) == b"c" * 5 + b"d" * 3
        assert await stream.read_bytes(20, partial=True) == b"d" * 2

    asyncio.run(scenario())


# --- TLS: tls.TLSTransport -------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts from a throwaway CA, for the name ``localhost``."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


class Received(asyncio.BufferedProtocol):
    """Records what a TLSTransport hands up through a 1 KiB buffer; can pause at once."""

    def __init__(self, *, pause_after_first: bool = False) -> None:
        self.buffer = bytearray(1024)
        self.data = bytearray()
        self.pause_after_first = pause_after_first
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.changed.set()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]
        if self.pause_after_first and self.transport is not None:
            self.pause_after_first = False
            self.transport.pause_reading()
        self.changed.set()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self.changed.clear()
            await self.changed.wait()


@asynccontextmanager
async def tls_pair(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], server: Received, client: Received
) -> AsyncIterator[tuple[TLSTransport, TLSTransport]]:
    """A server and a client TLSTransport over a Unix socket pair, handshake done."""
    server_context, client_context = contexts
    loop = asyncio.get_running_loop()
    server_sock, client_sock = socket.socketpair()
    async with asyncio.timeout(TIMEOUT):
        _, server_tls = await loop.connect_accepted_socket(
            lambda: TLSTransport(server, server_context, server_side=True), server_sock
        )
        _, client_tls = await loop.create_connection(
            lambda: TLSTransport(
                client, client_context, server_side=False, server_hostname="localhost"
            ),
            sock=client_sock,
        )
        assert isinstance(server_tls, TLSTransport)
        assert isinstance(client_tls, TLSTransport)
        await client_tls.handshake()
        await server.wait_for(lambda: server.transport is not None)
        try:
            yield server_tls, client_tls
        finally:
            server_tls.abort()
            client_tls.abort()


async def test_tls_bytes_decrypted_while_paused_arrive_on_resume_with_nothing_new(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """One 3,000-byte record arrives whole; the protocol takes 1 KiB and pauses. On
    resume the other 1,976 bytes must come up although nothing more arrives from the
    socket (a layer that only reads when the socket has news would stall here)."""
    server, client = Received(pause_after_first=True), Received()
    message = bytes(range(256)) * 11 + b"!" * 184
    async with tls_pair(tls_contexts, server, client) as (server_tls, client_tls):
        client_tls.write(message)
        async with asyncio.timeout(TIMEOUT):
            await server.wait_for(lambda: len(server.data) == 1024)
            assert not server_tls.is_reading()
            server_tls.resume_reading()
            await server.wait_for(lambda: len(server.data) == len(message))
    assert server.data == message


async def test_tls_peer_end_of_stream_leaves_the_connection_writable(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """After the peer's close_notify the protocol may still write (asyncio's TLS
    transport closes there); our close then ends the connection with close_notify."""
    ended = asyncio.Event()

    class Server(Received):
        def eof_received(self) -> bool:
            ended.set()
            return True

    server, client = Server(), Received()
    async with tls_pair(tls_contexts, server, client) as (server_tls, client_tls):
        client_tls.write(b"last words")
        client_tls.write_eof()  # close_notify, then the FIN; the client reads on
        async with asyncio.timeout(TIMEOUT):
            await ended.wait()
            assert not server_tls.is_closing()
            server_tls.write(b"a reply after the end")
            server_tls.close()
            await client.wait_for(lambda: len(client.data) == 21)
    assert server.data == b"last words"
    assert client.data == b"a reply after the end"


async def test_tls_connect_to_an_untrusted_server_raises_stream_closed(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """A certificate the client does not trust fails connect() with the ssl error as
    ``real_error``, as a refused connection does."""

    class Server(TCPServer):
        async def handle_stream(self, stream: IOStream, address: Any) -> None:
            await stream.read_until_close()

    server_context, _ = tls_contexts
    server = Server()
    await server.listen(0, "127.0.0.1", ssl=server_context)
    try:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(StreamClosedError) as raised:
                await TCPClient().connect(
                    "127.0.0.1",
                    port_of(server),
                    ssl=ssl.create_default_context(),
                    server_hostname="localhost",
                )
    finally:
        await server.close()
    assert isinstance(raised.value.real_error, ssl.SSLCertVerificationError)


async def test_tls_stream_reports_the_peer_certificate(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """get_extra_info answers as on asyncio's TLS transport (peercert, cipher...)."""
    server_context, client_context = tls_contexts
    async with stream_pair(server_context, client_context) as (_, client):
        assert client.get_extra_info("peercert")["subjectAltName"] == (("DNS", "localhost"),)
        assert client.get_extra_info("cipher") is not None
        assert client.get_extra_info("sslcontext") is client_context
        assert client.get_extra_info("peername")[0] == "127.0.0.1"


async def test_tls_transport_lets_go_of_its_protocol_once_the_connection_is_lost(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """No reference cycle outlives a connection: with the cyclic collector off, the
    transports and protocols are freed as soon as nothing else holds them (the soak
    under TLS grew by 47 MiB while closed connections waited for the collector)."""

    async def one_connection() -> list[weakref.ref[Any]]:
        server, client = Received(), Received()
        async with tls_pair(tls_contexts, server, client) as (server_tls, client_tls):
            client_tls.write(b"hello")
            await server.wait_for(lambda: server.data == b"hello")
        async with asyncio.timeout(TIMEOUT):
            await server.wait_for(lambda: server.lost)
            await client.wait_for(lambda: client.lost)
        return [weakref.ref(thing) for thing in (server, client, server_tls, client_tls)]

    gc.disable()
    try:
        references = await one_connection()
        assert [reference() for reference in references] == [None] * 4
    finally:
        gc.enable()


# --- Tornado's read futures, read_into, IOStream(socket) -----------------------------------


async def test_a_read_takes_the_bytes_that_arrive_after_the_call() -> None:
    # Tornado: the read starts when called, awaited or not.
    async with connection() as (stream, peer, _):
        reading = stream.read_bytes(5)
        assert stream.reading()
        await peer.send(b"hello")
        assert await reading == b"hello"
        assert not stream.reading()


async def test_a_read_never_awaited_still_closes_the_stream_on_max_bytes_overrun() -> None:
    async with connection() as (stream, peer, _):
        closed = asyncio.Event()
        stream.set_close_callback(closed.set)
        # Never awaited, as in Tornado's test_read_until_max_bytes_ignores_extra.
        stream.read_until(b"\n", max_bytes=5)
        await peer.send(b"123456")
        await closed.wait()
        assert isinstance(stream.error, UnsatisfiableReadError)


async def test_a_read_on_a_closed_stream_raises_at_the_call() -> None:
    async with connection() as (stream, _, _):
        stream.close()
        with pytest.raises(StreamClosedError):
            stream.read_bytes(1)  # raised by the call itself, nothing awaited


async def test_a_cancelled_read_is_forgotten_and_its_bytes_stay() -> None:
    # Tornado keeps a cancelled read pending: the bytes that come next complete it and
    # are lost, and the next read raises "Already reading". Here it is forgotten.
    async with connection() as (stream, peer, _):
        reading = stream.read_bytes(5)
        assert isinstance(reading, asyncio.Future)
        reading.cancel()
        assert not stream.reading()
        await peer.send(b"hello")
        assert await stream.read_bytes(5) == b"hello"


async def test_read_bytes_served_from_the_buffer_takes_the_bytes_at_the_call() -> None:
    """The deliberate difference (docs/tornado-semantics.md, Reads): the bytes leave the
    buffer at the call, as in Tornado, but what returns is a coroutine holding them, not
    a resolved future (a future costs the iostream server 9 % more per round trip)."""
    async with connection() as (stream, peer, _):
        await peer.send(b"abcdef")
        await round_trip(stream, peer)
        first = stream.read_bytes(4)
        assert stream.buffered_size == 2
        assert not stream.reading()
        assert not isinstance(first, asyncio.Future)
        waiting = stream.read_bytes(5)
        assert isinstance(waiting, asyncio.Future)
        assert await first == b"abcd"
        await peer.send(b"ghi")
        assert await waiting == b"efghi"


async def test_read_into_fills_the_buffer_from_buffered_then_arriving_bytes() -> None:
    async with connection() as (stream, peer, _):
        await peer.send(b"ab")
        await round_trip(stream, peer)
        target = bytearray(5)
        reading = stream.read_into(target)
        assert target[:2] == b"ab"  # the buffered bytes move in at the call
        await peer.send(b"cdefg")
        assert await reading == 5
        assert target == b"abcde"
        target += b"!"  # no view of it is left: it can grow again
        assert await stream.read_bytes(2) == b"fg"


async def test_read_into_partial_returns_as_soon_as_bytes_arrive() -> None:
    async with connection() as (stream, peer, _):
        target = bytearray(10)
        reading = stream.read_into(target, partial=True)
        await peer.send(b"hey")
        assert await reading == 3
        assert target[:3] == b"hey"


async def test_read_into_that_fails_leaves_the_buffer_resizable() -> None:
    async with connection() as (stream, peer, _):
        target = bytearray(10)
        reading = stream.read_into(target)
        await peer.send(b"abc")
        await round_trip(stream, peer)
        peer.shutdown_write()
        with pytest.raises(StreamClosedError):
            await reading
        assert target[:3] == b"abc"
        del target[:]


async def test_read_until_close_past_max_buffer_size_logs_the_error_on_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Tornado logs both when bytes arriving for a waiting read overflow the buffer.
    async with connection(make_stream=lambda: IOStream(max_buffer_size=1024)) as (
        stream,
        peer,
        _,
    ):
        reading = stream.read_until_close()
        await peer.send(b"x" * 2000)
        with pytest.raises(StreamClosedError):
            await reading
    messages = [record.getMessage() for record in caplog.records]
    assert "Reached maximum read buffer size" in messages
    assert "error on read: Reached maximum read buffer size" in messages


async def test_stream_made_from_a_socket_takes_over_a_connected_one() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    with client:
        stream = IOStream(accepted)
        assert stream.socket is accepted
        reading = stream.read_bytes(5)  # before the transport is there
        client.sendall(b"hello")
        async with asyncio.timeout(TIMEOUT):
            assert await reading == b"hello"
        stream.close()


async def test_connect_resolves_before_the_writes_made_while_connecting() -> None:
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        stream = IOStream(socket.socket())
        connected = stream.connect(listener.getsockname())
        written = stream.write(b"early")
        assert not connected.done()
        order: list[str] = []
        write_seen = asyncio.Event()

        def on_written(_: object) -> None:
            order.append("write")
            write_seen.set()

        connected.add_done_callback(lambda _: order.append("connect"))
        written.add_done_callback(on_written)
        async with asyncio.timeout(TIMEOUT):
            remote, _ = await loop.sock_accept(listener)
            peer = Peer(remote)
            assert await connected is stream
            await write_seen.wait()
            assert await peer.recv_exactly(5) == b"early"
        assert order == ["connect", "write"]
        stream.close()
        peer.close()


async def test_connect_refused_closes_the_stream_and_keeps_the_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        stream = IOStream(socket.socket())
        closed = asyncio.Event()
        stream.set_close_callback(closed.set)
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(StreamClosedError):
                await stream.connect(unused.getsockname())
            await closed.wait()
    assert isinstance(stream.error, ConnectionRefusedError)


class HandingOnServer(TCPServer):
    """handle_stream as a plain function (Tornado allows it): the stream goes on a queue."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: asyncio.Queue[IOStream] = asyncio.Queue()

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        self.streams.put_nowait(stream)


async def test_a_plain_handle_stream_leaves_the_stream_open_for_whoever_has_it() -> None:
    async with asyncio.timeout(TIMEOUT):
        server = HandingOnServer()
        await server.listen(0, "127.0.0.1")
        try:
            client = await TCPClient().connect("127.0.0.1", port_of(server))
            stream = await server.streams.get()
            await client.write(b"hello")
            assert await stream.read_bytes(5) == b"hello"
            await stream.write(b"bye")
            stream.close()
            assert await client.read_until_close() == b"bye"
        finally:
            await server.close()
        assert server.connections_served == 1


class AddressServer(TCPServer):
    def __init__(self) -> None:
        super().__init__()
        self.addresses: asyncio.Queue[Any] = asyncio.Queue()

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        self.addresses.put_nowait(address)
        await stream.read_until_close()


async def test_connect_binds_the_source_address_and_port_given() -> None:
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        source_port = reserved.getsockname()[1]
    async with asyncio.timeout(TIMEOUT):
        server = AddressServer()
        await server.listen(0, "127.0.0.1")
        try:
            stream = await TCPClient().connect(
                "localhost",
                port_of(server),
                af=socket.AF_INET,
                source_ip="127.0.0.1",
                source_port=source_port,
            )
            assert await server.addresses.get() == ("127.0.0.1", source_port)
            stream.close()
        finally:
            await server.close()


async def test_connect_from_a_source_address_in_use_fails() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(StreamClosedError) as raised:
                await TCPClient().connect(
                    "127.0.0.1", port, source_ip="127.0.0.1", source_port=port
                )
    assert isinstance(raised.value.real_error, OSError)
    assert raised.value.real_error.errno == errno.EADDRINUSE


async def test_connect_timeout_is_a_timeout_error_with_tornados_message() -> None:
    with port_that_never_answers() as port:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(TimeoutError) as raised:
                await TCPClient().connect("127.0.0.1", port, timeout=0.1)
    assert str(raised.value) == f"Timeout while connecting to 127.0.0.1:{port}"


@pytest.mark.parametrize("abandon", ["cancel", "timeout"])
async def test_an_abandoned_tls_connect_closes_its_connection_at_once(
    abandon: str, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """A server that accepts and never answers the TLS handshake: the client gives up
    (cancelled, or its timeout expires), and its connection must close then, not when
    the handshake's own 60 s limit runs out (Tornado's fix for the same leak)."""
    _, client_context = tls_contexts
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        connecting = asyncio.ensure_future(
            TCPClient().connect(
                "127.0.0.1",
                port,
                ssl_options=client_context,
                server_hostname="localhost",
                timeout=0.2 if abandon == "timeout" else None,
            )
        )
        async with asyncio.timeout(TIMEOUT):
            remote, _ = await loop.sock_accept(listener)
        with remote:
            async with asyncio.timeout(TIMEOUT):
                assert await loop.sock_recv(remote, 1)  # the ClientHello: mid-handshake
            if abandon == "cancel":
                connecting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await connecting
            else:
                with pytest.raises(TimeoutError) as raised:
                    await connecting
                assert str(raised.value) == f"Timeout during TLS handshake with 127.0.0.1:{port}"
            async with asyncio.timeout(1.0):
                while await loop.sock_recv(remote, 65536):
                    pass  # the rest of the ClientHello, then the end of stream


class FixedResolver:
    """Tornado's resolver interface, answering with fixed addresses (or never)."""

    def __init__(self, addresses: list[tuple[int, Any]] | None) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        if self.addresses is None:
            await asyncio.Event().wait()  # never answers
        assert self.addresses is not None
        return self.addresses


async def test_connect_through_a_resolver_takes_the_first_address_that_answers() -> None:
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        async with asyncio.timeout(TIMEOUT):
            server = AddressServer()
            await server.listen(0, "127.0.0.1")
            resolver = FixedResolver(
                [
                    (socket.AF_INET, refusing.getsockname()),
                    (socket.AF_INET, ("127.0.0.1", port_of(server))),
                ]
            )
            try:
                stream = await TCPClient(resolver).connect("example.invalid", 1)
                assert (await server.addresses.get())[0] == "127.0.0.1"
                stream.close()
            finally:
                await server.close()


async def test_connect_timeout_while_resolving_says_so() -> None:
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(TimeoutError) as raised:
            await TCPClient(FixedResolver(None)).connect("example.invalid", 1, timeout=0.05)
    assert str(raised.value) == "Timeout while resolving example.invalid"


# --- SSLIOStream, start_tls, wait_for_handshake -------------------------------------------


async def test_ssl_iostream_from_a_wrapped_socket_and_a_connecting_one_talk() -> None:
    """Tornado's way: the server wraps the accepted socket (no handshake yet), the
    client's SSLIOStream connects and does its handshake."""

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("localhost").configure_cert(server_context)
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        client = SSLIOStream(
            socket.socket(), ssl_options={"cert_reqs": ssl.CERT_NONE}
        )  # Tornado's dictionary of ssl options
        handshake = client.connect(listener.getsockname())
        async with asyncio.timeout(TIMEOUT):
            accepted, _ = await loop.sock_accept(listener)
            wrapped = server_context.wrap_socket(
                accepted, server_side=True, do_handshake_on_connect=False
            )
            server = SSLIOStream(wrapped)
            reading = server.read_bytes(5)  # before the handshake is done
            assert await handshake is client
            assert client.socket.cipher() is not None
            await client.write(b"hello")
            assert await reading == b"hello"
            assert await server.wait_for_handshake() is server
        client.close()
        server.close()


async def test_a_failed_handshake_raises_the_ssl_error_and_logs_it(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext], caplog: pytest.LogCaptureFixture
) -> None:
    server_context, _ = tls_contexts
    server = HandingOnServer()
    await server.listen(0, "127.0.0.1", ssl=server_context)
    try:
        client = SSLIOStream(socket.socket(), ssl_options=ssl.create_default_context())
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ssl.SSLCertVerificationError):
                await client.connect(("127.0.0.1", port_of(server)), "localhost")
    finally:
        await server.close()
    assert client.closed()
    assert any(record.getMessage().startswith("SSL Error on") for record in caplog.records)


async def test_tcpserver_hands_over_tls_streams_as_ssl_iostreams_handshake_done(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls_contexts
    async with stream_pair(server_context, client_context) as (server_side, _):
        assert isinstance(server_side, SSLIOStream)
        assert server_side.socket.cipher() is not None
        assert await server_side.wait_for_handshake() is server_side


async def test_start_tls_turns_a_plain_connection_into_a_tls_one(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls_contexts
    async with stream_pair() as (server_side, client_side):
        await client_side.write(b"STARTTLS\n")
        assert await server_side.read_until(b"\n") == b"STARTTLS\n"
        server_tls = server_side.start_tls(True, server_context)
        client_tls = client_side.start_tls(False, client_context, "localhost")
        assert server_side.closed()
        new_server, new_client = await server_tls, await client_tls
        await new_client.write(b"secret")
        assert await new_server.read_bytes(6) == b"secret"
        assert new_client.socket.version() is not None
        new_client.close()
        assert await new_server.read_until_close() == b""


async def test_start_tls_needs_an_idle_stream() -> None:
    async with stream_pair() as (server_side, _):
        reading = server_side.read_bytes(1)
        with pytest.raises(ValueError, match="not idle"):
            server_side.start_tls(True)
        assert isinstance(reading, asyncio.Future)
        reading.cancel()


async def test_start_tls_cancelled_closes_the_connection(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    _, client_context = tls_contexts
    async with stream_pair() as (server_side, client_side):
        handshake = client_side.start_tls(False, client_context, "localhost")
        handshake.cancel()
        # The server never answers; the client's cancel must end the connection.
        assert await server_side.read_until_close() != b""


def test_ssl_options_dictionaries_make_contexts() -> None:
    context = ssl_context_from_options({"cert_reqs": ssl.CERT_NONE}, server_side=False)
    assert context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname
    given = ssl.create_default_context()
    assert ssl_context_from_options(given, server_side=False) is given
    with pytest.raises(ValueError, match="unknown ssl_options: keyfiel"):
        ssl_context_from_options({"keyfiel": "x"}, server_side=True)
