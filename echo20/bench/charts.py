"""PNG charts of a run (matplotlib, an extra: without it the run says so and goes on).

* ``bench.png``: closed-loop round trips per second and CPU per round trip, one bar per
  target in each (connections, size) group.
* ``sweep.png``: for each (connections, size), latency (p50 and p99) against the
  throughput achieved, one line per target over the rates of ``--rates``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echo20 import loops
from echo20.bench.stats import Cell
from echo20.bench.targets import C_LOOP, TARGETS, Target
from echo20.bench.units import format_size

__all__ = ["write_loop_chart", "write_matrix_chart", "write_sweep_chart"]

PROGRAM = "echo20-bench"


def pyplot() -> Any | None:
    """matplotlib's pyplot on the file-only backend, or None (with one line) without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            f"{PROGRAM}: no chart: matplotlib is not installed (pip install 'echo20[bench]')",
            file=sys.stderr,
        )
        return None
    return plt


def target_index(name: str) -> int:
    """The place of a target in TARGETS; --server-cmd ones come after every built-in."""
    return TARGETS.index(name) if name in TARGETS else len(TARGETS)


def order(target: Target) -> tuple[int, str, int, str]:
    """Targets in the order of TARGETS, then of the loop table."""
    names = list(loops.LOOP_NAMES)
    loop = names.index(target.loop) if target.loop in names else -1
    return (target_index(target.name), target.name, loop, target.loop)


def style(label_target: str, loop: str, plt: Any) -> dict[str, Any]:
    """One hue per implementation; each loop a shade of it (the C server: black)."""
    if loop == C_LOOP:
        return {"color": "black", "alpha": 1.0}
    order = list(loops.LOOP_NAMES)
    shade = order.index(loop) if loop in order else 0
    hue = plt.get_cmap("tab10")(target_index(label_target) % 10)
    return {"color": hue, "alpha": max(0.3, 1.0 - 0.13 * shade)}


def write_matrix_chart(path: Path, cells: Sequence[Cell], subtitle: str) -> Path | None:
    """Closed-loop throughput and CPU per round trip, one bar per target and point."""
    closed = [cell for cell in cells if cell.rate is None]
    if not closed:
        return None
    plt = pyplot()
    if plt is None:
        return None
    points = sorted({(cell.connections, cell.size) for cell in closed})
    targets = sorted({cell.target for cell in closed}, key=order)
    by_key = {(cell.target, cell.connections, cell.size): cell.summary for cell in closed}
    figure, axes = plt.subplots(2, 1, figsize=(max(9.0, 1.6 * len(points) + 5), 9), sharex=True)
    width = 0.8 / max(1, len(targets))
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
        look = style(target.name, target.loop, plt)
        axes[0].bar(xs, throughput, width, label=target.label, **look)
        axes[1].bar(xs, cpu, width, label=target.label, **look)
    axes[0].set_ylabel("round trips / s (higher is better)")
    axes[1].set_ylabel("server CPU µs per round trip (lower is better)")
    for axis in axes:
        axis.set_yscale("log")
        axis.set_axisbelow(True)
        axis.grid(axis="y", which="both", alpha=0.3)
    axes[1].set_xticks(range(len(points)))
    axes[1].set_xticklabels([f"{c} conn × {format_size(s)}" for c, s in points], rotation=20)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.suptitle(f"echo20 benchmark, closed loop\n{subtitle}", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_sweep_chart(path: Path, cells: Sequence[Cell], subtitle: str) -> Path | None:
    """Latency against achieved throughput over the open-loop rates, per target."""
    swept = [cell for cell in cells if cell.rate is not None and cell.summary["error"] is None]
    points = sorted({(cell.connections, cell.size) for cell in swept})
    if not swept or len({cell.rate for cell in swept}) < 2:
        return None
    plt = pyplot()
    if plt is None:
        return None
    figure, axes = plt.subplots(1, len(points), figsize=(7.5 * len(points) + 2.5, 6), squeeze=False)
    for axis, (connections, size) in zip(axes[0], points, strict=True):
        targets = sorted(
            {c.target for c in swept if (c.connections, c.size) == (connections, size)},
            key=order,
        )
        for target in targets:
            series = sorted(
                (
                    c.summary["rt_per_s"],
                    c.summary["latency_us"]["p50"],
                    c.summary["latency_us"]["p99"],
                )
                for c in swept
                if (c.target, c.connections, c.size) == (target, connections, size)
            )
            xs = [point[0] for point in series]
            look = style(target.name, target.loop, plt)
            axis.plot(xs, [p[1] for p in series], "o-", label=f"{target.label} p50", **look)
            axis.plot(xs, [p[2] for p in series], "^--", label=f"{target.label} p99", **look)
        axis.set_yscale("log")
        axis.set_xlabel("round trips / s achieved")
        axis.set_ylabel("latency µs from when each message was due (log)")
        axis.set_title(f"{connections} connections × {format_size(size)}", fontsize="small")
        axis.grid(which="both", alpha=0.3)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small")
    figure.suptitle(
        f"echo20 benchmark, open loop: latency against load\n{subtitle}", fontsize="small"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_loop_chart(
    path: Path, panels: Sequence[tuple[str, Sequence[Cell]]], size: int, subtitle: str
) -> Path | None:
    """One panel per transport: each shape's server CPU per round trip over the C
    server's at ``size``, one bar per loop (the loop comparison page's picture)."""
    plt = pyplot()
    if plt is None:
        return None
    loop_names = list(loops.LOOP_NAMES)
    figure, axes = plt.subplots(
        1, len(panels), figsize=(6.0 * len(panels) + 2.0, 5.5), squeeze=False, sharey=True
    )
    for axis, (title, cells) in zip(axes[0], panels, strict=True):
        chosen = [
            c
            for c in cells
            if c.rate is None and c.size == size and c.target.loop != C_LOOP
            if c.summary.get("error") is None and (c.summary.get("vs_c") or {}).get("cpu_us_per_rt")
        ]
        shapes = [name for name in TARGETS if any(c.target.name == name for c in chosen)]
        present = [loop for loop in loop_names if any(c.target.loop == loop for c in chosen)]
        width = 0.8 / max(1, len(present))
        for index, loop in enumerate(present):
            xs, ratios = [], []
            for x, shape in enumerate(shapes):
                for cell in chosen:
                    if (cell.target.name, cell.target.loop) == (shape, loop):
                        xs.append(x - 0.4 + (index + 0.5) * width)
                        ratios.append(cell.summary["vs_c"]["cpu_us_per_rt"])
            shade = plt.get_cmap("tab10")(loop_names.index(loop) % 10)
            axis.bar(xs, ratios, width, label=loop, color=shade)
        axis.axhline(1.0, color="black", linewidth=1, label="C epoll server")
        axis.set_yscale("log")
        axis.set_xticks(range(len(shapes)))
        axis.set_xticklabels(shapes)
        axis.set_title(f"{title}, {format_size(size)}", fontsize="small")
        axis.grid(axis="y", which="both", alpha=0.3)
        axis.set_axisbelow(True)
    axes[0][0].set_ylabel("server CPU per round trip ÷ the C server's (log; lower is better)")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.suptitle(f"echo20 loops side by side, closed loop\n{subtitle}", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
