"""``echo20-bench loops``: the loop comparison page in one command.

It measures one matrix per transport (TCP, TLS, Unix sockets), every target on every
installed loop, with the open loop at one size; every transport's servers run side by
side, and each repeat goes through the transports in turn. It writes beside the page each
transport's full report (``loops-tcp.md``, ``.json``, ``.png``, ...), the page's chart
(``loops.png``) and the page itself (``loops.md``, see ``loop_page.py``).
"""

from __future__ import annotations

import argparse
import shlex
import time
from contextlib import ExitStack
from pathlib import Path

from echo20.bench import charts
from echo20.bench.loop_page import QUOTED_SIZE, Transport, render_page
from echo20.bench.matrix import PROGRAM, MatrixRun, progress_bar, wire_for, write_reports
from echo20.bench.report import writable_folder

__all__ = ["LOOP_PAGE_TARGETS", "TRANSPORTS", "command_loops"]

# vmbench's three shapes (sockets, streams, protocol), our other implementation and
# the two yardsticks: the Tornado reference is a TCP-only program, left to ``run``.
LOOP_PAGE_TARGETS = ("c", "floor", "sockets", "streams", "iostream", "protocol")
# Name on the command line: (title on the page, --unix, --tls).
TRANSPORTS = {
    "tcp": ("TCP over {host}", False, False),
    "tls": ("TLS over TCP", False, True),
    "unix": ("Unix sockets", True, False),
}


def command_loops(args: argparse.Namespace) -> int:
    """Every target on every loop over each transport; the page and its reports."""
    started = time.monotonic()
    page: Path = args.page or args.out / "loops.md"
    writable_folder(page.parent, "the page (--page)")
    matrices: dict[str, MatrixRun] = {}
    with ExitStack() as stack:
        for name in args.transports:
            _, unix, tls = TRANSPORTS[name]
            run_args = argparse.Namespace(
                **vars(args), unix=unix, tls=tls, rates=None, server_cmds=None, budgets=None
            )
            wire = stack.enter_context(wire_for(args.host, unix=unix, tls=tls))
            matrices[name] = MatrixRun(run_args, wire)
        steps = sum(matrix.steps for matrix in matrices.values())
        status = stack.enter_context(progress_bar(steps))
        print(f"{PROGRAM} loops: starting the servers of " + ", ".join(matrices), flush=True)
        for matrix in matrices.values():
            stack.enter_context(matrix.serving(status))
        # Every transport within each repeat: a cell's repeats then lie minutes apart
        # across the whole run, so a slower phase of the host (they last minutes) widens
        # its spread instead of moving one transport's figures as a whole.
        for repeat in range(args.repeats):
            print(f"{PROGRAM} loops: repeat {repeat + 1} of {args.repeats} ...", flush=True)
            for matrix in matrices.values():
                matrix.measure_repeat(repeat, status)
    transports: list[Transport] = []
    broken = False
    for name, matrix in matrices.items():
        measured = matrix.finish()
        stem = f"{page.stem}-{name}"
        written = write_reports(page.parent, measured, stem)
        print("wrote " + ", ".join(str(path) for path in written), flush=True)
        for problem in measured.problems:
            print(f"{PROGRAM}: not run: {problem}")
        broken = broken or measured.broken
        transports.append(
            Transport(
                TRANSPORTS[name][0].format(host=args.host),
                stem,
                measured.env,
                measured.settings,
                measured.cells,
                measured.problems,
            )
        )
    size = QUOTED_SIZE if QUOTED_SIZE in args.sizes else args.sizes[0]
    subtitle = f"{transports[0].env['date']}, {transports[0].env['cpu_model']}"
    chart = charts.write_loop_chart(
        page.with_suffix(".png"), [(t.title, t.cells) for t in transports], size, subtitle
    )
    command = shlex.join([PROGRAM, *args.argv])
    minutes = (time.monotonic() - started) / 60
    page.write_text(
        render_page(
            transports,
            command=command,
            minutes=minutes,
            chart=None if chart is None else chart.name,
            chart_size=size,
        )
    )
    print(f"wrote {page}" + (f", {chart}" if chart else "") + f" in {minutes:.1f} minutes")
    # A wrong reply, a crash or a failed start fails the command (the page still shows it).
    return 1 if broken else 0
