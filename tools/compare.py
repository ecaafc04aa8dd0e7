"""`make compare`: every conformance scenario against every implementation, as one matrix.

Runs ``echo20-conformance`` once per target, one after the other (so that no run
disturbs another's round-trip times), exactly as an outside implementation is run;
reads each run's JUnit XML; writes ``docs/conformance.md`` and prints it::

    python tools/compare.py
    python tools/compare.py --targets streams-asyncio,echo-client --output /tmp/c.md

The targets are echo20's servers and clients (``echo20.conformance.targets``) and
the seed's own server and client, ported as they are. The exit status is 0 when every
run went as expected: everything passes but the seed's client, which fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from echo20.conformance.report import Column, counts_text, read_junit, render_matrix
from echo20.conformance.targets import CLIENT_TARGETS, SEED_TARGETS, SERVER_TARGETS, Target

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "conformance.md"
TARGETS: tuple[Target, ...] = (*SERVER_TARGETS, SEED_TARGETS[0], *CLIENT_TARGETS, SEED_TARGETS[1])

# The one target expected to fail, and why (docs/protocol.md, "Known defects").
EXPECTED_TO_FAIL = {"seed-client"}
# Each of its hangs costs the suite's timeout: a short one keeps the run quick.
SEED_CLIENT_TIMEOUT = 3

SEED_CLIENT = (
    "The seed's client reads each reply with two `read_bytes(20, partial=True)` calls, as "
    "if the echo and its reversal always came as two reads of at most 20 bytes. Where a "
    "reply comes in one segment (`one_segment`, `uneven_cut`, and the scripts that break "
    "the second reply, whose first reply is one segment) the first read takes all of it "
    "and the second waits for bytes that never come: it hangs on its first message and "
    "is killed. Where the reply comes in pieces it gets further, but prints the "
    "`TCPClient` class before every prompt (and the prompt itself), shows the second "
    "read before the first, sends a line's carriage return, and falls out of step on "
    "messages over 20 bytes; when its input ends it stops with a traceback. Clients "
    "migrating from the seed: read `2 * len(message)` bytes, as `echo_client.py` and "
    "`tornado_client.py` do."
)

DIVERGENCES = [
    (
        "Round-trip time",
        "Tornado's `TCPServer` leaves Nagle's algorithm on, as the seed does: the second "
        "small write of each exchange waits for the client's delayed ACK, about 40 ms. "
        "asyncio and uvloop set `TCP_NODELAY`, so the port answers in well under a "
        "millisecond. Same bytes, different timing; `tornado_server.py --nodelay` shows "
        "the reference without the wait (the benchmark's `tornado-nodelay`).",
    ),
    (
        "Segments on the wire",
        "The seed writes the echo and the reversal separately; the port's servers write "
        "them together, and the `protocol` fast path answers a whole received batch with "
        "one write. TCP is a byte stream, so only a client that relies on segment "
        "boundaries can tell: the seed's own client (column `seed-client`), which fails "
        "against any of them, Tornado's included.",
    ),
    (
        "Shutdown",
        "The seed never stops (Ctrl-C is a traceback, SIGTERM kills it). echo20's "
        "servers, the Tornado reference included, stop on SIGINT or SIGTERM with exit "
        "status 0 (checked here with `--clean-exit`), closing open connections after at "
        "most `--shutdown-timeout` seconds; the Tornado reference closes its streams at "
        "once (Tornado drops unsent bytes on close), the port lets queued replies go first.",
    ),
]


@dataclass
class TargetRun:
    """One target's run: its column of the matrix, and how the run ended."""

    target: Target
    column: Column
    status: int
    stderr: str


def run_target(target: Target, keyword: str | None, scratch: Path) -> TargetRun:
    junit = scratch / f"{target.id}.xml"
    command = [sys.executable, "-m", "echo20.conformance", *target.runner_arguments()]
    command += ["--junit-xml", str(junit)]
    if target.id == "seed-client":
        command += ["--timeout", str(SEED_CLIENT_TIMEOUT)]
    if keyword:
        command += ["-k", keyword]
    print(f"== {target.id}: {target.shown or target.command}", flush=True)
    done = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, check=False)
    sys.stderr.write(done.stderr)
    results = read_junit(junit) if junit.exists() else []
    column = Column(target.id, target.shown or target.command, results, target.about)
    return TargetRun(target, column, done.returncode, done.stderr.strip())


def versions() -> str:
    found = []
    for package in ("tornado", "uvloop"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(
        [f"Python {platform.python_version()}", *found, f"{os.cpu_count()} CPUs", platform.system()]
    )


def property_values(run: TargetRun, name: str) -> list[float]:
    values = []
    for result in run.column.results:
        if name in result.properties:
            with contextlib.suppress(ValueError):
                values.append(float(result.properties[name]))
    return values


def as_expected(run: TargetRun) -> bool:
    return (run.status != 0) == (run.target.id in EXPECTED_TO_FAIL)


def render(runs: list[TargetRun]) -> str:
    lines = [
        "# Conformance: every scenario against every implementation",
        "",
        "Written by `make compare` (`tools/compare.py`), which runs `echo20-conformance`",
        'once per implementation, as anyone runs it on theirs (README, "Conformance:',
        'testing another implementation"): black-box scenarios over raw TCP, checked',
        "against the rules of [the protocol](protocol.md). `tornado-*` is the seed's server",
        "on Tornado, the reference; `seed-*` are the seed's own files ported as they are",
        "(`examples/seed/`).",
        "",
        f"Measured with {versions()}.",
        "",
        "## Servers",
        "",
        "| target | command | what | result | round trip (median, 8 B) | largest batch, at most |",
        "|---|---|---|---|---|---|",
    ]
    servers = [run for run in runs if run.target.kind == "server"]
    clients = [run for run in runs if run.target.kind == "client"]
    for run in servers:
        rtt = property_values(run, "rtt_median_ms")
        batch = property_values(run, "largest_batch")
        lines.append(
            f"| `{run.target.id}` | `{run.column.command}` | {run.target.about} "
            f"| {counts_text(run.column.results)} "
            f"| {f'{rtt[0]:.3f} ms' if rtt else 'n/a'} "
            f"| {f'{int(max(batch)):,} B' if batch else 'n/a'} |"
        )
    lines += [
        "",
        "Round trip: the median of 20 exchanges of 8 bytes on one connection (scenario",
        "`round_trip_of_8_bytes`). Largest batch: the longest run of 20-byte chunks up to a",
        "shorter one in the 1 MiB and 8 MiB replies, which bounds the largest batch a server",
        "answered from above (a batch whose size is a multiple of 20 joins the next one in",
        "the reply, so 96,256 B may be 30,720 + 65,536). Tornado reads 64 KiB at a time.",
        "`streams` reads 20 bytes at a time from asyncio's StreamReader, which joins",
        "receives in one buffer: while that buffer never runs dry its chunks stay 20 bytes",
        "across receives, where Tornado would cut a short one at each 64 KiB read. The same",
        "bytes, validly cut, but not the same cut. Both are recorded, never asserted.",
    ]
    if clients:
        lines += ["", "## Clients", "", "| target | command | what | result |", "|---|---|---|---|"]
        for run in clients:
            lines.append(
                f"| `{run.target.id}` | `{run.column.command}` | {run.target.about} "
                f"| {counts_text(run.column.results)} |"
            )
    lines += ["", "## Matrix"]
    notes: list[str] = []
    lines += render_matrix([run.column for run in runs], notes)
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"{index}. {note}" for index, note in enumerate(notes, 1)]
    if any(run.target.id == "seed-client" for run in runs):
        lines += ["", "## Why the seed's client fails", "", SEED_CLIENT]
    lines += ["", "## Divergences from the Tornado reference", ""]
    lines += [f"- **{title}.** {text}" for title, text in DIVERGENCES]
    unexpected = [run for run in runs if not as_expected(run)]
    if unexpected:
        lines += ["", "## Problems in this run", ""]
        for run in unexpected:
            why = run.stderr.splitlines()[-1] if run.stderr else f"exit status {run.status}"
            lines.append(f"- `{run.target.id}`: {why}")
    else:
        lines += [
            "",
            "Every implementation passes every scenario, but the seed's client, which fails",
            "as documented.",
        ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run the conformance suite on every target; write and print the matrix.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=(
            f"Markdown file (default: {DEFAULT_OUTPUT.relative_to(ROOT)}, unless --targets "
            "or -k narrow the run: then the report is only printed)"
        ),
    )
    parser.add_argument(
        "--targets",
        help="comma-separated target ids (default: all: "
        + ", ".join(target.id for target in TARGETS)
        + ")",
    )
    parser.add_argument("-k", dest="keyword", metavar="EXPR", help="only scenarios matching EXPR")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    targets = list(TARGETS)
    if args.targets:
        wanted = args.targets.split(",")
        unknown = sorted(set(wanted) - {target.id for target in TARGETS})
        if unknown:
            parser.error(f"unknown target(s): {', '.join(unknown)}")
        targets = [target for target in TARGETS if target.id in wanted]
    missing = [f"{t.id} needs {', '.join(t.missing())}" for t in targets if t.missing()]
    if missing:
        print(f"compare: {'; '.join(missing)}: pip install -e '.[test]'", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="echo20-compare-") as scratch:
        runs = [run_target(target, args.keyword, Path(scratch)) for target in targets]
    report = render(runs)
    print()
    print(report, end="")
    # A narrowed run must not replace the full committed matrix.
    narrowed = bool(args.targets or args.keyword)
    output: Path | None = args.output or (None if narrowed else DEFAULT_OUTPUT)
    if output is None:
        print("(not written: --targets or -k narrowed the run; --output FILE to keep it)")
    else:
        output = output.resolve()
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report, encoding="utf-8")
        print(f"(written to {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output})")
    return 0 if all(as_expected(run) for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
