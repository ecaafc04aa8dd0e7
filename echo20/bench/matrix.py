"""``echo20-bench run``: every target at every point, closed loop and/or open loop."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from echo20 import runtime
from echo20.bench import budgets as budget_checks
from echo20.bench import charts, report
from echo20.bench.certs import make_tls_files
from echo20.bench.environment import environment, load_average, loadgen_share, tls_negotiated
from echo20.bench.measure import CONTENDED_PCT, NOISE_FLAGS, Load, Run, measure
from echo20.bench.processes import Pinning, Server, choose_cpus, servers_running
from echo20.bench.stats import Cell, add_ratios
from echo20.bench.targets import DEFAULT_TARGETS, Target, Wire, command_targets, expand_targets
from echo20.bench.tools import Tools, build_tools
from echo20.bench.units import format_size
from echo20.errors import BenchError

__all__ = ["MatrixRun", "command_run", "progress_bar"]

PROGRAM = "echo20-bench"
# --strict: attempts at a noisy target's point before the run is refused, and the
# seconds before the second attempt (each later one waits three times longer).
STRICT_ATTEMPTS = 4
STRICT_PAUSE = 1.0


class Status:
    """The progress bar's handle: say what runs now, count what is done."""

    def __init__(self, update: Callable[..., None]) -> None:
        self._update = update

    def now(self, description: str) -> None:
        self._update(description=description)

    def done(self, description: str) -> None:
        self._update(advance=1, description=description)


@contextmanager
def progress_bar(total: int) -> Iterator[Status]:
    """A progress bar on stderr for ``total`` steps."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    # Two refreshes a second: the bar's thread must not compete with what it measures.
    # Only on a terminal: piped, stderr keeps the run's one-line messages alone.
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        refresh_per_second=2,
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("starting servers", total=total)
        yield Status(partial(progress.update, task))


def matrix_points(
    connections: Sequence[int], sizes: Sequence[int], max_inflight: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The (connections, size) points to run, and those over ``max_inflight`` bytes."""
    points = [(c, size) for c in connections for size in sizes]
    kept = [(c, size) for c, size in points if not max_inflight or c * size <= max_inflight]
    return kept, [point for point in points if point not in kept]


def asked_rate(rate: str, closed: Run | None) -> float | None:
    """Round trips per second for ``rate``: as given, or its share of the closed loop's."""
    if not rate.endswith("%"):
        return float(rate)
    if closed is None or closed.rt_per_s is None:
        return None
    return float(rate[:-1]) / 100 * closed.rt_per_s


class Setup(NamedTuple):
    """What every measuring command prepares before its first server starts."""

    out_dir: Path
    tools: Tools
    pinning: Pinning
    targets: list[Target]
    skipped: list[str]
    unsupported: dict[Target, str]
    env: dict[str, Any]


def prepare(args: argparse.Namespace, wire: Wire | None = None) -> Setup:
    """The output folder, the compiled C programs, the CPUs, the targets (and those that
    cannot run, with why) and the environment, from a command's arguments."""
    wire = wire or Wire(args.host)
    out_dir: Path = args.out
    report.writable_folder(out_dir, "the reports (--out)")
    runtime.raise_open_file_limit()
    tools = build_tools(out_dir / "build", tls=wire.tls is not None)
    pinning = choose_cpus(args.pin)
    commands = command_targets(getattr(args, "server_cmds", None) or [])
    names = args.targets
    if names is None:
        # A --server-cmd run compares the user's server with the C reference alone.
        names = ["c"] if commands else list(DEFAULT_TARGETS)
    targets, skipped, unsupported = expand_targets(names, args.loops, wire)
    # The user's servers right after the C reference, before every other target.
    cut = 1 if targets and targets[0].name == "c" else 0
    targets[cut:cut] = commands
    env = environment(args.loops, pinning.note)
    env["transport"] = wire.describe()
    return Setup(out_dir, tools, pinning, targets, skipped, unsupported, env)


def command_run(args: argparse.Namespace) -> int:
    """The matrix: every target at every (connections, size), ``repeats`` times."""
    with wire_for(args.host, unix=args.unix, tls=args.tls) as wire:
        return run_matrix(args, wire)


@contextmanager
def wire_for(host: str, *, unix: bool, tls: bool) -> Iterator[Wire]:
    """The run's wire: TCP on ``host``, or Unix sockets, plain or under TLS."""
    if not (unix or tls):
        yield Wire(host)
        return
    # The sockets and the certificates in a directory of our own, gone after the run (a
    # short path: a Unix socket's must fit in 108 bytes).
    with tempfile.TemporaryDirectory(prefix="echo20-bench-") as scratch:
        files = make_tls_files(Path(scratch)) if tls else None
        yield Wire(host, Path(scratch) if unix else None, files)


class Matrix(NamedTuple):
    """What one run of the matrix measured, ready to be printed and written."""

    env: dict[str, Any]
    settings: dict[str, Any]
    cells: list[Cell]
    budgets: list[dict[str, Any]]
    problems: list[str]
    # A server failed to start, crashed, or answered wrongly.
    broken: bool


def run_matrix(args: argparse.Namespace, wire: Wire) -> int:
    matrix = measure_matrix(args, wire)
    report.print_run(matrix.env, matrix.cells, matrix.budgets, matrix.problems)
    written = write_reports(args.out, matrix)
    print("wrote " + ", ".join(str(path) for path in written))
    unmet = [b["budget"] for b in matrix.budgets if b["met"] is False]
    for text in unmet:
        print(f"{PROGRAM}: budget not met: {text}", file=sys.stderr)
    return 1 if matrix.broken or unmet else 0


def point_modes(
    point: tuple[int, int], rates: Sequence[str], open_sizes: Sequence[int] | None
) -> list[str | None]:
    """The runs at one point: the closed loop (None) when asked for or when a rate is a
    share of it, then each open-loop rate (only at ``open_sizes``, when given)."""
    if open_sizes is not None and point[1] not in open_sizes:
        rates = []
    closed_too = not rates or any(rate.endswith("%") for rate in rates)
    return ([None] if closed_too else []) + list(rates)


def measure_matrix(args: argparse.Namespace, wire: Wire) -> Matrix:
    """Every target at every point, ``args.repeats`` times, summarized."""
    matrix = MatrixRun(args, wire)
    with progress_bar(matrix.steps) as status, matrix.serving(status):
        for repeat in range(args.repeats):
            matrix.measure_repeat(repeat, status)
    return matrix.finish()


class MatrixRun:
    """One matrix over one wire, measured a repeat at a time.

    ``run`` measures its repeats one after another; ``loops`` keeps every transport's
    servers up at once and goes through each transport in turn within a repeat, so the
    repeats of one cell lie minutes apart across the whole page's run (see
    ``loop_run``).
    """

    def __init__(self, args: argparse.Namespace, wire: Wire) -> None:
        self.args = args
        self.wire = wire
        _, self.tools, self.pinning, targets, skipped, unsupported, self.env = prepare(args, wire)
        self.targets = targets
        self.skipped = skipped
        self.rates: list[str] = args.rates or ([args.rate] if args.rate else [])
        self.points, self.left_out = matrix_points(args.connections, args.sizes, args.max_inflight)
        self.modes = {
            point: point_modes(point, self.rates, args.open_sizes) for point in self.points
        }
        self.cells = {
            (target, point, rate): Cell(
                target, *point, rate=rate, unsupported=unsupported.get(target)
            )
            for point in self.points
            for target in targets
            for rate in self.modes[point]
        }
        self.running = [target for target in targets if target not in unsupported]
        self.failures: dict[Target, str] = {}
        self.exit_statuses: dict[Target, int] = {}
        self.servers: dict[Target, Server] = {}

    @property
    def steps(self) -> int:
        """Its steps on a progress bar: each server started, each cell's repeats."""
        measured = sum(cell.unsupported is None for cell in self.cells.values())
        repeats: int = self.args.repeats
        return len(self.running) + measured * repeats

    @contextmanager
    def serving(self, status: Status) -> Iterator[None]:
        """Its servers started and primed; stopped on the way out, whatever happens."""
        with servers_running(
            self.running,
            tools=self.tools,
            wire=self.wire,
            log_dir=self.args.out / "logs",
            cpu=self.pinning.server_cpu,
            failures=self.failures,
            exit_statuses=self.exit_statuses,
            ready_timeout=self.args.ready_timeout,
        ) as servers:
            self.servers = servers
            for target in self.running:
                status.done(f"started {target.label}")
            yield

    def measure_repeat(self, repeat: int, status: Status) -> None:
        """One repeat of every target at every point (under ``serving``)."""
        args = self.args
        # Targets inside the innermost loop: every target meets the machine's noise of
        # the same minute, so the ratios of one cell compare like with like.
        for point in self.points:
            for target in self.running:
                mode_cells = [self.cells[(target, point, rate)] for rate in self.modes[point]]
                measure_once = partial(
                    run_point, args, self.cells, target, point, self.modes[point],
                    self.servers.get(target), self.failures.get(target), tools=self.tools,
                    pinning=self.pinning, status=status, repeat=repeat,
                )  # fmt: skip
                if not args.strict:
                    measure_once()
                    continue
                runs = measure_quietly(measure_once, mode_cells, status)
                refuse_noise(target, point, self.modes[point], runs)

    def finish(self) -> Matrix:
        """The cells summarized, set against C, and checked against the budgets."""
        env = self.env
        env["loadavg_end"] = load_average()
        ordered = list(self.cells.values())
        for cell in ordered:
            cell.summarize()
        add_ratios(ordered)
        env["loadgen_cpu"] = loadgen_share([cell.summary for cell in ordered])
        if self.wire.tls is not None:
            env["tls"] = tls_negotiated([cell.summary for cell in ordered])
        budgets = budget_checks.evaluate(self.args.budgets or [], ordered)
        # Too slow to measure is a result; a wrong reply, a crash or a failed start is not.
        broken = bool(self.failures) or any(cell.failed for cell in ordered)
        return Matrix(
            env,
            run_settings(self.args, self.targets, self.rates, self.left_out, self.wire),
            ordered,
            budgets,
            run_problems(self.skipped, self.failures, self.exit_statuses),
            broken,
        )


def run_problems(
    skipped: list[str], failures: dict[Target, str], exit_statuses: dict[Target, int]
) -> list[str]:
    """What the report lists under the table: targets not run, failed, or badly stopped."""
    problems = list(skipped) + [f"{t.label}: {why}" for t, why in failures.items()]
    problems += [
        f"{t.label}: exit status {code} after SIGTERM (expected 0)"
        for t, code in exit_statuses.items()
        # A --server-cmd server may well leave SIGTERM's default action (death) alone.
        if code != 0 and not (t.command and code == -signal.SIGTERM)
    ]
    return problems


def run_settings(
    args: argparse.Namespace,
    targets: list[Target],
    rates: list[str],
    left_out: list[tuple[int, int]],
    wire: Wire,
) -> dict[str, Any]:
    """The run's settings as bench.json records them, the command first."""
    return {
        "command": shlex.join([PROGRAM, *args.argv]),
        "targets": [t.label for t in targets],
        "connections": args.connections,
        "sizes": args.sizes,
        "rates": rates,
        "open_sizes": args.open_sizes,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "ramp_timeout_s": args.ramp_timeout,
        "max_inflight": args.max_inflight,
        "points_left_out": [f"{c} × {format_size(size)}" for c, size in left_out],
        "repeats": args.repeats,
        "host": args.host,
        "transport": wire.describe(),
        "strict": args.strict,
        "wait_quiet_s": args.wait_quiet,
    }


def run_point(
    args: argparse.Namespace,
    cells: dict[tuple[Target, tuple[int, int], str | None], Cell],
    target: Target,
    point: tuple[int, int],
    modes: Sequence[str | None],
    server: Server | None,
    failure: str | None,
    *,
    tools: Tools,
    pinning: Pinning,
    status: Status,
    repeat: int,
) -> list[Run]:
    """One repeat of one target at one point: the closed loop, then every rate; the runs."""
    closed: Run | None = None
    runs: list[Run] = []
    for rate in modes:
        cell = cells[(target, point, rate)]
        where = f"{target.label} {point[0]} × {format_size(point[1])} {rate or 'closed'}"
        status.now(f"{where} (repeat {repeat + 1}/{args.repeats})")
        if server is None or failure is not None:
            # A server that answered the priming exchange wrongly is not measured.
            run = Run(error=failure or "did not start")
        else:
            per_second = None if rate is None else asked_rate(rate, closed)
            if rate is not None and per_second is None:
                run = Run(mode="open", error="no closed-loop rate to take a share of")
            else:
                load = Load(
                    args.warmup, args.duration, args.ramp_timeout, per_second, args.wait_quiet
                )
                server.resume()
                try:
                    run = measure(
                        tools,
                        server,
                        connections=point[0],
                        size=point[1],
                        load=load,
                        pinning=pinning,
                    )
                finally:
                    if server.spins:
                        server.pause()
        if rate is None:
            closed = run
        cell.runs.append(run)
        runs.append(run)
        status.done(where)
    return runs


def noisy(runs: Sequence[Run]) -> bool:
    return any(flag in NOISE_FLAGS for run in runs for flag in run.flags)


def measure_quietly(
    measure_once: Callable[[], list[Run]],
    mode_cells: Sequence[Cell],
    status: Status,
    pause: Callable[[float], None] = time.sleep,
) -> list[Run]:
    """--strict: measure a target's point again, up to STRICT_ATTEMPTS times in all, while
    something else shaped it (a burst of another process, the hypervisor's steal): one
    noisy minute should not cost a whole run. Bursts last seconds, so each new attempt
    waits longer first (STRICT_PAUSE, then three times that, ...). The cells keep only
    the last attempt."""
    runs = measure_once()
    for attempt in range(STRICT_ATTEMPTS - 1):
        if not noisy(runs):
            break
        for cell in mode_cells:
            cell.runs.pop()
        wait = STRICT_PAUSE * 3**attempt
        status.now(f"not quiet: measuring again in {wait:g} s")
        pause(wait)
        runs = measure_once()
    return runs


def refuse_noise(
    target: Target, point: tuple[int, int], modes: Sequence[str | None], runs: Sequence[Run]
) -> None:
    """--strict: BenchError (one line, no report) when a run was shaped by something else
    than its server: another process, the hypervisor, a saturated load generator."""
    for rate, run in zip(modes, runs, strict=False):
        noise = [flag for flag in run.flags if flag in NOISE_FLAGS]
        if not noise:
            continue
        who = run.others_during or run.others_before
        shares = [
            f"{share:.0f} % of the {name}'s CPU went to others"
            for name, share in (
                ("server", run.other_server_cpu_pct),
                ("load generator", run.other_loadgen_cpu_pct),
            )
            if share is not None and share > CONTENDED_PCT
        ]
        details = "; ".join(
            [", ".join(noise), *shares, *(["busy: " + ", ".join(who[:3])] if who else [])]
        )
        raise BenchError(
            f"--strict: {target.label} {point[0]} × {format_size(point[1])} "
            f"{rate or 'closed'} was not measured on a quiet machine ({details}); "
            "no report written"
        )


def write_reports(out_dir: Path, matrix: Matrix, stem: str = "bench") -> list[Path]:
    """STEM.json, STEM.md and (with matplotlib) STEM.png and, with rates, STEM-sweep.png
    (bench.json, bench.md, bench.png and sweep.png for ``run``)."""
    env, cells = matrix.env, matrix.cells
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    report.write_json(
        json_path,
        {
            "environment": env,
            "settings": matrix.settings,
            "not_run": list(matrix.problems),
            "cells": [report.cell_document(cell) for cell in cells],
            "budgets": list(matrix.budgets),
        },
    )
    report.write_markdown(
        md_path,
        env=env,
        command=matrix.settings["command"],
        cells=cells,
        budgets=matrix.budgets,
        problems=matrix.problems,
    )
    written = [json_path, md_path]
    subtitle = f"{env['date']}, {env['cpu_model']}, {env['pinning']}"
    sweep = "sweep.png" if stem == "bench" else f"{stem}-sweep.png"
    for chart in (
        charts.write_matrix_chart(out_dir / f"{stem}.png", cells, subtitle),
        charts.write_sweep_chart(out_dir / sweep, cells, subtitle),
    ):
        if chart is not None:
            written.append(chart)
    return written
