"""``echo20-bench compare OLD.json NEW.json``: what changed between two runs, and
whether it is more than noise.

Cells are matched by target, connections, size and rate. For each figure (CPU per round
trip, round trips per second, p50 and p99 latency) the ratio NEW / OLD of the two
medians is shown, and a verdict: a change counts only when the two runs' spreads (the
lowest to the highest repeat) do not overlap. With one repeat on either side there is
no spread to judge by, and the verdict says so.

Even two runs of one unchanged server on a steady machine have spreads that miss each
other now and then: with 2 repeats a side, in one cell of three. So under the table,
for each figure, the share of cells within noise is set beside the share chance alone
would leave within (``stats.chance_apart``); a rerun agrees with its page when the two
are close, not when every cell is within.

A whole run can also meet a slower or faster phase of the host: on a VM every target,
the C server included, can measure 10-25 % slower for the many minutes of a run. That
moves each cell out of the other run's spread in one direction, and says nothing about
the servers. So each cell's CPU per round trip over the C server's, taken repeat by
repeat (each repeat of a target ran within seconds of the C server's), is a figure of
its own, ``CPU ÷ C``: the one a loop page's claims rest on.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echo20.bench import report
from echo20.bench.environment import describe
from echo20.bench.stats import chance_apart, pair_values
from echo20.bench.targets import C_LOOP
from echo20.bench.units import fmt, format_size
from echo20.errors import BenchError

__all__ = ["command_compare", "compare_cells", "load_result"]

# Figure -> (where the median is in a cell, True when lower is better).
FIGURES: dict[str, tuple[tuple[str, ...], bool]] = {
    "cpu_us_per_rt": (("cpu_us_per_rt",), True),
    "rt_per_s": (("rt_per_s",), False),
    "p50": (("latency_us", "p50"), True),
    "p99": (("latency_us", "p99"), True),
}
# Not read from the cell but computed from its repeats and the C server's (ratio_spreads).
CPU_VS_C = "cpu_vs_c"
FIGURE_NAMES = {
    "cpu_us_per_rt": "CPU µs/rt",
    "rt_per_s": "rt/s",
    "p50": "p50",
    "p99": "p99",
    CPU_VS_C: "CPU ÷ C",
}
LOWER_IS_BETTER = {figure: lower for figure, (_, lower) in FIGURES.items()} | {CPU_VS_C: True}
HEADERS = ("cell", "figure", "old", "new", "new / old", "verdict")


def load_result(path: Path) -> dict[str, Any]:
    """A bench.json, or BenchError with one line saying what is wrong with it."""
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except OSError as error:
        raise BenchError(f"cannot read {path}: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BenchError(f"{path} is not JSON: {error}") from None
    if not isinstance(document, dict) or document.get("kind") != report.KIND:
        raise BenchError(f"{path} is not an echo20-bench run result (bench.json)")
    if document.get("version") != report.VERSION or "cells" not in document:
        raise BenchError(
            f"{path} is a version {document.get('version')} result; this echo20-bench "
            f"reads version {report.VERSION}"
        )
    return document


def cell_key(cell: dict[str, Any]) -> tuple[str, int, int, str]:
    return (cell["label"], cell["connections"], cell["size"], cell.get("rate") or "closed")


def describe_key(key: tuple[str, int, int, str]) -> str:
    label, connections, size, rate = key
    return f"{label} {connections} × {format_size(size)} {rate}"


def figure_of(cell: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = cell
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return float(value) if isinstance(value, (int, float)) else None


def verdict(
    old_spread: Sequence[float] | None,
    new_spread: Sequence[float] | None,
    repeats: tuple[int, int],
    figure: str,
    ratio: float,
) -> str:
    """``better``, ``worse``, ``within noise``, or why it cannot be told."""
    if min(repeats) < 2 or not old_spread or not new_spread:
        return "one repeat: no spread to judge by"
    if new_spread[0] <= old_spread[1] and old_spread[0] <= new_spread[1]:
        return "within noise"
    improved = ratio < 1 if LOWER_IS_BETTER[figure] else ratio > 1
    return "better" if improved else "worse"


def ratio_spreads(document: dict[str, Any]) -> dict[tuple[str, int, int, str], list[float]]:
    """Per cell but the C server's: its CPU per round trip over the C server's at the
    same point, repeat by repeat (bench.json keeps every repeat)."""
    cells = [cell for cell in document["cells"] if not cell.get("error")]
    reference = {
        (cell["connections"], cell["size"], cell.get("rate")): cell
        for cell in cells
        if cell.get("target") == "c"
    }
    found: dict[tuple[str, int, int, str], list[float]] = {}
    for cell in cells:
        c = reference.get((cell["connections"], cell["size"], cell.get("rate")))
        if c is None or c is cell:
            continue
        ratios = pair_values(cpu_per_repeat(cell), cpu_per_repeat(c))
        if ratios:
            found[cell_key(cell)] = ratios
    return found


def cpu_per_repeat(cell: dict[str, Any]) -> list[float | None]:
    """Each kept repeat's CPU per round trip (None for one that failed)."""
    return [None if run.get("error") else run.get("cpu_us_per_rt") for run in cell.get("runs", [])]


def ratio_row(key: tuple[str, int, int, str], old: list[float], new: list[float]) -> dict[str, Any]:
    """The ``CPU ÷ C`` row of one cell, from its repeats' ratios in each run."""
    before, after = statistics.median(old), statistics.median(new)
    repeats = (len(old), len(new))
    spreads = [min(old), max(old)], [min(new), max(new)]
    return {
        "cell": describe_key(key),
        "figure": CPU_VS_C,
        "old": before,
        "new": after,
        "ratio": after / before,
        "verdict": verdict(*spreads, repeats, CPU_VS_C, after / before),
        "repeats": repeats,
    }


def compare_cells(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per cell and figure measured in both runs."""
    old_cells = {cell_key(cell): cell for cell in old["cells"]}
    old_ratios, new_ratios = ratio_spreads(old), ratio_spreads(new)
    rows: list[dict[str, Any]] = []
    for new_cell in new["cells"]:
        key = cell_key(new_cell)
        old_cell = old_cells.get(key)
        if old_cell is None:
            continue
        if old_cell.get("error") or new_cell.get("error"):
            rows.append(
                {
                    "cell": describe_key(key),
                    "figure": "",
                    "old": None,
                    "new": None,
                    "ratio": None,
                    "verdict": "error: "
                    + str(new_cell.get("error") or f"old run: {old_cell.get('error')}"),
                }
            )
            continue
        for figure, (path, _) in FIGURES.items():
            before, after = figure_of(old_cell, path), figure_of(new_cell, path)
            if not before or after is None:
                continue
            ratio = after / before
            repeats = (old_cell.get("repeats", 1), new_cell.get("repeats", 1))
            spreads = (
                old_cell.get("spread", {}).get(figure),
                new_cell.get("spread", {}).get(figure),
            )
            rows.append(
                {
                    "cell": describe_key(key),
                    "label": key[0],
                    "figure": figure,
                    "old": before,
                    "new": after,
                    "ratio": ratio,
                    "verdict": verdict(*spreads, repeats, figure, ratio),
                    "repeats": repeats,
                }
            )
        if key in old_ratios and key in new_ratios:
            rows.append(ratio_row(key, old_ratios[key], new_ratios[key]))
    return rows


def agreement(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per figure: how many cells lie within noise, beside how many chance alone would
    leave within with the same repeats (``- CPU µs/rt: 380 of 415 cells within noise
    (92 %); chance alone leaves 90 % within``)."""
    lines: list[str] = []
    for figure in FIGURE_NAMES:
        judged = [row for row in rows if row["figure"] == figure and min(row["repeats"]) >= 2]
        if not judged:
            continue
        within = sum(row["verdict"] == "within noise" for row in judged)
        expected = statistics.fmean(1 - chance_apart(*row["repeats"]) for row in judged)
        better = sum(row["verdict"] == "better" for row in judged)
        lines.append(
            f"- {FIGURE_NAMES[figure]}: {within} of {len(judged)} cells within noise "
            f"({100 * within / len(judged):.0f} %; {better} better, "
            f"{len(judged) - within - better} worse); chance alone leaves "
            f"{100 * expected:.0f} % within"
        )
    return lines


def host_drift(rows: Sequence[dict[str, Any]]) -> str | None:
    """How far the C server itself moved: a whole run slower or faster, C included, is
    the host's speed, not the servers' (``CPU ÷ C`` leaves it out)."""
    moves = [
        row["ratio"]
        for row in rows
        if row["figure"] == "cpu_us_per_rt" and row["label"] == f"c-{C_LOOP}"
    ]
    if not moves:
        return None
    return (
        f"- the C server alone: CPU per round trip {statistics.median(moves):.2f}× the old "
        f"run's (median of {len(moves)} cells); a run that moves every target with it met "
        "a faster or slower host, which `CPU ÷ C` leaves out"
    )


def environment_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between the two runs' environments (loop versions first)."""
    changes: list[str] = []
    before, after = old.get("environment", {}), new.get("environment", {})
    for name in sorted(set(before.get("loops", {})) | set(after.get("loops", {}))):
        a, b = before.get("loops", {}).get(name), after.get("loops", {}).get(name)
        if a != b:
            changes.append(f"{name}: {a or 'not in the old run'} -> {b or 'not in the new run'}")
    for field in ("python", "kernel", "cpu_model", "governor", "pinning", "accelerator",
                  "echo20"):  # fmt: skip
        if before.get(field) != after.get(field):
            changes.append(f"{field}: {before.get(field)} -> {after.get(field)}")
    # Runs from before --unix and --tls were over TCP.
    if before.get("transport", "TCP") != after.get("transport", "TCP"):
        changes.append(
            f"transport: {before.get('transport', 'TCP')} -> {after.get('transport', 'TCP')}"
        )
    return changes


def command_compare(args: argparse.Namespace) -> int:
    old, new = load_result(args.old), load_result(args.new)
    rows = compare_cells(old, new)
    for name, document in (("old", old), ("new", new)):
        print(f"{name}: {args.old if name == 'old' else args.new}")
        for line in describe(document["environment"]):
            print(f"  {line}")
    changes = environment_changes(old, new)
    print("what changed: " + ("; ".join(changes) if changes else "nothing in the environment"))
    if not rows:
        print("no cell was measured in both runs")
        return 1
    table = [
        [
            row["cell"],
            FIGURE_NAMES.get(row["figure"], row["figure"]),
            fmt(row["old"]),
            fmt(row["new"]),
            "" if row["ratio"] is None else f"{row['ratio']:.3f}",
            row["verdict"],
        ]
        for row in rows
    ]
    report.print_table("NEW / OLD per cell", HEADERS, group(table))
    summary = agreement(rows) + [line for line in [host_drift(rows)] if line]
    if summary:
        print("\nHow many cells lie within noise, and how many would by chance alone:")
        print("\n".join(summary))
    return 0


def group(rows: Sequence[list[str]]) -> list[list[list[str]]]:
    """Rows in sections, one per cell."""
    sections: dict[str, list[list[str]]] = {}
    for row in rows:
        sections.setdefault(row[0], []).append(row)
    return list(sections.values())
