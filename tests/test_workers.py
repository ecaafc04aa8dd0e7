"""``--workers N`` over real sockets on 127.0.0.1: one listening socket, shared.

The supervisor binds and listens once and hands the socket to every worker, so a worker
that dies loses only the connections it had accepted; workers stop, as on SIGTERM, when
the supervisor is killed; ``--fd`` serves a socket inherited from any parent. What only
``/proc`` shows (child processes, who holds which socket, socket queues) is read there
with the helpers of ``test_hardening``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest
from support import PYTHON, ROOT, TIMEOUT, ServerProcess, start_server
from test_hardening import (
    QUEUED_MESSAGE,
    SMALL_RECEIVE_BUFFER,
    assert_double_reply,
    child_pids,
    connect,
    exchange,
    is_listening,
    is_running,
    listening_socket_inodes,
    read_by_server,
    recv_until_eof,
    refuses,
    send_all_nonblocking,
    server_argv,
    stopped_lines,
    wait_for_log,
    wait_until,
)

from echo20 import supervisor

# Both loops, each with one implementation, for the tests that cost seconds each.
LOOP_PAIRS = [
    pytest.param("asyncio", "streams", id="asyncio-streams"),
    pytest.param("uvloop", "protocol", id="uvloop-protocol"),
]


# --- helpers --------------------------------------------------------------------------


def worker_pids(server: ServerProcess, count: int) -> set[int]:
    """The supervisor's ``count`` workers, once each listens on the port."""
    pids: set[int] = set()

    def all_listening() -> bool:
        nonlocal pids
        pids = child_pids(server.process.pid)
        return len(pids) == count and all(is_listening(pid, server.port) for pid in pids)

    wait_until(all_listening, f"{count} workers listening")
    return pids


def kill_supervisor(server: ServerProcess) -> None:
    """After a failure: kill the parent and its workers (each in a session of its own)."""
    if server.process.poll() is not None:
        return
    workers = child_pids(server.process.pid)
    server.process.kill()
    server.process.wait()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remaining_stdout(server: ServerProcess) -> bytes:
    assert server.process.stdout is not None
    return server.process.stdout.read()


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds (``socket:[INODE]`` in /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    return inodes


# --- one socket for all workers -------------------------------------------------------


@pytest.mark.parametrize("impl", ["streams", "protocol"])
def test_workers_share_one_socket_and_restart(impl: str) -> None:
    """--workers 2: one ready line, one listening socket held by the parent and both
    workers, a killed worker comes back on the same socket, SIGTERM ends all."""
    server = start_server(server_argv("uvloop", impl, "--workers", "2"))
    try:
        workers = worker_pids(server, 2)
        [listening] = listening_socket_inodes(server.port)
        for pid in (server.process.pid, *workers):
            assert listening in socket_inodes(pid), f"process {pid} lacks the shared socket"
        # Ctrl-C at a terminal reaches the parent only: each worker leads its own session.
        assert all(os.getsid(pid) == pid != os.getsid(server.process.pid) for pid in workers)
        for number in range(32):
            with connect(server.address) as sock:
                exchange(sock, f"client {number}".encode())
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        wait_for_log(server, "is serving (restart 1)")
        restarted = worker_pids(server, 2)
        assert killed not in restarted
        assert len(restarted & workers) == 1
        assert listening_socket_inodes(server.port) == {listening}
        for pid in restarted:
            assert listening in socket_inodes(pid)
        for number in range(32):
            with connect(server.address) as sock:
                exchange(sock, f"client {number} after the restart".encode())
        assert server.stop(signal.SIGTERM) == 0
        assert remaining_stdout(server) == b"", "the ready line is printed once"
        gone = workers | restarted
        wait_until(lambda: not any(map(is_running, gone)), f"workers {gone} gone")
    finally:
        kill_supervisor(server)
    stderr = server.stderr_text()
    assert "Traceback" not in stderr
    summaries = stopped_lines(stderr)
    # The killed worker wrote no summary; the survivor and the new one did. Which worker
    # accepts a connection is the scheduler's choice: only the total is known.
    assert len(summaries) == 2, stderr
    assert 32 <= sum(served for served, _, _ in summaries) <= 64


def test_reuse_port_workers_listen_on_sockets_of_their_own() -> None:
    """--workers 2 --reuse-port: the old way, one SO_REUSEPORT socket per worker."""
    server = start_server(server_argv("asyncio", "protocol", "--workers", "2", "--reuse-port"))
    try:
        workers = worker_pids(server, 2)
        inodes = listening_socket_inodes(server.port)
        assert len(inodes) == 2
        assert [len(inodes & socket_inodes(pid)) for pid in workers] == [1, 1]
        # The parent only keeps the port reserved: it holds no listening socket.
        assert not inodes & socket_inodes(server.process.pid)
        with connect(server.address) as sock:
            exchange(sock, b"from a socket of its own")
        # SIGINT, as Ctrl-C sends it to the parent: forwarded as SIGTERM, a clean exit.
        assert server.stop(signal.SIGINT) == 0
        wait_until(lambda: not any(map(is_running, workers)), f"workers {workers} gone")
    finally:
        kill_supervisor(server)
    assert len(stopped_lines(server.stderr_text())) == 2


def test_workers_restarts_are_capped() -> None:
    """A worker that keeps dying is restarted 5 times, then the server gives up (status 1)."""
    server = start_server(server_argv("uvloop", "protocol", "--workers", "2"))
    seen: set[int] = set()
    survivor = 0
    try:
        for restarts in range(6):
            workers = worker_pids(server, 2)
            seen |= workers
            # One worker lives throughout; the other, and each of its replacements, dies.
            survivor = survivor or min(workers)
            [victim] = workers - {survivor}
            os.kill(victim, signal.SIGKILL)
            if restarts < 5:
                wait_for_log(server, f"is serving (restart {restarts + 1})")
        status = server.process.wait(timeout=TIMEOUT)
        server.stop()  # collects the rest of stderr; the server has exited already
        wait_until(lambda: not any(map(is_running, seen)), f"workers {seen} gone")
    finally:
        kill_supervisor(server)
    assert status == 1
    stderr = server.stderr_text()
    assert "giving up" in stderr
    assert "Traceback" not in stderr


def test_workers_zero_means_one_per_cpu() -> None:
    cpus = len(os.sched_getaffinity(0))
    server = start_server(server_argv("uvloop", "protocol", "--workers", "0"))
    try:
        worker_pids(server, cpus)
        with connect(server.address) as sock:
            exchange(sock, b"one of many")
        assert server.stop(signal.SIGTERM) == 0
    finally:
        kill_supervisor(server)
    assert len(stopped_lines(server.stderr_text())) == cpus


# --- a worker killed under a storm of connections --------------------------------------

# Client threads that connect, exchange one message and close, over and over, and the
# most connections each makes: the storm is bounded however slow the machine.
STORM_THREADS = 2
STORM_LIMIT = 2000
# Connections each thread makes before the kill, after it (while one worker is gone and
# its replacement starts), and once the replacement serves.
STORM_BEFORE = 50
STORM_DURING = 200
STORM_AFTER = 50
# Connections opened back to back the moment the kill returns, then served: within
# the first milliseconds, while the dying worker's sockets still exist. Below the
# listen backlog (128), so none waits for a SYN retry.
BURST = 64


def outcome_of_exchange(sock: socket.socket, message: bytes) -> BaseException | None:
    """None when ``message`` is answered in full on ``sock``, else what went wrong."""
    try:
        exchange(sock, message)
    except (OSError, AssertionError) as error:
        return error
    return None


@dataclass
class Storm:
    """Client threads hammering ``address``; every connection's start time and outcome."""

    address: tuple[str, int]
    # (monotonic time the connection began, None if served, else the error).
    outcomes: list[tuple[float, BaseException | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    progress: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> None:
        self.counts = [0] * STORM_THREADS
        for number in range(STORM_THREADS):
            thread = threading.Thread(target=self._run, args=(number,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, number: int) -> None:
        message = f"storm client {number}".encode()
        for _ in range(STORM_LIMIT):
            if self.stop.is_set():
                return
            self.record(time.monotonic(), self.one_connection(message))
            with self.progress:
                self.counts[number] += 1
                self.progress.notify_all()

    def one_connection(self, message: bytes) -> BaseException | None:
        try:
            sock = connect(self.address)
        except OSError as error:
            return error
        with sock:
            return outcome_of_exchange(sock, message)

    def record(self, began: float, outcome: BaseException | None) -> None:
        with self.lock:
            self.outcomes.append((began, outcome))

    def wait_for(self, each: int, what: str) -> None:
        """Wait until every thread has made ``each`` more connections."""
        with self.progress:
            targets = [count + each for count in self.counts]
            done = self.progress.wait_for(
                lambda: (
                    all(c >= t for c, t in zip(self.counts, targets, strict=True))
                    or not all(thread.is_alive() for thread in self.threads)
                ),
                timeout=TIMEOUT,
            )
            done = done and all(c >= t for c, t in zip(self.counts, targets, strict=True))
        assert done, f"not within {TIMEOUT} s or {STORM_LIMIT} connections: {what}"

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "a storm client hangs"


@pytest.mark.parametrize(("loop", "impl"), LOOP_PAIRS)
def test_killed_worker_loses_no_connection_made_after_it(loop: str, impl: str) -> None:
    """SIGKILL a worker under a storm: every connection begun after the kill is served.

    With a socket per worker (``--reuse-port``) the kernel keeps queueing connections
    for the dying worker until its sockets close, and resets them then: a burst made
    the moment the kill returns loses some (it did, every run, while this was written).
    With the one shared socket they wait in the queue the surviving worker accepts
    from. Connections the killed worker had accepted before may be lost: they are not
    counted.
    """
    server = start_server(server_argv(loop, impl, "--workers", "2"))
    storm = Storm(server.address)
    after_restart = Storm(server.address)
    try:
        workers = worker_pids(server, 2)
        storm.start()
        storm.wait_for(STORM_BEFORE, "the storm under way")
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        killed_at = time.monotonic()
        burst = []
        for _ in range(BURST):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(TIMEOUT)
            burst.append((time.monotonic(), sock))
            try:
                sock.connect(server.address)
            except OSError as error:
                storm.record(burst[-1][0], error)
                sock.close()
                burst.pop()
        for number, (began, sock) in enumerate(burst):
            with sock:
                storm.record(began, outcome_of_exchange(sock, f"burst {number}".encode()))
        storm.wait_for(STORM_DURING, "the storm after the kill")
        storm.finish()
        wait_for_log(server, "is serving (restart 1)")
        restarted = worker_pids(server, 2)
        assert killed not in restarted
        after_restart.start()
        after_restart.wait_for(STORM_AFTER, "the storm after the restart")
        after_restart.finish()
        assert server.stop(signal.SIGTERM) == 0
    finally:
        storm.stop.set()
        after_restart.stop.set()
        kill_supervisor(server)
    after = [o for began, o in storm.outcomes + after_restart.outcomes if began >= killed_at]
    lost = [repr(outcome) for outcome in after if outcome is not None]
    assert len(after) >= BURST + STORM_THREADS * (STORM_DURING + STORM_AFTER)
    assert not lost, f"{len(lost)} of {len(after)} connections made after the kill: {lost[:5]}"
    assert "Traceback" not in server.stderr_text()


# --- workers do not outlive their supervisor -------------------------------------------

# Short, because a client that never answers the server's end of stream holds each test
# for this long; still ample for the client that reads its owed replies meanwhile.
SHUTDOWN_TIMEOUT = 2.0
# What "at once" allows beyond the shutdown timeout: the kernel's signal, the loop's
# reaction, the process's exit.
EXIT_ALLOWANCE = 1.0


@pytest.mark.parametrize(("loop", "impl"), LOOP_PAIRS)
def test_workers_stop_when_the_supervisor_is_killed(loop: str, impl: str) -> None:
    """SIGKILL the supervisor with clients connected: the workers shut down as on SIGTERM.

    One client is owed a reply larger than its receive buffer (the rest waits in the
    worker); one idles and never answers the server's end of stream, so a worker must
    give up on it at --shutdown-timeout. Within that plus a second no worker remains,
    the port refuses connections, and the owed client got every reply byte the worker
    counted as sent, then the end of stream. Without the parent-death signal the
    workers would serve on as orphans.
    """
    argv = server_argv(loop, impl, "--workers", "2", "--shutdown-timeout", str(SHUTDOWN_TIMEOUT))
    server = start_server(argv)
    workers: set[int] = set()
    try:
        workers = worker_pids(server, 2)
        idle = connect(server.address)
        owed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with idle, owed:
            owed.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RECEIVE_BUFFER)
            owed.settimeout(TIMEOUT)
            owed.connect(server.address)
            send_all_nonblocking(owed, QUEUED_MESSAGE)
            wait_until(lambda: read_by_server(owed), "a worker has read the whole message")
            server.process.kill()
            killed_at = time.monotonic()
            assert server.process.wait(timeout=TIMEOUT) == -signal.SIGKILL
            received = recv_until_eof(owed)
            deadline = killed_at + SHUTDOWN_TIMEOUT + EXIT_ALLOWANCE
            wait_until(
                lambda: not any(map(is_running, workers)),
                f"workers {workers} gone within {SHUTDOWN_TIMEOUT} + {EXIT_ALLOWANCE} s",
                timeout=max(0.0, deadline - time.monotonic()),
            )
        assert refuses(server.address)
        server.stop()  # collects the rest of stderr: the workers wrote theirs
    finally:
        kill_supervisor(server)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    stderr = server.stderr_text()
    assert "Traceback" not in stderr
    summaries = stopped_lines(stderr)
    assert len(summaries) == 2, stderr
    [(_, _, bytes_out)] = [s for s in summaries if s[1] == len(QUEUED_MESSAGE)]
    assert len(received) == bytes_out > 0
    assert_double_reply(QUEUED_MESSAGE[: len(received) // 2], received)


def test_worker_whose_supervisor_is_already_gone_stops() -> None:
    """A worker started for a supervisor that is not its parent (it died before the
    worker could ask to be told) stops at once after its ready line, exit status 0."""
    argv = server_argv("asyncio", "protocol", "--supervisor-pid", str(os.getppid()))
    server = start_server(argv)
    try:
        assert server.process.wait(timeout=TIMEOUT) == 0
        server.stop()
    finally:
        kill_supervisor(server)
    assert f"the supervisor (pid {os.getppid()}) is gone: stopping" in server.stderr_text()


async def test_supervisor_watch_without_a_death_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel cannot signal a parent's death, the parent pid is polled."""
    monkeypatch.setattr(supervisor, "set_parent_death_signal", lambda signum: False)
    monkeypatch.setattr(supervisor, "SUPERVISOR_CHECK_INTERVAL", 0.01)
    stop = asyncio.Event()
    watcher = supervisor.watch_supervisor(os.getppid(), stop)
    assert watcher is not None
    try:
        await asyncio.sleep(0.05)  # sleep-ok: several polls, none of which may stop us
        assert not stop.is_set(), "the parent is alive"
    finally:
        watcher.cancel()
    stop = asyncio.Event()
    watcher = supervisor.watch_supervisor(os.getpid(), stop)  # not our parent
    assert watcher is not None
    async with asyncio.timeout(TIMEOUT):
        await stop.wait()
    await watcher


# --- serving a socket inherited from any parent (--fd) --------------------------------

# A parent that binds and listens, then runs the server on the socket, as a service
# manager's socket activation does.
_ACTIVATE = (
    "import os, socket, sys; "
    "sock = socket.create_server(('127.0.0.1', 0)); "
    "sock.set_inheritable(True); "
    "os.execv(sys.executable, [sys.executable, sys.argv[1], '--fd', str(sock.fileno()), "
    "*sys.argv[2:]])"
)


def test_fd_serves_an_inherited_socket() -> None:
    argv = [PYTHON, "-c", _ACTIVATE, str(ROOT / "echo_server.py"), "--loop", "uvloop"]
    server = start_server(argv)
    try:
        assert server.host == "127.0.0.1"
        with connect(server.address) as sock:
            exchange(sock, b"on an inherited socket")
        assert server.stop() == 0
    finally:
        kill_supervisor(server)
    assert len(stopped_lines(server.stderr_text())) == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(["--fd", "0"], "--fd: file descriptor 0: socket operation on non-socket"),
        pytest.param(["--fd", "3", "--workers", "2"], "--fd serves one process"),
        pytest.param(["--fd", "3", "--unix", "x.sock"], "--fd serves one process"),
    ],
)
def test_fd_bad_values(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [PYTHON, str(ROOT / "echo_server.py"), *flags],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("echo20-server: error:")
    assert message in line
