"""``echo20-bench run --server-cmd``: any echo20 server, measured beside the C reference.

One run serves three servers at once: the seed's Tornado server (correct, prints
nothing, so only its port tells that it is ready) and two from the conformance suite's
broken ones, one wrong from the first exchange and one whose 21-byte chunks only the
load generator's check of 200-byte messages catches. What is checked is verification,
never speed.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
from support import PYTHON, ROOT
from test_bench import QUICK, bench

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the benchmark needs cc")

# The seed's server, started through its main(port, address).
SEED_SERVER = (
    f"import sys; sys.path.insert(0, {str(ROOT / 'examples' / 'seed')!r}); "
    "import tcp_server; tcp_server.main({port}, '127.0.0.1')"
)
# Behind a shell that stays (``; exit``): the CPU measured must be the server's, found
# by the socket it listens on, not the idle shell's.
WRAPPED_SEED_SERVER = shlex.join(["sh", "-c", shlex.join([PYTHON, "-c", SEED_SERVER]) + "; exit"])
BROKEN = f"python {ROOT / 'tests' / 'conformance' / 'broken_servers.py'} --port {{port}} --defect"


@pytest.fixture(scope="module")
def mixed_run(
    tmp_path_factory: pytest.TempPathFactory, built_c_programs: Path
) -> tuple[int, dict[str, Any], str]:
    """Exit status, bench.json's cells by label, and stderr of one run of three servers."""
    out = tmp_path_factory.mktemp("server-cmd")
    (out / "build").symlink_to(built_c_programs)
    result = bench(
        "run", "--connections", "2", "--sizes", "200", *QUICK, "--out", str(out),
        "--server-cmd", WRAPPED_SEED_SERVER,
        "--server-cmd", f"{BROKEN} no-reversal",
        "--server-cmd", f"{BROKEN} chunks-of-21",
    )  # fmt: skip
    document = json.loads((out / "bench.json").read_text())
    cells = {cell["label"]: cell for cell in document["cells"]}
    return result.returncode, cells, result.stderr


def test_a_server_that_prints_nothing_is_measured(
    mixed_run: tuple[int, dict[str, Any], str],
) -> None:
    _, cells, _ = mixed_run
    # With --server-cmd and no --targets: the user's servers and the C reference.
    assert set(cells) == {"c-epoll", "server-cmd", "server-cmd-2", "server-cmd-3"}
    seed = cells["server-cmd"]
    assert seed["error"] is None, seed["error"]
    assert seed["rt_per_s"] > 0
    # Its CPU is read from the process that listens, not from the shell around it.
    assert seed["cpu_us_per_rt"] > 0
    assert seed["vs_c"]["cpu_us_per_rt"] is not None


def test_a_wrong_server_is_reported_wrong_not_measured(
    mixed_run: tuple[int, dict[str, Any], str],
) -> None:
    status, cells, stderr = mixed_run
    assert status == 1
    first_exchange, later = cells["server-cmd-2"], cells["server-cmd-3"]
    assert first_exchange["failed"] is True
    assert first_exchange["error"].startswith("wrong reply to b'prime'")
    assert "server-cmd-2: wrong reply" in stderr
    # 21-byte chunks pass the 5-byte priming exchange: the load generator counts them.
    assert later["failed"] is True
    assert "error(s)" in later["error"]
    assert "followed by its reversal" in later["error"]
    for cell in (first_exchange, later):
        assert "rt_per_s" not in cell
        assert all(run["round_trips"] == 0 for run in cell["runs"])


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("sleep 60 {port}", "nothing accepted connections on 127.0.0.1:"),
        ("python -c 'import sys; sys.exit(3)' {port}", "exited with status 3 before it listened"),
        ("no-such-program-here {port}", "cannot run 'no-such-program-here'"),
    ],
    ids=["never-listens", "exits", "not-found"],
)
def test_a_server_command_that_never_listens_is_one_line(
    bench_out: Path, command: str, said: str
) -> None:
    result = bench(
        "run", "--connections", "1", "--sizes", "8", *QUICK, "--out", str(bench_out),
        "--server-cmd", command, "--ready-timeout", "0.5",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("echo20-bench: --server-cmd ")
    assert said in result.stderr
    assert not (bench_out / "bench.json").exists()


def test_a_server_command_without_its_port_is_refused() -> None:
    result = bench("run", "--server-cmd", "python my_server.py --port 8888")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "put {port} where the server takes its port" in result.stderr
