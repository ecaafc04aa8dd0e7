"""The server's hardening, proved over real sockets: one test or a few per item.

Every test starts the real server script (or, for the task count, the server classes in
this process) and talks to it on 127.0.0.1, ::1 or a Unix socket in a temporary
directory. Each would fail without the feature it names: the comment or docstring says
how. What the server holds is read from ``/proc``: resident memory (``VmRSS``, and the
peak ``VmHWM``), open file descriptors, the open-file limit, child processes.

Nothing waits by sleeping. Waits are for socket readiness (``poll`` with a timeout) or
for the server's own announcements (the ready line, log lines); the few things only
``/proc`` shows are polled at a short interval, and every wait is bounded by
``TIMEOUT``. The heavyweight tests (5,000 connections, 10,000 fault cycles, 256 MiB
pushed) are marked ``slow``; ``make test`` runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from support import (
    PYTHON,
    ROOT,
    TIMEOUT,
    ServerProcess,
    close_with_reset,
    echo_server_argv,
    running_server,
    start_server,
)

from echo20 import runtime
from echo20.servers import IMPLEMENTATIONS
from echo20.servers import base as server_base
from echo20.tcpclient import TCPClient

LOOPS = ("asyncio", "uvloop")
IMPLS = ("streams", "protocol")
SERVERS = [pytest.param(loop, impl, id=f"{loop}-{impl}") for loop in LOOPS for impl in IMPLS]
# The IOStream server on one loop: its stream semantics run on both in test_iostream.
SERVERS.append(pytest.param("asyncio", "iostream", id="asyncio-iostream"))
# For the heavyweight tests: each implementation once, and each loop once.
HEAVY_SERVERS = [
    pytest.param("asyncio", "streams", id="asyncio-streams"),
    pytest.param("uvloop", "protocol", id="uvloop-protocol"),
]

CHUNK = 20
MiB = 1024 * 1024

# What only /proc shows (fd counts, child processes) is polled this often.
POLL_INTERVAL = 0.02

# A soft open-file limit below what 5,000 connections need: a server that did not
# raise its own limit to the hard limit could not hold them.
LOW_SOFT_LIMIT = 1024
_WITH_SOFT_LIMIT = (
    "import os, resource, sys; "
    "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)

CLIENT = [PYTHON, str(ROOT / "echo_client.py")]
MESSAGES = ["-m", "hello", "-m", "over"]


# --- helpers: the server's state, from /proc ------------------------------------------


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_file_limits(pid: int) -> tuple[str, str]:
    """(soft, hard) open-file limits of a process, as ``/proc/PID/limits`` shows them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError(f"no open-file limit in /proc/{pid}/limits")


def child_pids(pid: int) -> set[int]:
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children.update(int(child) for child in (task / "children").read_text().split())
    return children


def is_running(pid: int) -> bool:
    """True for a live process (a zombie waiting for its parent does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def listening_socket_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def is_listening(pid: int, port: int) -> bool:
    """True when process ``pid`` holds a listening socket on ``port``."""
    inodes = listening_socket_inodes(port)
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except FileNotFoundError:
        return False
    return any(link == f"socket:[{inode}]" for link in links for inode in inodes)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(POLL_INTERVAL)  # sleep-ok: polling /proc, which announces nothing


def wait_for_log(server: ServerProcess, text: str, count: int = 1) -> None:
    """Wait until ``text`` appears ``count`` times in the server's log."""
    wait_until(lambda: server.stderr_text().count(text) >= count, f"{text!r} x{count} in the log")
    assert server.stderr_text().count(text) == count, server.stderr_text()


def with_soft_open_file_limit(soft: int, argv: list[str]) -> list[str]:
    """``argv`` run with its open-file soft limit lowered to ``soft`` (same PID)."""
    return [PYTHON, "-c", _WITH_SOFT_LIMIT, str(soft), *argv]


def server_argv(loop: str, impl: str, *extra: str) -> list[str]:
    return echo_server_argv("--loop", loop, "--impl", impl, *extra)


def stopped_lines(stderr: str) -> list[tuple[int, int, int]]:
    """(connections, bytes in, bytes out) of every ``stopped:`` summary line."""
    return [
        (int(m[1]), int(m[2]), int(m[3]))
        for m in re.finditer(
            r"stopped: (\d+) connections served, (\d+) bytes in, (\d+) bytes out", stderr
        )
    ]


# --- helpers: the protocol, from the outside ------------------------------------------


def double_reply(message: bytes) -> bytes:
    """The reply to ``message`` received in one batch: each 20-byte chunk, then reversed."""
    return b"".join(
        message[i : i + CHUNK] + message[i : i + CHUNK][::-1] for i in range(0, len(message), CHUNK)
    )


def assert_double_reply(message: bytes, reply: bytes) -> None:
    """``reply`` is the double reply to ``message`` however the server's batches cut it.

    Each chunk is 1 to 20 bytes, the reply is ``c1 rev(c1) c2 rev(c2) ...`` and the
    chunks concatenate to the message. Taken apart greedily, longest chunk first: with
    random messages a wrong cut matches by chance with odds of 1 in 256 per byte.
    """
    assert len(reply) == 2 * len(message), (len(reply), 2 * len(message))
    position = 0
    while position < len(message):
        out = 2 * position
        for size in range(min(CHUNK, len(message) - position), 0, -1):
            chunk = message[position : position + size]
            if (
                reply[out : out + size] == chunk
                and reply[out + size : out + 2 * size] == (chunk[::-1])
            ):
                break
        else:
            raise AssertionError(f"the reply does not answer the message's byte {position}")
        position += size


def connect(address: tuple[str, int], family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(address)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), MiB))
        if not chunk:
            raise AssertionError(f"end of stream after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def recv_until_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(MiB):
        data += chunk
    return bytes(data)


def exchange(sock: socket.socket, message: bytes) -> None:
    sock.sendall(message)
    assert_double_reply(message, recv_exactly(sock, 2 * len(message)))


def assert_dropped(sock: socket.socket, limit: int = 64 * 1024) -> None:
    """The server closes ``sock`` (end of stream or reset) within TIMEOUT.

    It may say something first (a TLS alert): up to ``limit`` bytes are read past.
    """
    received = 0
    try:
        while chunk := sock.recv(4096):
            received += len(chunk)
            assert received <= limit, f"the server keeps sending ({received} bytes)"
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(
            f"the server did not close the connection within {TIMEOUT} s"
        ) from None


def wait_readable(sock: socket.socket, timeout: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def push_until_stalled(
    sock: socket.socket, total: int, stall: float, block: bytes = b"x" * MiB
) -> int:
    """Send up to ``total`` bytes without reading; stop once ``sock`` stays unwritable.

    ``stall`` seconds without room to write means the server stopped reading: its
    backpressure. Returns how many bytes were sent.
    """
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    view = memoryview(block)
    sent = 0
    try:
        while sent < total:
            if not poller.poll(stall * 1000):
                break
            try:
                sent += sock.send(view[: min(len(view), total - sent)])
            except BlockingIOError:
                continue
    finally:
        sock.settimeout(TIMEOUT)
    return sent


@pytest.fixture
def many_open_files() -> Iterator[None]:
    """Raise this process's open-file soft limit for thousands of client sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CONCURRENT_CONNECTIONS + 1024
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the open-file hard limit ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- 1. backpressure -------------------------------------------------------------------

# What the client tries to push without reading, and how much the server's memory may
# grow meanwhile: under 64 MiB above its idle size while 256 MiB are pushed.
PUSH_TOTAL = 256 * MiB
RSS_ALLOWANCE_KIB = 64 * 1024
# Seconds without room to send that count as the server having stopped reading. Only
# how soon the push gives up; a slow server ends the push early, which proves nothing
# wrong and still checks memory and the replies.
STALL_SECONDS = 1.0


@pytest.mark.slow
@pytest.mark.parametrize(("loop", "impl"), SERVERS)
def test_backpressure_bounds_memory_and_loses_nothing(loop: str, impl: str) -> None:
    """A client that pushes without reading stalls; the server's memory stays bounded.

    Without backpressure the server would read all 256 MiB and queue 512 MiB of replies:
    the push would not stall and the peak RSS would pass the allowance.
    """
    with running_server(server_argv(loop, impl)) as server:
        pid = server.process.pid
        with connect(server.address) as sock:
            # Warm up: the first large batch sizes the buffers a large reply needs.
            exchange(sock, random.Random(1).randbytes(256 * 1024))
            idle_kib = proc_status_kib(pid, "VmRSS")

            sent = push_until_stalled(sock, PUSH_TOTAL, STALL_SECONDS)
            pushed_peak_kib = proc_status_kib(pid, "VmHWM")
            assert sent < PUSH_TOTAL, "the server read everything: no backpressure"
            assert pushed_peak_kib - idle_kib < RSS_ALLOWANCE_KIB, (idle_kib, pushed_peak_kib)

            # Now shut down the sending side (megabytes, then the end of
            # stream, then reading) and read: every byte sent is answered, twice, then the
            # server closes.
            sock.shutdown(socket.SHUT_WR)
            received = 0
            while data := sock.recv(MiB):
                assert data.count(b"x") == len(data)
                received += len(data)
            assert received == 2 * sent
            assert proc_status_kib(pid, "VmHWM") - idle_kib < RSS_ALLOWANCE_KIB
    assert "Traceback" not in server.stderr_text()


# --- 2. limits ---------------------------------------------------------------------------


def admit(address: tuple[str, int], message: bytes) -> socket.socket:
    """A connection the server serves, retrying while it closes new ones at its limit.

    After a client leaves, a new connection can reach the server before the old one's
    end of stream does; it is refused until the server has seen the slot free up.
    """
    deadline = time.monotonic() + TIMEOUT
    while True:
        sock = connect(address)
        try:
            exchange(sock, message)
        except (AssertionError, ConnectionResetError, BrokenPipeError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            continue
        return sock


@pytest.mark.parametrize(("loop", "impl"), SERVERS)
def test_max_connections(loop: str, impl: str) -> None:
    """Past --max-connections new connections close at once, logged once per burst."""
    limit = 3
    with running_server(server_argv(loop, impl, "--max-connections", str(limit))) as server:
        admitted = [connect(server.address) for _ in range(limit)]
        for number, sock in enumerate(admitted):
            exchange(sock, f"admitted {number}".encode())
        for burst in (1, 2):
            extras = [connect(server.address) for _ in range(3)]
            for sock in extras:
                assert_dropped(sock, limit=0)
                sock.close()
            for sock in admitted:
                exchange(sock, b"still served")
            # A slot freed lets a new connection in, and ends the burst.
            admitted.pop().close()
            admitted.append(admit(server.address, b"in the freed slot"))
            wait_for_log(server, "below the connection limit again", burst)
            assert server.stderr_text().count(f"connection limit ({limit}) reached") == burst
        for sock in admitted:
            sock.close()
    assert "Traceback" not in server.stderr_text()


# The idle timeout in these tests, and how often the busy client speaks meanwhile:
# a tenth of it, so only a machine stalled for the whole timeout could close it.
IDLE_TIMEOUT = 1.0
BUSY_INTERVAL = IDLE_TIMEOUT / 10


@pytest.mark.parametrize(("loop", "impl"), SERVERS)
def test_idle_timeout(loop: str, impl: str) -> None:
    """--idle-timeout closes connections that went quiet; one that talks stays open."""
    argv = server_argv(loop, impl, "--idle-timeout", str(IDLE_TIMEOUT))
    with running_server(argv) as server:
        quiet = connect(server.address)
        exchange(quiet, b"and then silence")
        silent = connect(server.address)
        busy = connect(server.address)
        deadline = time.monotonic() + TIMEOUT
        for sock in (quiet, silent):
            # Wait for the close, keeping the busy connection busy meanwhile.
            while not wait_readable(sock, BUSY_INTERVAL):
                assert time.monotonic() < deadline, "the idle connection was not closed"
                exchange(busy, b"still talking")
            assert_dropped(sock, limit=0)
            sock.close()
        exchange(busy, b"never idle, never closed")
        with connect(server.address) as newcomer:
            exchange(newcomer, b"the server keeps serving")
        busy.close()
    assert "Traceback" not in server.stderr_text()


# Every implementation on each loop: the idle sweep is shared, but what counts as "still
# writing" is each implementation's own (``Connection.writing``).
EVERY_SERVER = [
    pytest.param(loop, impl, id=f"{loop}-{impl}") for loop in LOOPS for impl in IMPLEMENTATIONS
]
# Short, because the slow reader below waits it out twice.
SLOW_READER_IDLE_TIMEOUT = 0.25
# A message whose 8 MiB reply neither the server nor the kernels between it and a small
# receive buffer can hold at once (the server's send buffer grows to 4 MiB at most, the
# net.ipv4.tcp_wmem default): the server stops reading with input left unread.
OWED_MESSAGE = b"x" * (4 * MiB)
# How much the slow reader takes per read once it reads again.
SLOW_READ_STEP = 16 * 1024


@pytest.mark.parametrize(("loop", "impl"), EVERY_SERVER)
def test_idle_timeout_spares_a_slow_reader_still_owed_replies(loop: str, impl: str) -> None:
    """A connection that sends nothing new but is still owed replies is not idle.

    The client sends a 4 MiB message and then pauses its reading: the server queues what
    it can of the 8 MiB reply and stops reading, and receives nothing new for two idle
    timeouts, while replies wait to leave. A sweep that ignored those pending writes
    would close it with input unread, and the kernel would reset the connection: the
    client got a little over 1 MiB of the reply, then the reset (on every server here).

    The pause is the server's own clock: a silent connection, opened once the message
    has left, waits until the sweep closes it (twice: the first one opens while the
    server may still be reading the message; the second after it has surely stopped).
    """
    argv = server_argv(loop, impl, "--idle-timeout", str(SLOW_READER_IDLE_TIMEOUT))
    with (
        running_server(argv) as server,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as owed,
    ):
        owed.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RECEIVE_BUFFER)
        owed.settimeout(TIMEOUT)
        owed.connect(server.address)
        owed.sendall(OWED_MESSAGE)
        for _ in range(2):
            with connect(server.address) as witness:
                assert_dropped(witness, limit=0)
        client, peer = owed.getsockname(), owed.getpeername()
        assert tcp_queues(peer, client)[1] > 0, "the server read the whole message: no test"
        received = 0
        try:
            while data := owed.recv(SLOW_READ_STEP):
                assert data.count(b"x") == len(data)
                received += len(data)
        except ConnectionResetError:
            raise AssertionError(
                f"reset after {received} of {2 * len(OWED_MESSAGE)} reply bytes"
            ) from None
        # Then, owing nothing, it was idle: the sweep closed it (the end of stream above).
        assert received == 2 * len(OWED_MESSAGE)
    assert "Traceback" not in server.stderr_text()


def test_open_file_limit_raised_to_the_hard_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= LOW_SOFT_LIMIT:
        pytest.skip(f"the open-file hard limit ({hard}) leaves nothing to raise")
    argv = with_soft_open_file_limit(LOW_SOFT_LIMIT, server_argv("uvloop", "streams"))
    with running_server(argv) as server:
        soft_now, hard_now = open_file_limits(server.process.pid)
        assert soft_now == hard_now, (soft_now, hard_now)


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_backlog_reaches_the_listening_socket() -> None:
    """--backlog is the listen queue's length (``ss`` shows it as Send-Q)."""
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    backlog = min(77, somaxconn)
    with running_server(server_argv("uvloop", "streams", "--backlog", str(backlog))) as server:
        listing = subprocess.run(
            ["ss", "-ltnH", f"sport = :{server.port}"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        ).stdout.split()
        assert listing[0] == "LISTEN"
        assert int(listing[2]) == backlog, listing


CONCURRENT_CONNECTIONS = 5000


@pytest.mark.slow
@pytest.mark.usefixtures("many_open_files")
@pytest.mark.parametrize(("loop", "impl"), HEAVY_SERVERS)
def test_holds_5000_connections(loop: str, impl: str) -> None:
    """5,000 connections open at once, each answered correctly.

    The server starts with a soft open-file limit of 1024: it holds them only because
    it raises its limit (and its --max-connections default follows the raised limit).
    """
    argv = with_soft_open_file_limit(LOW_SOFT_LIMIT, server_argv(loop, impl, "--backlog", "1024"))
    with running_server(argv) as server:
        pid = server.process.pid
        socks = [connect(server.address) for _ in range(CONCURRENT_CONNECTIONS)]
        try:
            messages = [f"connection {n:05d}".encode() for n in range(len(socks))]
            for sock, message in zip(socks, messages, strict=True):
                sock.sendall(message)
            for sock, message in zip(socks, messages, strict=True):
                assert recv_exactly(sock, 2 * len(message)) == double_reply(message)
            assert open_fds(pid) > CONCURRENT_CONNECTIONS
        finally:
            for sock in socks:
                sock.close()
        with connect(server.address) as sock:
            exchange(sock, b"and one more")
    assert "Traceback" not in server.stderr_text()


# --- 3. shutdown -------------------------------------------------------------------------

SHUTDOWN_CONNECTIONS = 2000


@pytest.mark.usefixtures("many_open_files")
@pytest.mark.parametrize(("loop", "impl"), HEAVY_SERVERS)
def test_shutdown_with_thousands_of_connections(loop: str, impl: str) -> None:
    """SIGTERM with 2,000 connections and a client that never reads: exit 0, all closed.

    The client that never reads keeps replies queued in the server forever: only the
    --shutdown-timeout (default 1 s) that aborts it lets the server exit.
    """
    server = start_server(server_argv(loop, impl, "--backlog", "1024"))
    socks: list[socket.socket] = []
    try:
        socks.extend(connect(server.address) for _ in range(SHUTDOWN_CONNECTIONS))
        for number, sock in enumerate(socks):
            exchange(sock, f"connection {number}".encode())
        stalled = connect(server.address)
        socks.append(stalled)
        assert push_until_stalled(stalled, PUSH_TOTAL, STALL_SECONDS) < PUSH_TOTAL

        assert server.stop(signal.SIGTERM) == 0

        for sock in socks[:-1]:
            assert_dropped(sock, limit=0)
    finally:
        for sock in socks:
            sock.close()
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    stderr = server.stderr_text()
    assert "Traceback" not in stderr
    [(served, _, _)] = stopped_lines(stderr)
    assert served == SHUTDOWN_CONNECTIONS + 1


def refuses(address: tuple[str, int]) -> bool:
    """True once nothing listens on ``address``.

    A probe that completes its handshake just as the listener closes sits in the accept
    queue and is reset with it: the close is under way, so ask again until refused.
    """
    try:
        socket.create_connection(address, timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    return False


def signal_and_wait_for_shutdown(server: ServerProcess, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` and wait until the server has begun its shutdown.

    The server stops accepting and asks every connection to close in one step, so once
    connections are refused the close has begun everywhere.
    """
    server.process.send_signal(sig)
    wait_until(lambda: refuses(server.address), "the server stops accepting")


def tcp_socket(local: tuple[str, int], remote: tuple[str, int]) -> tuple[str, int, int] | None:
    """(state, send queue, receive queue) of a loopback TCP socket, from /proc/net/tcp.

    The state is the kernel's code ("01" established); the send queue is what the peer
    has not acknowledged, the receive queue what the socket's owner has not read. None
    once the socket is gone.
    """
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        if (local_port, remote_port) == (local[1], remote[1]):
            send_queue, receive_queue = fields[4].split(":")
            return fields[3], int(send_queue, 16), int(receive_queue, 16)
    return None


def tcp_queues(local: tuple[str, int], remote: tuple[str, int]) -> tuple[int, int]:
    """(send queue, receive queue) of a loopback TCP socket that must exist."""
    found = tcp_socket(local, remote)
    assert found is not None, f"no TCP socket {local} -> {remote}"
    return found[1], found[2]


def read_by_server(sock: socket.socket) -> bool:
    """True once the server process has read every byte sent on ``sock``."""
    client, server = sock.getsockname(), sock.getpeername()
    return tcp_queues(client, server)[0] == 0 and tcp_queues(server, client)[1] == 0


# A message the server reads whole (under the streams path's 256 KiB read high-water
# mark) whose reply the client's small receive buffer cannot hold: some of the reply is
# still queued in the server when the signal comes.
QUEUED_MESSAGE = random.Random(3).randbytes(128 * 1024)
SMALL_RECEIVE_BUFFER = 16 * 1024


@pytest.mark.parametrize(("loop", "impl"), SERVERS)
def test_shutdown_sends_queued_replies(loop: str, impl: str) -> None:
    """Replies queued in the server when SIGTERM comes still reach the client, then EOF.

    Every byte the server counted as sent (its summary line) arrives, and they are the
    double reply of the message's start: nothing queued is dropped at the close. The
    shutdown timeout is generous, so that a slow test is never what cuts the connection.
    """
    server = start_server(server_argv(loop, impl, "--shutdown-timeout", str(TIMEOUT)))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RECEIVE_BUFFER)
            sock.settimeout(TIMEOUT)
            sock.connect(server.address)
            send_all_nonblocking(sock, QUEUED_MESSAGE)
            wait_until(lambda: read_by_server(sock), "the server has read the whole message")
            signal_and_wait_for_shutdown(server)
            received = recv_until_eof(sock)
        # The first signal is all it takes (stop() would send another).
        assert server.process.wait(timeout=TIMEOUT) == 0
        server.stop()
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    stderr = server.stderr_text()
    assert "Traceback" not in stderr
    [(_, bytes_in, bytes_out)] = stopped_lines(stderr)
    assert bytes_in == len(QUEUED_MESSAGE)
    assert len(received) == bytes_out
    assert_double_reply(QUEUED_MESSAGE[: len(received) // 2], received)


# What the test leaves in the server's send queue when it stops reading after SIGTERM.
LEFT_IN_THE_SERVER = 256 * 1024


@pytest.mark.parametrize(("loop", "impl"), HEAVY_SERVERS)
def test_shutdown_sends_queued_replies_to_a_client_still_pushing(loop: str, impl: str) -> None:
    """As above, but the client pushed until backpressure stopped it, then reads.

    The server holds replies in its process and in the kernel, and unread input. After
    SIGTERM the client reads all but 256 KiB of what the kernels hold, so the server's
    own queue drains and it closes; then the client reads the rest.
    """
    server = start_server(server_argv(loop, impl, "--shutdown-timeout", str(TIMEOUT)))
    received = 0
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RECEIVE_BUFFER)
            sock.settimeout(TIMEOUT)
            sock.connect(server.address)
            push_until_stalled(sock, PUSH_TOTAL, STALL_SECONDS)
            client, peer = sock.getsockname(), sock.getpeername()
            in_kernels = tcp_queues(client, peer)[1] + tcp_queues(peer, client)[0]
            assert in_kernels > 2 * LEFT_IN_THE_SERVER
            signal_and_wait_for_shutdown(server)

            def server_closed() -> bool:
                state = tcp_socket(peer, client)
                return state is None or state[0] != "01"

            first_part = in_kernels - LEFT_IN_THE_SERVER
            try:
                while received < first_part and (
                    data := sock.recv(min(MiB, first_part - received))
                ):
                    received += len(data)
                wait_until(server_closed, "the server closes or shuts down its side")
                while data := sock.recv(MiB):
                    received += len(data)
            except ConnectionResetError:
                pass
        assert server.process.wait(timeout=TIMEOUT) == 0
        server.stop()
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    [(_, _, bytes_out)] = stopped_lines(server.stderr_text())
    assert received == bytes_out, f"{bytes_out - received} reply bytes lost"


@pytest.mark.parametrize(("loop", "impl"), SERVERS)
def test_shutdown_while_a_client_drains_exits_cleanly(loop: str, impl: str) -> None:
    """SIGTERM with replies queued in the server; the client then reads: exit 0, no traceback.

    The client pushed until backpressure stopped it, so the server's transport holds
    replies when it is asked to close: the connection closes once they drain, during
    the shutdown wait.
    """
    server = start_server(server_argv(loop, impl, "--shutdown-timeout", str(TIMEOUT)))
    try:
        with connect(server.address) as sock:
            push_until_stalled(sock, PUSH_TOTAL, STALL_SECONDS)
            signal_and_wait_for_shutdown(server)
            # Unread input resets the connection at its close (see the test above).
            with contextlib.suppress(ConnectionResetError):
                recv_until_eof(sock)
        status = server.process.wait(timeout=TIMEOUT)
        server.stop()
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    stderr = server.stderr_text()
    assert "Traceback" not in stderr, stderr
    assert status == 0
    assert len(stopped_lines(stderr)) == 1


@pytest.mark.parametrize(
    ("impl", "first", "second"),
    [
        pytest.param("streams", signal.SIGTERM, signal.SIGTERM, id="streams-SIGTERM"),
        pytest.param("protocol", signal.SIGINT, signal.SIGINT, id="protocol-SIGINT"),
    ],
)
def test_second_signal_exits_at_once(
    impl: str, first: signal.Signals, second: signal.Signals
) -> None:
    """With --shutdown-timeout 60 and a client that never reads, a second signal exits."""
    server = start_server(server_argv("uvloop", impl, "--shutdown-timeout", "60"))
    try:
        with connect(server.address) as stalled:
            assert push_until_stalled(stalled, PUSH_TOTAL, STALL_SECONDS) < PUSH_TOTAL
            signal_and_wait_for_shutdown(server, first)
            assert server.process.poll() is None, "the first signal must wait for the client"
            status = server.stop(second)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert status == 128 + second
    assert "Traceback" not in server.stderr_text()


# --- 4. half-close ------------------------------------------------------------------------

# Half-close messages: the seed's measured sizes, and megabytes. All of it must fit in
# the socket buffers and the server's high-water marks before the client reads.
HALF_CLOSE_SIZES = (45, 100_000, 2 * MiB)


def send_all_nonblocking(sock: socket.socket, data: bytes) -> None:
    """sendall that fails, rather than hangs, when the server stops reading."""
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    view = memoryview(data)
    try:
        while view:
            if not poller.poll(TIMEOUT * 1000):
                raise AssertionError(
                    f"the server stopped reading with {len(view)} of {len(data)} bytes unsent"
                )
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                continue
    finally:
        sock.settimeout(TIMEOUT)


@pytest.mark.parametrize(("loop", "impl"), SERVERS)
def test_half_close_gets_every_reply(loop: str, impl: str) -> None:
    """Send everything, shut down the sending side, then read: every reply, then the end."""
    with running_server(server_argv(loop, impl)) as server:
        for size in HALF_CLOSE_SIZES:
            message = random.Random(size).randbytes(size)
            with connect(server.address) as sock:
                send_all_nonblocking(sock, message)
                sock.shutdown(socket.SHUT_WR)
                assert_double_reply(message, recv_until_eof(sock))
    assert "Traceback" not in server.stderr_text()


# --- 7. TLS (fixtures and a raw client; the tests follow under 4 and 7) --------------------


@dataclass
class TLSFiles:
    certfile: Path
    keyfile: Path
    cafile: Path
    client_context: ssl.SSLContext

    @property
    def server_flags(self) -> list[str]:
        return ["--certfile", str(self.certfile), "--keyfile", str(self.keyfile)]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A throwaway CA (trustme) and a server certificate for localhost, 127.0.0.1, ::1."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    certfile, keyfile, cafile = (
        directory / name for name in ("server.crt", "server.key", "ca.crt")
    )
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    context = ssl.create_default_context(cafile=str(cafile))
    return TLSFiles(certfile, keyfile, cafile, context)


def tls_connect(tls: TLSFiles, address: tuple[str, int]) -> ssl.SSLSocket:
    return tls.client_context.wrap_socket(connect(address), server_hostname="localhost")


class MemoryTLSClient:
    """A TLS client over a plain socket (``ssl.MemoryBIO``), to half-close under TLS.

    ``close_notify`` sends TLS's end of stream and keeps reading; a Python
    ``SSLSocket`` cannot do that.
    """

    def __init__(self, tls: TLSFiles, address: tuple[str, int]) -> None:
        self.sock = connect(address)
        self.unsent = b""
        self.ended_by = ""
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = tls.client_context.wrap_bio(
            self.incoming, self.outgoing, server_hostname="localhost"
        )
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _flush(self) -> None:
        if data := self.outgoing.read():
            send_all_nonblocking(self.sock, data)

    def _fill(self) -> bool:
        data = self.sock.recv(MiB)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        return bool(data)

    def send(self, data: bytes) -> None:
        for start in range(0, len(data), 16 * 1024):
            self.tls.write(data[start : start + 16 * 1024])
            self._flush()

    def close_notify(self) -> None:
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.unwrap()
        self._flush()

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def read_until_end(self) -> bytes:
        """Application data until the server's close_notify or end of stream.

        ``ended_by`` then says which: ``"close_notify"`` (TLS's clean close) or ``"fin"``.
        """
        data = bytearray()
        while True:
            try:
                chunk = self.tls.read(MiB)
            except ssl.SSLWantReadError:
                if self._fill():
                    continue
                self.ended_by = "fin"
                return bytes(data)
            except ssl.SSLEOFError:
                self.ended_by = "fin"
                return bytes(data)
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:
                self.ended_by = "close_notify"
                return bytes(data)
            data += chunk

    def read_exactly(self, size: int) -> bytes:
        """``size`` bytes of application data, sending nothing meanwhile."""
        data = bytearray()
        while len(data) < size:
            try:
                data += self.tls.read(size - len(data))
            except ssl.SSLWantReadError:
                assert wait_readable(self.sock, TIMEOUT), (
                    f"{len(data)} of {size} bytes of replies came, then nothing"
                )
                assert self._fill(), "the server closed early"
        return bytes(data)

    def push_until_stalled(self, total: int, stall: float) -> int:
        """Encrypt and send up to ``total`` bytes of ``x`` without reading, until the
        socket stays unwritable for ``stall`` seconds. Returns the plaintext sent; the
        rest of the last record waits in ``unsent``, for :meth:`finish`."""
        self.sock.setblocking(False)
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT)
        written = 0
        block = b"x" * (16 * 1024)
        try:
            while written < total:
                if not self.unsent:
                    self.tls.write(block)
                    written += len(block)
                    self.unsent = self.outgoing.read()
                if not poller.poll(stall * 1000):
                    break
                with contextlib.suppress(BlockingIOError):
                    self.unsent = self.unsent[self.sock.send(self.unsent) :]
        finally:
            self.sock.setblocking(True)
        return written

    def finish(self) -> bytes:
        """Send what is unsent and close_notify, then the FIN, reading all along;
        return every byte of application data received."""
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.unwrap()
        self.unsent += self.outgoing.read()
        self.sock.setblocking(False)
        poller = select.poll()
        received = bytearray()
        try:
            while self.unsent:
                poller.register(self.sock, select.POLLIN | select.POLLOUT)
                events = poller.poll(TIMEOUT * 1000)
                assert events, "the server neither reads nor answers"
                (_, mask), *_ = events
                if mask & select.POLLOUT:
                    with contextlib.suppress(BlockingIOError):
                        self.unsent = self.unsent[self.sock.send(self.unsent) :]
                if mask & select.POLLIN:
                    with contextlib.suppress(BlockingIOError):
                        self.incoming.write(self.sock.recv(MiB))
                    with contextlib.suppress(ssl.SSLWantReadError):
                        while chunk := self.tls.read(MiB):
                            received += chunk
        finally:
            self.sock.settimeout(TIMEOUT)
        self.shutdown_write()
        return bytes(received + self.read_until_end())

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("end", ["close_notify", "fin"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("loop", LOOPS)
def test_tls_half_close(loop: str, impl: str, end: str, tls: TLSFiles) -> None:
    """Under TLS both paths answer megabytes sent before the client's end of stream.

    ``close_notify``: TLS's own end of stream, then the TCP FIN. ``fin``: the TCP FIN
    alone, as a client that half-closes its socket under TLS sends.
    """
    with running_server(server_argv(loop, impl, *tls.server_flags)) as server:
        for size in HALF_CLOSE_SIZES:
            message = random.Random(size).randbytes(size)
            client = MemoryTLSClient(tls, server.address)
            try:
                client.send(message)
                if end == "close_notify":
                    client.close_notify()
                client.shutdown_write()
                assert_double_reply(message, client.read_until_end())
                assert client.ended_by == "close_notify", "the server closes TLS cleanly"
            finally:
                client.close()
    assert "Traceback" not in server.stderr_text()


@pytest.mark.parametrize(("loop", "impl"), SERVERS)
def test_tls_backpressure_loses_nothing(loop: str, impl: str, tls: TLSFiles) -> None:
    """Under TLS too a client pushing without reading stalls, and then gets every reply.

    The server stops decrypting while its replies back up; when they drain, bytes it
    had decrypted but not handed on must still be answered, with nothing new arriving
    to prompt it. Without backpressure the push would not stall; a lost wake-up would
    leave the finish waiting for replies.
    """
    total = 64 * MiB
    with running_server(server_argv(loop, impl, *tls.server_flags)) as server:
        pid = server.process.pid
        client = MemoryTLSClient(tls, server.address)
        try:
            client.send(b"x" * 256 * 1024)
            idle_kib = proc_status_kib(pid, "VmRSS")
            sent = client.push_until_stalled(total, STALL_SECONDS)
            assert sent < total, "the server read everything: no backpressure"
            # Every record that left whole is answered with nothing more sent: the
            # last wake-ups come from the server's own resume, not from new input.
            whole = 256 * 1024 + sent - (16 * 1024 if client.unsent else 0)
            reply = client.read_exactly(2 * whole)
            reply += client.finish()
            assert len(reply) == 2 * (256 * 1024 + sent)
            assert reply.count(b"x") == len(reply)
            assert proc_status_kib(pid, "VmHWM") - idle_kib < RSS_ALLOWANCE_KIB
        finally:
            client.close()
    assert "Traceback" not in server.stderr_text()


# --- 5. faults -------------------------------------------------------------------------

FAULT_CYCLES = 10_000
# A reply big enough to be mid-flight when its client vanishes.
VANISHING_MESSAGE = random.Random(5).randbytes(64 * 1024)


def fault_cycle(address: tuple[str, int], cycle: int) -> None:
    """One hostile client: mostly connect, send, reset; sometimes worse."""
    sock = connect(address)
    kind = cycle % 50
    if kind == 0:
        sock.close()  # connect and send nothing, then a normal end of stream
        return
    if kind == 1:
        close_with_reset(sock)  # connect and send nothing, then vanish
        return
    if kind == 2:
        # Vanish mid-reply: read a little of a long reply, then reset.
        sock.sendall(VANISHING_MESSAGE)
        sock.recv(1024)
    else:
        sock.sendall(b"a message and then the client is gone")
    close_with_reset(sock)


@pytest.mark.slow
@pytest.mark.parametrize(("loop", "impl"), HEAVY_SERVERS)
def test_faults_leave_no_trace(loop: str, impl: str) -> None:
    """10,000 connect/send/reset cycles: file descriptors back, still serving, no traceback."""
    with running_server(server_argv(loop, impl, "--backlog", "1024")) as server:
        pid = server.process.pid
        with connect(server.address) as witness:
            exchange(witness, b"before the storm")
            baseline = open_fds(pid)
            for cycle in range(FAULT_CYCLES):
                fault_cycle(server.address, cycle)
            wait_until(lambda: open_fds(pid) == baseline, f"the server's fds back to {baseline}")
            exchange(witness, b"after the storm")
        with connect(server.address) as sock:
            exchange(sock, b"a newcomer is served")
    assert "Traceback" not in server.stderr_text()


IN_PROCESS_CYCLES = 1000


async def async_fault_cycle(address: tuple[str, int], cycle: int) -> None:
    """:func:`fault_cycle` with the event loop's socket methods."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, address)
        kind = cycle % 50
        if kind == 0:
            return  # connect, send nothing, end of stream (close, below)
        if kind == 2:
            await loop.sock_sendall(sock, VANISHING_MESSAGE)
            await loop.sock_recv(sock, 1024)
        elif kind != 1:
            await loop.sock_sendall(sock, b"a message and then the client is gone")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


async def wait_until_async(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {TIMEOUT} s: {what}")
        await asyncio.sleep(POLL_INTERVAL)  # sleep-ok: the server's counters announce nothing


@pytest.mark.parametrize("impl", IMPLS)
async def test_faults_leave_no_tasks(impl: str, caplog: pytest.LogCaptureFixture) -> None:
    """In this process: after the fault cycles, the task count is back where it started."""
    caplog.set_level(logging.WARNING)
    server = IMPLEMENTATIONS[impl]()
    await server.listen(0, "127.0.0.1", backlog=1024)
    address = server.sockets[0].getsockname()
    try:
        tasks_before = len(asyncio.all_tasks())
        for cycle in range(IN_PROCESS_CYCLES):
            await async_fault_cycle(address, cycle)
        await wait_until_async(
            lambda: server.connections == 0 and len(asyncio.all_tasks()) == tasks_before,
            f"no connection left and {tasks_before} tasks",
        )
        stream = await TCPClient().connect(*address, timeout=TIMEOUT)
        await stream.write(b"still here")
        assert await stream.read_bytes(20) == b"still hereereh llits"
        stream.close()
    finally:
        await server.close(timeout=TIMEOUT)
    assert server.connections_served == IN_PROCESS_CYCLES + 1
    assert not caplog.records, [record.getMessage() for record in caplog.records]


@pytest.mark.parametrize("impl", IMPLS)
async def test_idle_server_hands_memory_back(impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once its last connection has gone, the server trims the allocator, once.

    (Without it, the soak's TLS fast-path run ended 25 MiB above its warmed-up size,
    glibc keeping freed buffers; ``tests/test_cold_start.py`` shows the trim's effect.)
    """
    released = asyncio.Event()
    calls: list[int] = []

    def release() -> None:
        calls.append(server.connections)
        released.set()

    monkeypatch.setattr(runtime, "release_free_memory", release)
    monkeypatch.setattr(server_base, "MEMORY_RELEASE_DELAY", 0.05)
    server = IMPLEMENTATIONS[impl]()
    await server.listen(0, "127.0.0.1")
    address = server.sockets[0].getsockname()
    try:
        first = await TCPClient().connect(*address, timeout=TIMEOUT)
        second = await TCPClient().connect(*address, timeout=TIMEOUT)
        for stream in (first, second):
            await stream.write(b"hello")
            assert await stream.read_bytes(10) == b"helloolleh"
        first.close()
        await wait_until_async(lambda: server.connections == 1, "one connection left")
        second.close()
        async with asyncio.timeout(TIMEOUT):
            await released.wait()
    finally:
        await server.close(timeout=TIMEOUT)
    assert calls == [0], "trimmed once, with no connection open"


# --- 6. workers: tests/test_workers.py ------------------------------------------------


# --- 7. TLS -----------------------------------------------------------------------------


@pytest.mark.parametrize(("loop", "impl"), SERVERS)
def test_tls_exchange(loop: str, impl: str, tls: TLSFiles) -> None:
    """A TLS client (Python's ssl, then the client script with --cafile) is served."""
    with running_server(server_argv(loop, impl, *tls.server_flags)) as server:
        with tls_connect(tls, server.address) as sock:
            for message in (b"hello", random.Random(7).randbytes(45), b"over"):
                exchange(sock, message)
            assert sock.recv(1) == b"", "over closes under TLS too"
        result = subprocess.run(
            [*CLIENT, "--port", str(server.port), "--cafile", str(tls.cafile), *MESSAGES],
            capture_output=True,
            timeout=TIMEOUT,
            cwd=ROOT,
        )
        assert (result.returncode, result.stderr) == (0, b""), result.stderr.decode()
        assert result.stdout == b"hello\nolleh\nover\nrevo\n"
    assert "Traceback" not in server.stderr_text()


def test_tls_client_checks_the_certificate(tls: TLSFiles) -> None:
    """--tls verifies the server: a certificate from an unknown CA is one line, exit 1;
    --insecure skips the check (and says nothing)."""
    with running_server(server_argv("asyncio", "streams", *tls.server_flags)) as server:
        refused, insecure = (
            subprocess.run(
                [*CLIENT, "--port", str(server.port), flag, *MESSAGES],
                capture_output=True,
                timeout=TIMEOUT,
                cwd=ROOT,
            )
            for flag in ("--tls", "--insecure")
        )
    assert refused.returncode == 1, refused
    assert refused.stdout == b""
    assert refused.stderr.count(b"\n") == 1
    assert b"certificate verify failed" in refused.stderr, refused.stderr
    assert (insecure.returncode, insecure.stderr) == (0, b""), insecure.stderr.decode()
    assert insecure.stdout == b"hello\nolleh\nover\nrevo\n"


async def test_tls_exchange_with_tcpclient(tls: TLSFiles) -> None:
    """iostream.TCPClient over TLS, on each loop the suite runs (server: the fast path)."""
    with running_server(server_argv("uvloop", "protocol", *tls.server_flags)) as server:
        stream = await TCPClient().connect(
            server.host,
            server.port,
            timeout=TIMEOUT,
            ssl=tls.client_context,
            server_hostname="localhost",
        )
        try:
            message = b"a message of more than twenty bytes"
            await stream.write(message)
            assert await stream.read_bytes(2 * len(message)) == double_reply(message)
        finally:
            stream.close()


def client_hello_start(tls: TLSFiles) -> bytes:
    """The first bytes of a real ClientHello: a handshake that starts and then stalls."""
    bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_object = tls.client_context.wrap_bio(bio_in, bio_out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls_object.do_handshake()
    return bio_out.read()[:40]


# Short, so the stalled handshakes end quickly; long enough for a real one.
HANDSHAKE_TIMEOUT = 1.0


@pytest.mark.parametrize(("loop", "impl"), SERVERS)
def test_tls_drops_hostile_clients(loop: str, impl: str, tls: TLSFiles) -> None:
    """Plain TCP, garbage and stalled handshakes are dropped; a good connection goes on.

    Without --handshake-timeout reaching the server, the stalled handshakes would wait
    asyncio's default 60 s, far past TIMEOUT.
    """
    argv = server_argv(loop, impl, *tls.server_flags, "--handshake-timeout", str(HANDSHAKE_TIMEOUT))
    with running_server(argv) as server:
        pid = server.process.pid
        with tls_connect(tls, server.address) as good:
            exchange(good, b"before the trouble")
            baseline = open_fds(pid)
            hostile = [connect(server.address) for _ in range(5)]
            hostile[0].sendall(b"hello, this is plain TCP\n")
            hostile[1].sendall(b"GET / HTTP/1.0\r\n\r\n")
            hostile[2].sendall(random.Random(2).randbytes(4096))
            hostile[3].sendall(client_hello_start(tls))
            # hostile[4] connects and says nothing.
            for sock in hostile:
                assert_dropped(sock)
                sock.close()
            exchange(good, b"after the trouble, undisturbed")
            with tls_connect(tls, server.address) as newcomer:
                exchange(newcomer, b"and a newcomer")
            wait_until(lambda: open_fds(pid) == baseline, f"the server's fds back to {baseline}")
    assert "Traceback" not in server.stderr_text()


# --- 8. Unix sockets and IPv6 -------------------------------------------------------------


@pytest.mark.parametrize(("loop", "impl"), SERVERS)
def test_unix_socket(loop: str, impl: str, tmp_path: Path) -> None:
    """--unix PATH on the server, and on the client script."""
    path = tmp_path / "echo.sock"
    with running_server(server_argv(loop, impl, "--unix", str(path))) as server:
        assert server.ready_line == f"echo20 listening on unix:{path} (loop: {loop})"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(path))
            for message in (b"hello", random.Random(8).randbytes(45), b"over"):
                exchange(sock, message)
            assert sock.recv(1) == b""
        result = subprocess.run(
            [*CLIENT, "--unix", str(path), "-m", "over unix", "-m", "over"],
            capture_output=True,
            timeout=TIMEOUT,
            cwd=ROOT,
        )
        assert (result.returncode, result.stderr) == (0, b""), result.stderr.decode()
        assert result.stdout == b"over unix\nxinu revo\nover\nrevo\n"
    assert "Traceback" not in server.stderr_text()


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
@pytest.mark.parametrize("impl", IMPLS)
def test_ipv6(impl: str) -> None:
    with running_server(server_argv("uvloop", impl, "--host", "::1")) as server:
        assert server.host == "::1"
        with connect(server.address, socket.AF_INET6) as sock:
            for message in (b"hello", random.Random(6).randbytes(45)):
                exchange(sock, message)


# --- 9. text mode -----------------------------------------------------------------------

HELLO_WORLD = "你好，世界"


def text_reply(*chunks: str | bytes) -> bytes:
    """The text-mode reply to these chunks: each, then reversed by character."""
    out = b""
    for chunk in chunks:
        data = chunk.encode() if isinstance(chunk, str) else chunk
        text = data.decode("utf-8", "surrogateescape")
        out += data + text[::-1].encode("utf-8", "surrogateescape")
    return out


@pytest.mark.parametrize(("loop", "impl"), SERVERS)
def test_text_mode(loop: str, impl: str) -> None:
    """--text: chunks end between characters and reverse by character; replies stay 2N."""
    cases: list[tuple[bytes, bytes]] = [
        (HELLO_WORLD.encode(), text_reply(HELLO_WORLD)),
        # 45 bytes of 3-byte characters: chunks of 6 characters (18 bytes), not 20.
        ((HELLO_WORLD * 3).encode(), text_reply("你好，世界你", "好，世界你好", "，世界")),
        # Not UTF-8: those bytes reverse one by one, the characters around them whole.
        (b"caf\xc3\xa9 \xff\xfe ok", b"caf\xc3\xa9 \xff\xfe ok" + b"ko \xfe\xff \xc3\xa9fac"),
        (b"abc\xe4\xbd", text_reply(b"abc\xe4\xbd")),
        # ASCII is unchanged by text mode.
        (b"twenty-one bytes, yes", double_reply(b"twenty-one bytes, yes")),
    ]
    with running_server(server_argv(loop, impl, "--text")) as server:
        with connect(server.address) as sock:
            for message, reply in cases:
                sock.sendall(message)
                received = recv_exactly(sock, 2 * len(message))
                assert received == reply, (message, received)
        second_half = text_reply(HELLO_WORLD)[len(HELLO_WORLD.encode()) :]
        assert second_half.decode() == "界世，好你"
    assert "Traceback" not in server.stderr_text()


def test_without_text_mode_the_reversal_is_by_byte() -> None:
    """The default keeps the seed's wire: the reversed half of Chinese text is garbled."""
    message = HELLO_WORLD.encode()
    with (
        running_server(server_argv("uvloop", "protocol")) as server,
        connect(server.address) as sock,
    ):
        sock.sendall(message)
        assert recv_exactly(sock, 2 * len(message)) == message + message[::-1]
