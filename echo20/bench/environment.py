"""What a reader needs to judge a result: the machine, the software, and how busy it was.

Every result file carries this and every report prints it: CPU model, kernel, Python and
each loop's version, the CPU frequency governor, the pinning, whether the protocol core's
optional C accelerator is in use, and the load generator's share of its CPU.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from echo20 import __version__, loops

__all__ = ["accelerator", "describe", "environment", "load_average"]

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


def load_average() -> list[float]:
    with suppress(OSError, ValueError):
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return []


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
