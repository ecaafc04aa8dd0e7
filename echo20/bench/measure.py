"""One measurement: the C load generator against one server, closed or open loop.

"CPU per round trip" is the server process's own CPU time over the measured window (the
scheduler's run time of its threads, ``/proc/PID/task/*/schedstat``: what
``/proc/PID/stat`` counts as utime + stime, without its 10 ms ticks) divided by the
round trips completed in it: what one exchange costs the server, whatever the load
generator managed.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo20.bench import histograms
from echo20.bench.environment import MachineSample, busy_processes, load_average, loaded
from echo20.bench.processes import (
    OTHER_BUSY_PCT,
    SPIN_SHARE,
    Pinning,
    Server,
    read_status_kib,
    reset_peak_rss,
    wait_until_quiet,
)
from echo20.bench.tools import Tools
from echo20.errors import BenchError

__all__ = ["NOISE_FLAGS", "Load", "Run", "measure"]

# Seconds for the load generator to get every connection answered once. A slow target
# with large messages can miss it: that cell then says so.
RAMP_TIMEOUT = 60.0
# Seconds the load generator may take beyond ramp, warm-up, window and its drain (the
# open loop waits up to 2 s for the window's last replies) before it is killed.
LOADGEN_GRACE = 30.0
# A load generator above this share of its core while the server stays below it was the
# bottleneck: the server could have done more.
BOTTLENECK_PCT = 90.0
# Another process's share of a pinned CPU above which the cell is marked contended.
CONTENDED_PCT = 10.0
# Open loop: the share of the asked-for rate below which the server fell behind.
BEHIND_SHARE = 0.95
# Time the hypervisor took from a pinned CPU in the window, in percent, above which the
# cell is marked ``steal``: the bar CONTENDED_PCT sets for any other process. The
# server's CPU time leaves stolen time out (with CONFIG_PARAVIRT_TIME_ACCOUNTING, as on
# this project's VM, the scheduler's task clock skips it), so steal shapes round trips
# per second more than CPU per round trip. Two or three 10 ms ticks (4-6 % of a
# half-second window) come in about one cell of six that keeps both CPUs busy here,
# with no other process running. Never for one tick alone: /proc/stat's resolution.
STEAL_PCT = CONTENDED_PCT
STEAL_TICKS = 1
# The flags that say something else than the server shaped a cell's numbers: --strict
# writes no report with any of them. ``loadgen-bound`` is not one: a load generator at
# its limit caps round trips per second, a limit of the harness that the report shows,
# while CPU per round trip, the server's own time over the round trips it answered,
# stays what it is (at 10 KiB and more the C load generator, which checks every reply
# byte, is the bottleneck for the fastest servers on any machine).
NOISE_FLAGS = (
    "contended", "others-busy", "others-before", "steal", "loaded", "busy-before",
)  # fmt: skip


@dataclass(frozen=True)
class Load:
    """How each cell is driven: seconds of warm-up, of measurement, and to get going;
    ``rate``: round trips per second in all (open loop), None for the closed loop."""

    warmup: float
    duration: float
    ramp_timeout: float = RAMP_TIMEOUT
    rate: float | None = None
    # Seconds to wait before the cell for other processes to go quiet (0: only look).
    wait_quiet: float = 0.0


@dataclass
class Run:
    """One load-generator run against one server: one repeat of one cell."""

    mode: str = "closed"
    rate: float | None = None
    round_trips: int = 0
    elapsed_s: float = 0.0
    rt_per_s: float | None = None
    mib_per_s: float | None = None
    # Percentiles from the HdrHistogram of every measured round trip, microseconds;
    # in the open loop counted from when each message was due.
    latency_us: dict[str, float] = field(default_factory=dict)
    histogram: str | None = None
    # Open loop only: latency from when each message actually left, and how late it left.
    service_us: dict[str, float] = field(default_factory=dict)
    send_lag_us: dict[str, float] = field(default_factory=dict)
    unfinished: int = 0
    cpu_us_per_rt: float | None = None
    server_cpu_pct: float | None = None
    loadgen_cpu_pct: float | None = None
    # Busy time of other processes on the server's and the load generator's CPUs.
    other_server_cpu_pct: float | None = None
    other_loadgen_cpu_pct: float | None = None
    peak_rss_kib: int | None = None
    # The machine around the cell: the 1-minute load average when it started, the
    # highest share of a pinned CPU the hypervisor stole in the window, the server's
    # share of a CPU with no client, and other processes busy before and during it.
    loadavg_1m: float | None = None
    steal_pct: float | None = None
    # The most 10 ms ticks the hypervisor took from one pinned CPU in the window.
    steal_ticks: int | None = None
    idle_cpu_pct: float | None = None
    others_before: list[str] = field(default_factory=list)
    others_during: list[str] = field(default_factory=list)
    # Under TLS: the version and cipher the load generator negotiated.
    tls: str | None = None
    flags: list[str] = field(default_factory=list)
    # When it started (Unix time), and the wall-clock seconds the whole run took: ramp,
    # warm-up, window, teardown. A reader can line the runs up against the host's
    # slower and faster phases.
    started_at: float = 0.0
    wall_s: float = 0.0
    error: str | None = None
    # The target answered correctly but too slowly to measure in the time given.
    too_slow: bool = False


def run_loadgen(
    tools: Tools,
    server: Server,
    *,
    connections: int,
    size: int,
    load: Load,
    cpu: int | None,
    samples: Path,
) -> dict[str, Any]:
    """Run the C load generator once; its JSON report (BenchError if it failed)."""
    argv = [
        str(tools.loadgen),
        *server.loadgen_args(),
        "--connections", str(connections),
        "--size", str(size),
        "--warmup", str(load.warmup),
        "--duration", str(load.duration),
        "--server-pid", str(server.pid),
        "--ramp-timeout", str(load.ramp_timeout),
        "--samples", str(samples),
    ]  # fmt: skip
    if load.rate is not None:
        argv += ["--rate", f"{load.rate:.3f}"]
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


def measure(
    tools: Tools, server: Server, *, connections: int, size: int, load: Load, pinning: Pinning
) -> Run:
    """One run: throughput, latency, server CPU and RSS, or what went wrong."""
    started = time.monotonic()
    run = Run(
        mode="open" if load.rate is not None else "closed", rate=load.rate, started_at=time.time()
    )
    try:
        with tempfile.TemporaryDirectory(prefix="echo20-bench-") as scratch:
            measure_into(
                run,
                tools,
                server,
                connections=connections,
                size=size,
                load=load,
                pinning=pinning,
                samples=Path(scratch) / "latency.bin",
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
    samples: Path,
) -> None:
    since: MachineSample | None = None
    if server.exit_status() is None:
        quiet = wait_until_quiet(server, wait=load.wait_quiet)
        if quiet.server_busy:
            run.flags.append("busy-before")
        run.others_before = quiet.others
        since = quiet.since
    run.idle_cpu_pct = 100 * server.idle_share
    average = load_average()
    run.loadavg_1m = average[0] if average else None
    if server.exit_status() is not None:
        run.error = f"server exited with status {server.exit_status()}: {server.stderr_tail(1)}"
        return
    reset_peak_rss(server.pid)
    # Other processes are counted from the quiet check's last interval on: a process
    # busy just before the cell is then weighed over more than one short interval.
    machine = since or MachineSample.take()
    try:
        report = run_loadgen(
            tools,
            server,
            connections=connections,
            size=size,
            load=load,
            cpu=pinning.loadgen_cpu,
            samples=samples,
        )
    except BenchError as error:
        run.error = str(error)
        return
    run.others_during = busy_processes(
        machine,
        MachineSample.take(),
        exclude={os.getpid(), server.pid, server.process.pid},
        least_pct=OTHER_BUSY_PCT,
    )
    run.peak_rss_kib = read_status_kib(server.pid, "VmHWM")
    status = server.exit_status()
    if status is not None:
        run.error = f"server exited with status {status}: {server.stderr_tail(1)}"
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
    run.tls = report.get("tls") or None
    run.round_trips = int(report["round_trips"])
    run.elapsed_s = elapsed = float(report["elapsed_s"])
    if run.round_trips == 0:
        run.error = f"too slow: no round trip completed in {load.duration:g} s"
        run.too_slow = True
        return
    run.rt_per_s = run.round_trips / elapsed
    run.mib_per_s = run.round_trips * size / elapsed / 2**20
    histogram = histograms.from_samples(samples)
    run.latency_us = histograms.percentiles_us(histogram)
    run.histogram = histograms.encode(histogram)
    if load.rate is not None:
        run.service_us = {k: v / 1000 for k, v in report["service_ns"].items()}
        run.send_lag_us = {k: v / 1000 for k, v in report["send_lag_ns"].items()}
        run.unfinished = int(report["unfinished"])
    account_cpu(run, report, pinning)
    run.flags += run_flags(run, pinning, load)


def account_cpu(run: Run, report: dict[str, Any], pinning: Pinning) -> None:
    """Server and load-generator CPU from the report, and other processes' share."""
    elapsed = run.elapsed_s
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
    steal: list[int] = report.get("cpu_steal_ticks", [])
    watched = [cpu for cpu in (pinning.server_cpu, pinning.loadgen_cpu) if cpu is not None]
    shares = [
        100 * steal[cpu] / total[cpu]
        for cpu in (watched or range(len(total)))
        if cpu < min(len(steal), len(total)) and total[cpu]
    ]
    run.steal_pct = max(shares) if shares else None
    ticks = [steal[cpu] for cpu in (watched or range(len(steal))) if cpu < len(steal)]
    run.steal_ticks = max(ticks) if ticks else None
    if pinning.server_cpu is not None and pinning.loadgen_cpu is not None and busy:
        cpu_s, cpu_g = pinning.server_cpu, pinning.loadgen_cpu
        if total[cpu_s] and server_cpu_s is not None:
            others = busy[cpu_s] - server_cpu_s * ticks_per_s
            run.other_server_cpu_pct = max(0.0, 100 * others / total[cpu_s])
        if total[cpu_g]:
            others = busy[cpu_g] - loadgen_cpu_s * ticks_per_s
            run.other_loadgen_cpu_pct = max(0.0, 100 * others / total[cpu_g])


def run_flags(run: Run, pinning: Pinning, load: Load) -> list[str]:
    """Warnings that qualify a run's numbers."""
    flags: list[str] = []
    # Only in the closed loop: in the open loop the server idles by design (it gets a
    # share of its capacity), and a load generator that cannot keep the rate is
    # ``behind``.
    if (
        load.rate is None
        and run.loadgen_cpu_pct is not None
        and run.server_cpu_pct is not None
        and run.loadgen_cpu_pct >= BOTTLENECK_PCT
        and run.server_cpu_pct < BOTTLENECK_PCT
    ):
        flags.append("loadgen-bound")
    others = (run.other_server_cpu_pct, run.other_loadgen_cpu_pct)
    if any(other is not None and other > CONTENDED_PCT for other in others):
        flags.append("contended")
    if run.others_during:
        flags.append("others-busy")
    if run.others_before:
        flags.append("others-before")
    if (
        run.steal_pct is not None
        and run.steal_pct > STEAL_PCT
        and (run.steal_ticks is None or run.steal_ticks > STEAL_TICKS)
    ):
        flags.append("steal")
    if loaded(run.loadavg_1m):
        flags.append("loaded")
    if run.idle_cpu_pct is not None and run.idle_cpu_pct > 100 * SPIN_SHARE:
        flags.append("busy-idle")
    if pinning.server_cpu is None:
        flags.append("unpinned")
    if load.rate is not None:
        if run.unfinished:
            flags.append(f"{run.unfinished} unanswered")
        if run.rt_per_s is not None and run.rt_per_s < BEHIND_SHARE * load.rate:
            flags.append("behind")
    return flags
