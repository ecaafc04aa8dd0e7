"""`make bench-pages`: regenerate the benchmark pages under docs/benchmark/, one command each.

Usage::

    python tools/bench_pages.py                 # every page (about 22 minutes)
    python tools/bench_pages.py latency idle    # some of them
    python tools/bench_pages.py --list          # each page with its command

Each page is one ``echo20-bench`` command run with ``--strict --wait-quiet 30`` (``run``
pages: a cell measured while something else ran is measured again, then refused), its
report written to ``docs/benchmark/NAME.md`` under a title and a line on what the page is
for, with its JSON (for ``echo20-bench compare`` against a later rerun) and its charts
beside it. The loop comparison page has a command of its own (``make bench-loops``).
Run nothing else on the machine meanwhile: no test suite, no build, no other benchmark.

``--quick`` runs each command on asyncio alone, with one short repeat and without
``--strict``, to check the pages' plumbing; such a page says so at its top and is not
for publishing.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmark"
QUIET = ("--strict", "--wait-quiet", "30")
QUICK = ("--loops", "asyncio", "--warmup", "0.05", "--duration", "0.15", "--repeats", "1")
QUICK_IDLE = ("--loops", "asyncio", "--connections", "200")


@dataclass(frozen=True)
class Page:
    title: str
    # What the page is for, in a sentence or two (no figures: those are the report's).
    purpose: str
    # The command's arguments after echo20-bench, as one would type them.
    arguments: str
    # The report the command writes: bench (run), idle or cold-start.
    report: str = "bench"

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.arguments)

    @property
    def strict(self) -> bool:
        """Whether the page measures CPU, which a busy machine shapes (idle measures
        memory, which it does not)."""
        return self.argv[0] in ("run", "cold-start")


PAGES = {
    "implementations": Page(
        "The three implementations, with and without the C accelerator",
        "Server CPU per round trip of `streams`, `iostream` and `protocol` (and "
        "`protocol-pure`, the fast path with `ECHO20_PURE_PYTHON=1`) on asyncio and "
        "uvloop, against the C epoll server and the loop's `floor`, at 16 and 256 "
        "connections from 8 B to 16 KiB.",
        "run --targets c,floor,streams,iostream,protocol,protocol-pure --loops "
        "asyncio,uvloop --connections 16,256 --sizes 8,200,1k,16k --max-inflight 512k "
        "--warmup 0.5 --duration 1.5 --repeats 3",
    ),
    "large-messages": Page(
        "Large messages: 16 KiB and 1 MiB",
        "One and 16 connections exchanging 16 KiB and 1 MiB messages: where the reply's "
        "reversal and the copies, not the event loop, set the cost (`protocol-pure` shows "
        "what the C accelerator buys there).",
        "run --targets c,floor,protocol,protocol-pure --loops asyncio,uvloop "
        "--connections 1,16 --sizes 16k,1m --max-inflight 16m --warmup 0.5 --duration 2 "
        "--repeats 3",
    ),
    "latency": Page(
        "One connection: latency per exchange",
        "A single connection with one message in flight, 8 B and 200 B: each exchange's "
        "round trip through the server, per implementation and loop.",
        "run --targets c,floor,streams,iostream,protocol --loops asyncio,uvloop,rloop "
        "--connections 1 --sizes 8,200 --warmup 0.5 --duration 1.5 --repeats 3",
    ),
    "open-loop": Page(
        "Open loop: latency against load",
        "16 connections × 200 B sent on schedule at 25 %, 50 % and 75 % of each "
        "target's own closed-loop rate, latency counted from when each message was due "
        "(the chart: latency against the throughput achieved).",
        "run --targets c,floor,streams,protocol --loops asyncio,uvloop --connections 16 "
        "--sizes 200 --rates 25%,50%,75% --warmup 0.5 --duration 1.5 --repeats 3",
    ),
    "idle": Page(
        "Memory per idle connection",
        "10,000 connections per server, one message each, then idle: the server's "
        "resident memory per connection.",
        "idle --targets c,floor,streams,iostream,protocol,tornado --loops "
        "asyncio,uvloop --connections 10000",
        report="idle",
    ),
    "cold-start": Page(
        "Cold start: a fresh server against a warmed one",
        "CPU per round trip of a server's first clients against the same server once it "
        "has served and closed a connection: what warming up costs.",
        "cold-start --targets c,streams,iostream,protocol --loops asyncio,uvloop --repeats 3",
        report="cold-start",
    ),
}


def command(page: Page, *, quick: bool) -> list[str]:
    """The page's command line; ``quick``: small and short (the later flag wins)."""
    extra: tuple[str, ...] = ()
    if quick:
        extra = QUICK_IDLE if page.report == "idle" else QUICK
    elif page.strict:
        extra = QUIET
    return ["echo20-bench", *page.argv, *extra]


def regenerate(name: str, page: Page, into: Path, *, quick: bool) -> float:
    """Run the page's command and write NAME.md (and .json, .png) into ``into``; the
    minutes it took. SystemExit with the command's own last line if it failed."""
    argv = command(page, quick=quick)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="echo20-pages-") as scratch:
        out = Path(scratch)
        result = subprocess.run(
            [sys.executable, "-m", "echo20.bench", *argv[1:], "--out", str(out)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        minutes = (time.monotonic() - started) / 60
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise SystemExit(f"bench_pages: {name}: {shlex.join(argv)} failed: {last}")
        report = (out / f"{page.report}.md").read_text().split("\n", 1)[1].lstrip("\n")
        # The report's own command line names the scratch folder: the page gives its own.
        body = "\n".join(line for line in report.splitlines() if not line.startswith("Command: `"))
        charts = []
        for chart, suffix in (("bench.png", ".png"), ("sweep.png", "-sweep.png")):
            if page.report == "bench" and (out / chart).exists():
                shutil.copyfile(out / chart, into / f"{name}{suffix}")
                charts.append(f"![{page.title}]({name}{suffix})")
        shutil.copyfile(out / f"{page.report}.json", into / f"{name}.json")
    head = [f"# {page.title}", "", page.purpose, ""]
    if quick:
        head += ["**A quick check of the page's plumbing: one short repeat, not for publishing.**"]
        head += [""]
    head += [
        f"Regenerate this page ({minutes:.1f} minutes here; run nothing else meanwhile): "
        f"`python tools/bench_pages.py {name}`, which runs",
        "",
        f"    {shlex.join(argv)}",
        "",
        f"Its JSON: [{name}.json]({name}.json) (`echo20-bench compare` sets a rerun beside it).",
        "",
        *[line for chart in charts for line in (chart, "")],
    ]
    (into / f"{name}.md").write_text("\n".join(head) + "\n" + body.replace("\n\n\n", "\n\n") + "\n")
    return minutes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_pages", description=__doc__.split("\n\n", 1)[0] if __doc__ else None
    )
    parser.add_argument("names", nargs="*", metavar="PAGE", help="pages to make (default: all)")
    parser.add_argument("--list", action="store_true", help="list the pages and their commands")
    parser.add_argument("--into", type=Path, default=DOCS, help="where the pages go")
    parser.add_argument("--quick", action="store_true", help="one short repeat, no --strict")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in PAGES]
    if unknown:
        parser.error(f"no page {', '.join(unknown)} (choose from {', '.join(PAGES)})")
    if args.list:
        for name, page in PAGES.items():
            print(f"{name}: {shlex.join(command(page, quick=args.quick))}")
        return 0
    try:
        args.into.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"cannot write the pages in {args.into}: {error.strerror or error}")
    for name in args.names or list(PAGES):
        minutes = regenerate(name, PAGES[name], args.into, quick=args.quick)
        print(f"wrote {args.into / (name + '.md')} in {minutes:.1f} minutes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
