"""Quiet runs: what the benchmark notices about the machine around each cell, and
``--strict``, which writes no report when something else shaped a cell's numbers.

A busy process of the test's own, pinned to the server's CPU, makes the contention;
the machine's own noise can only add to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import PYTHON, TIMEOUT
from test_bench import QUICK, bench

from echo20.bench import processes
from echo20.bench.environment import MachineSample, busy_processes
from echo20.bench.matrix import (
    STRICT_ATTEMPTS,
    STRICT_PAUSE,
    Status,
    measure_quietly,
    refuse_noise,
)
from echo20.bench.measure import NOISE_FLAGS, Load, Run, run_flags
from echo20.bench.processes import (
    OTHER_BUSY_PCT,
    Pinning,
    choose_cpus,
    measure_idle_shares,
    prime,
    start_target,
)
from echo20.bench.stats import Cell
from echo20.bench.targets import Target, Wire
from echo20.bench.tools import build_tools
from echo20.errors import BenchError

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the benchmark needs cc")


@pytest.fixture
def hog() -> Iterator[subprocess.Popen[bytes]]:
    """A process that keeps the server's CPU (the first usable one) busy."""
    process = subprocess.Popen([PYTHON, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(process.pid, {min(os.sched_getaffinity(0))})
        yield process
    finally:
        process.kill()
        process.wait(TIMEOUT)


def test_strict_writes_no_report_when_another_process_was_busy(
    bench_out: Path, hog: subprocess.Popen[bytes]
) -> None:
    result = bench(
        "run", "--targets", "c", "--connections", "1", "--sizes", "8", *QUICK,
        "--strict", "--out", str(bench_out),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("echo20-bench: --strict: c-epoll 1 × 8 B closed ")
    assert "others-busy" in result.stderr
    assert f"(pid {hog.pid})" in result.stderr
    assert "no report written" in result.stderr
    assert not (bench_out / "bench.json").exists()
    assert not (bench_out / "bench.md").exists()


def test_strict_cold_start_writes_no_report_when_another_process_was_busy(
    bench_out: Path, hog: subprocess.Popen[bytes]
) -> None:
    """cold-start measures CPU per round trip too: under --strict a pair on a busy
    machine is measured again on a fresh server, then refused in one line."""
    result = bench(
        "cold-start", "--targets", "c", "--connections", "1", "--sizes", "8", *QUICK,
        "--strict", "--out", str(bench_out),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("echo20-bench: --strict: c-epoll 1 × 8 B cold ")
    assert f"(pid {hog.pid})" in result.stderr
    assert not (bench_out / "cold-start.json").exists()


def test_a_busy_process_is_named_and_an_idle_one_is_not(hog: subprocess.Popen[bytes]) -> None:
    idle = subprocess.Popen([PYTHON, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        before = MachineSample.take()
        time.sleep(0.3)  # sleep-ok: CPU time accrues over an interval
        after = MachineSample.take()
    finally:
        idle.communicate(b"", timeout=TIMEOUT)
    busy = busy_processes(before, after, exclude=set(), least_pct=OTHER_BUSY_PCT)
    assert any(text.startswith("python") and f"(pid {hog.pid}) " in text for text in busy), busy
    assert not any(f"(pid {idle.pid}) " in text for text in busy), busy
    assert busy_processes(before, after, exclude={hog.pid}, least_pct=OTHER_BUSY_PCT) == [
        text for text in busy if f"(pid {hog.pid}) " not in text
    ]


def test_each_sign_of_a_busy_machine_is_a_flag() -> None:
    pinning = Pinning(0, 1, "pinned")
    quiet = Run(loadavg_1m=0.1, steal_pct=0.0, idle_cpu_pct=0.0)
    assert run_flags(quiet, pinning, Load(0.1, 0.1)) == []
    usable = len(os.sched_getaffinity(0))
    noisy = Run(
        loadavg_1m=usable + 1.5,
        steal_pct=25.0,
        steal_ticks=12,
        idle_cpu_pct=70.0,
        others_during=["python3 (pid 4242) 87 %"],
        others_before=["python3 (pid 4242) 90 %"],
        other_server_cpu_pct=40.0,
        loadgen_cpu_pct=99.0,
        server_cpu_pct=30.0,
    )
    flags = run_flags(noisy, pinning, Load(0.1, 0.1))
    assert set(flags) == {
        "loadgen-bound", "contended", "others-busy", "others-before", "steal", "loaded",
        "busy-idle",
    }  # fmt: skip


def test_wait_quiet_waits_for_the_load_average_to_fall(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1-minute load average stays up after a burst (the run's own servers starting):
    --wait-quiet waits for it as for a busy process; without a wait, it only looks."""
    idle = subprocess.Popen([PYTHON, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        server = SimpleNamespace(pid=idle.pid, idle_share=0.0, process=idle)
        usable = len(os.sched_getaffinity(0))
        averages = iter([[usable + 2.0], [usable + 1.5], [0.5]])
        monkeypatch.setattr(processes, "load_average", lambda: next(averages))
        monkeypatch.setattr(processes, "busy_processes", lambda *a, **k: [])
        quiet = processes.wait_until_quiet(server, wait=TIMEOUT)  # type: ignore[arg-type]
        assert quiet == processes.Quiet(False, [])
        assert next(averages, None) is None  # sampled until it fell
        averages = iter([[usable + 2.0], [0.5]])
        processes.wait_until_quiet(server, wait=0.0)  # type: ignore[arg-type]
        assert next(averages) == [0.5]  # looked once, did not wait
    finally:
        idle.communicate(b"", timeout=TIMEOUT)


def test_steal_is_marked_past_the_bar_for_any_other_process_and_one_tick() -> None:
    """/proc/stat counts steal in 10 ms ticks: one tick is 2.1 % of a 0.47 s window, and
    one tick of a 0.09 s window is 11 %; 4-6 % comes in about one cell of six here."""
    pinning = Pinning(0, 1, "pinned")
    for pct, ticks, flagged in ((6.4, 3, False), (11.0, 1, False), (10.6, 5, True)):
        run = Run(loadavg_1m=0.1, steal_pct=pct, steal_ticks=ticks)
        assert run_flags(run, pinning, Load(0.1, 0.1)) == (["steal"] if flagged else [])


def test_a_saturated_load_generator_is_a_closed_loop_limit_not_noise() -> None:
    """At 10 KiB the C load generator is the bottleneck of the fastest servers on any
    machine: the report says so, --strict does not refuse it (CPU per round trip stays
    the server's own), and the open loop, where the server idles by design, never says it."""
    pinning = Pinning(0, 1, "pinned")
    saturated = Run(loadavg_1m=0.1, steal_pct=0.0, loadgen_cpu_pct=99.0, server_cpu_pct=60.0)
    assert run_flags(saturated, pinning, Load(0.1, 0.1)) == ["loadgen-bound"]
    assert run_flags(saturated, pinning, Load(0.1, 0.1, rate=1000.0)) == []
    assert "loadgen-bound" not in NOISE_FLAGS


def test_strict_measures_a_noisy_point_again_and_keeps_only_the_quiet_attempt() -> None:
    """A burst of another process or of the hypervisor's steal costs one point more
    attempts, each after a longer pause, not the whole run; a point noisy every time is
    refused."""
    cell = Cell(Target("c", "epoll"), 1, 8)
    attempts = [[Run(flags=["steal"])], [Run(flags=["others-busy"])], [Run(flags=[])]]
    descriptions: list[str] = []
    pauses: list[float] = []

    def measure_once() -> list[Run]:
        runs = attempts.pop(0)
        cell.runs.extend(runs)
        return runs

    def describe(**kw: object) -> None:
        descriptions.append(str(kw.get("description", "")))

    runs = measure_quietly(measure_once, [cell], Status(describe), pauses.append)
    assert runs[0].flags == []
    assert cell.runs == runs
    assert pauses == [STRICT_PAUSE, 3 * STRICT_PAUSE]
    assert descriptions == [f"not quiet: measuring again in {p:g} s" for p in pauses]

    always = [[Run(flags=["steal"])] for _ in range(STRICT_ATTEMPTS)]
    cell.runs.clear()

    def measure_noisy() -> list[Run]:
        runs = always.pop(0)
        cell.runs.extend(runs)
        return runs

    runs = measure_quietly(measure_noisy, [cell], Status(lambda **kw: None), lambda s: None)
    assert not always
    assert len(cell.runs) == 1
    with pytest.raises(BenchError, match=r"^--strict: c-epoll 1 × 8 B closed .*\(steal\)"):
        refuse_noise(cell.target, (1, 8), [None], runs)


def test_a_server_that_spins_when_idle_is_stopped_between_its_cells(
    tmp_path: Path, built_c_programs: Path
) -> None:
    """veloxloop 0.2's sock_* calls spin: the sockets server on it would take the CPU of
    every other target's cells, so it is stopped while they run."""
    tools = build_tools(built_c_programs)
    cpu = choose_cpus(True).server_cpu
    server = start_target(
        Target("sockets", "veloxloop"), tools=tools, wire=Wire(), log_dir=tmp_path, cpu=cpu
    )
    try:
        prime(server)
        measure_idle_shares([server])
        assert server.spins, server.idle_share
        server.pause()
        assert os.WIFSTOPPED(child_status_change(server.process.pid, os.WUNTRACED))
        server.resume()
        assert os.WIFCONTINUED(child_status_change(server.process.pid, os.WCONTINUED))
        server.pause()
    finally:
        # Stopping a stopped server continues it first: it still exits cleanly.
        assert server.stop() == 0


def child_status_change(pid: int, option: int) -> int:
    """waitpid's status once the child stops or continues (``option``), within TIMEOUT."""
    changed: list[int] = []
    waiter = threading.Thread(
        target=lambda: changed.append(os.waitpid(pid, option)[1]), daemon=True
    )
    waiter.start()
    waiter.join(TIMEOUT)
    assert changed, f"process {pid} did not change state within {TIMEOUT} s"
    return changed[0]


@pytest.fixture
def idle_server() -> Iterator[SimpleNamespace]:
    """Stands in for a server: a process that uses no CPU."""
    idle = subprocess.Popen([PYTHON, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        yield SimpleNamespace(pid=idle.pid, idle_share=0.0, process=idle)
    finally:
        idle.communicate(b"", timeout=TIMEOUT)


def test_a_process_busy_through_a_wait_is_named_when_the_wait_runs_out(
    hog: subprocess.Popen[bytes], idle_server: SimpleNamespace
) -> None:
    quiet = processes.wait_until_quiet(idle_server, wait=0.3)  # type: ignore[arg-type]
    assert not quiet.server_busy
    assert any(f"(pid {hog.pid}) " in text for text in quiet.others), quiet.others


def test_without_a_wait_the_cells_window_names_a_busy_process_not_the_short_look(
    hog: subprocess.Popen[bytes], idle_server: SimpleNamespace
) -> None:
    """One 0.05 s look counts another process in 10 ms ticks, too coarse to name it: the
    cell counts from that look's start (``since``) to its own end instead."""
    quiet = processes.wait_until_quiet(idle_server, wait=0.0)  # type: ignore[arg-type]
    assert quiet.others == []
    assert quiet.since is not None
    time.sleep(0.3)  # sleep-ok: CPU time accrues over an interval, as in a cell
    window = busy_processes(quiet.since, MachineSample.take(), exclude=set(), least_pct=10.0)
    assert any(f"(pid {hog.pid}) " in text for text in window), window
