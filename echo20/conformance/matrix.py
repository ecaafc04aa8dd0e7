"""Servers side by side: each scenario's outcomes and each observation, with a verdict.

``echo20-conformance compare`` runs every server (and client), then hands the runs
here, as :class:`echo20.conformance.report.Column`. A scenario
row is ``same`` when every server that ran it had the same outcome; an observation row
(:mod:`echo20.conformance.observe`, and the 8 MiB cuts the scenarios record) is
``differs`` only beyond run-to-run noise: each server's probe is repeated, and two
servers differ when the ranges of their repeats do not overlap, the larger median is
at least :data:`FACTOR` times the smaller, and (for times) they are more than
:data:`TIME_FLOOR_MS` apart. A verdict that differs names the servers apart from the
rest. The same rows make the terminal table, the Markdown page and the JSON file.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from echo20.conformance.observe import (
    ANSWERED_AFTER_OVER,
    CLOSE_AFTER_OVER,
    CUTS_1_MIB,
    ROUND_TRIP,
    Samples,
)
from echo20.conformance.report import PASS, Column

__all__ = [
    "FACTOR",
    "MEASURES",
    "TIME_FLOOR_MS",
    "Measure",
    "Row",
    "all_rows",
    "observation_rows",
    "scenario_rows",
]

# Two servers' repeats differ beyond noise only when the larger median is this many
# times the smaller: repeats that do not overlap by chance (run-to-run drift, a busy
# second) rarely differ by that much.
FACTOR = 2.0
# Times closer than this are never called different: the probes' client is Python on
# the same machine, and its own jitter under load is of that order.
TIME_FLOOR_MS = 1.0

NOT_RUN = "not run"
SAME = "same"
DIFFERS = "differs"

# The 8 MiB scenarios, which record how the server cut their reply.
BIG_CUT_SCENARIOS = ("half_close_beyond_kernel_buffers", "over_ends_input_beyond_kernel_buffers")
CUTS_8_MIB = "cuts_8_mib"
LARGEST_BATCH = "largest_batch"


@dataclass
class Row:
    """One line of the matrix: a cell per server, a verdict, and for observations the noise."""

    kind: str
    name: str
    cells: list[str]
    verdict: str
    # The servers the verdict sets apart (empty when the row is the same everywhere).
    apart: list[str] = field(default_factory=list)
    # For an observation: each server's samples' range, "lo-hi" (the run-to-run noise).
    noise: list[str] = field(default_factory=list)
    # For an observation: each server's samples, for the JSON file.
    samples: list[list[float]] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return self.verdict.startswith(DIFFERS)


def _verdict(
    names: list[str], groups: list[list[int]], shown: list[str] | None = None
) -> tuple[str, list[str]]:
    """``same``, or ``differs: NAME, ...`` naming every server outside the first group.

    ``groups`` hold the indexes of the servers compared, the usual group first;
    ``shown``, when given, follows each name (a scenario's outcome). The second value is
    the names of the servers set apart.
    """
    compared = sum(len(group) for group in groups)
    if compared < 2:
        return f"not compared: {compared} server(s) to compare", []
    if len(groups) < 2:
        return SAME, []
    apart = sorted(index for group in groups[1:] for index in group)
    text = ", ".join(names[i] + (f" {shown[i]}" if shown else "") for i in apart)
    return f"{DIFFERS}: {text}", [names[i] for i in apart]


# --- scenarios ---------------------------------------------------------------------


def scenario_rows(runs: list[Column], kind: str = "server") -> list[Row]:
    """A row per scenario of ``kind``, in the order the runs met them."""
    order: list[str] = []
    for run in runs:
        for result in run.results:
            if result.kind == kind and result.scenario not in order:
                order.append(result.scenario)
    names = [run.name for run in runs]
    rows = []
    for scenario in order:
        outcomes = []
        for run in runs:
            found = [r for r in run.results if r.kind == kind and r.scenario == scenario]
            outcomes.append(found[0].outcome if found else NOT_RUN)
        ran = [i for i, outcome in enumerate(outcomes) if outcome != NOT_RUN]
        by_outcome: dict[str, list[int]] = {}
        for index in ran:
            by_outcome.setdefault(outcomes[index], []).append(index)
        # The usual outcome first: the commonest, and on a tie a pass.
        groups = sorted(by_outcome.values(), key=lambda g: (-len(g), outcomes[g[0]] != PASS, g[0]))
        verdict, apart = _verdict(names, groups, outcomes)
        rows.append(Row(kind, scenario, outcomes, verdict, apart))
    return rows


# --- observations --------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """One observation: its row's title, how a value reads, whether it is a time."""

    key: str
    title: str
    show: Callable[[float], str]
    time: bool = False
    # Whether only "never" and "ever" count (any answer after over is a difference).
    yes_no: bool = False


def _ms(value: float) -> str:
    if value >= 10:
        return f"{value:.1f} ms"
    if value >= 1:
        return f"{value:.2f} ms"
    return f"{value:.3f} ms"


def _batches(value: float) -> str:
    return f"{value:.0f} batches"


def _bytes(value: float) -> str:
    return f"{value:,.0f} B"


MEASURES = (
    Measure(ROUND_TRIP, "round trip of 8 B (median of 20)", _ms, time=True),
    Measure(CUTS_1_MIB, "cuts in the 1 MiB reply", _batches),
    Measure(CUTS_8_MIB, "cuts in the 8 MiB replies", _batches),
    Measure(LARGEST_BATCH, "largest batch", _bytes),
    Measure(CLOSE_AFTER_OVER, "close after over's reply", _ms, time=True),
    Measure(ANSWERED_AFTER_OVER, "bytes after over answered", _bytes, yes_no=True),
)


def gather(run: Column) -> dict[str, Samples]:
    """Every measure's samples for one server: its probes, and what the scenarios recorded."""
    found = {key: run.observations.get(key, Samples()) for key in MEASURES_BY_KEY}
    big = Samples()
    for result in run.results:
        if result.scenario in BIG_CUT_SCENARIOS and "batches" in result.properties:
            big.values.append(float(result.properties["batches"]))
            big.batches.append([int(result.properties["largest_batch"])])
    found[CUTS_8_MIB] = big
    largest = Samples()
    for samples in (found[CUTS_1_MIB], big):
        largest.values += [float(max(batches)) for batches in samples.batches if batches]
    found[LARGEST_BATCH] = largest
    return found


MEASURES_BY_KEY = {measure.key: measure for measure in MEASURES}


def _apart(measure: Measure, one: list[float], other: list[float]) -> bool:
    """Whether two servers' samples differ beyond run-to-run noise (see the module)."""
    low, high = sorted((one, other), key=statistics.median)
    if max(low) >= min(high):
        return False  # the ranges overlap: noise could explain it
    small, large = statistics.median(low), statistics.median(high)
    if measure.time and large - small < TIME_FLOOR_MS:
        return False
    return large >= FACTOR * small


def _cell(measure: Measure, samples: Samples, repeats: int) -> tuple[str, str]:
    """The cell (the median, or what failed) and its noise (the samples' range).

    The noise says how many samples it spans when that is not ``repeats``.
    """
    values = samples.values
    if not values:
        if samples.failures:
            return f"failed: {samples.failures[0]}", ""
        return NOT_RUN, ""
    failed = f" ({len(samples.failures)} failed)" if samples.failures else ""
    if measure.yes_no:
        answered = sum(1 for value in values if value > 0)
        text = "none" if not answered else f"{max(values):,.0f} B"
        return text + failed, f"{answered} of {len(values)} runs answered"
    low, high = measure.show(min(values)), measure.show(max(values))
    runs = len(values)
    if low == high:
        spread = f"{low} every run" if runs == repeats else f"{low} in all {runs} runs"
    else:
        number, _, unit = high.partition(" ")
        spread = f"{low.partition(' ')[0]}-{number} {unit}"
        spread += f" over {runs} runs" if runs != repeats else ""
    if samples.batches:
        largest = max(max(batches) for batches in samples.batches if batches)
        return f"{_batches(statistics.median(values))} <= {largest:,} B{failed}", spread
    return measure.show(statistics.median(values)) + failed, spread


def observation_rows(runs: list[Column], repeats: int) -> list[Row]:
    """A row per measure that some server has samples of (``repeats`` of most)."""
    names = [run.name for run in runs]
    gathered = [gather(run) for run in runs]
    rows = []
    for measure in MEASURES:
        samples = [found[measure.key] for found in gathered]
        if not any(s.values or s.failures for s in samples):
            continue
        cells, noise = zip(*(_cell(measure, s, repeats) for s in samples), strict=True)
        verdict, apart = _verdict(names, _group(measure, samples))
        rows.append(
            Row(
                "observation",
                measure.title,
                list(cells),
                verdict,
                apart,
                list(noise),
                [s.values for s in samples],
            )
        )
    return rows


def _group(measure: Measure, samples: list[Samples]) -> list[list[int]]:
    """Servers that do not differ beyond noise, grouped; the usual group first.

    Servers whose probe failed every time form a group of their own; servers with no
    samples at all are left out. A chain of servers each within noise of the next is
    one group (the verdict errs toward ``same``).
    """
    measured = [i for i, s in enumerate(samples) if s.values]
    failed = [i for i, s in enumerate(samples) if not s.values and s.failures]
    if measure.yes_no:
        never = [i for i in measured if not any(samples[i].values)]
        ever = [i for i in measured if any(samples[i].values)]
        groups = [g for g in (never, ever) if g]
    else:
        parent = {i: i for i in measured}

        def root(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i

        for position, i in enumerate(measured):
            for j in measured[position + 1 :]:
                if not _apart(measure, samples[i].values, samples[j].values):
                    parent[root(j)] = root(i)
        by_root: dict[int, list[int]] = {}
        for i in measured:
            by_root.setdefault(root(i), []).append(i)
        groups = list(by_root.values())
        # The usual group: the largest; on a tie the smaller values (the one named
        # apart is then the slower, the later, the larger).
        groups.sort(key=lambda g: (-len(g), statistics.median(samples[g[0]].values)))
    if measure.yes_no:
        groups.sort(key=len, reverse=True)
        if len(groups) == 2 and len(groups[0]) == len(groups[1]):
            groups = [never, ever]
    if failed:
        groups.append(failed)
    return groups


def all_rows(runs: list[Column], repeats: int) -> list[Row]:
    """Server scenarios and observations across the servers, client scenarios across the
    clients: each row's cells are its kind's columns, in order."""
    servers = [run for run in runs if run.kind == "server"]
    clients = [run for run in runs if run.kind == "client"]
    return [
        *scenario_rows(servers, "server"),
        *observation_rows(servers, repeats),
        *scenario_rows(clients, "client"),
    ]
