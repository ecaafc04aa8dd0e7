"""What a reader needs to judge a result: the machine, the software, and how busy it was.

Every result file carries this and every report prints it: CPU model, kernel, Python and
each loop's version, the CPU frequency governor, the pinning, whether the protocol core's
optional C accelerator is in use, and the load generator's share of its CPU.

:class:`MachineSample` is how busy the machine is, read twice to compare: every
process's CPU time (``/proc/PID/stat``) and every CPU's stolen time (``/proc/stat``), so
a cell can name the other processes that ran beside it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from echo20 import __version__, loops

__all__ = [
    "MachineSample",
    "accelerator",
    "busy_processes",
    "describe",
    "environment",
    "load_average",
    "tls_negotiated",
]

# /proc/PID/stat's flags bit of a kernel thread: softirq and worker threads, which on a
# loopback benchmark mostly carry the benchmark's own packets.
PF_KTHREAD = 0x00200000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Packages besides the loops whose versions change what is measured.
PACKAGES = ("tornado", "numpy", "hdrhistogram")


def cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def governors() -> str:
    """The CPU frequency governor(s) in use, or why there is none to read."""
    found: set[str] = set()
    for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor"):
        with suppress(OSError):
            found.add(path.read_text().strip())
    if not found:
        return "none (no cpufreq: a virtual machine, or the firmware sets the frequency)"
    return ", ".join(sorted(found))


def accelerator() -> str:
    """Whether the protocol core's optional C accelerator is in use, ``yes`` or ``no``,
    read from ``echo20.protocol.ACCELERATED`` (the servers import the same core from
    the same interpreter)."""
    from echo20 import protocol

    return "yes" if protocol.ACCELERATED else "no"


@dataclass(frozen=True)
class MachineSample:
    """Every user process's CPU time so far, in clock ticks, by pid (with its name), and
    every CPU's stolen time, at ``time`` (``time.monotonic``)."""

    time: float
    processes: dict[int, tuple[str, int]]
    steal: dict[int, int]

    @classmethod
    def take(cls) -> MachineSample:
        processes: dict[int, tuple[str, int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue  # it exited meanwhile
            name, _, rest = text.partition(" (")[2].rpartition(") ")
            fields = rest.split()
            # After the name: state (field 3) ... flags (9), utime (14), stime (15).
            if len(fields) < 13 or int(fields[6]) & PF_KTHREAD:
                continue
            processes[int(entry.name)] = (name, int(fields[11]) + int(fields[12]))
        return cls(time.monotonic(), processes, cpu_steal_ticks())


def cpu_steal_ticks() -> dict[int, int]:
    """Each CPU's stolen time so far (``/proc/stat``), in clock ticks."""
    steal: dict[int, int] = {}
    with suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and len(values) >= 8:
                steal[int(name[3:])] = int(values[7])
    return steal


def busy_processes(
    before: MachineSample, after: MachineSample, *, exclude: set[int], least_pct: float
) -> list[str]:
    """The processes (but ``exclude``) that used at least ``least_pct`` % of a CPU between
    two samples, busiest first: ``python3 (pid 4242) 87 %``."""
    seconds = after.time - before.time
    if seconds <= 0:
        return []
    found: list[tuple[float, str]] = []
    for pid, (name, ticks) in after.processes.items():
        if pid in exclude:
            continue
        # A process born in between counts from nothing.
        used = ticks - before.processes.get(pid, (name, 0))[1]
        pct = 100 * used / CLOCK_TICKS / seconds
        if pct >= least_pct:
            found.append((pct, f"{name} (pid {pid}) {pct:.0f} %"))
    return [text for _, text in sorted(found, reverse=True)]


def load_average() -> list[float]:
    with suppress(OSError, ValueError):
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return []


def loaded(one_minute: float | None) -> bool:
    """More runnable tasks than usable CPUs, beyond the server and the load generator:
    a 1-minute load average of at least the usable CPUs + 1."""
    return one_minute is not None and one_minute >= len(os.sched_getaffinity(0)) + 1


def package_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in PACKAGES:
        with suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def environment(loop_names: Sequence[str], pinning: str) -> dict[str, Any]:
    """The environment of a run that uses ``loop_names``."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpus_online": os.cpu_count(),
        "cpus_usable": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "echo20": __version__,
        "loops": loops.loop_versions(list(loop_names)),
        "packages": package_versions(),
        "governor": governors(),
        "pinning": pinning,
        "accelerator": accelerator(),
        "loadavg_start": load_average(),
    }


def loadgen_share(cells: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """The load generator's CPU share over the measured cells: median and highest."""
    shares = sorted(s["loadgen_cpu_pct"] for s in cells if s.get("loadgen_cpu_pct") is not None)
    if not shares:
        return {"median_pct": None, "max_pct": None}
    return {"median_pct": shares[len(shares) // 2], "max_pct": shares[-1]}


def tls_negotiated(cells: Sequence[dict[str, Any]]) -> list[str]:
    """Each TLS version and cipher the load generator negotiated in some cell."""
    return sorted({s["tls"] for s in cells if s.get("tls")})


def describe(env: dict[str, Any]) -> list[str]:
    """The environment as a few lines for a report's head."""
    loops_text = "; ".join(f"{name}: {version}" for name, version in env["loops"].items())
    packages = ", ".join(f"{name} {version}" for name, version in env["packages"].items())
    load = " ".join(f"{x:.2f}" for x in env.get("loadavg_start", []))
    load_end = " ".join(f"{x:.2f}" for x in env.get("loadavg_end", []))
    lines = [
        f"{env['date']} on {env['hostname']}: {env['cpu_model']} ({env['cpus_online']} CPUs), "
        f"Linux {env['kernel']}, {env['python']}, echo20 {env['echo20']}",
        f"loops: {loops_text or 'none'}" + (f"; also {packages}" if packages else ""),
        f"governor: {env['governor']}; pinning: {env['pinning']}; "
        f"C accelerator: {env['accelerator']}; transport: {env.get('transport', 'TCP')}",
    ]
    if "tls" in env:
        lines.append(f"TLS negotiated: {', '.join(env['tls']) or 'nothing measured'}")
    share = env.get("loadgen_cpu")
    if share and share.get("median_pct") is not None:
        lines.append(
            f"load generator CPU: median {share['median_pct']:.0f} %, "
            f"highest {share['max_pct']:.0f} % of its core; "
            f"load average {load or '?'} at the start, {load_end or '?'} at the end"
        )
    else:
        lines.append(f"load average {load or '?'} at the start, {load_end or '?'} at the end")
    return lines
