"""A client's reset, or its disappearance, closes the server's descriptor within a second.

Every ``--impl`` on asyncio and uvloop, each a server process on 127.0.0.1. The clients
reset in each place a handler can be: before it starts (the reset arrives with the
bytes), while it waits to read, while it drains a reply the client does not read, and
with nothing sent at all. A client that vanishes without its reset reaching the server
(what a reset dropped by an overloaded kernel looks like) is found by the server's TCP
keepalive. The descriptors are read from ``/proc/PID/fd``, which announces nothing: it
is polled until the count is back, with a deadline that fails loudly.
``tools/reset_storm.py`` is the same check under load, thousands of clients at a time.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import TIMEOUT, ServerProcess, close_with_reset, echo_server_argv, start_server

IMPLS = ("streams", "iostream", "protocol")
LOOPS = ("asyncio", "uvloop")
SERVERS = [(impl, loop) for loop in LOOPS for impl in IMPLS]

# A reset connection's descriptor is closed within this many seconds of the reset.
RESET_DEADLINE = 1.0
# The server's default --keepalive (seconds), and what a vanished client may take: the
# probe goes out that long after the connection's last packet, draws a reset from the
# client's host, and the server closes as after any reset. The second second is margin
# for the timer's granularity and a busy machine: without keepalive it never closes.
KEEPALIVE = 1
VANISH_DEADLINE = KEEPALIVE + 1.0
# Linux's TCP_REPAIR: a socket in repair mode closes without sending anything.
TCP_REPAIR = 19

# Connections of each kind per server.
EACH = 8
SMALL = b"a message, then the client is gone" * 10
# The most a TCP socket's send buffer grows to here (net.ipv4.tcp_wmem).
SNDBUF_MAX = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
# Its reply, 1.5 times that, to a client that reads 1 KiB of it through a small receive
# buffer, is more than the kernel holds on the server's side: the server ends up
# waiting to write (a streams handler in drain(), an IOStream one for its write) with
# the rest. On the way in the server reads about half of it before that, so the rest
# fits in the buffers and sending it does not block.
LARGE = b"x" * (SNDBUF_MAX * 3 // 4)
SMALL_RCVBUF = 4096
DRAINING = 2
POLL_INTERVAL = 0.005
# The reset watch's report ends with this line.
END_OF_REPORT = "reset watch: end of report"


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_until(condition: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail once ``time.monotonic()`` passes
    ``deadline``."""
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(POLL_INTERVAL)  # sleep-ok: polling /proc, which announces nothing


def connect(server: ServerProcess, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    if rcvbuf is not None:
        # Before connecting: the window offered in the handshake follows it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(server.address)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> None:
    got = 0
    while got < size:
        data = sock.recv(size - got)
        assert data, f"end of stream after {got} of {size} bytes"
        got += len(data)


def start_servers() -> dict[tuple[str, str], ServerProcess]:
    """All six servers, started side by side."""
    with concurrent.futures.ThreadPoolExecutor(len(SERVERS)) as pool:
        futures = {
            (impl, loop): pool.submit(
                start_server, echo_server_argv("--impl", impl, "--loop", loop)
            )
            for impl, loop in SERVERS
        }
    return {key: future.result() for key, future in futures.items()}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[tuple[str, str], ServerProcess]]:
    started = start_servers()
    try:
        for server in started.values():
            # One whole exchange first: whatever a server opens on its first connection
            # is open before the baseline is taken.
            pid = server.process.pid
            with connect(server) as sock:
                sock.sendall(SMALL)
                recv_exactly(sock, 2 * len(SMALL))
                held = open_fds(pid)
            # ... and that connection is closed on the server's side too: a baseline taken
            # while it still was open would wait for one connection more than there is.
            wait_until(
                fds_below(pid, held),
                time.monotonic() + TIMEOUT,
                "the server closes its first connection",
            )
        yield started
    finally:
        for server in started.values():
            server.stop()
    for (impl, loop), server in started.items():
        assert "Traceback" not in server.stderr_text(), f"{impl} on {loop}"


def fds_at(pid: int, count: int) -> Callable[[], bool]:
    return lambda: open_fds(pid) == count


def fds_at_least(pid: int, count: int) -> Callable[[], bool]:
    return lambda: open_fds(pid) >= count


def fds_below(pid: int, count: int) -> Callable[[], bool]:
    return lambda: open_fds(pid) < count


@pytest.mark.parametrize(("impl", "loop"), SERVERS, ids=[f"{i}-{lp}" for i, lp in SERVERS])
def test_reset_closes_the_descriptor_within_a_second(
    servers: dict[tuple[str, str], ServerProcess], impl: str, loop: str
) -> None:
    server = servers[impl, loop]
    pid = server.process.pid
    baseline = open_fds(pid)
    clients: list[socket.socket] = []
    # Reading: the handler has answered and waits for more.
    for _ in range(EACH):
        sock = connect(server)
        sock.sendall(SMALL)
        recv_exactly(sock, 2 * len(SMALL))
        clients.append(sock)
    # Draining: the client reads a little of a long reply, the rest waits in the server.
    for _ in range(DRAINING):
        sock = connect(server, rcvbuf=SMALL_RCVBUF)
        sock.sendall(LARGE)
        recv_exactly(sock, 1024)
        clients.append(sock)
    # Nothing sent: the handler waits for its first bytes.
    clients.extend(connect(server) for _ in range(EACH))
    # Every connection so far is accepted (the count shows it) before any is reset.
    wait_until(
        fds_at_least(pid, baseline + len(clients)),
        time.monotonic() + TIMEOUT,
        f"the server holds the {len(clients)} connections",
    )
    first_reset = time.monotonic()
    for sock in clients:
        close_with_reset(sock)
    # Bytes and the reset at once: the server reads both together, often before its
    # handler has started, and (uvloop) sees an end of stream rather than the reset:
    # the handler must close.
    for _ in range(EACH):
        sock = connect(server)
        sock.sendall(SMALL)
        close_with_reset(sock)
        clients.append(sock)
    wait_until(
        fds_at(pid, baseline),
        first_reset + RESET_DEADLINE,
        f"{impl} on {loop}: {open_fds(pid) - baseline} of {len(clients)} reset connections "
        f"still open {RESET_DEADLINE} s after the resets",
    )


def vanish(sock: socket.socket) -> None:
    """Close ``sock`` without a reset or an end of stream reaching the server."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    except PermissionError as error:
        raise AssertionError(f"TCP_REPAIR needs CAP_NET_ADMIN (run as root): {error}") from None
    sock.close()


def test_vanished_client_is_dropped_by_keepalive(
    servers: dict[tuple[str, str], ServerProcess],
) -> None:
    """A client gone without a reset the server heard: TCP keepalive finds it (all six
    servers at once, so the wait is paid once)."""
    baselines = {key: open_fds(server.process.pid) for key, server in servers.items()}
    clients = []
    for server in servers.values():
        sock = connect(server)
        sock.sendall(SMALL)
        # The whole reply: nothing is left in flight to draw a reset from the client.
        recv_exactly(sock, 2 * len(SMALL))
        clients.append(sock)
    gone = time.monotonic()
    for sock in clients:
        vanish(sock)
    for (impl, loop), server in servers.items():
        wait_until(
            fds_at(server.process.pid, baselines[impl, loop]),
            gone + VANISH_DEADLINE,
            f"{impl} on {loop}: a vanished client's connection still open "
            f"{VANISH_DEADLINE} s after it went",
        )


def watch_report(server: ServerProcess) -> str:
    """The reset watch's report, asked for with SIGUSR1."""
    before = server.stderr_text()
    reports = before.count(END_OF_REPORT)
    server.process.send_signal(signal.SIGUSR1)
    wait_until(
        lambda: server.stderr_text().count(END_OF_REPORT) > reports,
        time.monotonic() + TIMEOUT,
        "the reset watch's report",
    )
    return server.stderr_text()[len(before) :]


def test_reset_watch_reports_where_handlers_were() -> None:
    """ECHO20_RESET_WATCH: SIGUSR1 logs every open connection with where its handler
    is, and where each lost connection's handler was when the loss came."""
    argv = echo_server_argv("--impl", "streams", "--loop", "asyncio")
    server = start_server(["env", "ECHO20_RESET_WATCH=1", *argv])
    try:
        pid = server.process.pid
        with connect(server) as idle:
            idle.sendall(SMALL)
            recv_exactly(idle, 2 * len(SMALL))
            baseline = open_fds(pid)
            for _ in range(3):
                sock = connect(server)
                sock.sendall(SMALL)
                recv_exactly(sock, 2 * len(SMALL))
                close_with_reset(sock)
            draining = connect(server, rcvbuf=SMALL_RCVBUF)
            draining.sendall(LARGE)
            recv_exactly(draining, 1024)
            # The report shows the handler draining; then the reset comes.
            deadline = time.monotonic() + TIMEOUT
            while "handler draining" not in (report := watch_report(server)):
                assert time.monotonic() < deadline, f"no handler draining: {report}"
            close_with_reset(draining)
            wait_until(fds_at(pid, baseline), time.monotonic() + TIMEOUT, "the resets closed")
            report = watch_report(server)
        assert "handlers when their connection was lost: draining=1, reading=3" in report, report
        assert "1 connections open" in report, report
        assert "open; handler reading (StreamConnection" in report, report
    finally:
        server.stop()
