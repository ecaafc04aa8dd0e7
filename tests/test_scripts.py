"""The two scripts end to end, as users run them: subprocesses on real loopback sockets.

Every server scenario runs on both loops (``--loop asyncio``, ``--loop uvloop``) and both
implementations (``--impl streams``, ``--impl protocol``); every client scenario on both
loops. Misbehaving servers (one that hangs up mid-reply, answers garbage or never
answers) are small blocking-socket fakes in a thread, so the client is tested against
exactly the failure it must report. The interactive client runs in a real pseudo-terminal
(pexpect). Nothing waits by sleeping: processes announce readiness (the ready line, the
prompt, a fake server's event) and every wait is bounded by ``TIMEOUT``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pexpect  # type: ignore[import-untyped]  # no stubs; only the tests use it
import pytest
from support import (
    PYTHON,
    ROOT,
    TIMEOUT,
    ServerProcess,
    close_with_reset,
    echo_server_argv,
    parse_ready_line,
    running_server,
    start_server,
)

from echo20 import client as echo_client
from echo20 import server as echo_server

LOOPS = ("asyncio", "uvloop")
IMPLS = ("streams", "protocol")
CLIENT = [PYTHON, str(ROOT / "echo_client.py")]
CLIENT_PROGRAM = "echo20-client"
SERVER_PROGRAM = "echo20-server"
PROMPT = "Enter your input: "

# Addresses from the documentation ranges (RFC 5737, RFC 3849), on no interface of the
# test machine: binding to them fails in the kernel, and no packet is ever sent.
UNASSIGNED_HOSTS = ("203.0.113.7", "2001:db8::7")

# 45 bytes, all distinct: chunks of 20, 20 and 5 when they arrive together.
ALPHABET_45 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrs"

SERVER_PARAMS = [
    pytest.param((loop, impl), id=f"{loop}-{impl}")
    for loop in LOOPS
    for impl in IMPLS
    # The IOStream server on one loop: its stream semantics run on both in test_iostream.
] + [pytest.param(("asyncio", "iostream"), id="asyncio-iostream")]

Handler = Callable[["FakeConnection"], None]


# --- helpers --------------------------------------------------------------------------


def server_argv(loop: str, impl: str, *extra: str) -> list[str]:
    return echo_server_argv("--loop", loop, "--impl", impl, *extra)


def run_client(
    port: int,
    *args: str | bytes,
    loop: str = "asyncio",
    host: str = "127.0.0.1",
    stdin: bytes = b"",
) -> subprocess.CompletedProcess[bytes]:
    """Run the client to completion (stdin a pipe, so never interactive)."""
    argv: list[str | bytes] = [*CLIENT, "--host", host, "--port", str(port), "--loop", loop]
    return subprocess.run(
        [*argv, *args], input=stdin, capture_output=True, timeout=TIMEOUT, cwd=ROOT
    )


def reversed_line(message: bytes) -> bytes:
    """The bytes of the client's second line when the message arrived in one batch."""
    return b"".join(message[i : i + 20][::-1] for i in range(0, len(message), 20))


def expected_reply(message: bytes) -> bytes:
    """The bytes on the wire for a message that arrived in one batch."""
    return b"".join(
        message[i : i + 20] + message[i : i + 20][::-1] for i in range(0, len(message), 20)
    )


def shown(data: bytes) -> bytes:
    """What the client prints for these bytes: UTF-8, undecodable bytes as \\xNN."""
    return data.decode("utf-8", "backslashreplace").encode("utf-8")


def expected_output(*messages: bytes) -> bytes:
    """Two lines per message: the echo and the reversed text."""
    return b"".join(shown(m) + b"\n" + shown(reversed_line(m)) + b"\n" for m in messages)


def assert_ok(result: subprocess.CompletedProcess[bytes], *messages: bytes) -> None:
    assert (result.returncode, result.stderr) == (0, b""), result.stderr.decode()
    assert result.stdout == expected_output(*messages)


def assert_one_line_error(stderr: bytes | str, program: str, *fragments: str) -> str:
    """stderr is exactly one line, ``program: ...``, with no traceback; returns it."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{text}"
    assert "Traceback" not in text
    assert lines[0].startswith(f"{program}: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_client_failed(result: subprocess.CompletedProcess[bytes], *fragments: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr.decode())
    return assert_one_line_error(result.stderr, CLIENT_PROGRAM, *fragments)


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def readline_within(pipe: IO[bytes], timeout: float = TIMEOUT) -> bytes:
    """One line from a child's pipe, or b"" if none comes within ``timeout``."""
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(pipe.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else b""


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass
class FakeConnection:
    """What a fake server's handler gets: the accepted socket and two signals."""

    sock: socket.socket
    # Set by the handler once it has played its part (read the message, say), so the
    # test knows where the client is without sleeping.
    reached: threading.Event = field(default_factory=threading.Event)
    # Set by the test when it is done: a handler that holds the connection waits for it.
    released: threading.Event = field(default_factory=threading.Event)

    def hold(self) -> None:
        self.reached.set()
        self.released.wait(TIMEOUT)


@contextmanager
def fake_server(handler: Handler) -> Iterator[tuple[int, threading.Event]]:
    """A one-connection server on 127.0.0.1 running ``handler`` in a thread.

    Yields (port, reached). The connection closes when the handler returns.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    reached, released = threading.Event(), threading.Event()

    def serve() -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        with sock:
            sock.settimeout(TIMEOUT)
            handler(FakeConnection(sock, reached, released))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], reached
    finally:
        released.set()
        listener.close()
        thread.join(TIMEOUT)


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module", params=SERVER_PARAMS)
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """One server per loop and implementation, shared by the exchange tests."""
    loop, impl = request.param
    with running_server(server_argv(loop, impl)) as process:
        yield process


@pytest.fixture(scope="module")
def plain_server() -> Iterator[ServerProcess]:
    """The default server, for tests about the client."""
    with running_server(echo_server_argv("--loop", "asyncio")) as process:
        yield process


@pytest.fixture(params=LOOPS)
def client_loop(request: pytest.FixtureRequest) -> str:
    loop: str = request.param
    return loop


# --- the server: ready line -----------------------------------------------------------


def test_ready_line(server: ServerProcess) -> None:
    """``echo20 listening on HOST:PORT (loop: NAME)``; stdout has nothing else (checked
    once the server has stopped, in the signal tests)."""
    assert re.fullmatch(
        rf"echo20 listening on 127\.0\.0\.1:{server.port} \(loop: {server.loop}\)",
        server.ready_line,
    )
    assert server.port > 0
    assert server.loop in LOOPS


def test_loop_auto_is_uvloop() -> None:
    with running_server(echo_server_argv("--loop", "auto")) as server:
        assert server.loop == "uvloop"


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
@pytest.mark.parametrize("loop", LOOPS)
def test_ipv6_ready_line_and_exchange(loop: str) -> None:
    with running_server(echo_server_argv("--host", "::1", "--loop", loop)) as server:
        assert re.fullmatch(
            rf"echo20 listening on \[::1\]:{server.port} \(loop: {loop}\)", server.ready_line
        )
        assert parse_ready_line(server.ready_line)[0] == "::1"
        result = run_client(server.port, "-m", "hello", loop=loop, host="::1")
        assert_ok(result, b"hello")


# --- the server and the client: exchanges ---------------------------------------------


def test_exchange(server: ServerProcess) -> None:
    result = run_client(server.port, "-m", "hello", "-m", "world", loop=server.loop)
    assert_ok(result, b"hello", b"world")


def test_over_ends_the_session(server: ServerProcess) -> None:
    """The client stops after `over` (later messages are never sent) and exits 0."""
    result = run_client(server.port, "-m", "hi", "-m", "over", "-m", "never", loop=server.loop)
    assert_ok(result, b"hi", b"over")


def test_over_closes_the_connection(server: ServerProcess) -> None:
    """On the wire: `over`, `revo`, then end of stream; bytes sent later are not answered."""
    with closing(connect(server.address)) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 10) == b"helloolleh"
        sock.sendall(b"over")
        assert recv_exactly(sock, 8) == b"overrevo"
        assert sock.recv(1) == b""


def test_over_rules_on_the_wire(server: ServerProcess) -> None:
    """Only a chunk equal to `over` closes; 24 bytes ending in `over` are 20 + 4 and do."""
    with closing(connect(server.address)) as sock:
        for message in (b"overtime", b"OVER", b"game over", b"over\n", b"x" * 20 + b"overmore"):
            sock.sendall(message)
            assert recv_exactly(sock, 2 * len(message)) == expected_reply(message), message
        message = b"x" * 20 + b"over"
        sock.sendall(message)
        assert recv_exactly(sock, 48) == expected_reply(message)
        assert sock.recv(1) == b""


def test_client_stops_only_after_an_over_chunk(
    plain_server: ServerProcess, client_loop: str
) -> None:
    over_inside = [b"overtime", b"OVER", b"game over"]
    closing_message = b"x" * 20 + b"over"
    args = [arg for message in over_inside for arg in (b"-m", message)]
    result = run_client(
        plain_server.port, *args, "-m", closing_message, "-m", "never", loop=client_loop
    )
    assert_ok(result, *over_inside, closing_message)


def test_messages_over_20_bytes_stay_in_step(server: ServerProcess) -> None:
    """26 bytes are 20 + 6; the next message's reply is its own, not the previous tail."""
    long = b"abcdefghijklmnopqrstuvwxyz"
    longer = bytes(range(65, 91)) * 10
    result = run_client(
        server.port, "-m", long, "-m", "second", "-m", longer, "-m", "x", loop=server.loop
    )
    assert_ok(result, long, b"second", longer, b"x")
    assert result.stdout.split(b"\n")[1] == b"tsrqponmlkjihgfedcbazyxwvu"


def test_large_message(server: ServerProcess) -> None:
    """A 300 kB line: read in several batches by the server, the client still takes the
    whole double reply (its cut depends on the batches, so the bytes are all alike)."""
    message = b"x" * 300_000
    result = run_client(server.port, loop=server.loop, stdin=message + b"\nend\n")
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == message + b"\n" + message + b"\nend\ndne\n"


def test_binary_and_non_utf8_input(server: ServerProcess) -> None:
    """Every byte value but the line break, one message from a pipe; NUL included."""
    every_byte = bytes(value for value in range(256) if value != 0x0A)
    utf8 = "héllo wörld ✓".encode()
    messages = [b"a\x00b", b"\xff\xfe\xfd", utf8, every_byte]
    result = run_client(server.port, loop=server.loop, stdin=b"\n".join(messages) + b"\n")
    assert_ok(result, *messages)
    lines = result.stdout.split(b"\n")
    assert lines[2:4] == [b"\\xff\\xfe\\xfd", b"\\xfd\\xfe\\xff"]
    # Reversal is per byte: é and ö come back as undecodable pairs in the second line.
    assert lines[4] == utf8
    assert b"\\xa9\\xc3" in lines[5]


def test_non_utf8_argument(plain_server: ServerProcess, client_loop: str) -> None:
    """-m takes bytes too: argv decodes with surrogateescape, the client encodes back."""
    result = run_client(plain_server.port, "-m", b"\xffhi\x80", loop=client_loop)
    assert_ok(result, b"\xffhi\x80")
    assert result.stdout == b"\\xffhi\\x80\n\\x80ih\\xff\n"


def test_pipe_mode(plain_server: ServerProcess, client_loop: str) -> None:
    """One message per line: empty lines skipped, CRLF stripped, nothing after `over`."""
    stdin = b"hello\n\n\r\nworld\r\nover\nnever sent\n"
    result = run_client(plain_server.port, loop=client_loop, stdin=stdin)
    assert_ok(result, b"hello", b"world", b"over")


def test_pipe_mode_end_of_input_without_newline(
    plain_server: ServerProcess, client_loop: str
) -> None:
    result = run_client(plain_server.port, loop=client_loop, stdin=b"one\ntwo")
    assert_ok(result, b"one", b"two")


def test_empty_input(plain_server: ServerProcess, client_loop: str) -> None:
    result = run_client(plain_server.port, loop=client_loop, stdin=b"")
    assert_ok(result)


def test_output_the_terminal_cannot_encode(plain_server: ServerProcess) -> None:
    """An ASCII-only stdout shows é as an escape rather than failing mid-session."""
    result = subprocess.run(
        [*CLIENT, "--port", str(plain_server.port), "-m", "héllo"],
        capture_output=True,
        timeout=TIMEOUT,
        cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == b"h\\xe9llo\noll\\xa9\\xc3h\n"


def test_output_closed_early(plain_server: ServerProcess) -> None:
    """Output piped into `head`: the client ends quietly with 141, as SIGPIPE would."""
    client = subprocess.Popen(
        [*CLIENT, "--port", str(plain_server.port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert client.stdin is not None
    assert client.stdout is not None
    client.stdin.write(b"hello\n")
    client.stdin.flush()
    assert readline_within(client.stdout) == b"hello\n"
    client.stdout.close()
    client.stdin.write(b"world\n" * 10)
    client.stdin.close()
    assert client.wait(TIMEOUT) == 141
    assert client.stderr is not None
    assert client.stderr.read() == b""


def test_clients_at_once(server: ServerProcess) -> None:
    """Several clients, each in its own process, served side by side."""
    processes = [
        subprocess.Popen(
            [*CLIENT, "--port", str(server.port), "--loop", server.loop],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        for _ in range(3)
    ]
    messages = [f"client {n} says hello to everyone here".encode() for n in range(3)]
    outputs = [
        process.communicate(message + b"\n", timeout=TIMEOUT)
        for process, message in zip(processes, messages, strict=True)
    ]
    for process, message, (stdout, stderr) in zip(processes, messages, outputs, strict=True):
        assert (process.returncode, stderr) == (0, b"")
        assert stdout == expected_output(message)


# --- the server: stopping and failing -------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize(("loop", "impl"), [p.values[0] for p in SERVER_PARAMS], ids=str)
def test_signal_with_clients_connected(loop: str, impl: str, sig: signal.Signals) -> None:
    """Stop with open connections: they see the close, the server exits 0 with a summary."""
    server = start_server(server_argv(loop, impl))
    sockets: list[socket.socket] = []
    client = subprocess.Popen(
        [*CLIENT, "--port", str(server.port), "--loop", loop],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert client.stdin is not None
    assert client.stdout is not None
    try:
        for _ in range(3):
            sock = connect(server.address)
            sockets.append(sock)
            sock.sendall(b"hello")
            assert recv_exactly(sock, 10) == b"helloolleh"
        client.stdin.write(b"ping\n")
        client.stdin.flush()
        assert readline_within(client.stdout) == b"ping\n"
        assert readline_within(client.stdout) == b"gnip\n"

        assert server.stop(sig) == 0

        for sock in sockets:
            assert sock.recv(1) == b"", "the server must close open connections"
        # The piped client learns it at its next message: one line, exit 1.
        _, stderr = client.communicate(b"again\n", timeout=TIMEOUT)
        assert client.returncode == 1, stderr.decode()
        assert_one_line_error(stderr, CLIENT_PROGRAM, "closed")
    finally:
        for sock in sockets:
            sock.close()
        if client.poll() is None:
            client.kill()
            client.communicate()
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()

    assert server.process.stdout is not None
    assert server.process.stdout.read() == b"", "the ready line must be stdout's only line"
    summary = server.stderr_text()
    assert "Traceback" not in summary
    lines = summary.splitlines()
    assert len(lines) == 1, summary
    match = re.search(r"(\d+) connections served, (\d+) bytes in, (\d+) bytes out", lines[0])
    assert match is not None, lines[0]
    assert [int(n) for n in match.groups()] == [4, 3 * 5 + 4, 3 * 10 + 8]


@pytest.mark.parametrize(("loop", "impl"), [p.values[0] for p in SERVER_PARAMS], ids=str)
def test_verbose_logs_every_chunk_and_vanished_peers_log_nothing(loop: str, impl: str) -> None:
    """-v logs each chunk as the seed prints it; clients that reset leave no traceback."""
    server = start_server(server_argv(loop, impl, "-v"))
    try:
        with closing(connect(server.address)) as sock:
            sock.sendall(ALPHABET_45)
            assert recv_exactly(sock, 90) == expected_reply(ALPHABET_45)
        for _ in range(3):
            # Send, then vanish with a reset (SO_LINGER 0) before reading the reply.
            sock = connect(server.address)
            sock.sendall(b"bye")
            close_with_reset(sock)
        # Still serving after the resets.
        assert_ok(run_client(server.port, "-m", "still here", loop=loop), b"still here")
    finally:
        assert server.stop() == 0
    log = server.stderr_text()
    assert "Traceback" not in log
    assert "Error" not in log, log
    for chunk in (ALPHABET_45[:20], ALPHABET_45[20:40], ALPHABET_45[40:]):
        assert repr(chunk) in log
    assert repr(b"still here") in log
    assert re.search(r"5 connections served", log), log


@pytest.mark.parametrize(("loop", "impl"), [p.values[0] for p in SERVER_PARAMS], ids=str)
def test_busy_port(loop: str, impl: str) -> None:
    with running_server(server_argv(loop, impl)) as first:
        second = subprocess.run(
            [*server_argv(loop, impl)[:-2], "--port", str(first.port)],
            capture_output=True,
            timeout=TIMEOUT,
            cwd=ROOT,
        )
        assert second.returncode == 1
        assert second.stdout == b""
        assert_one_line_error(second.stderr, SERVER_PROGRAM, str(first.port))
        # The first server is unharmed.
        assert_ok(run_client(first.port, "-m", "still here", loop=loop), b"still here")


@pytest.mark.parametrize(("loop", "impl"), [p.values[0] for p in SERVER_PARAMS], ids=str)
def test_bad_host(loop: str, impl: str) -> None:
    """An address on no interface: one line naming it, exit 1 (the hosts run side by side)."""
    processes = {
        host: subprocess.Popen(
            server_argv(loop, impl, "--host", host),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        for host in UNASSIGNED_HOSTS
    }
    for host, process in processes.items():
        stdout, stderr = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 1, host
        assert stdout == b""
        assert_one_line_error(stderr, SERVER_PROGRAM, host)


# --- the client against servers that misbehave ----------------------------------------


def test_unreachable_server(client_loop: str) -> None:
    """A port bound but not listening on 127.0.0.1 refuses the connection."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        result = run_client(port, "-m", "hello", loop=client_loop)
    assert result.stdout == b""
    line = assert_client_failed(result, f"127.0.0.1:{port}")
    assert "refused" in line.lower()


def half_reply(conn: FakeConnection) -> None:
    """Reads the message, sends half its reply, hangs up."""
    assert recv_exactly(conn.sock, 5) == b"hello"
    conn.sock.sendall(b"hello")


def close_at_once(conn: FakeConnection) -> None:
    """Hangs up without reading (the client's bytes may then earn it a reset)."""


def garbage_reply(conn: FakeConnection) -> None:
    """A reply of the right length whose second half is not reversed; then waits."""
    assert recv_exactly(conn.sock, 5) == b"hello"
    conn.sock.sendall(b"hellohello")
    conn.hold()


def swapped_reply(conn: FakeConnection) -> None:
    """The reversal first, then the echo; then waits."""
    assert recv_exactly(conn.sock, 5) == b"hello"
    conn.sock.sendall(b"ollehhello")
    conn.hold()


def close_after_first(conn: FakeConnection) -> None:
    """Answers the first message properly, then hangs up."""
    assert recv_exactly(conn.sock, 5) == b"hello"
    conn.sock.sendall(b"helloolleh")


@pytest.mark.parametrize(
    ("handler", "fragments"),
    [
        (half_reply, ("closed", "5 of 10")),
        (close_at_once, ("closed",)),
        (garbage_reply, ("invalid reply",)),
        (swapped_reply, ("invalid reply",)),
    ],
    ids=["half-reply", "close-at-once", "garbage", "swapped-halves"],
)
def test_server_misbehaves(client_loop: str, handler: Handler, fragments: Sequence[str]) -> None:
    with fake_server(handler) as (port, _):
        result = run_client(port, "-m", "hello", loop=client_loop)
    assert result.stdout == b""
    assert_client_failed(result, *fragments)


def test_server_gone_between_messages(client_loop: str) -> None:
    """The first reply is complete, the second never comes: one line, exit 1."""
    with fake_server(close_after_first) as (port, _):
        result = run_client(port, "-m", "hello", "-m", "again", loop=client_loop)
    assert result.stdout == b"hello\nolleh\n"
    assert_client_failed(result, "closed")


def reply_and_more(conn: FakeConnection) -> None:
    """The whole reply plus bytes nobody asked for, in one send; then waits."""
    assert recv_exactly(conn.sock, 5) == b"hello"
    conn.sock.sendall(b"helloolleh" + b"extra")
    conn.hold()


def test_server_sends_more_than_owed(client_loop: str) -> None:
    """Bytes beyond a reply would shift every later reply: reported before the next one."""
    with fake_server(reply_and_more) as (port, _):
        result = run_client(port, "-m", "hello", "-m", "again", loop=client_loop)
    assert result.stdout == b"hello\nolleh\n"
    assert_client_failed(result, "5 bytes more")


def test_server_closes_after_the_last_reply(client_loop: str) -> None:
    """A hang-up after a complete reply, with nothing more to send, is not an error."""
    with fake_server(close_after_first) as (port, _):
        result = run_client(port, "-m", "hello", loop=client_loop)
    assert_ok(result, b"hello")


def never_answer(conn: FakeConnection) -> None:
    """Reads the message and keeps the connection open without a word."""
    assert recv_exactly(conn.sock, 5) == b"hello"
    conn.hold()


def test_timeout_when_the_server_never_answers(client_loop: str) -> None:
    with fake_server(never_answer) as (port, _):
        result = run_client(port, "--timeout", "0.3", "-m", "hello", loop=client_loop)
    assert result.stdout == b""
    assert_client_failed(result, "0.3 s", "0 of 10")


def never_read(conn: FakeConnection) -> None:
    """Accepts and reads nothing, so a big message fills the socket buffers."""
    conn.hold()


def test_timeout_covers_a_write_the_server_never_reads(client_loop: str) -> None:
    """16 MB to a server that reads nothing: the write waits, and --timeout ends it."""
    with fake_server(never_read) as (port, _):
        result = run_client(
            port, "--timeout", "0.3", loop=client_loop, stdin=b"y" * 16_000_000 + b"\n"
        )
    assert result.stdout == b""
    assert_client_failed(result, "0.3 s")


def test_ctrl_c_while_waiting_for_a_reply(client_loop: str) -> None:
    """SIGINT mid-exchange (piped input): exit 130, no traceback."""
    with fake_server(never_answer) as (port, received):
        client = subprocess.Popen(
            [*CLIENT, "--port", str(port), "--loop", client_loop, "-m", "hello"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        assert received.wait(TIMEOUT), "the client never sent its message"
        client.send_signal(signal.SIGINT)
        stdout, stderr = client.communicate(timeout=TIMEOUT)
    assert client.returncode == 130
    assert stdout == b""
    assert b"Traceback" not in stderr
    assert stderr.strip() == b""


# --- the interactive client in a pseudo-terminal --------------------------------------


def spawn_client(port: int, loop: str, *extra: str) -> pexpect.spawn:
    child = pexpect.spawn(
        PYTHON,
        [*CLIENT[1:], "--port", str(port), "--loop", loop, *extra],
        cwd=str(ROOT),
        timeout=TIMEOUT,
        encoding="utf-8",
    )
    # pexpect pauses 50 ms before every send by default, for password prompts; the
    # prompt is matched before each send here, so there is nothing to wait for.
    child.delaybeforesend = None
    child.expect_exact(PROMPT)
    return child


def finish(child: pexpect.spawn) -> tuple[int | None, str]:
    """Wait for the child to end: (exit status, everything it printed since the last match)."""
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


def test_interactive_session(plain_server: ServerProcess, client_loop: str) -> None:
    child = spawn_client(plain_server.port, client_loop)
    child.sendline("hello")
    child.expect_exact("hello\r\nolleh\r\n" + PROMPT)
    child.sendline("abcdefghijklmnopqrstuvwxyz")
    child.expect_exact("abcdefghijklmnopqrstuvwxyz\r\ntsrqponmlkjihgfedcbazyxwvu\r\n" + PROMPT)
    child.sendline("")  # an empty line is skipped: straight back to the prompt
    child.expect_exact(PROMPT)
    child.sendline("héllo")
    child.expect_exact("héllo\r\noll\\xa9\\xc3h\r\n" + PROMPT)
    child.sendline("over")
    child.expect_exact("over\r\nrevo\r\n")
    status, rest = finish(child)
    assert status == 0
    assert PROMPT not in rest
    assert "Traceback" not in rest


def test_interactive_bytes_the_terminal_cannot_decode(
    plain_server: ServerProcess, client_loop: str
) -> None:
    """Typed bytes that are not UTF-8 reach the server unchanged, even where Python
    decodes the terminal strictly (any locale but C; forced here as the C locale is
    what the test machine has)."""
    child = pexpect.spawn(
        PYTHON,
        [*CLIENT[1:], "--port", str(plain_server.port), "--loop", client_loop],
        cwd=str(ROOT),
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
    )
    child.delaybeforesend = None
    child.expect_exact(PROMPT.encode())
    child.send(b"a\xffb\xc3\r")
    child.expect_exact(b"a\\xffb\\xc3\r\n\\xc3b\\xffa\r\n" + PROMPT.encode())
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert b"Traceback" not in child.before


def test_interactive_ctrl_d(plain_server: ServerProcess, client_loop: str) -> None:
    child = spawn_client(plain_server.port, client_loop)
    child.sendline("hi")
    child.expect_exact("hi\r\nih\r\n" + PROMPT)
    child.sendeof()
    status, rest = finish(child)
    assert status == 0
    assert "Traceback" not in rest


def wait_until_sleeping(pid: int) -> None:
    """Wait until the process sleeps in the kernel (Linux; elsewhere, return at once).

    ``input()`` writes the prompt and only then blocks in ``read()``. A SIGINT that lands
    between the two is recorded but acted on only when ``read()`` returns (CPython's
    ``my_fgets``), so a Ctrl-C sent the instant the prompt shows can be lost; no human
    is that fast, a test is. After the prompt the client's next sleep is that read.
    """
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        # The state is the field after the command name, which may contain spaces.
        if stat.read_text().rpartition(")")[2].split()[0] == "S":
            return
        time.sleep(0.001)  # sleep-ok: polling the kernel's view; there is no event to wait on
    raise AssertionError(f"process {pid} never blocked reading its input")


def test_interactive_ctrl_c_at_the_prompt(plain_server: ServerProcess, client_loop: str) -> None:
    child = spawn_client(plain_server.port, client_loop)
    wait_until_sleeping(child.pid)
    child.sendintr()
    status, rest = finish(child)
    assert status == 130
    assert "Traceback" not in rest
    assert "KeyboardInterrupt" not in rest


def test_interactive_ctrl_c_while_waiting(client_loop: str) -> None:
    with fake_server(never_answer) as (port, received):
        child = spawn_client(port, client_loop, "--timeout", str(TIMEOUT * 3))
        child.sendline("hello")
        assert received.wait(TIMEOUT), "the client never sent its message"
        child.sendintr()
        status, rest = finish(child)
    assert status == 130
    assert "Traceback" not in rest


# --- command lines --------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["echo_server.py", "--port", "abc"],
        ["echo_server.py", "--impl", "nope"],
        ["echo_client.py", "--timeout", "0"],
        ["echo_client.py", "--loop", "nope", "-m", "x"],
    ],
    ids=["server-port", "server-impl", "client-timeout", "client-loop"],
)
def test_bad_flags_exit_2(argv: list[str]) -> None:
    result = subprocess.run(
        [PYTHON, *argv], capture_output=True, timeout=TIMEOUT, cwd=ROOT, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 2
    assert result.stdout == b""
    program = SERVER_PROGRAM if argv[0] == "echo_server.py" else CLIENT_PROGRAM
    assert_one_line_error(result.stderr, program, "error:", "see --help")


MAINS = {"server": echo_server.main, "client": echo_client.main}


@pytest.mark.parametrize("script", MAINS)
def test_main_help(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        MAINS[script](["--help"])
    assert exit_info.value.code == 0
    # Joined into one line: argparse wraps help to the terminal's width.
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage:")
    for flag in ("--host", "--port", "--loop"):
        assert flag in out
    assert "(default: 127.0.0.1)" in out


@pytest.mark.parametrize(
    ("script", "argv"),
    [
        ("server", ["--bogus"]),
        ("server", ["--port", "65536"]),
        ("server", ["--port", "-1"]),
        ("server", ["--loop", "nope"]),
        ("server", ["--log-level", "loud"]),
        ("server", ["--shutdown-timeout", "0"]),
        ("client", ["--bogus"]),
        ("client", ["--port", "x"]),
        ("client", ["--timeout", "-1"]),
        ("client", ["--timeout", "nan"]),
        ("client", ["-m"]),
    ],
)
def test_main_bad_flags(script: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        MAINS[script](argv)
    assert exit_info.value.code == 2
    # One line, not argparse's usage block: the error is what the user needs to see.
    assert_one_line_error(capsys.readouterr().err, f"echo20-{script}", "error:")


# --- the client: a long pipe ----------------------------------------------------------


def _pipe_through_client(address: tuple[str, int], lines: int) -> tuple[int, int]:
    """Pipe ``lines`` lines of 64 bytes through the client; (output lines, peak RSS KiB).

    The peak comes from the client's own accounting (``wait4``), so nothing else in the
    test process counts.
    """
    line = b"0123456789abcdef" * 4 + b"\n"
    process = subprocess.Popen(
        [*CLIENT, "--host", address[0], "--port", str(address[1]), "--loop", "uvloop"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    stdin = process.stdin

    def feed() -> None:
        with stdin:
            for _ in range(lines):
                stdin.write(line)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    output_lines = sum(1 for _ in process.stdout)
    feeder.join(TIMEOUT)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, process.stderr.read() if process.stderr else b""
    return output_lines, usage.ru_maxrss


def test_a_pipe_of_100000_lines_streams_through(plain_server: ServerProcess) -> None:
    """100,000 messages from a pipe: every one answered, the client's memory flat.

    Holding the input (6.5 MB in 100,000 objects) or the output would add well over
    10 MiB to the client's peak against a run of 1,000 lines.
    """
    small_lines, small_peak = _pipe_through_client(plain_server.address, 1_000)
    many_lines, many_peak = _pipe_through_client(plain_server.address, 100_000)
    assert small_lines == 2 * 1_000
    assert many_lines == 2 * 100_000
    assert many_peak - small_peak < 6 * 1024, (small_peak, many_peak)


@pytest.mark.parametrize(
    ("command", "module", "extra"),
    [
        ("from echo20.bench.cli import main; sys.exit(main(['run']))", "rich", "bench"),
        (
            "from echo20.conformance import main; sys.exit(main(['--list']))",
            "pytest",
            "conformance",
        ),
    ],
    ids=["bench", "conformance"],
)
def test_command_without_its_extra_is_one_line(command: str, module: str, extra: str) -> None:
    """An installed command whose optional packages are missing says which extra to install."""
    code = f"import sys; sys.modules[{module!r}] = None; {command}"
    result = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 1
    line = assert_one_line_error(result.stderr, f"echo20-{extra}", module)
    assert f"pip install 'echo20[{extra}]'" in line
