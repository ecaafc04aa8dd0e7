"""``echo20-bench idle`` and ``cold-start``: what a server holds, and its first clients.

* idle: RSS per idle connection, N connections that each exchanged one message, then wait.
* cold-start: a fresh server's CPU per round trip against the same server once a client
  has come and gone (glibc's allocator, for one, behaves differently until then).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import time
from contextlib import suppress
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from echo20.bench import report
from echo20.bench.environment import describe, load_average
from echo20.bench.matrix import (
    matrix_points,
    measure_quietly,
    prepare,
    progress_bar,
    refuse_noise,
)
from echo20.bench.measure import LOADGEN_GRACE, Load, Run, measure
from echo20.bench.processes import Pinning, Server, prime, read_line, read_status_kib
from echo20.bench.processes import start_target as launch
from echo20.bench.stats import Cell
from echo20.bench.targets import Target, Wire
from echo20.bench.tools import Tools
from echo20.bench.units import fmt, fmt_ratio, format_size
from echo20.errors import BenchError

__all__ = ["command_cold_start", "command_idle"]

PROGRAM = "echo20-bench"

IDLE_HEADERS = ("target", "baseline RSS MiB", "RSS MiB", "KiB / connection", "server fds", "notes")
COLD_HEADERS = ("target", "conns", "size", "cold CPU µs/rt", "warm CPU µs/rt", "cold / warm",
                "notes")  # fmt: skip


def launch_over_tcp(
    target: Target, tools: Tools, args: argparse.Namespace, pinning: Pinning, out_dir: Path
) -> Server:
    """Start ``target`` on ``--host`` over TCP, pinned as the run says (idle and
    cold-start measure TCP only)."""
    return launch(
        target, tools=tools, wire=Wire(args.host), log_dir=out_dir / "logs", cpu=pinning.server_cpu
    )


def command_idle(args: argparse.Namespace) -> int:
    """RSS per idle connection: N connections that each exchanged one message, then wait."""
    out_dir, tools, pinning, targets, skipped, _, env = prepare(args)
    results: list[dict[str, Any]] = []
    with progress_bar(len(targets)) as status:
        for target in targets:
            status.now(f"{target.label}: {args.connections} idle connections")
            results.append(idle_one(target, tools, args, pinning, out_dir))
            status.done(target.label)
    env["loadavg_end"] = load_average()
    rows = [
        [
            r["label"],
            fmt(r["baseline_rss_kib"] / 1024 if r["baseline_rss_kib"] else None),
            fmt(r["rss_kib"] / 1024 if r["rss_kib"] else None),
            fmt(r["kib_per_connection"]),
            str(r["server_fds"] or ""),
            f"ERROR: {r['error']}" if r["error"] else "",
        ]
        for r in results
    ]
    report.print_environment(env)
    report.print_table(f"{args.connections} idle connections", IDLE_HEADERS, [rows])
    for note in skipped:
        print(f"not run: {note}")
    command = shlex.join([PROGRAM, *args.argv])
    report.write_json(
        out_dir / "idle.json",
        {
            "environment": env,
            "settings": {"command": command, "connections": args.connections, "size": args.size},
            "not_run": skipped,
            "results": results,
        },
    )
    md = ["# RSS of idle connections", ""]
    md += [f"- {line}" for line in describe(env)]
    md += ["", f"Command: `{command}`", "", report.markdown_table(IDLE_HEADERS, rows), ""]
    md += [
        "Each connection sent one message and got its reply, then stayed open and silent. "
        "Baseline: the server's VmRSS after one connection came and went; KiB per connection: "
        "(VmRSS with all of them open - baseline) / connections. Kernel socket buffers are "
        "not in a process's RSS, so the C server's cost is its bookkeeping only.",
        "",
    ]
    md += [f"Not run: {note}" for note in skipped]
    (out_dir / "idle.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out_dir / 'idle.json'}, {out_dir / 'idle.md'}")
    return 1 if any(r["error"] for r in results) else 0


def idle_one(
    target: Target, tools: Tools, args: argparse.Namespace, pinning: Pinning, out_dir: Path
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "label": target.label,
        "connections": args.connections,
        "baseline_rss_kib": None,
        "rss_kib": None,
        "kib_per_connection": None,
        "server_fds": None,
        "error": None,
    }
    try:
        server = launch_over_tcp(target, tools, args, pinning, out_dir)
    except (BenchError, OSError) as error:
        result["error"] = f"did not start: {error}"
        return result
    try:
        prime(server)
        result["baseline_rss_kib"] = read_status_kib(server.pid, "VmRSS")
        argv = [
            str(tools.loadgen), "--idle",
            *server.loadgen_args(),
            "--connections", str(args.connections), "--size", str(args.size),
            "--ramp-timeout", str(args.ramp_timeout),
        ]  # fmt: skip
        if pinning.loadgen_cpu is not None:
            argv += ["--cpu", str(pinning.loadgen_cpu)]
        loadgen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert loadgen.stdout is not None
            try:
                line = read_line(
                    loadgen.stdout, time.monotonic() + args.ramp_timeout + LOADGEN_GRACE
                )
            except TimeoutError:
                line = ""
            if line.startswith("ready"):
                result["rss_kib"] = read_status_kib(server.pid, "VmRSS")
                with suppress(OSError):
                    result["server_fds"] = len(os.listdir(f"/proc/{server.pid}/fd"))
            out, err = loadgen.communicate(input=b"done\n", timeout=LOADGEN_GRACE)
        finally:
            if loadgen.poll() is None:
                loadgen.kill()
                loadgen.wait()
        lines = (line + out.decode()).strip().splitlines()
        loadgen_report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
        if loadgen_report is None:
            result["error"] = f"the load generator gave no report: {err.decode().strip()}"
        elif loadgen_report["errors"]:
            result["error"] = (
                f"{loadgen_report['errors']} error(s), first: {loadgen_report['first_error']}"
            )
        elif result["rss_kib"] is not None and result["baseline_rss_kib"] is not None:
            grown = result["rss_kib"] - result["baseline_rss_kib"]
            result["kib_per_connection"] = grown / args.connections
    except (BenchError, OSError) as error:
        result["error"] = str(error)
    finally:
        status = server.stop()
        if status != 0 and result["error"] is None:
            result["error"] = f"exit status {status} after SIGTERM (expected 0)"
    return result


def command_cold_start(args: argparse.Namespace) -> int:
    """A fresh server's CPU per round trip against the same server once a client has left.

    For each repeat and target: start a server and measure a cell at once (cold: no
    connection has ever closed), then measure the same cell again (its first load's
    connections have closed by then). The ratio is cold over warm.
    """
    out_dir, tools, pinning, targets, skipped, _, env = prepare(args)
    points, _ = matrix_points(args.connections, args.sizes, args.max_inflight)
    cold = {(t, p): Cell(t, *p) for t in targets for p in points}
    warm = {(t, p): Cell(t, *p) for t in targets for p in points}
    load = Load(args.warmup, args.duration, args.ramp_timeout, wait_quiet=args.wait_quiet)
    with progress_bar(len(targets) * len(points) * args.repeats) as status:
        for repeat in range(args.repeats):
            for point in points:
                for target in targets:
                    where = f"{target.label} {point[0]} × {format_size(point[1])}"
                    status.now(f"{where} cold and warm (repeat {repeat + 1}/{args.repeats})")
                    cells = (cold[(target, point)], warm[(target, point)])
                    measure_pair = partial(
                        cold_and_warm_into, cells, target, point, tools, args, pinning,
                        out_dir, load,
                    )  # fmt: skip
                    if not args.strict:
                        measure_pair()
                    else:
                        # A noisy pair is measured again on a fresh server, as a whole.
                        runs = measure_quietly(measure_pair, cells, status)
                        refuse_noise(target, point, ("cold", "warm"), runs)
                    status.done(where)
    env["loadavg_end"] = load_average()
    results = [cold_start_result(cold_cell, warm[key]) for key, cold_cell in cold.items()]
    write_cold_start_report(args, out_dir, env, skipped, results)
    failed = any(cell.failed for cell in (*cold.values(), *warm.values()))
    return 1 if failed else 0


def cold_start_result(cold_cell: Cell, warm_cell: Cell) -> dict[str, Any]:
    """One target and point: cold and warm CPU per round trip, and their ratio."""
    ratios = [
        c.cpu_us_per_rt / w.cpu_us_per_rt
        for c, w in zip(cold_cell.runs, warm_cell.runs, strict=True)
        if c.cpu_us_per_rt and w.cpu_us_per_rt
    ]
    return {
        "label": cold_cell.target.label,
        "connections": cold_cell.connections,
        "size": cold_cell.size,
        "cold_cpu_us_per_rt": cold_cell.median(lambda r: r.cpu_us_per_rt),
        "warm_cpu_us_per_rt": warm_cell.median(lambda r: r.cpu_us_per_rt),
        "ratio": statistics.median(ratios) if ratios else None,
        "ratios": ratios,
        "error": cold_cell.error or warm_cell.error,
        "flags": list(
            dict.fromkeys(f for r in (*cold_cell.runs, *warm_cell.runs) for f in r.flags)
        ),
        "cold_runs": [asdict(r) for r in cold_cell.runs],
        "warm_runs": [asdict(r) for r in warm_cell.runs],
    }


def write_cold_start_report(
    args: argparse.Namespace,
    out_dir: Path,
    env: dict[str, Any],
    skipped: list[str],
    results: list[dict[str, Any]],
) -> None:
    """The cold-start table on the terminal, and cold-start.json and .md in ``out_dir``."""
    rows = [
        [
            r["label"],
            str(r["connections"]),
            format_size(r["size"]),
            fmt(r["cold_cpu_us_per_rt"]),
            fmt(r["warm_cpu_us_per_rt"]),
            fmt_ratio(r["ratio"]),
            f"ERROR: {r['error']}" if r["error"] else ", ".join(r["flags"]),
        ]
        for r in results
    ]
    report.print_environment(env)
    report.print_table("Cold start", COLD_HEADERS, [rows])
    for note in skipped:
        print(f"not run: {note}")
    command = shlex.join([PROGRAM, *args.argv])
    report.write_json(
        out_dir / "cold-start.json",
        {"environment": env, "settings": {"command": command}, "not_run": skipped,
         "results": results},
    )  # fmt: skip
    md = ["# Cold start: a fresh server against one that has served and closed a connection", ""]
    md += [f"- {line}" for line in describe(env)]
    md += ["", f"Command: `{command}`", "", report.markdown_table(COLD_HEADERS, rows), ""]
    md += [
        "Cold: the first load on a fresh server, no connection ever closed. Warm: the same "
        "load again once the first one's connections have closed. cold / warm is the median "
        "of the per-repeat ratios: near 1, no cold-start penalty. Notes: the flags of "
        "either run, as `run` sets them (`loadgen-bound`: the C load generator used 90 % "
        "of its CPU while the server did not, so the server's CPU per round trip is still "
        "its own; `contended` and the other noise flags never reach a page made with "
        "`--strict`).",
        "",
    ]
    (out_dir / "cold-start.md").write_text("\n".join(md))
    print(f"wrote {out_dir / 'cold-start.json'}, {out_dir / 'cold-start.md'}")


def cold_and_warm_into(
    cells: tuple[Cell, Cell],
    target: Target,
    point: tuple[int, int],
    tools: Tools,
    args: argparse.Namespace,
    pinning: Pinning,
    out_dir: Path,
    load: Load,
) -> list[Run]:
    """One repeat on a fresh server: the cold run, then the warm one, each added to its
    cell (``cells``: the cold one, the warm one); the two runs."""
    try:
        server = launch_over_tcp(target, tools, args, pinning, out_dir)
    except (BenchError, OSError) as error:
        runs = [Run(error=f"did not start: {error}")] * 2
    else:
        try:
            connections, size = point
            runs = [
                measure(
                    tools, server, connections=connections, size=size, load=load, pinning=pinning
                )
                for _ in range(2)
            ]
        finally:
            status = server.stop()
        if status != 0:
            for run in runs:
                run.error = run.error or f"exit status {status} after SIGTERM (expected 0)"
    for cell, run in zip(cells, runs, strict=True):
        cell.runs.append(run)
    return runs
