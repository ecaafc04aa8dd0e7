"""``echo20-conformance compare``: several servers side by side, and where they differ.

Every scenario runs on each server in turn (one after the other, so that no run
disturbs another's timing), then each server's observations (:mod:`.observe`) are
repeated ``--repeats`` times. One table follows: scenarios and observations down the
side, servers across the top, a verdict per row (:mod:`.matrix`)::

    echo20-conformance compare
    echo20-conformance compare tornado streams
    echo20-conformance compare --server-cmd "python tcp_server.py" --port 8888 \\
        --server-cmd "echo20-server --port {port}"
    echo20-conformance compare tornado --server-addr 127.0.0.1:9000 --markdown cmp.md

The exit status is 0 when every server passed every scenario, whether they differ or
not (``--fail-on-difference`` makes a difference fail too); 1 when a scenario failed or
a server would not start or died; 2 for bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from echo20 import cli
from echo20.conformance import runner
from echo20.conformance.matrix import FACTOR, TIME_FLOOR_MS, Row, all_rows
from echo20.conformance.observe import observe
from echo20.conformance.processes import (
    ServerProcess,
    ServerSpec,
    parse_address,
    require_listening,
    start_server,
)
from echo20.conformance.report import (
    FAIL,
    KINDS,
    PASS,
    SKIPPED,
    Column,
    counts_text,
    read_junit,
    render_matrix,
)
from echo20.conformance.targets import DEFAULT_PRESETS, PRESETS, Target
from echo20.conformance.watch import ServerWatch
from echo20.errors import ConformanceError

__all__ = ["main"]

PROGRAM = "echo20-conformance compare"

# Each observation is repeated this many times per server by default: enough for the
# spread of the repeats to show the noise (5 of each server's repeats all above 5 of
# another's happens by chance once in 126 draws of the same distribution).
DEFAULT_REPEATS = 5

# A --server-cmd's default name skips these to reach the program's own name.
INTERPRETER = re.compile(r"python[\d.]*|pypy[\d.]*|sh|bash|env|uv|uvx|node|ruby|perl")


@dataclass
class Entry:
    """A server or client as the command line gave it: a command, an address, a preset."""

    command: str | None = None
    port: int | None = None
    address: tuple[str, int] | None = None
    preset: Target | None = None
    name: str | None = None
    kind: str = "server"

    def shown(self) -> str:
        """The command (or address) as the reports show it."""
        if self.preset is not None:
            return self.preset.shown or self.preset.command
        if self.address is not None:
            host, port = self.address
            return f"{host}:{port} (already running)"
        assert self.command is not None
        return self.command + (f" (port {self.port})" if self.port is not None else "")


def short_name(command: str) -> str:
    """A column title for a command: its program's name, past any interpreter.

    ``python my_server.py --port 8888`` is ``my_server.py``; ``python -m pkg.server`` is
    ``pkg.server``; ``./server --port {port}`` is ``server``.
    """
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    for index, word in enumerate(words):
        if word == "-m" and index + 1 < len(words):
            return words[index + 1]
        if word == "-c":
            return " ".join(words[: index + 1])
        if INTERPRETER.fullmatch(os.path.basename(word)) or word.startswith("-"):
            continue
        return os.path.basename(word) or word
    return command.strip()


class _AddServer(argparse.Action):
    """--server-cmd, --server-addr and --client-cmd: one more column, in the order given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        assert isinstance(values, str)
        servers: list[Entry] = namespace.servers
        if option_string == "--server-addr":
            try:
                servers.append(Entry(address=parse_address(values)))
            except ValueError as error:
                parser.error(f"--server-addr: {error}")
        else:
            if not values.strip():
                parser.error(f"{option_string} is empty")
            if option_string == "--client-cmd":
                if "{port}" not in values:
                    parser.error("--client-cmd needs {port}, where the scripted servers listen")
                servers.append(Entry(command=values, kind="client"))
            else:
                servers.append(Entry(command=values))


class _Modify(argparse.Action):
    """--port and --name: they belong to the --server-cmd (or server) just before them."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        servers: list[Entry] = namespace.servers
        last = servers[-1] if servers else None
        if option_string == "--port":
            if last is None or last.command is None or last.kind != "server":
                parser.error("--port goes right after the --server-cmd it is for")
            if last.port is not None:
                parser.error(f"two --port for one --server-cmd: {last.command!r}")
            assert isinstance(values, int)
            last.port = values
        else:
            assert isinstance(values, str)
            if last is None:
                parser.error(
                    "--name goes right after the --server-cmd, --server-addr or --client-cmd "
                    "it names (a preset has its name)"
                )
            if last.name is not None:
                parser.error(f"two --name for one server: {last.name!r} and {values!r}")
            last.name = values


def at_least_two_or_none(text: str) -> int:
    value = cli.non_negative_int(text)
    if value == 1:
        raise argparse.ArgumentTypeError(
            "0 (no observations) or at least 2: one run shows no noise"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    presets = ", ".join(PRESETS)
    parser = cli.ArgumentParser(
        prog=PROGRAM,
        description=(
            "Run every conformance scenario on two or more servers, one after the other,\n"
            "observe each (round trip, cuts, close after over, bytes after over) --repeats\n"
            "times, and print one table with a verdict per row: same, or differs (and\n"
            "which server). Exit status 0 when every server passed every scenario (even if\n"
            "they differ; see --fail-on-difference), 1 when one failed or a server would\n"
            "not start or died, 2 for bad flags."
        ),
        epilog=(
            f"presets: {presets}.\n"
            f"With no server at all: {' '.join(DEFAULT_PRESETS)}.\n"
            "Preset columns come first, then --server-cmd and --server-addr in the order "
            "given.\n\n"
            "examples:\n"
            "  echo20-conformance compare\n"
            "  echo20-conformance compare tornado protocol seed\n"
            '  echo20-conformance compare --server-cmd "python tcp_server.py" --port 8888 \\\n'
            '      --server-cmd "echo20-server --port {port}"'
        ),
        formatter_class=cli.HelpFormatter,
    )
    parser.set_defaults(servers=[], verbose=False)
    servers = parser.add_argument_group("the servers (two or more, in any mix)")
    servers.add_argument(
        "presets",
        nargs="*",
        metavar="PRESET",
        help="a server echo20 knows by name (listed below)",
    )
    servers.add_argument(
        "--server-cmd",
        action=_AddServer,
        metavar="CMD",
        help=(
            "start this server, stop it afterwards; {port} becomes a free port, a leading "
            "'python' this interpreter (repeat for more servers)"
        ),
    )
    servers.add_argument(
        "--port",
        action=_Modify,
        type=cli.port_number,
        help="the port the --server-cmd just before listens on, when it has no {port}",
    )
    servers.add_argument(
        "--server-addr",
        action=_AddServer,
        metavar="HOST:PORT",
        help="a server already running (repeat for more)",
    )
    servers.add_argument(
        "--name",
        action=_Modify,
        help="the column title of the server (or client) just before (default: its program)",
    )
    servers.add_argument(
        "--client-cmd",
        action=_AddServer,
        metavar="CMD",
        help=(
            "also compare this client: messages on its stdin, {port} the scripted server's "
            "port (repeat for more; a table of its own)"
        ),
    )
    run = parser.add_argument_group("the run")
    runner.add_selection_arguments(run)
    run.add_argument(
        "--repeats",
        type=at_least_two_or_none,
        default=DEFAULT_REPEATS,
        metavar="N",
        help="observe each server N times, to know the noise (0: no observations)",
    )
    run.add_argument(
        "--fail-on-difference",
        action="store_true",
        help="exit 1 when a row differs, even if every server passed",
    )
    out = parser.add_argument_group("reports")
    out.add_argument("--markdown", type=Path, metavar="FILE", help="write the matrix as Markdown")
    out.add_argument("--json", type=Path, metavar="FILE", help="write every result as JSON")
    out.add_argument(
        "--junit-xml", type=Path, metavar="FILE", help="write JUnit XML, a test suite per server"
    )
    return parser


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[Entry]]:
    """The arguments and the servers, presets first; exits 2 on a bad command line."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    unknown = [name for name in args.presets if name not in PRESETS]
    if unknown:
        parser.error(
            f"unknown server {unknown[0]!r}: give --server-cmd or --server-addr, "
            f"or a preset: {', '.join(PRESETS)}"
        )
    entries = [Entry(preset=PRESETS[name], kind=PRESETS[name].kind) for name in args.presets]
    entries += args.servers
    if not entries:
        entries = [Entry(preset=PRESETS[name]) for name in DEFAULT_PRESETS]
    if all(sum(1 for e in entries if e.kind == kind) < 2 for kind in ("server", "client")):
        parser.error(
            "compare needs two or more servers (or clients), or none at all for "
            f"{', '.join(DEFAULT_PRESETS)}; one alone: echo20-conformance --server-cmd ..."
        )
    for entry in entries:
        if entry.command is not None and "{port}" not in entry.command and entry.port is None:
            parser.error(
                f"--server-cmd {entry.command!r} needs to say where it listens: put {{port}} "
                "in it, or follow it with --port N"
            )
    names: list[str] = []
    for entry in entries:
        name = entry.name or default_name(entry)
        if name in names:
            if entry.name is not None:
                parser.error(f"two servers named {name!r}")
            name = next(
                f"{name}-{n}" for n in range(2, len(entries) + 2) if f"{name}-{n}" not in names
            )
        names.append(name)
        entry.name = name
    return args, entries


def default_name(entry: Entry) -> str:
    if entry.preset is not None:
        return entry.preset.id
    if entry.address is not None:
        return f"{entry.address[0]}:{entry.address[1]}"
    assert entry.command is not None
    return short_name(entry.command)


# --- running ------------------------------------------------------------------------


def run_entry(entry: Entry, args: argparse.Namespace, scratch: Path) -> Column:
    """Start (or reach) one server, run the scenarios, observe it, stop it; or a client."""
    assert entry.name is not None
    preset = entry.preset
    clean_exit = preset.clean_exit if preset is not None and entry.kind == "server" else False
    run = Column(
        entry.name,
        entry.shown(),
        [],
        preset.about if preset else "",
        kind=entry.kind,
        clean_exit=clean_exit,
        note=preset.note if preset else "",
        known_to_fail=preset.known_to_fail if preset else False,
    )
    print(f"== {entry.name}: {run.command}", flush=True)
    started = time.monotonic()
    server: ServerProcess | None = None
    command = preset.command if preset is not None else entry.command
    junit = scratch / f"{len(list(scratch.iterdir()))}.xml"
    if entry.kind == "client":
        assert command is not None
        check(runner.run_scenarios(args, None, command, junit, None), None)
        run.results = read_junit(junit) if junit.exists() else []
        run.seconds = time.monotonic() - started
        print(f"   {entry.name}: {counts_text(run.results)} in {run.seconds:.1f} s", flush=True)
        return run
    try:
        try:
            if entry.address is not None:
                require_listening(entry.address, args.timeout)
                address = entry.address
            else:
                assert command is not None
                server = start_server(ServerSpec(command, port=entry.port), args.timeout)
                address = server.address
        except ConformanceError as error:
            run.problems.append(str(error))
            return run
        watch = ServerWatch(server, owned=False, timeout=args.timeout) if server else None
        check(runner.run_scenarios(args, address, None, junit, watch), watch)
        run.results = read_junit(junit) if junit.exists() else []
        alive = server is None or server.exit_status() is None
        if args.repeats and alive:
            print(f"   observing {entry.name}, {args.repeats} times", flush=True)
            run.observations = asyncio.run(observe(address, args.timeout, args.repeats))
        if server is not None and watch is not None:
            run.problems += runner.stop_server(
                server, watch, clean_exit=clean_exit, timeout=args.timeout
            )
            server = None
    finally:
        if server is not None and server.exit_status() is None:
            server.stop(args.timeout)
        run.seconds = time.monotonic() - started
    summary = counts_text(run.results)
    print(f"   {entry.name}: {summary} in {run.seconds:.1f} s", flush=True)
    return run


def check(status: int, watch: ServerWatch | None) -> None:
    """Stop the comparison where pytest could not run the scenarios at all."""
    if status == runner.PYTEST_USAGE_ERROR:
        raise ConformanceError("pytest refused the command line (see above)")
    if status == runner.PYTEST_INTERRUPTED and not (watch and watch.died):
        raise KeyboardInterrupt


def missing_packages(entries: list[Entry]) -> list[str]:
    """Presets whose packages are not installed, as ``tornado needs tornado``."""
    return [
        f"{entry.name} needs {', '.join(entry.preset.missing())}"
        for entry in entries
        if entry.preset is not None and entry.preset.missing()
    ]


def main(argv: list[str] | None = None) -> int:
    args, entries = parse(sys.argv[1:] if argv is None else argv)
    missing = missing_packages(entries)
    if missing:
        cli.error_line(PROGRAM, f"{'; '.join(missing)}: pip install 'echo20[conformance,loops]'")
        return runner.EXIT_FAILED
    started = time.monotonic()
    runs: list[Column] = []
    try:
        with tempfile.TemporaryDirectory(prefix="echo20-compare-") as scratch:
            for entry in entries:
                run = run_entry(entry, args, Path(scratch))
                if not run.results and not run.problems:
                    cli.error_line(PROGRAM, f"no scenario matches -k {args.keyword!r}")
                    return runner.EXIT_FAILED
                runs.append(run)
    except ConformanceError as error:
        cli.error_line(PROGRAM, str(error))
        return runner.EXIT_USAGE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return runner.EXIT_INTERRUPTED
    rows = all_rows(runs, args.repeats)
    seconds = time.monotonic() - started
    for kind in ("server", "client"):
        columns = [run for run in runs if run.kind == kind]
        if columns:
            print()
            print(
                render_text(
                    columns, [row for row in rows if row.kind in ROW_KINDS[kind]], args.repeats
                )
            )
    write_reports(args, runs, rows, seconds)
    return summarize(args, runs, rows, seconds)


def summarize(args: argparse.Namespace, runs: list[Column], rows: list[Row], seconds: float) -> int:
    for run in runs:
        for result in run.results:
            if result.outcome not in (PASS, SKIPPED):
                print(
                    f"{result.outcome} {run.name} {result.kind} {result.scenario}: {result.detail}"
                )
        for problem in run.problems:
            cli.error_line(PROGRAM, f"{run.name}: {problem}")
    passed = all(run.passed() or run.known_to_fail for run in runs)
    differing = [row for row in rows if row.differs]
    ok = passed and not (args.fail_on_difference and differing)
    what = "every one passed every scenario" if passed else "not every one passed"
    documented = [run.name for run in runs if run.known_to_fail and not run.passed()]
    if passed and documented:
        what = f"every one passed every scenario but {', '.join(documented)}, as documented"
    differ = f"{len(differing)} of {len(rows)} rows differ" if differing else "no row differs"
    verdict = "PASS" if ok else FAIL
    counted = ", ".join(
        f"{count} {kind}s"
        for kind in ("server", "client")
        if (count := sum(1 for run in runs if run.kind == kind))
    )
    print(f"{PROGRAM}: {verdict}: {what}; {differ} ({counted}, {seconds:.1f} s)")
    return 0 if ok else runner.EXIT_FAILED


# --- reports ------------------------------------------------------------------------

# The rows of each kind of column's table.
ROW_KINDS = {"server": ("server", "observation"), "client": ("client",)}


def render_text(runs: list[Column], rows: list[Row], repeats: int) -> str:
    """The terminal table: a header per kind of row, aligned columns, a noise line."""
    header = ["", *(run.name for run in runs), "verdict"]
    lines: list[list[str]] = []
    titles = {**KINDS, "observation": f"Observations ({repeats} runs each)"}
    kind = None
    for row in rows:
        if row.kind != kind:
            kind = row.kind
            lines.append([titles[kind]])
        lines.append([row.name, *row.cells, row.verdict])
        if row.noise and any(row.noise):
            lines.append(["  run to run", *row.noise, ""])
    widths = [
        max(len(line[column]) for line in [header, *lines] if len(line) > column and len(line) > 1)
        for column in range(len(header) - 1)
    ]
    out = []
    for line in [header, *lines]:
        if len(line) == 1:
            out.append(line[0])
            continue
        cells = [text.ljust(width) for text, width in zip(line, widths, strict=False)]
        out.append("  ".join([*cells, line[-1]]).rstrip())
    return "\n".join(out)


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


def write_reports(
    args: argparse.Namespace, runs: list[Column], rows: list[Row], seconds: float
) -> None:
    reports: list[tuple[Path | None, Callable[[], str]]] = [
        (args.markdown, lambda: render_markdown(runs, rows, args.repeats, seconds)),
        (args.json, lambda: render_json(runs, rows, args.repeats, seconds)),
        (args.junit_xml, lambda: render_junit(runs, rows, args.fail_on_difference)),
    ]
    for path, text in reports:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text(), encoding="utf-8")


OBSERVATIONS_TEXT = [
    "Recorded, never asserted: how each server keeps the rules where the protocol leaves it",
    "free. Each server's probes ran {repeats} times, in turn, each on a fresh connection; a",
    'cell shows the median, "run to run" the range of the repeats: the noise. Two servers',
    "differ beyond noise when the ranges of their repeats do not overlap and the larger",
    f"median is at least {FACTOR:g} times the smaller (and, for times, {TIME_FLOOR_MS:g} ms or",
    "more above it).",
]

MEASURES_TEXT = [
    (
        "Round trip",
        "the median of 20 exchanges of 8 bytes on one connection. A server that leaves "
        "Nagle's algorithm on, as Tornado's `TCPServer` and the seed do, holds the second "
        "small write of each exchange until the client's delayed ACK, about 40 ms; asyncio "
        "and uvloop set `TCP_NODELAY`, and answer in well under a millisecond. Same bytes, "
        "different timing; `tornado_server.py --nodelay` shows the reference without the "
        "wait (the benchmark's `tornado-nodelay`).",
    ),
    (
        "Cuts",
        "the batches a reply shows: runs of 20-byte chunks, each ended by a shorter one. "
        "A batch whose size is a multiple of 20 joins the next one in the reply, so each "
        "is an upper bound (96,256 B may be 30,720 + 65,536). The 1 MiB reply is probed on "
        "every repeat; the 8 MiB replies are the two scenarios that send 8 MiB "
        "(`half_close_beyond_kernel_buffers`, `over_ends_input_beyond_kernel_buffers`), "
        "one run each. Tornado reads 64 KiB at a time. `streams` reads 20 bytes at a time "
        "from asyncio's StreamReader, which joins receives in one buffer: while that "
        "buffer never runs dry its chunks stay 20 bytes across receives, where Tornado "
        "would cut a short one at each 64 KiB read. The same bytes, validly cut, but not "
        "the same cut. TCP is a byte stream, so only a client that relies on segment "
        "boundaries can tell (the seed's own client does, and fails against every server: "
        "docs/protocol.md, its known defects).",
    ),
    (
        "Largest batch",
        "the largest batch of each of those replies, 1 MiB and 8 MiB: their median, and "
        "run to run their range.",
    ),
    (
        "Close after over",
        "the time from the last byte of `over`'s reply to the end of stream.",
    ),
    (
        "Bytes after over answered",
        "how many bytes the server sent back to 19 bytes written once `over`'s reply had "
        "arrived (none, for a correct server), and in how many of the repeats.",
    ),
]

SHUTDOWN_TEXT = (
    "Those servers must also exit 0 on SIGTERM with no Python "
    "traceback: echo20's servers, the Tornado reference included, stop on SIGINT or "
    "SIGTERM with exit status 0, closing open connections after at most "
    "`--shutdown-timeout` seconds; the Tornado reference closes its streams at once "
    "(Tornado drops unsent bytes on close), the port lets queued replies go first. The "
    "seed never stops (Ctrl-C is a traceback, SIGTERM kills it)."
)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(runs: list[Column], rows: list[Row], repeats: int, seconds: float) -> str:
    """The page (``docs/conformance.md`` in the echo20 repository is one)."""
    lines = [
        "# Conformance: side by side",
        "",
        "Written by `echo20-conformance compare`: every conformance scenario on every server",
        "(and client), one after the other, then each server's observations, repeated. The",
        "scenarios are black-box, over raw TCP, checked against the rules of",
        "[the protocol](protocol.md) (`docs/protocol.md` in the echo20 repository);",
        "`echo20-conformance --list` names them. A verdict is `same` when every one",
        "behaved alike, or `differs` followed by the ones set apart.",
        "",
        f"Measured with {versions()}, in {seconds:.0f} s.",
    ]
    for kind in ("server", "client"):
        columns = [run for run in runs if run.kind == kind]
        if not columns:
            continue
        lines += [
            "",
            f"## {kind.capitalize()}s",
            "",
            f"| {kind} | command | what | result |",
            "|---|---|---|---|",
        ]
        for run in columns:
            result = counts_text(run.results)
            if run.known_to_fail and not run.passed():
                result += ", as documented below"
            if run.problems:
                result += "; **" + _markdown_cell("; ".join(run.problems)) + "**"
            lines.append(
                f"| `{run.name}` | `{_markdown_cell(run.command)}` | {run.about} | {result} |"
            )
    lines += ["", "## Matrix"]
    notes: list[str] = []
    verdicts = {(row.kind, row.name): _verdict_md(row) for row in rows}
    lines += render_matrix(runs, notes, verdicts)
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"{index}. {_markdown_cell(note)}" for index, note in enumerate(notes, 1)]
    observed = [row for row in rows if row.kind == "observation"]
    if observed:
        servers = [run for run in runs if run.kind == "server"]
        lines += ["", "## Observations", ""]
        lines += [line.format(repeats=repeats) for line in OBSERVATIONS_TEXT]
        lines += ["", _header(servers), _rule(servers)]
        for row in observed:
            cells = [
                f"{cell} ({noise})" if noise else cell
                for cell, noise in zip(row.cells, row.noise, strict=True)
            ]
            lines.append(
                f"| {row.name} | "
                + " | ".join(map(_markdown_cell, cells))
                + f" | {_verdict_md(row)} |"
            )
        lines += [""]
        lines += [f"- **{title}**: {text}" for title, text in MEASURES_TEXT]
    differing = [row for row in rows if row.differs]
    lines += ["", "## Differences", ""]
    if differing:
        lines += [f"- `{row.name}`: {_markdown_cell(row.verdict)}" for row in differing]
    else:
        lines.append("None: every one behaved alike in every scenario and observation.")
    for run in runs:
        if run.note:
            lines += ["", f"## About `{run.name}`", "", run.note]
    if any(run.clean_exit for run in runs):
        checked = ", ".join(f"`{run.name}`" for run in runs if run.clean_exit)
        lines += ["", "## Shutdown", "", f"Clean exit checked on {checked}. {SHUTDOWN_TEXT}"]
    if any(run.problems for run in runs):
        lines += ["", "## Problems in this run", ""]
        lines += [
            f"- `{run.name}`: {_markdown_cell(problem)}" for run in runs for problem in run.problems
        ]
    return "\n".join(lines) + "\n"


def _header(runs: list[Column]) -> str:
    return "| observation | " + " | ".join(f"`{run.name}`" for run in runs) + " | verdict |"


def _rule(runs: list[Column]) -> str:
    return "|---|" + "---|" * (len(runs) + 1)


def _verdict_md(row: Row) -> str:
    return f"**{_markdown_cell(row.verdict)}**" if row.differs else _markdown_cell(row.verdict)


def render_json(runs: list[Column], rows: list[Row], repeats: int, seconds: float) -> str:
    document = {
        "program": PROGRAM,
        "measured_with": versions(),
        "seconds": round(seconds, 3),
        "repeats": repeats,
        "noise_rule": {"factor": FACTOR, "time_floor_ms": TIME_FLOOR_MS},
        "passed": all(run.passed() or run.known_to_fail for run in runs),
        "columns": [
            {
                "name": run.name,
                "kind": run.kind,
                "command": run.command,
                "about": run.about,
                "passed": run.passed(),
                "known_to_fail": run.known_to_fail,
                "problems": run.problems,
                "seconds": round(run.seconds, 3),
                "results": [
                    {
                        "scenario": r.scenario,
                        "kind": r.kind,
                        "outcome": r.outcome,
                        "detail": r.detail,
                        "seconds": r.seconds,
                        "properties": r.properties,
                    }
                    for r in run.results
                ],
                "observations": {
                    key: {
                        "values": samples.values,
                        "failures": samples.failures,
                        "batches": [_batch_counts(b) for b in samples.batches],
                    }
                    for key, samples in run.observations.items()
                },
            }
            for run in runs
        ],
        "rows": [
            {
                "kind": row.kind,
                "name": row.name,
                "cells": dict(zip(_names(runs, row), row.cells, strict=True)),
                "noise": dict(zip(_names(runs, row), row.noise, strict=True)) if row.noise else {},
                "verdict": row.verdict,
                "differs": row.differs,
                "apart": row.apart,
            }
            for row in rows
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def _names(runs: list[Column], row: Row) -> list[str]:
    """The columns a row's cells belong to: its kind's."""
    kind = "server" if row.kind == "observation" else row.kind
    return [run.name for run in runs if run.kind == kind]


def _batch_counts(batches: list[int]) -> dict[str, int]:
    """Batch sizes and how often each came (a reply cut finely has many of one size)."""
    counts: dict[int, int] = {}
    for size in batches:
        counts[size] = counts.get(size, 0) + 1
    return {str(size): count for size, count in sorted(counts.items())}


def render_junit(runs: list[Column], rows: list[Row], fail_on_difference: bool) -> str:
    """A test suite per server (its scenarios), and one for the verdicts."""
    root = ElementTree.Element("testsuites", name=PROGRAM)
    for run in runs:
        failed = sum(1 for r in run.results if r.outcome == FAIL)
        suite = ElementTree.SubElement(
            root,
            "testsuite",
            name=run.name,
            tests=str(len(run.results) + len(run.problems)),
            failures=str(failed),
            errors=str(
                sum(1 for r in run.results if r.outcome not in (PASS, SKIPPED, FAIL))
                + len(run.problems)
            ),
            skipped=str(sum(1 for r in run.results if r.outcome == SKIPPED)),
            time=f"{run.seconds:.3f}",
        )
        properties = ElementTree.SubElement(suite, "properties")
        ElementTree.SubElement(properties, "property", name="command", value=run.command)
        for result in run.results:
            case = ElementTree.SubElement(
                suite,
                "testcase",
                classname=f"{run.name}.{result.kind}",
                name=result.scenario,
                time=f"{result.seconds:.3f}",
            )
            if result.properties:
                props = ElementTree.SubElement(case, "properties")
                for key, value in result.properties.items():
                    ElementTree.SubElement(props, "property", name=key, value=value)
            if result.outcome == FAIL:
                ElementTree.SubElement(case, "failure", message=result.detail)
            elif result.outcome == SKIPPED:
                ElementTree.SubElement(case, "skipped", message=result.detail)
            elif result.outcome != PASS:
                ElementTree.SubElement(case, "error", message=result.detail)
        for problem in run.problems:
            case = ElementTree.SubElement(suite, "testcase", classname=run.name, name="server")
            ElementTree.SubElement(case, "error", message=problem)
    verdicts = ElementTree.SubElement(
        root,
        "testsuite",
        name="verdicts",
        tests=str(len(rows)),
        failures=str(sum(1 for row in rows if row.differs) if fail_on_difference else 0),
        errors="0",
        skipped="0",
    )
    for row in rows:
        case = ElementTree.SubElement(
            verdicts, "testcase", classname=f"verdicts.{row.kind}", name=row.name
        )
        out = ElementTree.SubElement(case, "system-out")
        out.text = row.verdict
        if row.differs and fail_on_difference:
            ElementTree.SubElement(case, "failure", message=row.verdict)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
