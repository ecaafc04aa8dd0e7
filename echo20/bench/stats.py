"""Cells: one target at one load point over its repeats; medians, spreads and ratios.

A cell's CPU, throughput and memory figures are medians over its repeats; its latency
percentiles come from the histograms of every repeat added together (every round trip
counts once). Each compared figure also keeps its spread, the lowest and highest repeat,
so a later run can be told apart from noise (``echo20-bench compare``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from echo20.bench import histograms
from echo20.bench.measure import Run
from echo20.bench.targets import Target

__all__ = [
    "SPREAD_METRICS",
    "Cell",
    "Metric",
    "add_ratios",
    "chance_apart",
    "pair_values",
    "paired_ratio",
    "paired_ratios",
]

Metric = Callable[[Run], float | None]

# The figures whose spread over the repeats every cell keeps, and how to read them.
SPREAD_METRICS: dict[str, Metric] = {
    "cpu_us_per_rt": lambda run: run.cpu_us_per_rt,
    "rt_per_s": lambda run: run.rt_per_s,
    "p50": lambda run: run.latency_us.get("p50"),
    "p99": lambda run: run.latency_us.get("p99"),
}


@dataclass
class Cell:
    """One target at one point: connections, message size, and (open loop) a rate.

    ``rate`` is what the user asked for: None (closed loop), ``"20000"`` (round trips
    per second) or ``"50%"`` (of the same target's closed-loop round trips per second in
    the same repeat).
    """

    target: Target
    connections: int
    size: int
    rate: str | None = None
    runs: list[Run] = field(default_factory=list)
    # Why the loop cannot run this target at all (no Unix sockets, no TLS): not measured,
    # and not a failure.
    unsupported: str | None = None
    # Filled by summarize() once every repeat has run.
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int, int, str]:
        """What identifies the cell across runs (``compare`` matches on it)."""
        return (self.target.label, self.connections, self.size, self.rate or "closed")

    @property
    def error(self) -> str | None:
        return next((run.error for run in self.runs if run.error), None)

    @property
    def failed(self) -> bool:
        """A repeat failed for another reason than being too slow to measure."""
        return any(run.error and not run.too_slow for run in self.runs)

    def values(self, metric: Metric) -> list[float]:
        """``metric`` of every repeat that worked and has it."""
        found = [metric(run) for run in self.runs if run.error is None]
        return [value for value in found if value is not None]

    def median(self, metric: Metric) -> float | None:
        values = self.values(metric)
        return statistics.median(values) if values else None

    def summarize(self) -> dict[str, Any]:
        """Medians, pooled latency and spreads, kept in ``summary`` (only ``error`` if a
        repeat failed)."""
        self.summary = self._summary()
        return self.summary

    def _summary(self) -> dict[str, Any]:
        if self.unsupported is not None:
            return {"error": self.unsupported, "failed": False, "unsupported": True}
        if self.error is not None or not self.runs:
            return {"error": self.error or "not run", "failed": self.failed or not self.runs}
        flags = sorted({flag for run in self.runs for flag in run.flags})
        peaks = [run.peak_rss_kib for run in self.runs if run.peak_rss_kib is not None]
        pooled = histograms.merge([run.histogram for run in self.runs if run.histogram])
        summary: dict[str, Any] = {
            "error": None,
            "failed": False,
            "repeats": len(self.runs),
            "rt_per_s": self.median(lambda r: r.rt_per_s),
            "mib_per_s": self.median(lambda r: r.mib_per_s),
            "latency_us": histograms.percentiles_us(pooled),
            "cpu_us_per_rt": self.median(lambda r: r.cpu_us_per_rt),
            "spread": {
                name: [min(found), max(found)]
                for name, metric in SPREAD_METRICS.items()
                if (found := self.values(metric))
            },
            "server_cpu_pct": self.median(lambda r: r.server_cpu_pct),
            "loadgen_cpu_pct": self.median(lambda r: r.loadgen_cpu_pct),
            "other_server_cpu_pct": self.median(lambda r: r.other_server_cpu_pct),
            "other_loadgen_cpu_pct": self.median(lambda r: r.other_loadgen_cpu_pct),
            "peak_rss_kib": max(peaks) if peaks else None,
            "loadavg_1m": self.median(lambda r: r.loadavg_1m),
            "steal_pct": max(self.values(lambda r: r.steal_pct), default=None),
            "idle_cpu_pct": self.median(lambda r: r.idle_cpu_pct),
            # Other processes busy during any repeat (or just before it), each once.
            "others_busy": list(
                dict.fromkeys(text for run in self.runs for text in run.others_during)
            ),
            "others_before": list(
                dict.fromkeys(text for run in self.runs for text in run.others_before)
            ),
            "flags": flags,
            "tls": next((run.tls for run in self.runs if run.tls), None),
            "histogram": histograms.encode(pooled),
        }
        if self.rate is not None:
            summary["asked_rt_per_s"] = self.median(lambda r: r.rate)
            summary["service_us"] = {
                key: self.median(lambda r, key=key: r.service_us.get(key))  # type: ignore[misc]
                for key in ("p50", "p99", "p99.99")
            }
            summary["send_lag_us"] = {
                key: self.median(lambda r, key=key: r.send_lag_us.get(key))  # type: ignore[misc]
                for key in ("p50", "p99", "p99.99")
            }
            summary["unfinished"] = sum(run.unfinished for run in self.runs)
        return summary


def paired_ratios(runs: Sequence[Run], reference: Sequence[Run], metric: Metric) -> list[float]:
    """``metric`` of each repeat divided by the reference's in the same repeat.

    Repeat i of every target ran within seconds of repeat i of the reference, so pairing
    them cancels what the machine's load did between repeats.
    """
    return pair_values(
        [metric(run) if run.error is None else None for run in runs],
        [metric(ref) if ref.error is None else None for ref in reference],
    )


def pair_values(values: Sequence[float | None], reference: Sequence[float | None]) -> list[float]:
    """``values[i] / reference[i]`` for each repeat with both (None: failed or missing);
    ``compare`` pairs the repeats that bench.json keeps with it."""
    return [
        value / base
        for value, base in zip(values, reference, strict=False)
        if value is not None and base
    ]


def paired_ratio(runs: Sequence[Run], reference: Sequence[Run], metric: Metric) -> float | None:
    """The median of paired_ratios: what a cell's ``vs_c`` figures are."""
    ratios = paired_ratios(runs, reference, metric)
    return statistics.median(ratios) if ratios else None


def add_ratios(cells: Sequence[Cell]) -> None:
    """Each summary gains ``vs_c``: CPU per round trip, p50 latency and MiB/s over the C
    reference's at the same point (and the same asked rate)."""
    reference = {
        (cell.connections, cell.size, cell.rate): cell for cell in cells if cell.target.name == "c"
    }
    for cell in cells:
        c = reference.get((cell.connections, cell.size, cell.rate))
        if cell.summary["error"] is not None or c is None or c.summary["error"] is not None:
            cell.summary["vs_c"] = None
            continue
        cell.summary["vs_c"] = {
            "cpu_us_per_rt": paired_ratio(cell.runs, c.runs, lambda r: r.cpu_us_per_rt),
            "p50": paired_ratio(cell.runs, c.runs, lambda r: r.latency_us.get("p50")),
            "p99": paired_ratio(cell.runs, c.runs, lambda r: r.latency_us.get("p99")),
            "mib_per_s": paired_ratio(cell.runs, c.runs, lambda r: r.mib_per_s),
        }


def chance_apart(old_repeats: int, new_repeats: int) -> float:
    """How often two runs' spreads (lowest to highest repeat) miss each other by chance
    alone, when every repeat of both is a draw from one distribution.

    They miss when all of one run's repeats lie below all of the other's: of the
    (m + n)! orders of the draws, m! n! put the old ones first and as many the new
    ones, so 2 m! n! / (m + n)!. With 2 repeats a side that is 1 in 3; with 3, 1 in
    10; with 4, 1 in 35. A rerun "within the spread" is judged against this share.
    """
    m, n = old_repeats, new_repeats
    return 2 * math.factorial(m) * math.factorial(n) / math.factorial(m + n)
