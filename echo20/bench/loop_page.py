"""The loop comparison page (``echo20-bench loops``): every installed loop side by side.

One matrix per transport (TCP, TLS, Unix sockets) comes in; out comes one Markdown page:
server CPU per round trip and round trips per second per target and size, each against
the C server and against the same target on asyncio; the open loop's p50 and p99; each
loop against asyncio per shape; the TLS target; and the published figures it can be set
beside. Every number on the page is computed here from the cells, so a rerun rewrites
the page whole: nothing on it is typed by hand.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from echo20 import loops
from echo20.bench.environment import describe
from echo20.bench.measure import NOISE_FLAGS, Run
from echo20.bench.report import markdown_table
from echo20.bench.stats import Cell, Metric, chance_apart, paired_ratio, paired_ratios
from echo20.bench.targets import C_LOOP, TARGETS
from echo20.bench.units import fmt, fmt_ratio, format_size

__all__ = ["Transport", "render_page"]

BASE_LOOP = "asyncio"
# The size vmbench and rloop's benchmarks quote most; the page's figures that need one
# size (the chart, the TLS target, the published comparison) use it when it was run.
QUOTED_SIZE = 1024
# protocol on uvloop over TLS, within this many times the C+OpenSSL server's CPU per
# round trip at QUOTED_SIZE.
TLS_TARGET = 1.5
# rloop's benchmarks/README.md (Python 3.13, one connection, round trips per second,
# 1 KB messages): uvloop's figure over asyncio's, per shape.
PUBLISHED_UVLOOP_OVER_ASYNCIO = {"sockets": 1.13, "streams": 1.04, "protocol": 1.13}


def cpu_per_round_trip(run: Run) -> float | None:
    return run.cpu_us_per_rt


def round_trips_per_second(run: Run) -> float | None:
    return run.rt_per_s


@dataclass(frozen=True)
class Transport:
    """One transport's matrix: its name on the page, its report's stem, what it measured."""

    title: str
    stem: str
    env: dict[str, Any]
    settings: dict[str, Any]
    cells: list[Cell]
    problems: list[str]

    @property
    def kind(self) -> str:
        """``tcp``, ``tls`` or ``unix``: the last word of the report's stem."""
        return self.stem.rsplit("-", 1)[-1]


def of_kind(transports: Sequence[Transport], kind: str) -> Transport | None:
    return next((t for t in transports if t.kind == kind), None)


def closed_cells(transport: Transport) -> list[Cell]:
    return [cell for cell in transport.cells if cell.rate is None]


def by_label_and_size(cells: Sequence[Cell]) -> dict[tuple[str, int], Cell]:
    return {(cell.target.label, cell.size): cell for cell in cells}


def target_order(cells: Sequence[Cell]) -> list[Cell]:
    """One cell per target, in the order of TARGETS, then of the loop table."""
    names = list(loops.LOOP_NAMES)
    seen: dict[str, Cell] = {}
    for cell in cells:
        seen.setdefault(cell.target.label, cell)

    def key(cell: Cell) -> tuple[int, int]:
        name, loop = cell.target.name, cell.target.loop
        shape = TARGETS.index(name) if name in TARGETS else len(TARGETS)
        return (shape, names.index(loop) if loop in names else -1)

    return sorted(seen.values(), key=key)


def base_cell(cell: Cell, index: dict[tuple[str, int], Cell]) -> Cell | None:
    """The same target on asyncio at the same size (None for asyncio and the C server)."""
    if cell.target.loop in (BASE_LOOP, C_LOOP):
        return None
    return index.get((f"{cell.target.name}-{BASE_LOOP}", cell.size))


def c_cell(cell: Cell, index: dict[tuple[str, int], Cell]) -> Cell | None:
    return index.get((f"c-{C_LOOP}", cell.size))


def measured(cell: Cell | None) -> bool:
    return cell is not None and cell.summary.get("error") is None


def ratio(cell: Cell, other: Cell | None, metric: Metric) -> float | None:
    """``metric`` of ``cell`` over ``other``'s, repeat by repeat (see paired_ratio)."""
    if not measured(cell) or other is None or not measured(other):
        return None
    return paired_ratio(cell.runs, other.runs, metric)


def missing_text(cell: Cell) -> str:
    """Why a cell has no figure: the loop cannot run it, it failed, or it was too slow."""
    s = cell.summary
    if s.get("unsupported"):
        return "not run"
    return "ERROR" if s.get("failed") else "too slow"


def figure_text(cell: Cell, index: dict[tuple[str, int], Cell], metric: Metric) -> str:
    """``6.95 (1.08× / 0.82×)``: the median, then against C and against asyncio; or why
    there is no figure."""
    s = cell.summary
    if s.get("error") is not None:
        return missing_text(cell)
    value = cell.median(metric)
    ratios = [fmt_ratio(ratio(cell, c_cell(cell, index), metric))]
    base = base_cell(cell, index)
    if base is not None:
        ratios.append(fmt_ratio(ratio(cell, base, metric)))
    text = f"{fmt(value)} ({' / '.join(r for r in ratios if r) or '–'})"
    marks = [flag for flag in s.get("flags", []) if flag in NOISE_FLAGS]
    if metric is round_trips_per_second and "loadgen-bound" in s.get("flags", []):
        marks.insert(0, "†")
    return " ".join([text, *marks])


def figure_table(transport: Transport, metric: Metric) -> list[str]:
    cells = closed_cells(transport)
    sizes = sorted({cell.size for cell in cells})
    index = by_label_and_size(cells)
    rows = [
        [f"`{first.target.label}`"]
        + [figure_text(index[(first.target.label, size)], index, metric) for size in sizes]
        for first in target_order(cells)
    ]
    return [markdown_table(["target", *(format_size(size) for size in sizes)], rows)]


def not_run_lines(transport: Transport) -> list[str]:
    """Why rows say ``not run``, and the targets the run left out or lost: each once."""
    reasons = dict.fromkeys(
        cell.summary["error"] for cell in transport.cells if cell.summary.get("unsupported")
    )
    lines = [f"Not run: {reason}." for reason in reasons]
    lines += [f"Failed or left out: {problem}." for problem in transport.problems]
    return lines


def open_loop_table(transports: Sequence[Transport]) -> list[str]:
    """p50 and p99 at the asked share of each target's closed-loop rate, per transport:
    one table per open-loop size."""
    opened = [t for t in transports if any(cell.rate for cell in t.cells)]
    sizes = sorted({cell.size for t in opened for cell in t.cells if cell.rate is not None})
    lines: list[str] = []
    for size in sizes:
        lines += open_loop_table_at(opened, size)
    return lines


def open_loop_table_at(opened: Sequence[Transport], size: int) -> list[str]:
    headers = ["target"]
    for t in opened:
        headers += [f"{t.title}: rate", "p50 µs", "p99 µs"]
    per_transport = [
        {c.target.label: c for c in t.cells if c.rate is not None and c.size == size}
        for t in opened
    ]
    labels = [c.target.label for c in target_order([c for t in opened for c in t.cells])]
    rows: list[list[str]] = []
    for label in labels:
        row = [f"`{label}`"]
        for cells in per_transport:
            cell = cells.get(label)
            if cell is None or not measured(cell):
                row += ["" if cell is None else missing_text(cell), "", ""]
                continue
            s = cell.summary
            latency = s["latency_us"]
            behind = " behind" if "behind" in s["flags"] else ""
            row += [
                f"{fmt(s['asked_rt_per_s'])}/s{behind}",
                fmt(latency.get("p50")),
                fmt(latency.get("p99")),
            ]
        rows.append(row)
    first = next(c for t in opened for c in t.cells if c.rate is not None and c.size == size)
    return [
        f"{first.connections} connections × {format_size(size)}, at {first.rate} of "
        "each target's own closed-loop rate in the same repeat; latency from when each "
        "message was due (coordinated omission corrected), pooled over the repeats. "
        "`behind`: the server answered less than 95 % of the asked rate.",
        "",
        markdown_table(headers, rows),
        "",
    ]


def against_base_rows(transports: Sequence[Transport], shapes: Sequence[str]) -> list[list[str]]:
    """Per loop and transport: each shape's CPU per round trip over asyncio's, the
    median over the sizes (the range in brackets)."""
    rows: list[list[str]] = []
    for t in transports:
        cells = closed_cells(t)
        index = by_label_and_size(cells)
        for loop in loops.LOOP_NAMES:
            if loop == BASE_LOOP or not any(c.target.loop == loop for c in cells):
                continue
            row = [f"{loop}", t.title]
            for shape in shapes:
                found = [
                    r
                    for c in cells
                    if c.target.name == shape and c.target.loop == loop
                    if (r := ratio(c, base_cell(c, index), cpu_per_round_trip)) is not None
                ]
                row.append(ratio_range(found))
            rows.append(row)
    return rows


def ratio_range(found: Sequence[float]) -> str:
    if not found:
        return "–"
    if len(found) == 1:
        return fmt_ratio(found[0])
    return f"{fmt_ratio(statistics.median(found))} ({min(found):.2f}–{max(found):.2f})"


def shape_headers(transports: Sequence[Transport]) -> list[str]:
    present = {c.target.name for t in transports for c in t.cells}
    return [name for name in TARGETS if name != "c" and name in present]


def median_cpu(cell: Cell | None) -> float | None:
    return None if cell is None or not measured(cell) else cell.median(cpu_per_round_trip)


def tls_costs(transports: Sequence[Transport], size: int) -> dict[str, float]:
    """What TLS adds to each of c, floor-uvloop and protocol-uvloop at ``size``: its CPU
    per round trip over TLS less the same over TCP (keys present when both ran)."""
    plain, secure = of_kind(transports, "tcp"), of_kind(transports, "tls")
    if plain is None or secure is None:
        return {}
    tcp, tls = by_label_and_size(closed_cells(plain)), by_label_and_size(closed_cells(secure))
    costs: dict[str, float] = {}
    for label in (f"c-{C_LOOP}", "floor-uvloop", "protocol-uvloop"):
        over_tls = median_cpu(tls.get((label, size)))
        over_tcp = median_cpu(tcp.get((label, size)))
        if over_tls is not None and over_tcp is not None:
            costs[label] = over_tls - over_tcp
    return costs


def tls_target_line(transports: Sequence[Transport]) -> list[str]:
    """The TLS target, met or not, with its repeats, and what TLS costs each layer."""
    tls = of_kind(transports, "tls")
    if tls is None:
        return []
    index = by_label_and_size(closed_cells(tls))
    cell = index.get(("protocol-uvloop", QUOTED_SIZE))
    c = index.get((f"c-{C_LOOP}", QUOTED_SIZE))
    if cell is None or c is None or not measured(cell) or not measured(c):
        return []
    found = ratio(cell, c, cpu_per_round_trip)
    if found is None:
        return []
    per_repeat = paired_ratios(cell.runs, c.runs, cpu_per_round_trip)
    verdict = "met" if found <= TLS_TARGET else "NOT met"
    repeats = ", ".join(fmt_ratio(r) for r in per_repeat)
    line = (
        f"- **TLS target.** `protocol` on uvloop over TLS costs {fmt_ratio(found)} the "
        f"C+OpenSSL server's CPU per round trip at {format_size(QUOTED_SIZE)} (target: "
        f"within {TLS_TARGET}×, {verdict} in this run; repeat by repeat: {repeats}). Its TLS "
        "is the port's `TLSTransport` (Python over `ssl.MemoryBIO`); the `floor` rows use "
        "each loop's own TLS."
    )
    costs = tls_costs(transports, QUOTED_SIZE)
    if len(costs) == 3:
        port, loop_own = costs["protocol-uvloop"], costs["floor-uvloop"]
        verdict = (
            f"the remaining cost is the port's TLS layer in Python, {fmt(port - loop_own)} µs "
            "per round trip over uvloop's"
            if port > loop_own
            else "the port's TLS layer in Python costs no more than uvloop's own here "
            f"({fmt(loop_own - port)} µs per round trip less, within this run's spread)"
        )
        line += (
            f" What TLS adds, each figure over TLS less the same over TCP: "
            f"{fmt(costs[f'c-{C_LOOP}'])} µs per round trip to the C server (OpenSSL), "
            f"{fmt(loop_own)} µs to uvloop's `floor` (uvloop's own TLS, in C), "
            f"{fmt(port)} µs to `protocol` (the port's `TLSTransport`): {verdict}. The port "
            "keeps its own because asyncio's and uvloop's drop the replies owed after a "
            "client's `close_notify` ([differences.md](../differences.md))."
        )
    return [line]


def published_lines(transports: Sequence[Transport]) -> list[str]:
    """Our uvloop-over-asyncio figures beside rloop's published ones, and why they differ."""
    tcp = of_kind(transports, "tcp")
    if tcp is None:
        return []
    index = by_label_and_size(closed_cells(tcp))
    ours: list[str] = []
    agree: list[bool] = []
    for shape, theirs in PUBLISHED_UVLOOP_OVER_ASYNCIO.items():
        cell = index.get((f"{shape}-uvloop", QUOTED_SIZE))
        found = None if cell is None else ratio(cell, base_cell(cell, index), cpu_per_round_trip)
        if not found:
            ours.append(f"{shape} {theirs:.2f} (not measured here)")
            continue
        # Theirs is a speed-up (round trips per second); ours a cost, so inverted.
        mine = 1 / found
        ours.append(f"{shape} {theirs:.2f} against our {mine:.2f}")
        agree.append((mine > 1) == (theirs > 1))
    if not agree:
        return []
    direction = (
        "uvloop comes out ahead of asyncio in both for every shape."
        if all(agree)
        else "The two disagree on which loop is ahead for "
        f"{sum(not a for a in agree)} of {len(agree)} shapes: the differences are "
        "within what one connection's figures hide (below)."
    )
    connections = tcp.settings["connections"][0]
    return [
        "rloop's `benchmarks/README.md` (Python 3.13, one connection, round trips per "
        "second with 1 KB messages) gives uvloop over asyncio as: "
        + "; ".join(ours)
        + f" (asyncio's CPU per round trip over uvloop's, {connections} connections × "
        f"{format_size(QUOTED_SIZE)} over TCP, this page). {direction} Ours count the "
        "server's CPU alone, against a C load generator on its own CPU; a single "
        "connection's round trips per second also hold the client's time, the kernel's "
        "and one round trip's wake-up latency, which are the same on both loops and so "
        "shrink the loop's share. For `streams` and `iostream` the cost is the seed's "
        "Python loop over 20-byte chunks, not the event loop, so the loop moves them "
        "least. uvloop's own chart (2-4×) dates from Python 3.5, before asyncio's C "
        "`Future` and `Task`.",
    ]


def spread_line(transports: Sequence[Transport]) -> list[str]:
    """How far the repeats of one cell lie apart: what a rerun must stay within."""
    spreads: list[float] = []
    by_c: list[float] = []
    for transport in transports:
        index = by_label_and_size(closed_cells(transport))
        for cell in closed_cells(transport):
            if not measured(cell) or not cell.summary.get("cpu_us_per_rt"):
                continue
            lo, hi = cell.summary["spread"].get("cpu_us_per_rt", (0.0, 0.0))
            spreads.append((hi - lo) / cell.summary["cpu_us_per_rt"])
            c = c_cell(cell, index)
            if c is None or c is cell or not measured(c):
                continue
            ratios = paired_ratios(cell.runs, c.runs, cpu_per_round_trip)
            if ratios:
                by_c.append((max(ratios) - min(ratios)) / statistics.median(ratios))
    repeats = transports[0].settings["repeats"]
    if not spreads or repeats < 2:
        return ["**Spread.** One repeat per cell: this run states no spread."]
    apart = chance_apart(repeats, repeats)
    against_c = f"; its ratio to C, repeat by repeat, by {spread_text(by_c)}" if by_c else ""
    return [
        f"**Spread.** Between the {repeats} repeats of one cell, CPU per round trip "
        f"differed by {spread_text(spreads)}{against_c} (each cell's lowest and highest "
        "repeat are in the JSON reports). A rerun with as many repeats agrees with this "
        "page when `echo20-bench compare OLD.json NEW.json` finds about "
        f"{100 * (1 - apart):.0f} % of its cells' `CPU ÷ C` within those spreads: even "
        f"with nothing changed, two spreads of {repeats} repeats miss each other by chance "
        f"in one cell of {1 / apart:.0f}, and compare prints that share beside the one it "
        "found. CPU per round trip itself can move further, every target with the C "
        "server, when the host runs slower or faster for a whole run; compare says how "
        "far the C server moved."
    ]


def spread_text(spreads: Sequence[float]) -> str:
    """``34 % of its median in the middle cell and by 64 % or less in nine cells of
    ten``."""
    ordered = sorted(spreads)
    high = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (
        f"{100 * statistics.median(ordered):.0f} % of its median in the middle cell and "
        f"by {100 * high:.0f} % or less in nine cells of ten"
    )


def header_lines(transports: Sequence[Transport], command: str, minutes: float) -> list[str]:
    first, last = transports[0], transports[-1]
    settings = first.settings
    env = dict(first.env)
    env["loadavg_end"] = last.env.get("loadavg_end", [])
    env["transport"] = ", ".join(t.title for t in transports)
    flagged = sorted(
        {
            flag
            for t in transports
            for cell in t.cells
            for flag in cell.summary.get("flags", [])
            if flag in NOISE_FLAGS
        }
    )
    quiet = (
        "No cell was marked contended, busy or stolen from."
        if not flagged
        else f"Cells marked {', '.join(flagged)}: see their full reports."
    )
    repeats = settings["repeats"]
    plural = "s" if repeats != 1 else ""
    return [
        "# Event loops side by side: TCP, TLS and Unix sockets",
        "",
        *[f"- {line}" for line in describe(env)],
        f"- {settings['connections'][0]} connections, closed loop, {repeats} repeat{plural} "
        f"of {settings['duration_s']:g} s after {settings['warmup_s']:g} s of warm-up per "
        "cell; every reply verified. " + quiet,
        "",
        f"Regenerate this page ({minutes:.1f} minutes here; run nothing else meanwhile):",
        "",
        "```sh",
        command,
        "```",
        "",
    ]


READING = """\
**How to read it.** Each figure is the median over the repeats; in brackets, its
ratio to the C epoll server in the same repeat and, for every loop but asyncio, to the
same target on asyncio (repeat by repeat, then the median). CPU per round trip is the
server process's own CPU time over the round trips it answered: lower is better.
Round trips per second: higher is better; `†` marks a cell whose load generator was at
its limit (`loadgen-bound`), where that figure is the harness's ceiling and CPU per
round trip is still a fair comparison. A noise flag beside a figure (`steal`,
`contended`, ...) says what else ran; see [bench.md](../bench.md).

The targets: `c` the C epoll server (OpenSSL under TLS); `floor` a bare protocol that
writes each batch's reply (under TLS the loop's own TLS: asyncio's `sslproto`, uvloop's,
aiofastnet's); `sockets` the echo20 server on `loop.sock_recv`/`sock_sendall`, a task
per connection (TLS by hand over `ssl.MemoryBIO`); `streams`, `iostream` and `protocol`
the three echo20 implementations (under TLS the port's `TLSTransport`, the same on
every loop). `aiofastnet-asyncio` and `aiofastnet-uvloop` are those loops patched by
aiofastnet: its transports, its TLS and its own `sock_*` calls.
"""


def render_page(
    transports: Sequence[Transport],
    *,
    command: str,
    minutes: float,
    chart: str | None,
    chart_size: int,
) -> str:
    """The whole page, from the matrices of one ``echo20-bench loops`` run."""
    md = header_lines(transports, command, minutes)
    md += [READING]
    if chart is not None:
        md += [
            f"![Server CPU per round trip over the C server's at {format_size(chart_size)}, "
            f"per shape and loop, one panel per transport]({chart})",
            "",
        ]
    md += ["## Server CPU per round trip, µs", ""]
    for t in transports:
        md += [f"### {t.title}", ""]
        md += [f"Full report: [{t.stem}.md]({t.stem}.md) ([JSON]({t.stem}.json), "]
        md[-1] += f"[chart]({t.stem}.png))."
        md += ["", *figure_table(t, cpu_per_round_trip), ""]
        md += [*not_run_lines(t), ""]
    md += ["## Round trips per second", ""]
    for t in transports:
        md += [f"### {t.title}", "", *figure_table(t, round_trips_per_second), ""]
    opened = open_loop_table(transports)
    if opened:
        md += ["## Open loop: p50 and p99 at a share of capacity", "", *opened]
    shapes = shape_headers(transports)
    md += ["## Each loop against asyncio", ""]
    md += [
        "CPU per round trip over the same target's on asyncio: the median over the "
        "sizes, their range in brackets (below 1: the loop costs less).",
        "",
        markdown_table(["loop", "transport", *shapes], against_base_rows(transports, shapes)),
        "",
    ]
    findings = tls_target_line(transports)
    if findings:
        md += ["## Targets", "", *findings, ""]
    published = published_lines(transports)
    if published:
        md += ["## Compared with published numbers", "", *published, ""]
    md += [*spread_line(transports), ""]
    return "\n".join(md)
