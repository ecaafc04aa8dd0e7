"""Budgets a user sets on a run: ``--budget "protocol-uvloop@16x200<=1.3"``.

A budget names a cell (target label, connections x message size), optionally a figure,
and a limit on its ratio to the C reference in the same run (the ``vs c`` columns)::

    protocol-uvloop@16x200<=1.3          CPU per round trip at most 1.3x the C server's
    protocol-uvloop@1x8:p50<=1.2         median latency at most 1.2x
    protocol-rloop@1x1m:mib>=0.5         throughput at least half

Each budget is reported as met, not met, or not measured, with the same ratio of the
``floor`` target on that loop beside it: what the loop alone costs, below which no
Python server on it can go. A budget not met makes the run exit with status 1.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from echo20.bench.stats import Cell
from echo20.bench.units import parse_size

__all__ = ["Budget", "evaluate", "parse_budget"]

# Budget figures and the key of the cell's ``vs_c`` ratio they read.
FIGURES = {"cpu": "cpu_us_per_rt", "p50": "p50", "p99": "p99", "mib": "mib_per_s"}
DESCRIPTIONS = {
    "cpu": "CPU/rt vs c",
    "p50": "p50 vs c",
    "p99": "p99 vs c",
    "mib": "MiB/s vs c",
}

_BUDGET = re.compile(
    r"^(?P<label>[\w-]+)@(?P<conns>\d+)x(?P<size>\d+[a-zA-Z]*)"
    r"(?::(?P<figure>[a-z0-9]+))?(?P<op><=|>=)(?P<limit>\d+(?:\.\d+)?)$"
)


@dataclass(frozen=True)
class Budget:
    """One limit on one cell's ratio to the C reference."""

    text: str
    label: str
    connections: int
    size: int
    figure: str
    limit: float
    at_most: bool

    def describe(self) -> str:
        return f"{DESCRIPTIONS[self.figure]} {'≤' if self.at_most else '≥'} {self.limit:g}×"


def parse_budget(text: str) -> Budget:
    """argparse type: ``LABEL@CONNSxSIZE[:FIGURE](<=|>=)LIMIT``."""
    match = _BUDGET.match(text.replace(" ", ""))
    if match is None:
        raise argparse.ArgumentTypeError(
            f"not a budget: {text!r} (e.g. protocol-uvloop@16x200<=1.3, "
            "protocol-uvloop@1x8:p50<=1.2)"
        )
    figure = match.group("figure") or "cpu"
    if figure not in FIGURES:
        raise argparse.ArgumentTypeError(
            f"unknown figure {figure!r} in {text!r} (choose from {', '.join(FIGURES)})"
        )
    return Budget(
        text=text,
        label=match.group("label"),
        connections=int(match.group("conns")),
        size=parse_size(match.group("size")),
        figure=figure,
        limit=float(match.group("limit")),
        at_most=match.group("op") == "<=",
    )


def evaluate(budgets: Sequence[Budget], cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Each budget with its measured ratio, whether it is met (None: not measured) and
    the floor's ratio on the same loop (closed-loop cells only)."""
    by_key = {
        (cell.target.label, cell.connections, cell.size): cell
        for cell in cells
        if cell.rate is None
    }
    results: list[dict[str, Any]] = []
    for budget in budgets:
        cell = by_key.get((budget.label, budget.connections, budget.size))
        measured = ratio(cell, budget.figure)
        loop = budget.label.split("-", 1)[1] if "-" in budget.label else ""
        floor = by_key.get((f"floor-{loop}", budget.connections, budget.size))
        met = (
            None
            if measured is None
            else (measured <= budget.limit if budget.at_most else measured >= budget.limit)
        )
        results.append(
            {
                "budget": budget.text,
                "target": budget.label,
                "connections": budget.connections,
                "size": budget.size,
                "requirement": budget.describe(),
                "measured": measured,
                "met": met,
                "floor": ratio(floor, budget.figure),
            }
        )
    return results


def ratio(cell: Cell | None, figure: str) -> float | None:
    if cell is None or cell.summary.get("error") is not None or not cell.summary.get("vs_c"):
        return None
    value: float | None = cell.summary["vs_c"][FIGURES[figure]]
    return value
