"""``echo20-bench loops``: the loop comparison page, from a run of its own command.

A small end-to-end run over TCP and Unix sockets checks what the page promises: a
verified figure per target and size with its ratios, a row that says why a loop could
not run a target, the open loop's percentiles, the command that wrote it. The page's
arithmetic (ratios repeat by repeat, marks, the published comparison) is checked on
cells made by hand. No figure's size is asserted: that is the machine's.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest
from test_bench import bench

from echo20.bench.loop_page import Transport, render_page
from echo20.bench.measure import Run
from echo20.bench.stats import Cell, add_ratios
from echo20.bench.targets import Target
from echo20.bench.units import name_list

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the benchmark needs cc")

TINY = ("--warmup", "0.05", "--duration", "0.15", "--repeats", "1")


def test_one_command_writes_the_page_and_every_transport_s_report(bench_out: Path) -> None:
    page = bench_out / "page" / "loops.md"
    result = bench(
        "loops", "--loops", "asyncio,rloop", "--targets", "c,floor,sockets,protocol",
        "--sizes", "200", "--open-sizes", "200", "--transports", "tcp,unix", *TINY,
        "--out", str(bench_out), "--page", str(page),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    for name in ("loops-tcp.json", "loops-tcp.md", "loops-unix.json", "loops-unix.md"):
        assert (page.parent / name).exists(), name
    assert (page.parent / "loops.png").stat().st_size > 0
    text = page.read_text()
    assert "echo20-bench loops --loops asyncio,rloop" in text
    assert "### TCP over 127.0.0.1" in text
    assert "### Unix sockets" in text
    # A figure, its ratio to C and, on rloop, to asyncio.
    assert re.search(r"\| `protocol-rloop` \| [\d.,]+ \([\d.]+× / [\d.]+×\)", text), text
    assert re.search(r"\| `c-epoll` \| [\d.,]+ \(1\.00×\)", text), text
    # rloop 0.5 has no Unix server sockets: its rows say so, its sockets row is measured.
    unix = text.split("### Unix sockets", 1)[1]
    assert "| `protocol-rloop` | not run |" in unix
    assert "Not run: rloop 0.5 has no Unix sockets" in unix
    assert re.search(r"\| `sockets-rloop` \| [\d.,]+ \(", unix), unix
    # The open loop at half of each target's own rate, on each transport.
    open_loop = text.split("## Open loop", 1)[1].split("##", 1)[0]
    assert re.search(r"\| `protocol-asyncio` \| [\d,]+/s \| [\d.,]+ \| [\d.,]+ \|", open_loop)
    assert "![" in text
    assert "(loops.png)" in text
    # Every reply verified: no measured cell has an error.
    for name in ("loops-tcp.json", "loops-unix.json"):
        cells = json.loads((page.parent / name).read_text())["cells"]
        assert all(cell["error"] is None or cell.get("unsupported") for cell in cells), name
        assert {cell["rate"] for cell in cells} == {None, "50%"}


def test_each_repeat_goes_through_every_transport(tmp_path: Path) -> None:
    """Repeat 1 over TCP, then over Unix sockets, then repeat 2 over each: a cell's
    repeats lie apart across the whole run, not within one transport's minutes."""
    page = tmp_path / "loops.md"
    result = bench(
        "loops", "--loops", "asyncio", "--targets", "c,floor", "--sizes", "200",
        "--open-sizes", "1k", "--transports", "tcp,unix", "--warmup", "0.05",
        "--duration", "0.1", "--repeats", "2", "--out", str(tmp_path), "--page", str(page),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    starts = {
        name: [
            [run["started_at"] for cell in cells for run in cell["runs"][repeat : repeat + 1]]
            for repeat in range(2)
        ]
        for name in ("tcp", "unix")
        for cells in [json.loads((tmp_path / f"loops-{name}.json").read_text())["cells"]]
    }
    assert max(starts["tcp"][0]) < min(starts["unix"][0])
    assert max(starts["unix"][0]) < min(starts["tcp"][1])
    assert max(starts["tcp"][1]) < min(starts["unix"][1])


def test_a_bad_transport_is_one_line(tmp_path: Path) -> None:
    result = bench("loops", "--transports", "tcp,carrier-pigeon", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("echo20-bench loops: error: ")
    assert "carrier-pigeon" in result.stderr
    assert "Traceback" not in result.stderr


def run_of(cpu: float, rt_per_s: float, *flags: str) -> Run:
    return Run(cpu_us_per_rt=cpu, rt_per_s=rt_per_s, flags=list(flags), round_trips=1)


def made_cells() -> list[Cell]:
    """Two repeats each at 1 KiB: C, protocol on asyncio and on uvloop, one failure."""

    def cell(name: str, loop: str, runs: list[Run], size: int = 1024) -> Cell:
        made = Cell(Target(name, loop), 16, size, runs=runs)
        return made

    cells = [
        cell("c", "epoll", [run_of(10.0, 100.0), run_of(20.0, 100.0)]),
        cell("protocol", "asyncio", [run_of(20.0, 50.0), run_of(30.0, 50.0)]),
        # Repeat by repeat: 12/20 and 15/30 over asyncio, 12/10 and 15/20 over C.
        cell("protocol", "uvloop", [run_of(12.0, 80.0, "steal"), run_of(15.0, 90.0)]),
        cell("sockets", "asyncio", [run_of(40.0, 10.0), run_of(40.0, 10.0)]),
        cell("sockets", "uvloop", [run_of(20.0, 20.0, "loadgen-bound"), run_of(20.0, 20.0)]),
        cell("streams", "uvloop", [Run(error="1 error(s), first: wrong reply")]),
    ]
    for made in cells:
        made.summarize()
    add_ratios(cells)
    return cells


def made_transport() -> Transport:
    return Transport(
        "TCP over 127.0.0.1",
        "loops-tcp",
        {
            "date": "2026-12-07T00:00:00+00:00",
            "hostname": "vm",
            "cpu_model": "CPU",
            "cpus_online": 2,
            "kernel": "6",
            "python": "CPython 3.11",
            "echo20": "0",
            "loops": {},
            "packages": {},
            "governor": "none",
            "pinning": "pinned",
            "accelerator": "yes",
        },
        {"connections": [16], "repeats": 2, "duration_s": 0.5, "warmup_s": 0.2},
        made_cells(),
        ["streams-uvloop: answered wrongly"],
    )


def made_page() -> str:
    return render_page(
        [made_transport()], command="echo20-bench loops", minutes=1.0, chart=None, chart_size=1024
    )


def test_each_figure_is_set_against_c_and_asyncio_repeat_by_repeat() -> None:
    page = made_page()
    # CPU: median 13.5; against C median(1.2, 0.75) = 0.975; against asyncio
    # median(0.6, 0.5) = 0.55.
    assert "| `protocol-uvloop` | 13.5 (0.97× / 0.55×) steal |" in page
    assert "| `c-epoll` | 15 (1.00×) |" in page
    # Round trips per second, higher is better: 85 against asyncio's 50.
    assert "| `protocol-uvloop` | 85 (0.85× / 1.70×) steal |" in page
    # A saturated load generator marks the throughput figure, not the CPU one.
    assert "| `sockets-uvloop` | 20 (0.20× / 2.00×) † |" in page
    assert "| `sockets-uvloop` | 20 (1.50× / 0.50×) |" in page
    # A wrong reply is an error, never a number, and the page says which target failed.
    assert "| `streams-uvloop` | ERROR |" in page
    assert "Failed or left out: streams-uvloop: answered wrongly." in page
    assert "Cells marked steal" in page


def test_the_published_comparison_and_the_spread_are_computed() -> None:
    page = made_page()
    # asyncio's CPU over uvloop's: 1 / 0.55 for protocol, 1 / 0.5 for sockets.
    assert "protocol 1.13 against our 1.82" in page
    assert "sockets 1.13 against our 2.00" in page
    assert "streams 1.04 (not measured here)" in page
    assert "uvloop comes out ahead of asyncio in both for every shape." in page
    # Each loop against asyncio, per shape.
    assert "| uvloop | TCP over 127.0.0.1 |" in page
    assert "**Spread.** Between the 2 repeats of one cell" in page
    # Against C, repeat by repeat: protocol 2 and 1.5 on asyncio, 1.2 and 0.75 on uvloop;
    # sockets 4 and 2, 2 and 1: spreads of 29, 46, 67 and 67 % of their medians.
    assert (
        "its ratio to C, repeat by repeat, by 56 % of its median in the middle cell and by "
        "67 % or less in nine cells of ten" in page
    )
    assert "finds about 67 % of its cells' `CPU ÷ C` within those spreads" in page
    assert "miss each other by chance in one cell of 3," in page


def test_the_tls_target_says_what_tls_costs_each_layer() -> None:
    """Met or not, the TLS line gives its repeats and what TLS adds to the C server, to
    uvloop's own TLS and to the port's, each over TLS less the same over TCP."""

    def cells(c: float, floor: float, protocol: float) -> list[Cell]:
        made = [
            Cell(Target("c", "epoll"), 16, 1024, runs=[run_of(c, 1.0), run_of(c, 1.0)]),
            Cell(Target("floor", "uvloop"), 16, 1024, runs=[run_of(floor, 1.0)] * 2),
            Cell(
                Target("protocol", "uvloop"),
                16,
                1024,
                runs=[run_of(protocol, 1.0), run_of(protocol * 1.5, 1.0)],
            ),
        ]
        for cell in made:
            cell.summarize()
        add_ratios(made)
        return made

    env = made_transport().env
    settings = made_transport().settings
    tcp = Transport("TCP", "loops-tcp", env, settings, cells(6.0, 7.0, 8.0), [])
    tls = Transport("TLS", "loops-tls", env, settings, cells(12.0, 14.0, 16.0), [])
    page = render_page([tcp, tls], command="x", minutes=1.0, chart=None, chart_size=1024)
    # protocol over TLS: 16 and 24 µs against C's 12: 1.33× and 2.00×, median 1.67×.
    assert "costs 1.67× the C+OpenSSL server's" in page
    assert "NOT met in this run; repeat by repeat: 1.33×, 2.00×" in page
    # TLS adds 6 µs to C, 7 to uvloop's floor, 20 - 10 = 10 to protocol: 3 µs more.
    assert "6 µs per round trip to the C server (OpenSSL), 7 µs to uvloop's `floor`" in page
    assert "10 µs to `protocol`" in page
    assert "3 µs per round trip over uvloop's" in page
    # A port's TLS cheaper than the loop's own is said so, not as a negative cost.
    tls = Transport("TLS", "loops-tls", env, settings, cells(12.0, 14.0, 10.0), [])
    page = render_page([tcp, tls], command="x", minutes=1.0, chart=None, chart_size=1024)
    assert "costs no more than uvloop's own here (4.5 µs per round trip less" in page
    assert "-" not in page.split("What TLS adds", 1)[1].split("). The port", 1)[0]


def test_a_folder_that_cannot_be_written_is_one_line_before_anything_runs(
    tmp_path: Path,
) -> None:
    """Not a traceback twelve minutes in: the page's folder and --out are checked first."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args, what in (
        (("loops", "--page", str(blocker / "loops.md"), "--out", str(tmp_path)), "--page"),
        (("run", "--out", str(blocker / "out")), "--out"),
    ):
        result = bench(*args)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("echo20-bench: cannot write the "), result.stderr
        assert f"({what}) in {blocker}" in result.stderr
        assert result.stderr.count("\n") == 1
        assert result.stdout == ""


def test_every_row_has_every_column_and_every_open_loop_size_its_table() -> None:
    """A shape one transport lacks is a dash in its row, not a shifted column; an open
    loop at two sizes gives two tables, not the last size alone."""

    def made(name: str, loop: str, size: int, rate: str | None = None) -> Cell:
        runs = [Run(cpu_us_per_rt=10.0, rt_per_s=1.0, round_trips=1, rate=1.0)]
        cell = Cell(Target(name, loop), 16, size, rate=rate, runs=runs)
        cell.summarize()
        return cell

    both = [made("c", "epoll", 200)] + [
        made(shape, loop, 200)
        for shape in ("sockets", "protocol")
        for loop in ("asyncio", "uvloop")
    ]
    both += [made("protocol", "uvloop", size, "50%") for size in (200, 1024)]
    one = [
        made("c", "epoll", 200),
        made("protocol", "asyncio", 200),
        made("protocol", "uvloop", 200),
    ]
    for cells in (both, one):
        add_ratios(cells)
    base = made_transport()
    page = render_page(
        [
            Transport("TCP", "loops-tcp", base.env, base.settings, both, []),
            Transport("Unix", "loops-unix", base.env, base.settings, one, []),
        ],
        command="x",
        minutes=1.0,
        chart=None,
        chart_size=1024,
    )
    assert "| loop | transport | sockets | protocol |" in page
    assert "| uvloop | TCP | 1.00× | 1.00× |" in page
    assert "| uvloop | Unix | – | 1.00× |" in page
    assert "16 connections × 200 B, at 50% of" in page
    assert "16 connections × 1 KiB, at 50% of" in page


def test_a_name_given_twice_is_taken_once() -> None:
    """--transports tcp,tcp (or --loops uvloop,uvloop) would measure it twice."""
    parse = name_list(("tcp", "tls", "unix"))
    assert parse("tcp, unix,tcp") == ["tcp", "unix"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown: pigeon"):
        parse("tcp,pigeon")
