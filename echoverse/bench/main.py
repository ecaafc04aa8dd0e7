"""The echoverse benchmark: every server on every event loop, under one closed-loop load.

Run it::

    python bench.py run                        # the whole matrix, medians of 3 repeats
    python bench.py run --targets c,protocol --loops uvloop --connections 16 --sizes 200
    python bench.py idle --connections 10000   # RSS per idle connection
    python bench.py cold-start                 # a fresh server against one that has served

Every target is its own server process, pinned to one CPU; the load comes from a small C
program (``tools/c_loadgen.c``) pinned to another, with one message in flight per
connection (closed loop). Both C programs, the load generator and the reference server
``tools/c_echo_server.c``, are compiled with ``cc -O2`` on first use into
``bench-results/build/``. Every reply is checked byte by byte: a wrong reply is an error
in the table, never a fast number.

Targets (the same words as the command lines; labels are ``target-loop``):

* ``c``: the minimal epoll server, one recv and one send per batch: the yardstick.
* ``floor``: the least a Python server can do on the loop: a bare protocol that writes
  each batch's reply (``build_reply``) and nothing else, no counters, limits or
  ``over`` (``python bench.py serve-floor``). Not a product: it shows how much of a
  ratio to ``c`` is the event loop's own cost, which no server code can remove.
* ``tornado``: the seed on Tornado, as it is (Nagle on: about 40 ms per exchange).
* ``tornado-nodelay``: the same with ``TCP_NODELAY``, to compare CPU fairly.
* ``naive``: the naive asyncio port, kept as a baseline (``python bench.py serve-naive``).
* ``streams``: ``echo_server.py --impl streams``, the faithful IOStream port.
* ``protocol``: ``echo_server.py --impl protocol``, the fast path.

"CPU per round trip" is the server process's own CPU time over the measured window (the
scheduler's run time of its threads, ``/proc/PID/task/*/schedstat``: what ``/proc/PID/stat``
counts as utime + stime, without its 10 ms ticks) divided by the round trips completed in
it: what one exchange costs the server, whatever the load generator managed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import selectors
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

from echoverse import cli, loops, runtime
from echoverse.errors import BenchError
from echoverse.netutil import close_gracefully
from protocol import CHUNK_SIZE, CLOSE_CHUNK, ProtocolError, build_reply, split_reply

__all__ = ["main"]

PROGRAM = "echoverse-bench"
ROOT = Path(__file__).resolve().parent

TARGETS = ("c", "floor", "tornado", "tornado-nodelay", "naive", "streams", "protocol")
# The Tornado reference runs on asyncio and uvloop (issue 4); tornado_server.py offers no more.
TORNADO_LOOPS = ("asyncio", "uvloop")
# What the C reference's ready line says instead of a Python loop's name.
C_LOOP = "epoll"

# Only loopback: the benchmark never listens on or connects to anything else.
HOSTS = ("127.0.0.1", "::1")

# Seconds a server gets to print its ready line (Tornado and uvloop imports on a busy
# machine take a while), and to exit after SIGTERM before it is killed.
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Seconds for the load generator to get every connection answered once. A slow target
# with large messages (naive, 256 x 1 MiB) can miss it: that cell then says so.
RAMP_TIMEOUT = 60.0
# Seconds the load generator may take beyond ramp, warm-up and window before it is killed.
LOADGEN_GRACE = 30.0
# Before each cell the server must have been quiet (under QUIET_SHARE of a CPU) for one
# QUIET_INTERVAL, waiting at most QUIET_TIMEOUT seconds.
QUIET_INTERVAL = 0.1
QUIET_SHARE = 0.02
QUIET_TIMEOUT = 15.0
# Seconds for the priming exchange and for compiling the C programs.
PRIME_TIMEOUT = 10.0
COMPILE_TIMEOUT = 120.0

# A load generator above this share of its core while the server stays below it was the
# bottleneck: the server could have done more.
BOTTLENECK_PCT = 90.0
# Another process's share of a pinned CPU above which the cell is marked contended.
CONTENDED_PCT = 10.0
# Issue 4: a fresh server costs at most this much more CPU per round trip than a warm one.
COLD_START_LIMIT = 1.2

READY_LINE = re.compile(
    r"^echoverse listening on (?:\[(?P<host6>[^\]]+)\]|(?P<host>[^:\s]+)):(?P<port>\d+)"
    r" \(loop: (?P<loop>[\w-]+)\)$"
)

LATENCY_KEYS = ("p50", "p90", "p99", "p99.9", "max")


# --- command-line values ------------------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2}


def byte_count(text: str) -> int:
    """A number of bytes: ``0``, ``200``, ``16k``, ``16KiB``, ``1m``, ``1MiB`` (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 200, 16k, 1MiB)")
    return int(match.group(1)) * _SIZE_UNITS[unit]


def parse_size(text: str) -> int:
    """A message size, at least one byte: ``200``, ``16k``, ``1MiB``."""
    size = byte_count(text)
    if size < 1:
        raise argparse.ArgumentTypeError(f"size must be at least 1 byte: {text!r}")
    return size


def size_list(text: str) -> list[int]:
    """``8,200,16k`` -> [8, 200, 16384]."""
    return [parse_size(part) for part in text.split(",") if part.strip()]


def count_list(text: str) -> list[int]:
    """``1,16,256`` -> [1, 16, 256]; every count at least 1."""
    counts: list[int] = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {part!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
        counts.append(value)
    return counts


def name_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """argparse type for a comma-separated list of names taken from ``choices``."""

    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown: {', '.join(unknown)} (choose from {', '.join(choices)})"
            )
        return names

    return parse


def matrix_points(
    connections: Sequence[int], sizes: Sequence[int], max_inflight: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The (connections, size) cells to run, and those over ``max_inflight`` bytes (0: none)."""
    points = [(c, size) for c in connections for size in sizes]
    kept = [(c, size) for c, size in points if not max_inflight or c * size <= max_inflight]
    return kept, [point for point in points if point not in kept]


def format_size(size: int) -> str:
    """8 -> ``8 B``, 16384 -> ``16 KiB``, 1048576 -> ``1 MiB``."""
    for unit, factor in (("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


# --- targets and their processes ----------------------------------------------------


@dataclass(frozen=True, order=True)
class Target:
    """One server implementation on one event loop: ``streams`` on ``uvloop``."""

    name: str
    loop: str

    @property
    def label(self) -> str:
        return f"{self.name}-{self.loop}"


@dataclass(frozen=True)
class Tools:
    """The compiled C programs."""

    server: Path
    loadgen: Path


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


def expand_targets(
    names: Sequence[str], loop_names: Sequence[str]
) -> tuple[list[Target], list[str]]:
    """Every requested target on every requested loop it runs on, and what was left out."""
    targets: list[Target] = []
    skipped: list[str] = []
    for name in names:
        if name == "c":
            targets.append(Target("c", C_LOOP))
            continue
        for loop in loop_names:
            if name.startswith("tornado") and loop not in TORNADO_LOOPS:
                skipped.append(f"{name}-{loop}: tornado_server.py runs on asyncio and uvloop only")
                continue
            targets.append(Target(name, loop))
    return targets, skipped


def server_argv(target: Target, host: str, tools: Tools) -> list[str]:
    """The command line that starts ``target`` on a free port of ``host``."""
    if target.name == "c":
        return [str(tools.server), "--host", host, "--port", "0"]
    python = sys.executable
    # Warnings only: per-connection log lines would be measured as server work.
    common = ["--host", host, "--port", "0", "--loop", target.loop, "--log-level", "warning"]
    if target.name == "tornado":
        return [python, "-m", "echoverse.reference.tornado_server", *common]
    if target.name == "tornado-nodelay":
        return [python, "-m", "echoverse.reference.tornado_server", *common, "--nodelay"]
    if target.name in ("naive", "floor"):
        return [python, "-m", "echoverse.bench", f"serve-{target.name}", *common]
    return [python, "-m", "echo_server", *common, "--impl", target.name]


def build_tools(build_dir: Path) -> Tools:
    """Compile the C server and load generator unless this exact source is already built.

    The binary's name carries a hash of its source, so an edited source is rebuilt and
    a stale binary is never run.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CC", "cc")
    built: dict[str, Path] = {}
    for name in ("c_echo_server", "c_loadgen"):
        source = ROOT / f"{name}.c"
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
        binary = build_dir / f"{name}-{digest}"
        if not binary.exists():
            command = [compiler, "-O2", "-Wall", "-o", str(binary), str(source)]
            try:
                result = subprocess.run(
                    command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT, check=False
                )
            except FileNotFoundError:
                raise BenchError(
                    f"no C compiler ({compiler}): the load generator and the C reference "
                    "are compiled on first use (set CC to choose another compiler)"
                ) from None
            if result.returncode != 0:
                raise BenchError(f"{shlex.join(command)} failed:\n{result.stderr.strip()}")
        built[name] = binary
    return Tools(server=built["c_echo_server"], loadgen=built["c_loadgen"])


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


def pin_process(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` to ``cpu``; threads it starts later inherit the mask."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), {cpu})


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
        # Its own session: a Ctrl-C in the terminal reaches bench.py only, which then
        # stops every server itself.
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
    match = READY_LINE.match(line.strip())
    server = Server(target, process, "", 0, line.strip(), stderr_path)
    if match is None:
        status = server.stop()
        said = f"printed {line.strip()!r}" if line.strip() else "printed no ready line"
        tail = server.stderr_tail()
        raise BenchError(
            f"{shlex.join(argv)} {said} (exit status {status})" + (f": {tail}" if tail else "")
        )
    server.host = match.group("host6") or match.group("host")
    server.port = int(match.group("port"))
    if cpu is not None:
        pin_process(server.pid, cpu)
    return server


def prime(server: Server) -> None:
    """One exchange on one connection, then close it: the server has served a client.

    On the default asyncio loop this matters: until a connection's end of stream frees a
    256 KiB receive buffer, glibc keeps its mmap threshold low and every recv maps and
    unmaps memory (CPython issue 85451). ``bench.py cold-start`` measures that effect;
    the matrix measures servers past it.
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
    primed: bool,
    failures: dict[Target, str],
    exit_statuses: dict[Target, int],
) -> Iterator[dict[Target, Server]]:
    """Start (and prime) every target; stop them all on the way out, whatever happens.

    A target that does not start is left out of the yielded dict, its reason recorded in
    ``failures``; every exit status after SIGTERM goes into ``exit_statuses``.
    """
    servers: dict[Target, Server] = {}
    try:
        for target in targets:
            try:
                servers[target] = launch(target, tools=tools, host=host, log_dir=log_dir, cpu=cpu)
                if primed:
                    prime(servers[target])
            except (BenchError, OSError) as error:
                failures[target] = str(error)
        yield servers
    finally:
        for target, server in servers.items():
            exit_statuses[target] = server.stop()


def launch(target: Target, *, tools: Tools, host: str, log_dir: Path, cpu: int | None) -> Server:
    """Start one target's server."""
    argv = server_argv(target, host, tools)
    return start_server(target, argv, log_dir=log_dir, cpu=cpu)


# --- one measurement ----------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """How each cell is driven: seconds of warm-up, of measurement, and to get going."""

    warmup: float
    duration: float
    # Seconds for every connection's first round trip; slower is reported as too slow.
    ramp_timeout: float = RAMP_TIMEOUT


@dataclass
class Run:
    """One load-generator run against one server: one repeat of one cell."""

    round_trips: int = 0
    elapsed_s: float = 0.0
    rt_per_s: float | None = None
    mib_per_s: float | None = None
    latency_us: dict[str, float] = field(default_factory=dict)
    cpu_us_per_rt: float | None = None
    server_cpu_pct: float | None = None
    loadgen_cpu_pct: float | None = None
    # Busy time of other processes on the server's and the load generator's CPUs.
    other_server_cpu_pct: float | None = None
    other_loadgen_cpu_pct: float | None = None
    peak_rss_kib: int | None = None
    flags: list[str] = field(default_factory=list)
    # Wall-clock seconds the whole run took: ramp, warm-up, window, teardown.
    wall_s: float = 0.0
    error: str | None = None
    # The target answered correctly but too slowly to measure in the time given.
    too_slow: bool = False


def run_loadgen(
    tools: Tools, server: Server, *, connections: int, size: int, load: Load, cpu: int | None
) -> dict[str, Any]:
    """Run the C load generator once; its JSON report (BenchError if it failed)."""
    argv = [
        str(tools.loadgen),
        "--host", server.host,
        "--port", str(server.port),
        "--connections", str(connections),
        "--size", str(size),
        "--warmup", str(load.warmup),
        "--duration", str(load.duration),
        "--server-pid", str(server.pid),
        "--ramp-timeout", str(load.ramp_timeout),
    ]  # fmt: skip
    if cpu is not None:
        argv += ["--cpu", str(cpu)]
    timeout = load.ramp_timeout + load.warmup + load.duration + LOADGEN_GRACE
    try:
        # subprocess.run kills the load generator if it overstays.
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the load generator did not finish within {timeout:.0f} s") from None
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise BenchError(
            f"the load generator failed (exit status {result.returncode}): "
            + (result.stderr.strip() or "no report")
        )
    report: dict[str, Any] = json.loads(lines[-1])
    return report


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
        time.sleep(QUIET_INTERVAL)
        after = process_cpu_ns(pid)
        if after is None or after - before < QUIET_INTERVAL * 1e9 * QUIET_SHARE:
            return True
        before = after
    return before is None


def measure(
    tools: Tools, server: Server, *, connections: int, size: int, load: Load, pinning: Pinning
) -> Run:
    """One closed-loop run: throughput, latency, server CPU and RSS, or what went wrong."""
    started = time.monotonic()
    run = Run()
    try:
        measure_into(
            run, tools, server, connections=connections, size=size, load=load, pinning=pinning
        )
    finally:
        run.wall_s = time.monotonic() - started
    return run


def measure_into(
    run: Run,
    tools: Tools,
    server: Server,
    *,
    connections: int,
    size: int,
    load: Load,
    pinning: Pinning,
) -> None:
    if server.exit_status() is None and not wait_until_idle(server.pid):
        run.flags.append("busy-before")
    if server.exit_status() is not None:
        run.error = f"server exited with status {server.exit_status()}: {server.stderr_tail(2)}"
        return
    reset_peak_rss(server.pid)
    try:
        report = run_loadgen(
            tools, server, connections=connections, size=size, load=load, cpu=pinning.loadgen_cpu
        )
    except BenchError as error:
        run.error = str(error)
        return
    run.peak_rss_kib = read_status_kib(server.pid, "VmHWM")
    status = server.exit_status()
    if status is not None:
        run.error = f"server exited with status {status}: {server.stderr_tail(2)}"
        return
    if report["errors"]:
        run.error = f"{report['errors']} error(s), first: {report['first_error']}"
        return
    if report["ramp_timed_out"]:
        run.error = f"too slow: {report['first_error']}"
        run.too_slow = True
        return
    if not report["measured"]:
        run.error = "not measured: " + (report["first_error"] or "no measured window")
        return
    run.round_trips = int(report["round_trips"])
    run.elapsed_s = elapsed = float(report["elapsed_s"])
    if run.round_trips == 0:
        run.error = f"too slow: no round trip completed in {load.duration:g} s"
        run.too_slow = True
        return
    run.rt_per_s = run.round_trips / elapsed
    run.mib_per_s = run.round_trips * size / elapsed / 2**20
    run.latency_us = {key: report["latency_ns"][key] / 1000 for key in LATENCY_KEYS}
    ticks_per_s = float(report["ticks_per_s"])
    # Nanoseconds from the scheduler when the kernel has them; clock ticks (10 ms) if not.
    if report.get("server_cpu_ns", -1) >= 0:
        server_cpu_s: float | None = report["server_cpu_ns"] / 1e9
    elif report["server_cpu_ticks"] >= 0:
        server_cpu_s = report["server_cpu_ticks"] / ticks_per_s
    else:
        server_cpu_s = None
    if server_cpu_s is not None:
        run.cpu_us_per_rt = server_cpu_s * 1e6 / run.round_trips
        run.server_cpu_pct = 100 * server_cpu_s / elapsed
    loadgen_cpu_s = report["loadgen_cpu_us"] / 1e6
    run.loadgen_cpu_pct = 100 * loadgen_cpu_s / elapsed
    busy: list[int] = report["cpu_busy_ticks"]
    total: list[int] = report["cpu_total_ticks"]
    if pinning.server_cpu is not None and pinning.loadgen_cpu is not None and busy:
        cpu_s, cpu_g = pinning.server_cpu, pinning.loadgen_cpu
        if total[cpu_s] and server_cpu_s is not None:
            others = busy[cpu_s] - server_cpu_s * ticks_per_s
            run.other_server_cpu_pct = max(0.0, 100 * others / total[cpu_s])
        if total[cpu_g]:
            others = busy[cpu_g] - loadgen_cpu_s * ticks_per_s
            run.other_loadgen_cpu_pct = max(0.0, 100 * others / total[cpu_g])
    run.flags += run_flags(run, pinning)


def run_flags(run: Run, pinning: Pinning) -> list[str]:
    """Warnings that qualify a run's numbers."""
    flags: list[str] = []
    if (
        run.loadgen_cpu_pct is not None
        and run.server_cpu_pct is not None
        and run.loadgen_cpu_pct >= BOTTLENECK_PCT
        and run.server_cpu_pct < BOTTLENECK_PCT
    ):
        flags.append("loadgen-bound")
    others = (run.other_server_cpu_pct, run.other_loadgen_cpu_pct)
    if any(other is not None and other > CONTENDED_PCT for other in others):
        flags.append("contended")
    if pinning.server_cpu is None:
        flags.append("unpinned")
    return flags


# --- cells: repeats, medians, ratios ------------------------------------------------


@dataclass
class Cell:
    """One target at one (connections, size) point, over its repeats."""

    target: Target
    connections: int
    size: int
    runs: list[Run] = field(default_factory=list)
    # Filled by summarize() once every repeat has run.
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return next((run.error for run in self.runs if run.error), None)

    @property
    def failed(self) -> bool:
        """A repeat failed for another reason than being too slow to measure."""
        return any(run.error and not run.too_slow for run in self.runs)

    def median(self, metric: Callable[[Run], float | None]) -> float | None:
        """The median of ``metric`` over the repeats that worked."""
        values = [metric(run) for run in self.runs if run.error is None]
        present = [value for value in values if value is not None]
        return statistics.median(present) if present else None

    def latency_median(self, key: str) -> float | None:
        return self.median(lambda run: run.latency_us.get(key))

    def summarize(self) -> dict[str, Any]:
        """Medians over the repeats, kept in ``summary`` (only ``error`` if one failed)."""
        self.summary = self._medians()
        return self.summary

    def _medians(self) -> dict[str, Any]:
        if self.error is not None or not self.runs:
            return {"error": self.error or "not run", "failed": self.failed or not self.runs}
        cpu = [run.cpu_us_per_rt for run in self.runs if run.cpu_us_per_rt is not None]
        flags = sorted({flag for run in self.runs for flag in run.flags})
        peaks = [run.peak_rss_kib for run in self.runs if run.peak_rss_kib is not None]
        return {
            "error": None,
            "failed": False,
            "rt_per_s": self.median(lambda r: r.rt_per_s),
            "mib_per_s": self.median(lambda r: r.mib_per_s),
            "latency_us": {key: self.latency_median(key) for key in LATENCY_KEYS},
            "cpu_us_per_rt": self.median(lambda r: r.cpu_us_per_rt),
            # (max - min) / median of CPU per round trip: the noise between repeats.
            "cpu_spread_pct": (
                100 * (max(cpu) - min(cpu)) / statistics.median(cpu) if len(cpu) > 1 else None
            ),
            "server_cpu_pct": self.median(lambda r: r.server_cpu_pct),
            "loadgen_cpu_pct": self.median(lambda r: r.loadgen_cpu_pct),
            "other_server_cpu_pct": self.median(lambda r: r.other_server_cpu_pct),
            "other_loadgen_cpu_pct": self.median(lambda r: r.other_loadgen_cpu_pct),
            "peak_rss_kib": max(peaks) if peaks else None,
            "flags": flags,
        }


def paired_ratio(
    runs: Sequence[Run], reference: Sequence[Run], metric: Callable[[Run], float | None]
) -> float | None:
    """Median over the repeats of ``metric`` divided by the reference's in the same repeat.

    Repeat i of every target ran within seconds of repeat i of the reference, so pairing
    them cancels what the machine's load did between repeats.
    """
    ratios: list[float] = []
    for run, ref in zip(runs, reference, strict=False):
        value, base = metric(run), metric(ref)
        if run.error is None and ref.error is None and value is not None and base:
            ratios.append(value / base)
    return statistics.median(ratios) if ratios else None


def add_ratios(cells: Sequence[Cell]) -> None:
    """Each summary gains ``vs_c``: CPU per round trip, p50 latency and MiB/s over c's."""
    reference = {(cell.connections, cell.size): cell for cell in cells if cell.target.name == "c"}
    for cell in cells:
        c = reference.get((cell.connections, cell.size))
        if cell.summary["error"] is not None or c is None or c.summary["error"] is not None:
            cell.summary["vs_c"] = None
            continue
        cell.summary["vs_c"] = {
            "cpu_us_per_rt": paired_ratio(cell.runs, c.runs, lambda r: r.cpu_us_per_rt),
            "p50": paired_ratio(cell.runs, c.runs, lambda r: r.latency_us.get("p50")),
            "mib_per_s": paired_ratio(cell.runs, c.runs, lambda r: r.mib_per_s),
        }


# --- the issue's targets, checked against one run -----------------------------------


@dataclass(frozen=True)
class Check:
    """One target from issues 4 and 6: a ratio in one cell, at most or at least a limit."""

    issue: int
    label: str
    connections: int
    size: int
    metric: str  # "cpu", "p50" or "mib" against c; "cpu_naive" against naive
    limit: float
    at_most: bool = True

    def describe(self) -> str:
        what = {
            "cpu": "CPU/rt vs c",
            "p50": "p50 latency vs c",
            "mib": "MiB/s vs c",
            "cpu_naive": "naive's CPU/rt over this",
        }[self.metric]
        sign = "≤" if self.at_most else "≥"
        return f"{what} {sign} {self.limit:g}×"


def issue_checks(labels: Iterable[str], points: Iterable[tuple[int, int]]) -> list[Check]:
    """The checks that apply to the targets and (connections, size) points of this run."""
    present = set(labels)
    measured = set(points)
    checks: list[Check] = []
    for loop, limits in (("uvloop", (1.2, 1.6)), ("asyncio", (1.6, 2.2))):
        for connections in (16, 256):
            for size, limit in zip((8, 200), limits, strict=True):
                checks.append(Check(4, f"protocol-{loop}", connections, size, "cpu", limit))
    for connections in (16, 256):
        checks.append(Check(4, "streams-uvloop", connections, 8, "cpu", 2.5))
        checks.append(Check(4, "streams-uvloop", connections, 200, "cpu", 4.0))
        checks.append(Check(4, "streams-uvloop", connections, 200, "cpu_naive", 5.0, False))
    for name in ("protocol", "streams"):
        for loop in loops.LOOP_NAMES:
            checks.append(Check(4, f"{name}-{loop}", 1, 8, "p50", 1.3))
    for loop in ("uvloop", "rloop"):
        checks.append(Check(6, f"protocol-{loop}", 16, 16384, "cpu", 2.5))
        checks.append(Check(6, f"protocol-{loop}", 1, 1 << 20, "mib", 0.5, False))
    return [
        check
        for check in checks
        if check.label in present and (check.connections, check.size) in measured
    ]


def evaluate_checks(checks: Sequence[Check], cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Each check with its measured ratio and whether it is met (None: not measured)."""
    by_key = {(cell.target.label, cell.connections, cell.size): cell for cell in cells}
    results: list[dict[str, Any]] = []
    for check in checks:
        measured: float | None = None
        cell = by_key.get((check.label, check.connections, check.size))
        summary = cell.summary if cell else None
        if summary is not None and summary["error"] is None:
            if check.metric == "cpu_naive":
                naive_label = check.label.replace("streams", "naive", 1)
                naive = by_key.get((naive_label, check.connections, check.size))
                if naive is not None and cell is not None and naive.summary["error"] is None:
                    measured = paired_ratio(naive.runs, cell.runs, lambda r: r.cpu_us_per_rt)
            elif summary["vs_c"] is not None:
                key = {"cpu": "cpu_us_per_rt", "p50": "p50", "mib": "mib_per_s"}[check.metric]
                measured = summary["vs_c"][key]
        met = (
            None
            if measured is None
            else (measured <= check.limit if check.at_most else measured >= check.limit)
        )
        results.append(
            {
                "issue": check.issue,
                "target": check.label,
                "connections": check.connections,
                "size": check.size,
                "requirement": check.describe(),
                "measured": measured,
                "met": met,
                "floor": floor_ratio(check, by_key),
            }
        )
    return results


def floor_ratio(check: Check, by_key: dict[tuple[str, int, int], Cell]) -> float | None:
    """For a CPU check, the same ratio for ``floor`` on that loop, if it was measured:
    what the loop alone costs, the least any Python server there could reach."""
    if check.metric != "cpu":
        return None
    loop = check.label.rsplit("-", 1)[-1]
    floor = by_key.get((f"floor-{loop}", check.connections, check.size))
    if floor is None or floor.summary["error"] is not None or floor.summary["vs_c"] is None:
        return None
    ratio: float = floor.summary["vs_c"]["cpu_us_per_rt"]
    return ratio


# --- reports: terminal, JSON, Markdown, PNG -----------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table: three significant digits, thousands separated, or blank."""
    if value is None:
        return ""
    if value >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


MATRIX_HEADERS = (
    "target", "conns", "size", "rt/s", "MiB/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs",
    "max µs", "CPU µs/rt", "CPU vs c", "srv CPU %", "peak RSS MiB", "loadgen CPU %", "notes",
)  # fmt: skip


def matrix_rows(cells: Sequence[Cell]) -> list[list[list[str]]]:
    """Table rows grouped in sections, one section per (connections, size)."""
    sections: dict[tuple[int, int], list[list[str]]] = {}
    for cell in sorted(cells, key=lambda c: (c.connections, c.size, c.target)):
        s = cell.summary
        head = [cell.target.label, str(cell.connections), format_size(cell.size)]
        if s["error"] is not None:
            row = head + [""] * 12 + [f"ERROR: {s['error']}" if s["failed"] else s["error"]]
        else:
            lat = s["latency_us"]
            vs_c = s["vs_c"] or {}
            rss = s["peak_rss_kib"]
            row = [
                *head,
                fmt(s["rt_per_s"]),
                fmt(s["mib_per_s"]),
                *(fmt(lat[key]) for key in LATENCY_KEYS),
                fmt(s["cpu_us_per_rt"]),
                fmt_ratio(vs_c.get("cpu_us_per_rt")),
                fmt(s["server_cpu_pct"], 2),
                fmt(rss / 1024 if rss is not None else None),
                fmt(s["loadgen_cpu_pct"], 2),
                ", ".join(s["flags"]),
            ]
        sections.setdefault((cell.connections, cell.size), []).append(row)
    return list(sections.values())


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    numeric = [header not in TEXT_COLUMNS for header in headers]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if n else ":---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# The terminal table leaves out p90 and p99.9 to fit; bench.md and bench.json have them.
TERMINAL_COLUMNS = (
    "target", "conns", "size", "rt/s", "MiB/s", "p50 µs", "p99 µs", "max µs", "CPU µs/rt",
    "CPU vs c", "srv CPU %", "peak RSS MiB", "loadgen CPU %", "notes",
)  # fmt: skip
TEXT_COLUMNS = ("target", "notes", "requirement", "met", "status")


def print_table(
    title: str,
    headers: Sequence[str],
    sections: Sequence[Sequence[Sequence[str]]],
    columns: Sequence[str] | None = None,
) -> None:
    """A table on stdout, sections separated by rules; only ``columns`` if given."""
    from rich.console import Console
    from rich.table import Table

    keep = [i for i, header in enumerate(headers) if columns is None or header in columns]
    table = Table(title=title, header_style="bold", title_justify="left")
    for i in keep:
        text = headers[i] in TEXT_COLUMNS
        table.add_column(headers[i], justify="left" if text else "right", no_wrap=not text)
    for index, rows in enumerate(sections):
        for row in rows:
            table.add_row(*(row[i] for i in keep))
        if index < len(sections) - 1:
            table.add_section()
    # Piped into a file, rich would assume 80 columns and fold every number.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)


def check_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for result in results:
        met = {True: "met", False: "NOT met", None: "not measured"}[result["met"]]
        rows.append(
            [
                str(result["issue"]),
                result["target"],
                str(result["connections"]),
                format_size(result["size"]),
                result["requirement"],
                fmt_ratio(result["measured"]),
                met,
                fmt_ratio(result.get("floor")),
            ]
        )
    return rows


CHECK_HEADERS = ("issue", "target", "conns", "size", "requirement", "measured", "met", "floor")


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge the numbers: when, on what, and how busy."""
    cpu_model = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    packages: dict[str, str] = {}
    for name in ("uvloop", "rloop", "tornado", "rich", "matplotlib"):
        with suppress(importlib.metadata.PackageNotFoundError):
            packages[name] = importlib.metadata.version(name)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cpu_model": cpu_model,
        "cpus_online": os.cpu_count(),
        "cpus_usable": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": packages,
        "loadavg_start": load_average(),
    }


def load_average() -> list[float]:
    with suppress(OSError, ValueError):
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return []


def describe_machine(meta: dict[str, Any]) -> str:
    packages = ", ".join(f"{name} {version}" for name, version in meta["packages"].items())
    return (
        f"{meta['date']}, {meta['cpu_model'] or 'unknown CPU'} "
        f"({meta['cpus_online']} CPUs), Linux {meta['kernel']}, Python {meta['python']}"
        f"{', ' + packages if packages else ''}; load average "
        f"{' '.join(f'{x:.2f}' for x in meta['loadavg_start'])} at the start, "
        f"{' '.join(f'{x:.2f}' for x in meta.get('loadavg_end', []))} at the end"
    )


READING_NOTES = """\
Every number is a median over the repeats of a closed loop: each connection sends one
message, waits for the whole double reply, checks it byte by byte, and sends the next.
**p50 ... max** are round-trip latencies (first byte sent to last byte received).
**MiB/s** counts message bytes answered (the server reads N and writes 2N per round trip).

**CPU µs/rt** is the server process's own CPU time in the measured window (user + system
of all its threads, as the kernel's scheduler accounts it) divided by the round trips
completed in it: what one exchange costs the server, however fast the load generator
was. **CPU vs c** divides it by the C epoll reference's in the same cell and repeat (the
median of those per-repeat ratios): compare ratios within one run, never across runs or
machines. **peak RSS** is the server's VmHWM during the cell.

Notes: `loadgen-bound`: the load generator (a C epoll program on its own CPU) used at
least 90 % of its CPU while the server used less, so the server could have done more and
its round trips per second understate it. This is normal for the C reference from 16
connections up (the load generator does as much per round trip as that server, plus the
check); CPU per round trip still holds, but a server that is not saturated handles fewer
events per wake-up and pays a little more per round trip, which flatters the ratios of
the Python servers slightly. `contended`: other processes took more than 10 % of one of
the two pinned CPUs during the window: a busy machine, expect noise. `unpinned`: server
and load generator shared CPUs. `too slow`: the target answered correctly but not every
connection got its first reply within the ramp timeout, or no round trip finished in
the window (not a failure; a longer --duration measures it).

The Tornado seed (`tornado`) leaves Nagle's algorithm on: its second small write waits
for the client's delayed ACK, about 40 ms per exchange, so one connection gets about 23
round trips per second on any loop while the server is idle 99 % of the time. More
connections overlap those waits. `tornado-nodelay` is the same server with `TCP_NODELAY`,
to compare its CPU fairly.
"""


def write_matrix_reports(
    out_dir: Path,
    *,
    meta: dict[str, Any],
    settings: dict[str, Any],
    target_status: list[dict[str, Any]],
    cells: Sequence[Cell],
    checks: list[dict[str, Any]],
) -> list[Path]:
    """bench.json, bench.md and (with matplotlib) bench.png; the paths written."""
    document = {
        "kind": "echoverse-bench",
        "version": 1,
        "meta": meta,
        "settings": settings,
        "targets": target_status,
        "cells": [
            {
                "label": cell.target.label,
                "target": cell.target.name,
                "loop": cell.target.loop,
                "connections": cell.connections,
                "size": cell.size,
                **cell.summary,
                "runs": [asdict(run) for run in cell.runs],
            }
            for cell in cells
        ],
        "checks": checks,
    }
    json_path = out_dir / "bench.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    written = [json_path]

    sections = matrix_rows(cells)
    md = [
        "# echoverse benchmark",
        "",
        f"Measured {describe_machine(meta)}. Pinning: {settings['pinning']}.",
        "",
        f"Command: `{settings['command']}`",
        "",
        markdown_table(MATRIX_HEADERS, [row for rows in sections for row in rows]),
        "",
    ]
    if settings["cells_left_out"]:
        md += [
            f"Cells left out (more than {format_size(settings['max_inflight'])} in flight): "
            + ", ".join(settings["cells_left_out"])
            + ".",
            "",
        ]
    problems = [
        t for t in target_status if t["status"] != "ok" or t["exit_status"] not in (0, None)
    ]
    if problems or settings["skipped"]:
        md += ["## Targets that did not run cleanly", ""]
        md += [f"- `{t['label']}`: {t['note']}" for t in problems]
        md += [
            f"- `{note.split(':', 1)[0]}`: {note.split(':', 1)[1].strip()}"
            for note in settings["skipped"]
        ]
        md.append("")
    if checks:
        md += ["## Targets of issues 4 and 6 (ratios from this run)", ""]
        md += [markdown_table(CHECK_HEADERS, check_rows(checks)), ""]
    md += ["## How to read the table", "", READING_NOTES]
    md_path = out_dir / "bench.md"
    md_path.write_text("\n".join(md))
    written.append(md_path)
    when = f"{meta['date']}, {meta['cpus_online']} CPUs, {settings['pinning']}"
    chart = write_chart(out_dir / "bench.png", cells, when)
    if chart is not None:
        written.append(chart)
    return written


def write_chart(path: Path, cells: Sequence[Cell], subtitle: str) -> Path | None:
    """Round trips/s and CPU per round trip per cell, one bar per target; None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            f"{PROGRAM}: no chart: matplotlib is not installed (pip install 'echoverse[bench]')",
            file=sys.stderr,
        )
        return None
    points = sorted({(cell.connections, cell.size) for cell in cells})
    targets = sorted({cell.target for cell in cells}, key=lambda t: (TARGETS.index(t.name), t.loop))
    by_key = {(cell.target, cell.connections, cell.size): cell.summary for cell in cells}
    figure, axes = plt.subplots(2, 1, figsize=(max(9.0, 1.3 * len(points) + 4), 9), sharex=True)
    width = 0.8 / max(1, len(targets))
    # One hue per implementation, lighter for each further loop.
    hues = plt.get_cmap("tab10")
    opacity = {name: 1.0 - 0.3 * i for i, name in enumerate(loops.LOOP_NAMES)}
    for index, target in enumerate(targets):
        xs: list[float] = []
        throughput: list[float] = []
        cpu: list[float] = []
        for x, (connections, size) in enumerate(points):
            s = by_key.get((target, connections, size))
            if s is None or s["error"] is not None or s["cpu_us_per_rt"] is None:
                continue
            xs.append(x - 0.4 + (index + 0.5) * width)
            throughput.append(s["rt_per_s"])
            cpu.append(s["cpu_us_per_rt"])
        colour = hues(TARGETS.index(target.name) % 10)
        alpha = opacity.get(target.loop, 1.0)
        axes[0].bar(xs, throughput, width, label=target.label, color=colour, alpha=alpha)
        axes[1].bar(xs, cpu, width, label=target.label, color=colour, alpha=alpha)
    axes[0].set_ylabel("round trips / s (higher is better)")
    axes[1].set_ylabel("server CPU µs per round trip (lower is better)")
    for axis in axes:
        axis.set_yscale("log")
        axis.set_axisbelow(True)
        axis.grid(axis="y", which="both", alpha=0.3)
    axes[1].set_xticks(range(len(points)))
    axes[1].set_xticklabels([f"{c} conn × {format_size(s)}" for c, s in points], rotation=20)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.suptitle(f"echoverse benchmark, {subtitle}", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# --- bench.py run -------------------------------------------------------------------


class Status:
    """The progress bar's handle: say what runs now, count what is done."""

    def __init__(self, update: Callable[..., None]) -> None:
        self._update = update

    def now(self, description: str) -> None:
        self._update(description=description)

    def done(self, description: str) -> None:
        self._update(advance=1, description=description)


@contextmanager
def progress_bar(total: int) -> Iterator[Status]:
    """A progress bar on stderr for ``total`` steps."""
    from functools import partial

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # Two refreshes a second: the bar's thread must not compete with what it measures.
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        refresh_per_second=2,
    ) as progress:
        task = progress.add_task("starting servers", total=total)
        yield Status(partial(progress.update, task))


def command_run(args: argparse.Namespace) -> int:
    """The matrix: every target at every (connections, size), ``repeats`` times."""
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    runtime.raise_open_file_limit()
    tools = build_tools(out_dir / "build")
    pinning = choose_cpus(args.pin)
    targets, skipped = expand_targets(args.targets, args.loops)
    meta = machine_info()
    load = Load(args.warmup, args.duration, args.ramp_timeout)
    failures: dict[Target, str] = {}
    exit_statuses: dict[Target, int] = {}
    points, left_out = matrix_points(args.connections, args.sizes, args.max_inflight)
    cells = {
        (target, connections, size): Cell(target, connections, size)
        for connections, size in points
        for target in targets
    }
    total = len(targets) + len(cells) * args.repeats
    with (
        progress_bar(total) as status,
        servers_running(
            targets,
            tools=tools,
            host=args.host,
            log_dir=out_dir / "logs",
            cpu=pinning.server_cpu,
            primed=True,
            failures=failures,
            exit_statuses=exit_statuses,
        ) as servers,
    ):
        for target in targets:
            status.done(f"started {target.label}")
        # Targets inside the innermost loop: every target meets the machine's noise of
        # the same minute, so the ratios of one cell compare like with like.
        for repeat in range(args.repeats):
            for connections, size in points:
                for target in targets:
                    cell = cells[(target, connections, size)]
                    where = f"{target.label} {connections} × {format_size(size)}"
                    status.now(f"{where} (repeat {repeat + 1}/{args.repeats})")
                    if target in failures:
                        cell.runs.append(Run(error=f"did not start: {failures[target]}"))
                    else:
                        server = servers[target]
                        run = measure(
                            tools,
                            server,
                            connections=connections,
                            size=size,
                            load=load,
                            pinning=pinning,
                        )
                        cell.runs.append(run)
                    status.done(where)
    meta["loadavg_end"] = load_average()

    ordered = list(cells.values())
    for cell in ordered:
        cell.summarize()
    add_ratios(ordered)
    checks = evaluate_checks(issue_checks((t.label for t in targets), points), ordered)
    target_status = []
    for target in targets:
        exit_status = exit_statuses.get(target)
        note = failures.get(target, "")
        if exit_status not in (0, None):
            note = f"exit status {exit_status} after SIGTERM (expected 0)"
        target_status.append(
            {
                "label": target.label,
                "status": "failed" if target in failures else "ok",
                "exit_status": exit_status,
                "note": note,
            }
        )
    settings = {
        "command": shlex.join(["python", PROGRAM, *args.argv]),
        "targets": [t.label for t in targets],
        "skipped": skipped,
        "connections": args.connections,
        "sizes": args.sizes,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "ramp_timeout_s": args.ramp_timeout,
        "max_inflight": args.max_inflight,
        "cells_left_out": [f"{c} × {format_size(size)}" for c, size in left_out],
        "repeats": args.repeats,
        "host": args.host,
        "pinning": pinning.note,
        "primed": True,
    }
    sections = matrix_rows(ordered)
    print_table(
        f"echoverse benchmark — {describe_machine(meta)}",
        MATRIX_HEADERS,
        sections,
        TERMINAL_COLUMNS,
    )
    if checks:
        print_table(
            "Targets of issues 4 and 6 (ratios from this run)", CHECK_HEADERS, [check_rows(checks)]
        )
    for entry in target_status:
        if entry["note"]:
            print(f"{entry['label']}: {entry['note']}", file=sys.stderr)
    for note in skipped:
        print(f"skipped {note}", file=sys.stderr)
    written = write_matrix_reports(
        out_dir,
        meta=meta,
        settings=settings,
        target_status=target_status,
        cells=ordered,
        checks=checks,
    )
    print("wrote " + ", ".join(str(path) for path in written))
    # Too slow to measure is a result; a wrong reply, a crash or a failed start is not.
    broken = failures or any(cell.failed for cell in ordered)
    return 1 if broken else 0


# --- bench.py idle ------------------------------------------------------------------


def command_idle(args: argparse.Namespace) -> int:
    """RSS per idle connection: N connections that each exchanged one message, then wait."""
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    runtime.raise_open_file_limit()
    tools = build_tools(out_dir / "build")
    pinning = choose_cpus(args.pin)
    targets, skipped = expand_targets(args.targets, args.loops)
    meta = machine_info()
    results: list[dict[str, Any]] = []
    with progress_bar(len(targets)) as status:
        for target in targets:
            status.now(f"{target.label}: {args.connections} idle connections")
            results.append(idle_one(target, tools, args, pinning, out_dir))
            status.done(target.label)
    meta["loadavg_end"] = load_average()
    headers = ("target", "baseline RSS MiB", "RSS MiB", "KiB / connection", "server fds", "notes")
    rows = [
        [
            r["label"],
            fmt(r["baseline_rss_kib"] / 1024 if r["baseline_rss_kib"] else None),
            fmt(r["rss_kib"] / 1024 if r["rss_kib"] else None),
            fmt(r["kib_per_connection"]),
            str(r["server_fds"] or ""),
            f"ERROR: {r['error']}" if r["error"] else "",
        ]
        for r in results
    ]
    title = f"{args.connections} idle connections — {describe_machine(meta)}"
    print_table(title, headers, [rows])
    settings = {
        "command": shlex.join(["python", PROGRAM, *args.argv]),
        "connections": args.connections,
        "message_size": args.size,
        "skipped": skipped,
    }
    document = {
        "kind": "echoverse-bench-idle",
        "version": 1,
        "meta": meta,
        "settings": settings,
        "results": results,
    }
    (out_dir / "idle.json").write_text(json.dumps(document, indent=2) + "\n")
    md = [
        f"# RSS of {args.connections} idle connections",
        "",
        f"Measured {describe_machine(meta)}.",
        "",
        f"Command: `{settings['command']}`",
        "",
        markdown_table(headers, rows),
        "",
        "Each connection sent one message and got its reply, then stayed open and silent. "
        "Baseline: the server's VmRSS after one connection came and went; KiB per connection: "
        "(VmRSS with all of them open - baseline) / connections. Kernel socket buffers are "
        "not in a process's RSS, so the C server's cost is its bookkeeping only.",
        "",
    ]
    (out_dir / "idle.md").write_text("\n".join(md))
    print(f"wrote {out_dir / 'idle.json'}, {out_dir / 'idle.md'}")
    return 1 if any(r["error"] for r in results) else 0


def idle_one(
    target: Target, tools: Tools, args: argparse.Namespace, pinning: Pinning, out_dir: Path
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "label": target.label,
        "connections": args.connections,
        "baseline_rss_kib": None,
        "rss_kib": None,
        "kib_per_connection": None,
        "server_fds": None,
        "error": None,
    }
    try:
        server = launch(
            target, tools=tools, host=args.host, log_dir=out_dir / "logs", cpu=pinning.server_cpu
        )
    except (BenchError, OSError) as error:
        result["error"] = f"did not start: {error}"
        return result
    try:
        prime(server)
        result["baseline_rss_kib"] = read_status_kib(server.pid, "VmRSS")
        argv = [
            str(tools.loadgen), "--idle",
            "--host", server.host, "--port", str(server.port),
            "--connections", str(args.connections), "--size", str(args.size),
            "--ramp-timeout", str(args.ramp_timeout),
        ]  # fmt: skip
        if pinning.loadgen_cpu is not None:
            argv += ["--cpu", str(pinning.loadgen_cpu)]
        loadgen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert loadgen.stdout is not None
            try:
                line = read_line(
                    loadgen.stdout, time.monotonic() + args.ramp_timeout + LOADGEN_GRACE
                )
            except TimeoutError:
                line = ""
            if line.startswith("ready"):
                result["rss_kib"] = read_status_kib(server.pid, "VmRSS")
                with suppress(OSError):
                    result["server_fds"] = len(os.listdir(f"/proc/{server.pid}/fd"))
            out, err = loadgen.communicate(input=b"done\n", timeout=LOADGEN_GRACE)
        finally:
            if loadgen.poll() is None:
                loadgen.kill()
                loadgen.wait()
        report_lines = (line + out.decode()).strip().splitlines()
        report = (
            json.loads(report_lines[-1])
            if report_lines and report_lines[-1].startswith("{")
            else None
        )
        if report is None:
            result["error"] = f"the load generator gave no report: {err.decode().strip()}"
        elif report["errors"]:
            result["error"] = f"{report['errors']} error(s), first: {report['first_error']}"
        elif result["rss_kib"] is not None and result["baseline_rss_kib"] is not None:
            grown = result["rss_kib"] - result["baseline_rss_kib"]
            result["kib_per_connection"] = grown / args.connections
    except (BenchError, OSError) as error:
        result["error"] = str(error)
    finally:
        status = server.stop()
        if status != 0 and result["error"] is None:
            result["error"] = f"exit status {status} after SIGTERM (expected 0)"
    return result


# --- bench.py cold-start ------------------------------------------------------------


def command_cold_start(args: argparse.Namespace) -> int:
    """A fresh server's CPU per round trip against the same server once a client has left.

    For each repeat and target: start a server and measure a cell at once (cold: no
    connection has ever closed), then measure the same cell again (its first load's
    connections have closed by then). The ratio is cold over warm.
    """
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    runtime.raise_open_file_limit()
    tools = build_tools(out_dir / "build")
    pinning = choose_cpus(args.pin)
    targets, skipped = expand_targets(args.targets, args.loops)
    meta = machine_info()
    points, _ = matrix_points(args.connections, args.sizes, args.max_inflight)
    cold = {(t, p): Cell(t, *p) for t in targets for p in points}
    warm = {(t, p): Cell(t, *p) for t in targets for p in points}
    with progress_bar(len(targets) * len(points) * args.repeats) as status:
        for repeat in range(args.repeats):
            for point in points:
                for target in targets:
                    where = f"{target.label} {point[0]} × {format_size(point[1])}"
                    status.now(f"{where} cold and warm (repeat {repeat + 1}/{args.repeats})")
                    cold_run, warm_run = cold_and_warm(target, point, tools, args, pinning, out_dir)
                    cold[(target, point)].runs.append(cold_run)
                    warm[(target, point)].runs.append(warm_run)
                    status.done(where)
    meta["loadavg_end"] = load_average()
    results: list[dict[str, Any]] = []
    for key, cold_cell in cold.items():
        warm_cell = warm[key]
        ratios = [
            c.cpu_us_per_rt / w.cpu_us_per_rt
            for c, w in zip(cold_cell.runs, warm_cell.runs, strict=True)
            if c.cpu_us_per_rt and w.cpu_us_per_rt
        ]
        results.append(
            {
                "label": key[0].label,
                "connections": key[1][0],
                "size": key[1][1],
                "cold_cpu_us_per_rt": cold_cell.median(lambda r: r.cpu_us_per_rt),
                "warm_cpu_us_per_rt": warm_cell.median(lambda r: r.cpu_us_per_rt),
                "ratio": statistics.median(ratios) if ratios else None,
                "ratios": ratios,
                "error": cold_cell.error or warm_cell.error,
                "cold_runs": [asdict(r) for r in cold_cell.runs],
                "warm_runs": [asdict(r) for r in warm_cell.runs],
            }
        )
    headers = (
        "target",
        "conns",
        "size",
        "cold CPU µs/rt",
        "warm CPU µs/rt",
        "cold / warm",
        "met",
        "notes",
    )
    rows = [
        [
            r["label"],
            str(r["connections"]),
            format_size(r["size"]),
            fmt(r["cold_cpu_us_per_rt"]),
            fmt(r["warm_cpu_us_per_rt"]),
            fmt_ratio(r["ratio"]),
            "" if r["ratio"] is None else ("met" if r["ratio"] <= COLD_START_LIMIT else "NOT met"),
            f"ERROR: {r['error']}" if r["error"] else "",
        ]
        for r in results
    ]
    print_table(f"Cold start — {describe_machine(meta)}", headers, [rows])
    settings = {
        "command": shlex.join(["python", PROGRAM, *args.argv]),
        "connections": args.connections,
        "sizes": args.sizes,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "ramp_timeout_s": args.ramp_timeout,
        "repeats": args.repeats,
        "pinning": pinning.note,
        "skipped": skipped,
    }
    document = {
        "kind": "echoverse-bench-cold-start",
        "version": 1,
        "meta": meta,
        "settings": settings,
        "results": results,
    }
    (out_dir / "cold-start.json").write_text(json.dumps(document, indent=2) + "\n")
    md = [
        "# Cold start: a fresh server against one that has served and closed a connection",
        "",
        f"Measured {describe_machine(meta)}. Pinning: {pinning.note}.",
        "",
        f"Command: `{settings['command']}`",
        "",
        markdown_table(headers, rows),
        "",
        f"Cold: the first load on a fresh server, no connection ever closed. Warm: the same load "
        f"again once the first one's connections have closed. Issue 4 asks for cold / warm "
        f"≤ {COLD_START_LIMIT:g}× on every loop (median of the per-repeat ratios).",
        "",
    ]
    (out_dir / "cold-start.md").write_text("\n".join(md))
    print(f"wrote {out_dir / 'cold-start.json'}, {out_dir / 'cold-start.md'}")
    failed = any(cell.failed for cell in (*cold.values(), *warm.values()))
    return 1 if failed else 0


def cold_and_warm(
    target: Target,
    point: tuple[int, int],
    tools: Tools,
    args: argparse.Namespace,
    pinning: Pinning,
    out_dir: Path,
) -> tuple[Run, Run]:
    try:
        server = launch(
            target, tools=tools, host=args.host, log_dir=out_dir / "logs", cpu=pinning.server_cpu
        )
    except (BenchError, OSError) as error:
        failed = Run(error=f"did not start: {error}")
        return failed, failed
    try:
        load = Load(args.warmup, args.duration, args.ramp_timeout)
        connections, size = point
        runs = [
            measure(tools, server, connections=connections, size=size, load=load, pinning=pinning)
            for _ in range(2)
        ]
    finally:
        status = server.stop()
    if status != 0:
        for run in runs:
            run.error = run.error or f"exit status {status} after SIGTERM (expected 0)"
    return runs[0], runs[1]


# --- bench.py serve-floor and serve-naive --------------------------------------------


class FloorProtocol(asyncio.Protocol):
    """The ``floor`` target: each received batch answered with one write, nothing else."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.write = cast(asyncio.Transport, transport).write

    def data_received(self, data: bytes) -> None:
        self.write(build_reply(data))


class BufferedFloorProtocol(asyncio.BufferedProtocol):
    """The same on the stdlib loop, receiving into one shared buffer as the fast path
    does there (a fresh 256 KiB buffer per receive costs ~3x: CPython issue 85451)."""

    buffer = memoryview(bytearray(256 * 1024))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.write = cast(asyncio.Transport, transport).write

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.write(build_reply(bytes(self.buffer[:nbytes])))


class BytesFloorProtocol(FloorProtocol):
    """The same on rloop, whose transports write anything but bytes slowly (README)."""

    def data_received(self, data: bytes) -> None:
        reply = build_reply(data)
        self.write(reply if type(reply) is bytes else bytes(reply))


async def serve_floor(host: str, port: int, loop_name: str) -> int:
    """The floor: the least a Python server can do per batch on this event loop."""
    loop = asyncio.get_running_loop()
    factory: type[asyncio.BaseProtocol] = FloorProtocol
    if isinstance(loop, asyncio.BaseEventLoop):
        factory = BufferedFloorProtocol
    elif loop_name == "rloop":
        factory = BytesFloorProtocol
    return await serve_until_stopped(
        loop.create_server(factory, host, port), "serve-floor", host, port, loop_name
    )


async def serve_until_stopped(
    starting: Coroutine[Any, Any, asyncio.Server],
    command: str,
    host: str,
    port: int,
    loop_name: str,
) -> int:
    """Start a bench-only server, print the ready line, serve until SIGINT/SIGTERM."""
    try:
        server = await starting
    except OSError as error:
        cli.listen_error_line(f"{PROGRAM} {command}", f"{host}:{port}", error)
        return 1
    stop = asyncio.Event()
    runtime.install_stop_signals(stop)
    # No serve_forever(): on rloop 0.5 it stops the server from accepting (FACTS.md).
    print(cli.ready_line(server.sockets[0].getsockname(), loop_name), flush=True)
    await stop.wait()
    server.close()
    return 0


async def serve_naive(host: str, port: int, loop_name: str) -> int:
    """The naive asyncio port, the baseline: ``read(20)``, two writes and a drain per chunk.

    Each chunk costs two ``send`` calls (a transport with an empty buffer sends at once),
    which is what makes it slow; it is kept as the port people write first.
    """
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            while True:
                chunk = await reader.read(CHUNK_SIZE)
                if not chunk:
                    break
                writer.write(chunk)
                writer.write(chunk[::-1])
                await writer.drain()
                if chunk == CLOSE_CHUNK:
                    break
        except ConnectionError:
            pass  # the client vanished: nobody is left to answer
        finally:
            writers.discard(writer)
            # rloop 0.5 sends neither the queued replies nor the FIN on close() alone.
            close_gracefully(cast(asyncio.Transport, writer.transport))

    status = await serve_until_stopped(
        asyncio.start_server(handle, host, port), "serve-naive", host, port, loop_name
    )
    for writer in list(writers):
        writer.close()
    return status


def command_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``serve-naive`` and ``serve-floor``: a bench-only server on the chosen loop."""
    cli.configure_logging(args.log_level)
    runtime.raise_open_file_limit()
    loop_name, factory = cli.resolve_loop(parser, args.loop)
    serve = serve_floor if args.command == "serve-floor" else serve_naive
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(args.host, args.port, loop_name))


# --- command line -------------------------------------------------------------------


def loopback_host(text: str) -> str:
    if text not in HOSTS:
        raise argparse.ArgumentTypeError(f"loopback only: {' or '.join(HOSTS)}")
    return text


def add_matrix_arguments(
    parser: argparse.ArgumentParser,
    *,
    connections: str,
    sizes: str,
    warmup: float,
    duration: float,
    repeats: int,
) -> None:
    available = loops.available_loops()
    parser.add_argument(
        "--targets",
        type=name_list(TARGETS),
        default=",".join(TARGETS),
        help="comma-separated targets; each runs on each of --loops (c on epoll only)",
    )
    parser.add_argument(
        "--loops",
        type=name_list(available),
        default=",".join(available),
        help="comma-separated event loops (the installed ones)",
    )
    parser.add_argument(
        "--connections",
        type=count_list,
        default=connections,
        help="comma-separated connection counts",
    )
    parser.add_argument(
        "--sizes",
        type=size_list,
        default=sizes,
        help="comma-separated message sizes in bytes; k and m suffixes work (16k, 256k, 1m)",
    )
    parser.add_argument(
        "--warmup",
        type=cli.positive_float,
        default=warmup,
        help="seconds of load before each measured window",
    )
    parser.add_argument(
        "--duration",
        type=cli.positive_float,
        default=duration,
        help="seconds of each measured window",
    )
    parser.add_argument(
        "--repeats",
        type=cli.positive_int,
        default=repeats,
        help="runs per cell; the tables show medians",
    )
    parser.add_argument(
        "--ramp-timeout",
        type=cli.positive_float,
        default=RAMP_TIMEOUT,
        help="seconds for every connection's first reply; a slower target is reported too slow",
    )
    parser.add_argument(
        "--max-inflight",
        type=byte_count,
        default="0",
        help="leave out cells whose connections x size exceeds this many bytes (0: none)",
    )
    add_common_arguments(parser)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        type=loopback_host,
        default=HOSTS[0],
        help="loopback address the servers listen on",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="directory for reports, logs and the compiled C programs",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the server and the load generator to CPUs of their own",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=(
            "Benchmark every echoverse server on every event loop against a C epoll "
            "reference, with a C load generator (closed loop, every reply verified)."
        ),
        formatter_class=cli.HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="the matrix: throughput, latency, CPU per round trip, RSS",
        description="Every target at every (connections, size): a table, bench.json/md/png.",
        formatter_class=cli.HelpFormatter,
    )
    add_matrix_arguments(
        run, connections="1,16,256", sizes="8,200,16384", warmup=0.5, duration=2.0, repeats=3
    )
    idle = commands.add_parser(
        "idle",
        help="RSS per idle connection",
        description="N connections per target, one message each, then idle: RSS per connection.",
        formatter_class=cli.HelpFormatter,
    )
    available = loops.available_loops()
    idle.add_argument(
        "--targets",
        type=name_list(TARGETS),
        default=",".join(TARGETS),
        help="comma-separated targets",
    )
    idle.add_argument(
        "--loops",
        type=name_list(available),
        default=",".join(available),
        help="comma-separated event loops",
    )
    idle.add_argument(
        "--connections", type=cli.positive_int, default=10_000, help="idle connections per target"
    )
    idle.add_argument(
        "--size",
        type=parse_size,
        default="8",
        help="bytes of the one message each connection sends",
    )
    idle.add_argument(
        "--ramp-timeout",
        type=cli.positive_float,
        default=120.0,
        help="seconds to get every connection answered",
    )
    add_common_arguments(idle)
    cold = commands.add_parser(
        "cold-start",
        help="a fresh server's CPU per round trip against one that has served a client",
        description=command_cold_start.__doc__,
        formatter_class=cli.HelpFormatter,
    )
    add_matrix_arguments(cold, connections="16", sizes="200", warmup=0.5, duration=2.0, repeats=3)
    for name, serve, help_text in (
        ("serve-naive", serve_naive, "run the naive asyncio port (the baseline target)"),
        ("serve-floor", serve_floor, "run the floor target (a bare protocol, nothing else)"),
    ):
        server = commands.add_parser(
            name, help=help_text, description=serve.__doc__, formatter_class=cli.HelpFormatter
        )
        cli.add_connection_arguments(server)
        cli.add_logging_arguments(server)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command in ("serve-naive", "serve-floor"):
        return command_serve(args, parser)
    handlers = {"run": command_run, "idle": command_idle, "cold-start": command_cold_start}
    try:
        return handlers[args.command](args)
    except BenchError as error:
        cli.error_line(PROGRAM, str(error))
        return 1
    except KeyboardInterrupt:
        cli.error_line(PROGRAM, "interrupted: every server was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
