"""Every server implementation on every installed event loop, over real sockets.

The in-process suites run on asyncio and uvloop (tests/conftest.py); the other loops of
the table (rloop, veloxloop, aiofastnet on asyncio and on uvloop) are checked here, as a
user runs them: ``echo_server.py --loop NAME --impl IMPL`` answers a message of two
chunks, closes after ``over`` and exits 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path

import pytest
from support import PYTHON, ROOT, TIMEOUT, close_with_reset, echo_server_argv, running_server

from echo20 import loops
from echo20.servers import IMPLEMENTATIONS


def read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        got = sock.recv(count - len(data))
        if not got:
            break
        data += got
    return data


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("loop", loops.available_loops())
def test_server_exchange_on_every_loop(loop: str, impl: str) -> None:
    with running_server(echo_server_argv("--loop", loop, "--impl", impl)) as server:
        assert server.loop == loop
        with socket.create_connection(server.address, TIMEOUT) as sock:
            sock.settimeout(TIMEOUT)
            message = b"a message longer than twenty bytes"
            sock.sendall(message)
            assert read_exactly(sock, 2 * len(message)) == (
                message[:20] + message[:20][::-1] + message[20:] + message[20:][::-1]
            )
            sock.sendall(b"over")
            assert read_exactly(sock, 9) == b"overrevo"  # then the end of stream
        status = server.stop()
    assert status == 0, server.stderr_text()
    assert "Traceback" not in server.stderr_text()


# Sent without reading, then reset: more than the kernel's buffers hold on loopback with
# a small receive buffer, so the server still has replies queued when the reset comes,
# and less than any loop's backpressure lets in before the push stalls.
UNREAD_PUSH = 2 * 1024 * 1024
SMALL_RECEIVE_BUFFER = 4096


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("loop", loops.available_loops())
def test_a_reset_while_owed_replies_is_no_error(loop: str, impl: str) -> None:
    """A client resets with replies queued for it: the server serves on, no traceback.

    rloop 0.5 reports the failed write as ``RuntimeError("Broken pipe (os error 32)")``;
    ``drain()`` re-raised that on the streams server, logged with a traceback.
    """
    with running_server(echo_server_argv("--loop", loop, "--impl", impl)) as server:
        with socket.socket() as pusher:
            pusher.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RECEIVE_BUFFER)
            pusher.settimeout(TIMEOUT)
            pusher.connect(server.address)
            pusher.sendall(b"x" * UNREAD_PUSH)
            close_with_reset(pusher)
        with socket.create_connection(server.address, TIMEOUT) as sock:
            sock.settimeout(TIMEOUT)
            sock.sendall(b"over")
            assert read_exactly(sock, 9) == b"overrevo"
        status = server.stop()
    assert status == 0, server.stderr_text()
    assert "Traceback" not in server.stderr_text()


def test_every_loop_has_an_extra_and_a_version() -> None:
    for row in loops.LOOPS:
        assert row.name == "asyncio" or row.extra
    versions = loops.loop_versions(list(loops.LOOP_NAMES))
    assert set(versions) == set(loops.LOOP_NAMES)
    for name in loops.available_loops():
        assert "not installed" not in versions[name]


def test_unknown_and_missing_loops_say_how_to_get_them() -> None:
    with pytest.raises(loops.LoopUnavailableError, match="unknown loop 'tokio'"):
        loops.loop_factory("tokio")


# Loops of the dev install that have no Unix sockets (rloop 0.5, veloxloop 0.2).
LOOPS_WITHOUT_UNIX_SOCKETS = ("rloop", "veloxloop")


@pytest.mark.parametrize("loop", LOOPS_WITHOUT_UNIX_SOCKETS)
def test_unix_socket_on_a_loop_without_them_is_one_line(loop: str, tmp_path: Path) -> None:
    """The server and the client say so in one line each, no traceback."""
    path = str(tmp_path / "s")
    for argv in (
        echo_server_argv("--loop", loop, "--unix", path),
        [PYTHON, str(ROOT / "echo_client.py"), "--loop", loop, "--unix", path, "-m", "hi"],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1, result.stderr
        assert "not supported" in result.stderr or "no Unix sockets" in result.stderr


@pytest.mark.parametrize("loop", loops.available_loops())
def test_server_connections_have_nagle_off(loop: str) -> None:
    """Every loop's TCP transports send at once (TCP_NODELAY), as asyncio's do: with
    Nagle's algorithm on, a reply written in two pieces waits ~40 ms for a delayed ACK."""

    async def nodelay_of_accepted_connection() -> int:
        running = asyncio.get_running_loop()
        made: asyncio.Future[int] = running.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                fileno = getattr(transport, "fileno", None)
                fd = fileno() if fileno else transport.get_extra_info("socket").fileno()
                with socket.socket(fileno=os.dup(fd)) as sock:
                    made.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await running.create_server(Probe, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), TIMEOUT):
            value = await asyncio.wait_for(made, TIMEOUT)
        server.close()
        return value

    with asyncio.Runner(loop_factory=loops.loop_factory(loop)) as runner:
        assert runner.run(nodelay_of_accepted_connection()) == 1
