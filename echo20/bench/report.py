"""Reports of a run: the terminal table, bench.md, bench.json.

Every report starts with the environment (see ``environment.py``) and lists the targets
that did not run, with the reason: nothing is left out silently.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from echo20.bench.environment import describe
from echo20.bench.histograms import LATENCY_KEYS
from echo20.bench.stats import Cell
from echo20.bench.units import fmt, fmt_ratio, format_size
from echo20.errors import BenchError

__all__ = ["print_table", "writable_folder", "write_json", "write_markdown"]

# Result files say what they hold and in which layout.
KIND = "echo20-bench"
VERSION = 2

# An open-loop p99 above this many times its p50 gets a line on where the time went.
TAIL_RATIO = 3.0

MATRIX_HEADERS = (
    "target", "conns", "size", "rate", "rt/s", "MiB/s", "p50 µs", "p90 µs", "p99 µs",
    "p99.9 µs", "p99.99 µs", "max µs", "CPU µs/rt", "CPU vs c", "srv CPU %",
    "peak RSS MiB", "loadgen CPU %", "notes",
)  # fmt: skip
# The terminal leaves some columns out to fit; bench.md and bench.json have them all.
TERMINAL_COLUMNS = (
    "target", "conns", "size", "rate", "rt/s", "p50 µs", "p99 µs", "p99.99 µs", "CPU µs/rt",
    "CPU vs c", "srv CPU %", "loadgen CPU %", "notes",
)  # fmt: skip
BUDGET_HEADERS = ("budget", "requirement", "measured", "met", "floor")
TEXT_COLUMNS = (
    "target",
    "loop",
    "transport",
    "notes",
    "budget",
    "requirement",
    "met",
    "rate",
    "cell",
    "verdict",
)


def writable_folder(path: Path, what: str) -> None:
    """Make ``path`` and check that files can be written in it, before anything is
    measured: BenchError in one line otherwise (not a traceback after a long run)."""
    probe = path / ".echo20-bench-write-check"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise BenchError(f"cannot write {what} in {path}: {error.strerror or error}") from None


def rate_text(cell: Cell) -> str:
    """``closed``, or the asked rate: ``20,000/s`` or ``50% (12,345/s)``."""
    if cell.rate is None:
        return "closed"
    asked = cell.summary.get("asked_rt_per_s")
    if cell.rate.endswith("%"):
        return f"{cell.rate} ({fmt(asked)}/s)" if asked else cell.rate
    return f"{fmt(float(cell.rate))}/s"


def matrix_rows(cells: Sequence[Cell]) -> list[list[list[str]]]:
    """Table rows grouped in sections, one section per (connections, size)."""
    sections: dict[tuple[int, int], list[list[str]]] = {}
    for cell in cells:
        s = cell.summary
        head = [cell.target.label, str(cell.connections), format_size(cell.size), rate_text(cell)]
        if s["error"] is not None:
            note = f"ERROR: {s['error']}" if s["failed"] else s["error"]
            row = head + [""] * (len(MATRIX_HEADERS) - len(head) - 1) + [note]
        else:
            lat = s["latency_us"]
            rss = s["peak_rss_kib"]
            row = [
                *head,
                fmt(s["rt_per_s"]),
                fmt(s["mib_per_s"]),
                *(fmt(lat.get(key)) for key in LATENCY_KEYS),
                fmt(s["cpu_us_per_rt"]),
                fmt_ratio((s["vs_c"] or {}).get("cpu_us_per_rt")),
                fmt(s["server_cpu_pct"], 2),
                fmt(rss / 1024 if rss is not None else None),
                fmt(s["loadgen_cpu_pct"], 2),
                ", ".join(s["flags"]),
            ]
        sections.setdefault((cell.connections, cell.size), []).append(row)
    return list(sections.values())


def tail_notes(cells: Sequence[Cell]) -> list[str]:
    """For open-loop cells whose p99 is over TAIL_RATIO x p50: where the time went."""
    notes: list[str] = []
    for cell in cells:
        s = cell.summary
        if cell.rate is None or s["error"] is not None:
            continue
        p50, p99 = s["latency_us"].get("p50"), s["latency_us"].get("p99")
        if not p50 or not p99 or p99 <= TAIL_RATIO * p50:
            continue
        lag, service = s["send_lag_us"], s["service_us"]
        late = lag.get("p99") or 0.0
        where = (
            "mostly the load generator sending late"
            if late > 0.5 * p99
            else "mostly in the server (and the kernel) after the message left"
        )
        others = [
            f"{fmt(share, 2)} % of the {name}'s CPU"
            for name, share in (
                ("server", s["other_server_cpu_pct"]),
                ("load generator", s["other_loadgen_cpu_pct"]),
            )
            if share is not None and share > 1
        ]
        busy = f"; other processes took {' and '.join(others)}" if others else ""
        notes.append(
            f"{cell.target.label} {cell.connections} × {format_size(cell.size)} at "
            f"{rate_text(cell)}: p99 {fmt(p99)} µs is {p99 / p50:.1f}× p50 ({fmt(p50)} µs); "
            f"messages left up to {fmt(late)} µs late (p99 send lag), replies took "
            f"{fmt(service.get('p50'))} µs (p50) to {fmt(service.get('p99'))} µs (p99) from "
            f"sending: {where}{busy}"
        )
    return notes


def busy_notes(cells: Sequence[Cell]) -> list[str]:
    """The other processes busy while cells ran, one line each: in how many, how busy."""
    seen: dict[str, tuple[int, float]] = {}
    measured = [cell for cell in cells if cell.summary.get("error") is None]
    for cell in measured:
        for text in cell.summary.get("others_busy", []):
            who, _, share = text.rpartition(") ")
            count, most = seen.get(who + ")", (0, 0.0))
            seen[who + ")"] = (count + 1, max(most, float(share.split()[0])))
    return [
        f"{who} was busy during {count} of {len(measured)} cells, up to {most:.0f} % of a CPU"
        for who, (count, most) in sorted(seen.items(), key=lambda item: -item[1][0])
    ]


def budget_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    met_words = {True: "met", False: "NOT met", None: "not measured"}
    return [
        [
            result["budget"],
            result["requirement"],
            fmt_ratio(result["measured"]),
            met_words[result["met"]],
            fmt_ratio(result["floor"]),
        ]
        for result in results
    ]


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    numeric = [header not in TEXT_COLUMNS for header in headers]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if n else ":---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


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


def print_environment(env: dict[str, Any]) -> None:
    for line in describe(env):
        print(line)


def print_run(
    env: dict[str, Any],
    cells: Sequence[Cell],
    budgets: Sequence[dict[str, Any]],
    problems: Sequence[str],
) -> None:
    """The run's report on the terminal."""
    print_environment(env)
    print_table("echo20 benchmark", MATRIX_HEADERS, matrix_rows(cells), TERMINAL_COLUMNS)
    for note in tail_notes(cells):
        print(f"tail: {note}")
    for note in busy_notes(cells):
        print(f"busy: {note}")
    if budgets:
        print_table("Budgets (ratios from this run)", BUDGET_HEADERS, [budget_rows(budgets)])
    for problem in problems:
        print(f"not run: {problem}", file=sys.stderr)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps({"kind": KIND, "version": VERSION, **document}, indent=2) + "\n")


def cell_document(cell: Cell) -> dict[str, Any]:
    """A cell as bench.json holds it: the summary and every repeat."""
    from dataclasses import asdict

    return {
        "label": cell.target.label,
        "target": cell.target.name,
        "loop": cell.target.loop,
        "connections": cell.connections,
        "size": cell.size,
        "rate": cell.rate,
        **cell.summary,
        "runs": [asdict(run) for run in cell.runs],
    }


def write_markdown(
    path: Path,
    *,
    env: dict[str, Any],
    command: str,
    cells: Sequence[Cell],
    budgets: Sequence[dict[str, Any]],
    problems: Sequence[str],
) -> None:
    sections = matrix_rows(cells)
    md = ["# echo20 benchmark", ""]
    md += [f"- {line}" for line in describe(env)]
    md += ["", f"Command: `{command}`", ""]
    md += [markdown_table(MATRIX_HEADERS, [row for rows in sections for row in rows]), ""]
    notes = tail_notes(cells)
    if notes:
        md += ["## Where the tail latency goes", ""] + [f"- {note}" for note in notes] + [""]
    busy = busy_notes(cells)
    if busy:
        md += ["## Other processes busy during the run", ""] + [f"- {note}" for note in busy]
        md += [""]
    if problems:
        md += ["## Not run", ""] + [f"- {problem}" for problem in problems] + [""]
    if budgets:
        md += ["## Budgets (ratios from this run)", ""]
        md += [markdown_table(BUDGET_HEADERS, budget_rows(budgets)), ""]
    md += ["## How to read the table", "", READING_NOTES]
    path.write_text("\n".join(md))


READING_NOTES = """\
**rate** `closed`: a closed loop, each connection sends one message, waits for the whole
double reply, checks it byte by byte, and sends the next; latency runs from the first
byte sent to the last byte received. A rate (`20,000/s`, or `50%` of the target's own
closed-loop rate in the same repeat): an open loop, messages sent on schedule across the
connections whether or not replies came back; latency runs from when each message was
due, so a stalled server is charged for every message that waited behind the stall
(coordinated omission corrected, as wrk2 does).

**p50 ... max** come from HdrHistograms of every measured round trip of every repeat.
**rt/s**, **MiB/s** (message bytes answered; the server reads N and writes 2N per round
trip) and **CPU µs/rt** are medians over the repeats. **CPU µs/rt** is the server
process's own CPU time in the measured window (user + system of all its threads, as the
kernel's scheduler accounts it) divided by the round trips completed in it: what one
exchange costs the server, however fast the load generator was. **CPU vs c** divides it
by the C epoll reference's in the same cell and repeat (the median of those per-repeat
ratios): compare ratios within one run, never across runs or machines. **peak RSS** is
the server's VmHWM during the cell.

Notes: `loadgen-bound`: in the closed loop, the load generator (a C epoll program on its
own CPU, checking every reply byte) used at least 90 % of its CPU while the server used
less, so the server could have done more: its round trips per second are the load
generator's limit, its CPU per round trip is still its own. `contended`: other processes
took more than 10 % of one of the two pinned CPUs during the window: expect noise.
`others-busy`: some other process used at least 10 % of a CPU from the check just
before the cell to its end (named under "Other processes busy during the run");
`others-before`: one was still that busy when a `--wait-quiet` wait ran out. `steal`:
the hypervisor gave more than 10 % of a pinned CPU to other machines in the window (and
more than one 10 ms tick of /proc/stat, its resolution); the server's CPU time leaves
stolen time out on kernels with paravirtual steal accounting, so steal shapes rt/s more
than CPU µs/rt. `loaded`:
the 1-minute load average was at least the usable CPUs + 1 when the cell started.
`busy-idle`: the server uses more than 5 % of a CPU with no client at all (it spins; its
CPU per round trip includes that; it is stopped with SIGSTOP while the other targets are
measured). `--strict` writes no report when a cell has any of `contended`,
`others-busy`, `others-before`, `steal`, `loaded` or `busy-before`. `unpinned`: server
and load generator shared CPUs. `behind`: an open-loop target answered less than 95 % of
the asked rate. `N unanswered`: messages due in the window still had no reply 2 s after
it. `busy-before`: the server was still busy from the previous cell. `too slow`: the
target answered correctly but not every connection got its first reply within the ramp
timeout, or no round trip finished in the window (not a failure).

Under `--tls` (the report's head says `transport: TLS over ...`) each row is a TLS
implementation: `c` OpenSSL's SSL_read/SSL_write, `floor` the loop's own TLS
(asyncio's sslproto, uvloop's, aiofastnet's), `streams`, `iostream` and `protocol` the
port's TLSTransport (echo20/tls.py) over the loop's plain transport, `sockets` TLS by
hand (ssl.MemoryBIO) between sock_recv and sock_sendall. A loop without TLS of its own
has a `floor` row that says so.

The Tornado reference (`tornado`) leaves Nagle's algorithm on: its second small write
waits for the client's delayed ACK, about 40 ms per exchange. `tornado-nodelay` is the
same server with `TCP_NODELAY`, to compare its CPU fairly.
"""
