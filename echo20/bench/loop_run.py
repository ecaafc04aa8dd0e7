"""``echo20-bench loops``: the loop comparison page in one command.

It runs the matrix once per transport (TCP, TLS, Unix sockets), every target on every
installed loop, with the open loop at one size, and writes beside the page each
transport's full report (``loops-tcp.md``, ``.json``, ``.png``, ...), the page's chart
(``loops.png``) and the page itself (``loops.md``, see ``loop_page.py``).
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from echo20.bench import charts
from echo20.bench.loop_page import QUOTED_SIZE, Transport, render_page
from echo20.bench.matrix import PROGRAM, measure_matrix, wire_for, write_reports
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
    transports: list[Transport] = []
    broken = False
    for name in args.transports:
        title, unix, tls = TRANSPORTS[name]
        run_args = argparse.Namespace(
            **vars(args), unix=unix, tls=tls, rates=None, server_cmds=None, budgets=None
        )
        print(f"{PROGRAM} loops: {name} ...", flush=True)
        with wire_for(args.host, unix=unix, tls=tls) as wire:
            matrix = measure_matrix(run_args, wire)
        stem = f"{page.stem}-{name}"
        written = write_reports(page.parent, matrix, stem)
        print("wrote " + ", ".join(str(path) for path in written), flush=True)
        for problem in matrix.problems:
            print(f"{PROGRAM}: not run: {problem}")
        broken = broken or matrix.broken
        transports.append(
            Transport(
                title.format(host=args.host),
                stem,
                matrix.env,
                matrix.settings,
                matrix.cells,
                matrix.problems,
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
