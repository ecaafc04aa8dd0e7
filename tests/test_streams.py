"""The streams implementation: asyncio's StreamReader/StreamWriter with Tornado's semantics.

Over real sockets on 127.0.0.1: the default server runs on ``asyncio.start_server``;
closed-stream errors are ``StreamClosedError`` on both sides whoever closes; a reply
received before the server's reset is still handed out (python/cpython#75044); one loop
turn's writes leave in one ``send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from support import PYTHON, ROOT, TIMEOUT

from echo20 import server as echo_server
from echo20.coalescing import WriteBuffer
from echo20.errors import StreamClosedError
from echo20.protocol import build_reply
from echo20.servers import IMPLEMENTATIONS
from echo20.streams import (
    CoalescingWriter,
    StreamReader,
    open_connection,
    read_partial,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


@contextlib.asynccontextmanager
async def echo_server_on(impl: str = "streams") -> AsyncIterator[tuple[str, int]]:
    server = IMPLEMENTATIONS[impl]()
    await server.listen(0, "127.0.0.1")
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        await server.close(timeout=TIMEOUT)


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, int]]:
    """A scripted peer on asyncio's own streams."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()


async def wait_for_reset(reader: StreamReader) -> None:
    """Wait, receiving, until the connection's reset has been stored in ``reader``."""
    with contextlib.suppress(ConnectionResetError):
        while True:
            await asyncio.wait_for(reader._wait_for_data("test"), TIMEOUT)
    assert isinstance(reader.exception(), ConnectionResetError)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets a reset (RST), not an end of stream."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_default_server_listens_through_asyncio_start_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[Any, ...]] = []
    real_start_server = asyncio.start_server

    async def spy(*args: Any, **kwargs: Any) -> asyncio.Server:
        calls.append(args)
        return await real_start_server(*args, **kwargs)

    monkeypatch.setattr(asyncio, "start_server", spy)
    assert echo_server.build_parser().parse_args([]).impl == "streams"
    async with echo_server_on("streams") as address:
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(10), TIMEOUT) == b"helloolleh"
        writer.close()
    assert len(calls) == 1


async def test_streams_server_answers_a_pipelined_burst_in_one_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 bytes are ten chunks: ten writes in one loop turn, one transport write."""
    sent: list[int] = []
    real_send = CoalescingWriter._to_transport

    def counting_send(self: CoalescingWriter, data: WriteBuffer) -> None:
        sent.append(len(data))
        real_send(self, data)

    monkeypatch.setattr(CoalescingWriter, "_to_transport", counting_send)
    async with echo_server_on("streams") as address:
        reader, writer = await asyncio.open_connection(*address)
        message = bytes(range(200))
        writer.write(message)
        reply = await asyncio.wait_for(reader.readexactly(400), TIMEOUT)
        writer.close()
    assert reply == build_reply(message)
    # One segment of 200 bytes reaches the server as one receive, nearly always; even
    # when the kernel splits it, far fewer sends than chunks.
    assert sum(sent) == 400
    assert len(sent) <= 3


async def test_write_after_close_raises_stream_closed_error() -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with raw_server(hold) as address:
        _, asyncio_writer = await asyncio.open_connection(*address)
        writer = CoalescingWriter(asyncio_writer)
        writer.close()
        with pytest.raises(StreamClosedError):
            writer.write(b"late")


async def test_peer_close_is_stream_closed_error_for_reads_and_drain() -> None:
    closed = asyncio.Event()

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        closed.set()

    async with raw_server(close_at_once) as address:
        reader, writer = await asyncio.open_connection(*address)
        await asyncio.wait_for(closed.wait(), TIMEOUT)
        with pytest.raises(StreamClosedError) as raised:
            await asyncio.wait_for(read_partial(reader, 20), TIMEOUT)
        assert raised.value.real_error is None
        writer.close()


async def test_reset_is_stream_closed_error_with_its_cause() -> None:
    async def reset_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        reset(writer)

    async with raw_server(reset_at_once) as address:
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"x")
        with pytest.raises(StreamClosedError) as raised:
            await asyncio.wait_for(read_partial(reader, 20), TIMEOUT)
        assert isinstance(raised.value.real_error, ConnectionResetError)
        assert isinstance(raised.value.__cause__, ConnectionResetError)
        writer.close()


async def test_reader_hands_out_bytes_received_before_a_reset() -> None:
    """asyncio's reader raises the stored reset first (python/cpython#75044); ours
    gives the bytes that can satisfy the read, then raises."""
    loop = asyncio.get_running_loop()
    for reader_class in (asyncio.StreamReader, StreamReader):
        reader = reader_class(loop=loop)
        reader.feed_data(b"helloolleh")
        reader.set_exception(ConnectionResetError("reset by peer"))
        if reader_class is asyncio.StreamReader:
            with pytest.raises(ConnectionResetError):
                await reader.readexactly(10)
            continue
        assert await reader.readexactly(4) == b"hell"
        assert await reader.readuntil(b"l") == b"ool"
        assert await reader.read(100) == b"leh"
        with pytest.raises(ConnectionResetError):
            await reader.readexactly(1)


async def test_reader_does_not_wait_forever_after_a_reset_mid_reply() -> None:
    """Half the bytes, then the reset while no read waits: asyncio's readexactly would
    wait for data that never comes; ours raises."""
    reader = StreamReader(loop=asyncio.get_running_loop())
    reader.feed_data(b"hello")
    reader.set_exception(ConnectionResetError())
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.readexactly(10), TIMEOUT)


async def test_client_shows_a_reply_that_arrived_before_the_servers_reset() -> None:
    """The server answers, then resets at once: the client still gets the reply."""

    async def answer_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        message = await reader.read(100)
        writer.write(build_reply(message))
        await writer.drain()
        reset(writer)

    async with raw_server(answer_then_reset) as address:
        reader, writer = await open_connection(*address)
        writer.write(b"hello")
        # Let the reply and the reset both arrive before the read: the late read of
        # python/cpython#75044, where asyncio's reader raises and loses the reply.
        await wait_for_reset(reader)
        assert await reader.readexactly(10) == b"helloolleh"
        writer.close()


def test_client_script_shows_reply_before_reset() -> None:
    """End to end: echo_client.py prints the reply of a server that resets after it."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = subprocess.Popen(
        [PYTHON, str(ROOT / "echo_client.py"), "--port", str(port), "-m", "hello", "-m", "more"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        listener.settimeout(TIMEOUT)
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        assert conn.recv(100) == b"hello"
        conn.sendall(b"helloolleh")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        out, err = client.communicate(timeout=TIMEOUT)
    finally:
        listener.close()
        if client.poll() is None:
            client.kill()
    assert out.splitlines()[:2] == ["hello", "olleh"]
    assert client.returncode == 1
    assert err.count("\n") == 1
    assert "Traceback" not in err
