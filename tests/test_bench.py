"""Benchmark smoke tests: small runs end to end, the load generator's reply check in both
loops, compare, budgets, the floor server.

No timing is asserted: the numbers depend on the machine. What is checked is that the
benchmark produces its reports, that a wrong reply is an error and never a number, and
that the open loop keeps its schedule's accounts.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import PYTHON, TIMEOUT, running_server

from echo20 import loops
from echo20.bench import budgets, cli, compare, stats, tools, units

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the benchmark needs cc")

Reply = Callable[[bytes], bytes]


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "echo20.bench", *args],
        capture_output=True,
        text=True,
        timeout=12 * TIMEOUT,
        check=False,
        env=env,
    )


QUICK = ("--warmup", "0.1", "--duration", "0.3", "--repeats", "1")


def test_run_writes_reports_with_verified_cells(tmp_path: Path) -> None:
    result = bench(
        "run", "--targets", "c,floor,sockets,protocol", "--loops", "asyncio",
        "--connections", "16", "--sizes", "200", *QUICK, "--out", str(tmp_path),
        "--budget", "protocol-asyncio@16x200<=1000",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    document = json.loads((tmp_path / "bench.json").read_text())
    assert document["kind"] == "echo20-bench"
    env = document["environment"]
    for key in ("cpu_model", "kernel", "python", "governor", "pinning", "accelerator"):
        assert env[key], key
    assert env["loops"]["asyncio"].startswith("Python ")
    assert env["loadgen_cpu"]["max_pct"] is not None
    cells = {cell["label"]: cell for cell in document["cells"]}
    assert set(cells) == {"c-epoll", "floor-asyncio", "sockets-asyncio", "protocol-asyncio"}
    for cell in cells.values():
        assert cell["error"] is None, cell["error"]
        assert cell["rate"] is None
        assert cell["rt_per_s"] > 0
        assert set(cell["latency_us"]) == {"p50", "p90", "p99", "p99.9", "p99.99", "max"}
        assert cell["latency_us"]["p50"] <= cell["latency_us"]["p99.99"]
        assert cell["histogram"]
        assert cell["cpu_us_per_rt"] is not None
        assert cell["vs_c"]["cpu_us_per_rt"] is not None
    assert cells["c-epoll"]["vs_c"]["cpu_us_per_rt"] == pytest.approx(1.0)
    (budget,) = document["budgets"]
    assert budget["met"] is True
    assert budget["floor"] == cells["floor-asyncio"]["vs_c"]["cpu_us_per_rt"]
    markdown = (tmp_path / "bench.md").read_text()
    assert "| protocol-asyncio | 16 | 200 B | closed |" in markdown
    assert "governor" in result.stdout


def test_open_loop_run_at_a_share_of_capacity(tmp_path: Path) -> None:
    result = bench(
        "run", "--targets", "c", "--connections", "4", "--sizes", "8,64",
        "--rates", "10%,20%", "--open-sizes", "64", *QUICK, "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    document = json.loads((tmp_path / "bench.json").read_text())
    # --open-sizes: the open loop at 64 B only; 8 B is measured closed.
    assert [cell["rate"] for cell in document["cells"] if cell["size"] == 8] == [None]
    by_rate = {cell["rate"]: cell for cell in document["cells"] if cell["size"] == 64}
    assert set(by_rate) == {None, "10%", "20%"}
    closed = by_rate[None]["rt_per_s"]
    for rate, share in (("10%", 0.1), ("20%", 0.2)):
        cell = by_rate[rate]
        assert cell["error"] is None, cell["error"]
        assert cell["asked_rt_per_s"] == pytest.approx(share * closed)
        # Sent on schedule: the achieved rate is the asked one, not the closed loop's.
        assert cell["rt_per_s"] < 0.5 * closed
        assert cell["latency_us"]["p99.99"] >= cell["latency_us"]["p50"] > 0
        assert cell["send_lag_us"]["p50"] is not None
    assert (tmp_path / "sweep.png").exists()


@contextmanager
def fake_server(reply: Reply, *, whole_messages: int | None = 8) -> Iterator[int]:
    """A blocking server on a free port answering each read with ``reply(bytes)``.

    ``whole_messages``: read exactly that many bytes per answer (one message of the load
    generator); None: answer whatever one recv returned, cutting across messages.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    stop = threading.Event()

    def serve() -> None:
        with closing(listener):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(TIMEOUT)
                while not stop.is_set():
                    try:
                        if whole_messages is None:
                            data = conn.recv(4096)
                        else:
                            data = b""
                            while len(data) < whole_messages:
                                got = conn.recv(whole_messages - len(data))
                                if not got:
                                    return
                                data += got
                        if not data:
                            return
                        conn.sendall(reply(data))
                    except OSError:
                        return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(TIMEOUT)


def run_loadgen_against(
    tmp_path: Path, reply: Reply, *extra: str, whole_messages: int | None = 8
) -> dict[str, Any]:
    built = tools.build_tools(tmp_path / "build")
    with fake_server(reply, whole_messages=whole_messages) as port:
        argv = [
            str(built.loadgen), "--port", str(port), "--connections", "1", "--size", "8",
            "--warmup", "0.05", "--duration", "0.1", *extra,
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=True)
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def cut_reply(data: bytes, size: int) -> bytes:
    """A valid double reply whose chunks are ``size`` bytes: a server that read in pieces."""
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(chunk + chunk[::-1] for chunk in chunks)


def test_loadgen_accepts_any_valid_cut(tmp_path: Path) -> None:
    report = run_loadgen_against(tmp_path, lambda message: cut_reply(message, 3))
    assert report["errors"] == 0, report["first_error"]
    assert report["round_trips"] > 0


def test_open_loop_accepts_chunks_across_messages(tmp_path: Path) -> None:
    """Sent on schedule, messages queue up and the server cuts across them: 7-byte chunks
    of a stream of 8-byte messages still check out, and every message is timed."""
    report = run_loadgen_against(
        tmp_path, lambda data: cut_reply(data, 7), "--rate", "5000", whole_messages=None
    )
    assert report["errors"] == 0, report["first_error"]
    assert report["mode"] == "open"
    assert report["round_trips"] == report["due_in_window"] > 0
    assert report["unfinished"] == 0


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(lambda m: m + m, id="echo-twice"),
        pytest.param(lambda m: m + m[::-1] + b"!", id="one-byte-too-many"),
        pytest.param(lambda m: m[:4] + m[4:][::-1] + m[:4][::-1] + m[4:], id="halves-swapped"),
        pytest.param(lambda m: cut_reply(m, 3)[:-1] + b"\x00", id="last-byte-wrong"),
    ],
)
@pytest.mark.parametrize("mode", [(), ("--rate", "2000")], ids=["closed", "open"])
def test_loadgen_reports_a_wrong_reply_as_an_error(
    tmp_path: Path, reply: Reply, mode: tuple[str, ...]
) -> None:
    report = run_loadgen_against(tmp_path, reply, *mode)
    assert report["errors"] == 1
    assert "reversal" in str(report["first_error"])
    assert report["round_trips"] == 0


ENVIRONMENT: dict[str, Any] = {
    "date": "d", "hostname": "h", "cpu_model": "cpu", "cpus_online": 2, "kernel": "k",
    "python": "CPython 3.11", "echo20": "0", "packages": {}, "governor": "g",
    "pinning": "p", "accelerator": "unknown",
}  # fmt: skip


def result_document(cpu: list[float], p50: list[float]) -> dict[str, Any]:
    """A minimal bench.json with one cell whose repeats measured ``cpu`` and ``p50``."""
    return {
        "kind": "echo20-bench",
        "version": 2,
        "environment": ENVIRONMENT | {"loops": {"uvloop": "uvloop 0.21"}},
        "cells": [
            {
                "label": "protocol-uvloop",
                "connections": 16,
                "size": 200,
                "rate": None,
                "error": None,
                "repeats": len(cpu),
                "cpu_us_per_rt": sorted(cpu)[len(cpu) // 2],
                "rt_per_s": 1000.0,
                "latency_us": {"p50": sorted(p50)[len(p50) // 2], "p99": 100.0},
                "spread": {"cpu_us_per_rt": [min(cpu), max(cpu)], "p50": [min(p50), max(p50)]},
            }
        ],
    }


def test_compare_tells_a_change_from_noise() -> None:
    old = result_document(cpu=[10.0, 10.5, 11.0], p50=[30.0, 31.0, 40.0])
    new = result_document(cpu=[7.0, 7.2, 7.5], p50=[29.0, 35.0, 36.0])
    rows = {row["figure"]: row for row in compare.compare_cells(old, new)}
    assert rows["cpu_us_per_rt"]["ratio"] == pytest.approx(7.2 / 10.5)
    assert rows["cpu_us_per_rt"]["verdict"] == "better"
    assert rows["p50"]["verdict"] == "within noise"
    worse = {row["figure"]: row for row in compare.compare_cells(new, old)}
    assert worse["cpu_us_per_rt"]["verdict"] == "worse"
    single = result_document(cpu=[10.0], p50=[30.0])
    (first, *_) = compare.compare_cells(single, single)
    assert first["verdict"].startswith("one repeat")


def test_compare_command_prints_ratios_and_what_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(result_document(cpu=[10.0, 11.0], p50=[30.0, 31.0])))
    changed = result_document(cpu=[5.0, 5.5], p50=[30.0, 31.0])
    changed["environment"]["loops"]["uvloop"] = "uvloop 0.22"
    new.write_text(json.dumps(changed))
    assert cli.main(["compare", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "uvloop: uvloop 0.21 -> uvloop 0.22" in out
    assert "better" in out
    # One cell, changed beyond noise, against a third of cells that chance leaves apart.
    assert (
        "- CPU µs/rt: 0 of 1 cells within noise (0 %; 1 better, 0 worse); chance alone "
        "leaves 67 % within" in out
    )
    assert "- p50: 1 of 1 cells within noise (100 %; 0 better, 0 worse)" in out


def paired_document(c_cpu: list[float], protocol_cpu: list[float]) -> dict[str, Any]:
    """A bench.json with the C server's cell and protocol-uvloop's at one point, each
    keeping its repeats, repeat i of one measured beside repeat i of the other."""
    document = result_document(cpu=protocol_cpu, p50=[30.0] * len(protocol_cpu))
    (protocol,) = document["cells"]
    c = result_document(cpu=c_cpu, p50=[20.0] * len(c_cpu))["cells"][0] | {"label": "c-epoll"}
    for cell, cpu, target in ((protocol, protocol_cpu, "protocol"), (c, c_cpu, "c")):
        cell["target"] = target
        cell["runs"] = [{"cpu_us_per_rt": value, "error": None} for value in cpu]
    document["cells"] = [c, protocol]
    return document


def test_compare_leaves_out_a_host_that_slowed_every_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rerun 1.25x slower throughout, the C server included, moves every cell's own
    figure out of the old spread and leaves its ratio to C where it was."""
    old = paired_document(c_cpu=[5.0, 5.2, 5.4], protocol_cpu=[6.0, 6.5, 6.6])
    new = paired_document(c_cpu=[6.25, 6.5, 6.75], protocol_cpu=[7.5, 8.125, 8.25])
    rows = {(row["cell"], row["figure"]): row for row in compare.compare_cells(old, new)}
    assert rows[("protocol-uvloop 16 × 200 B closed", "cpu_us_per_rt")]["verdict"] == "worse"
    by_c = rows[("protocol-uvloop 16 × 200 B closed", "cpu_vs_c")]
    # The median of the repeats' own ratios (6 / 5, 6.5 / 5.2, 6.6 / 5.4).
    assert by_c["old"] == pytest.approx(6.6 / 5.4)
    assert by_c["ratio"] == pytest.approx(1.0)
    assert by_c["verdict"] == "within noise"
    assert ("c-epoll 16 × 200 B closed", "cpu_vs_c") not in rows
    # The protocol server alone 1.25x slower: its ratio to C moves beyond noise.
    slower = paired_document(c_cpu=[5.0, 5.2, 5.4], protocol_cpu=[7.5, 8.125, 8.25])
    rows = {(row["cell"], row["figure"]): row for row in compare.compare_cells(old, slower)}
    assert rows[("protocol-uvloop 16 × 200 B closed", "cpu_vs_c")]["verdict"] == "worse"
    paths = tmp_path / "old.json", tmp_path / "new.json"
    for path, document in zip(paths, (old, new), strict=True):
        path.write_text(json.dumps(document))
    assert cli.main(["compare", *map(str, paths)]) == 0
    out = capsys.readouterr().out
    assert (
        "- CPU ÷ C: 1 of 1 cells within noise (100 %; 0 better, 0 worse); chance alone "
        "leaves 90 % within" in out
    )
    assert "- the C server alone: CPU per round trip 1.25× the old run's (median of 1 cells)" in out


def test_compare_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``compare ... | head``: the reader gone, the command ends quietly with 141, as
    SIGPIPE would end it (unbuffered, so its first line meets the closed pipe)."""
    path = tmp_path / "run.json"
    path.write_text(json.dumps(paired_document(c_cpu=[5.0, 5.2], protocol_cpu=[6.0, 6.5])))
    read_end, write_end = os.pipe()
    os.close(read_end)  # before the command writes anything: its first write fails
    try:
        result = subprocess.run(
            [PYTHON, "-u", "-m", "echo20.bench", "compare", str(path), str(path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, b"")


def test_two_runs_spreads_miss_each_other_by_chance_this_often() -> None:
    """2 m! n! / (m + n)!: checked against every order of the draws, counted."""
    assert stats.chance_apart(2, 2) == pytest.approx(1 / 3)
    assert stats.chance_apart(3, 3) == pytest.approx(1 / 10)
    assert stats.chance_apart(4, 4) == pytest.approx(1 / 35)
    for m, n in [(2, 3), (3, 3), (2, 4)]:
        orders = list(itertools.permutations(["old"] * m + ["new"] * n))
        # Sorted by value, the spreads miss when one run's draws all come first.
        apart = sum(order[:m] == ("old",) * m or order[:n] == ("new",) * n for order in orders)
        assert stats.chance_apart(m, n) == pytest.approx(apart / len(orders))


def test_compare_refuses_a_file_that_is_not_a_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"kind": "something else"}')
    assert cli.main(["compare", str(other), str(other)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "not an echo20-bench run result" in err


def test_budgets_parse_and_bad_ones_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    budget = budgets.parse_budget("protocol-uvloop@1x16k:p50<=1.2")
    assert (budget.label, budget.connections, budget.size) == ("protocol-uvloop", 1, 16384)
    assert (budget.figure, budget.limit, budget.at_most) == ("p50", 1.2, True)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--budget", "protocol-uvloop<=1.3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("echo20-bench run: error:")
    assert "not a budget" in err


def test_a_missing_compiler_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "CC": "no-such-compiler-here"}
    result = bench("run", "--targets", "c", "--out", str(tmp_path), env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "no C compiler" in result.stderr


def receive(sock: socket.socket, size: int) -> bytes:
    reply = b""
    while len(reply) < size:
        data = sock.recv(4096)
        if not data:
            break
        reply += data
    return reply


@pytest.mark.parametrize("loop", loops.available_loops())
@pytest.mark.parametrize("shape", ["floor", "sockets"])
def test_bench_server_answers_each_batch(shape: str, loop: str) -> None:
    argv = [PYTHON, "-m", "echo20.bench", f"serve-{shape}", "--port", "0", "--loop", loop]
    with running_server(argv) as server, socket.create_connection(server.address, TIMEOUT) as sock:
        message = b"a message longer than twenty bytes"
        sock.sendall(message)
        assert receive(sock, 2 * len(message)) == cut_reply(message, 20)
        if shape == "sockets":
            # The echo20 core's rule, which the floor leaves out: over closes.
            sock.sendall(b"over")
            assert receive(sock, 9) == b"overrevo"
    assert server.process.returncode == 0


@pytest.mark.parametrize(
    ("text", "size"), [("8", 8), ("16k", 16384), ("256KiB", 262144), ("1m", 1048576)]
)
def test_sizes_take_binary_suffixes(text: str, size: int) -> None:
    assert units.parse_size(text) == size


@pytest.mark.parametrize(("text", "rate"), [("20000", "20000"), ("20k", "20000"), ("50%", "50%")])
def test_rates_are_absolute_or_shares(text: str, rate: str) -> None:
    assert units.parse_rate(text) == rate
