"""Server processes for the benchmark: start, pin, prime, watch and stop them.

Every target is its own process, in its own session (a Ctrl-C reaches the benchmark
only, which then stops every server itself), pinned to one CPU, known to be listening
from its ready line.
"""

from __future__ import annotations

import os
import re
import selectors
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from echo20.bench.targets import Target, server_argv
from echo20.bench.tools import Tools
from echo20.cli import parse_ready_line
from echo20.errors import BenchError, ProtocolError
from echo20.protocol import split_reply

__all__ = ["Pinning", "Server", "choose_cpus", "servers_running", "start_target"]

# Seconds a server gets to print its ready line (Tornado and uvloop imports on a busy
# machine take a while), and to exit after SIGTERM before it is killed.
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Seconds for the priming exchange.
PRIME_TIMEOUT = 10.0
# Before each cell the server must have been quiet (under QUIET_SHARE of a CPU) for one
# QUIET_INTERVAL, waiting at most QUIET_TIMEOUT seconds.
QUIET_INTERVAL = 0.1
QUIET_SHARE = 0.02
QUIET_TIMEOUT = 15.0


@dataclass(frozen=True)
class Pinning:
    """Which CPU the server and the load generator run on (None: wherever)."""

    server_cpu: int | None
    loadgen_cpu: int | None
    note: str


def choose_cpus(enabled: bool) -> Pinning:
    """Server on the first usable CPU, load generator on the second, when there are two."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled:
        return Pinning(None, None, "not pinned (--no-pin)")
    if len(cpus) < 2:
        return Pinning(None, None, "not pinned: one usable CPU, shared by server and load")
    return Pinning(cpus[0], cpus[1], f"server on CPU {cpus[0]}, load generator on CPU {cpus[1]}")


def pin_process(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` to ``cpu``; threads it starts later inherit the mask."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), {cpu})


def read_line(stream: IO[bytes], deadline: float) -> str:
    """One line from a child's pipe, waiting until ``deadline`` (``time.monotonic``).

    Returns ``""`` at end of file; raises ``TimeoutError`` when the deadline passes.
    """
    fd = stream.fileno()
    data = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace")


def read_status_kib(pid: int, key: str) -> int | None:
    """A ``/proc/PID/status`` value in KiB (``VmRSS``, ``VmHWM``), None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB$", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def process_cpu_ns(pid: int) -> int | None:
    """CPU time of every thread of ``pid`` so far (scheduler run time), None if gone."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with suppress(FileNotFoundError):
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    except OSError:
        return None
    return total


def wait_until_idle(pid: int) -> bool:
    """Wait (at most QUIET_TIMEOUT) until the server stops using CPU; False if it never did.

    A slow server may still be answering the previous cell's last messages after its
    clients left; that work must not land in the next cell's window.
    """
    deadline = time.monotonic() + QUIET_TIMEOUT
    before = process_cpu_ns(pid)
    while before is not None and time.monotonic() < deadline:
        time.sleep(QUIET_INTERVAL)  # sleep-ok: sampling the server's CPU time
        after = process_cpu_ns(pid)
        if after is None or after - before < QUIET_INTERVAL * 1e9 * QUIET_SHARE:
            return True
        before = after
    return before is None


@dataclass
class Server:
    """A target's server process, known to be listening."""

    target: Target
    process: subprocess.Popen[bytes]
    host: str
    port: int
    ready_line: str
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_status(self) -> int | None:
        """None while it runs."""
        return self.process.poll()

    def stderr_tail(self, lines: int = 6) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM, then the exit status; killed (and -9 returned) after STOP_TIMEOUT."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return status


def start_server(target: Target, argv: Sequence[str], *, log_dir: Path, cpu: int | None) -> Server:
    """Start a server, wait for its ready line, pin it; BenchError (with stderr) if it fails."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"{target.label}.stderr"
    with stderr_path.open("ab") as stderr:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    assert process.stdout is not None
    try:
        line = read_line(process.stdout, time.monotonic() + READY_TIMEOUT)
    except TimeoutError:
        line = ""
    except BaseException:  # Ctrl-C while it starts: no server is left behind
        process.kill()
        process.wait()
        raise
    ready = parse_ready_line(line)
    server = Server(target, process, "", 0, line.strip(), stderr_path)
    if ready is None:
        status = server.stop()
        said = f"printed {line.strip()!r}" if line.strip() else "printed no ready line"
        tail = server.stderr_tail(1)
        raise BenchError(
            f"{shlex.join(argv)} {said} (exit status {status})" + (f": {tail}" if tail else "")
        )
    server.host, server.port = ready.host, ready.port
    if cpu is not None:
        pin_process(server.pid, cpu)
    return server


def start_target(
    target: Target, *, tools: Tools, host: str, log_dir: Path, cpu: int | None
) -> Server:
    """Start one target's server."""
    argv = server_argv(target, host, str(tools.server))
    return start_server(target, argv, log_dir=log_dir, cpu=cpu)


def prime(server: Server) -> None:
    """One exchange on one connection, then close it: the server has served a client.

    On the default asyncio loop this matters: until a connection's end of stream frees a
    256 KiB receive buffer, glibc keeps its mmap threshold low and every recv maps and
    unmaps memory (python/cpython#85451). ``echo20-bench cold-start`` measures that
    effect; the matrix measures servers past it.
    """
    message = b"prime"
    with socket.create_connection((server.host, server.port), timeout=PRIME_TIMEOUT) as sock:
        sock.sendall(message)
        reply = b""
        while len(reply) < 2 * len(message):
            data = sock.recv(2 * len(message) - len(reply))
            if not data:
                break
            reply += data
    try:
        split_reply(message, reply)
    except ProtocolError as error:
        raise BenchError(f"{server.target.label}: wrong reply to {message!r}: {error}") from None


@contextmanager
def servers_running(
    targets: Sequence[Target],
    *,
    tools: Tools,
    host: str,
    log_dir: Path,
    cpu: int | None,
    failures: dict[Target, str],
    exit_statuses: dict[Target, int],
) -> Iterator[dict[Target, Server]]:
    """Start and prime every target; stop them all on the way out, whatever happens.

    A target that does not start is left out of the yielded dict, its reason recorded in
    ``failures``; every exit status after SIGTERM goes into ``exit_statuses``.
    """
    servers: dict[Target, Server] = {}
    try:
        for target in targets:
            try:
                servers[target] = start_target(
                    target, tools=tools, host=host, log_dir=log_dir, cpu=cpu
                )
                prime(servers[target])
            except (BenchError, OSError) as error:
                failures[target] = str(error)
        yield servers
    finally:
        for target, server in servers.items():
            exit_statuses[target] = server.stop()
