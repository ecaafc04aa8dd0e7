"""tools/bench_pages.py: each benchmark page under docs/benchmark/ from one command.

The pages' plumbing is checked with ``--quick`` (asyncio only, one short repeat): the
page names its command, carries the report's table with a row per target, and its JSON
and chart land beside it. No figure's size is asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support import PYTHON, TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "bench_pages.py"

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the benchmark needs cc")


def pages(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, str(TOOL), *args],
        capture_output=True,
        text=True,
        timeout=12 * TIMEOUT,
        check=False,
        cwd=ROOT,
    )


def test_every_page_under_docs_benchmark_has_a_command_here_or_its_own() -> None:
    listed = pages("--list")
    assert listed.returncode == 0, listed.stderr
    names = {line.split(":", 1)[0] for line in listed.stdout.splitlines()}
    published = {path.stem for path in (ROOT / "docs" / "benchmark").glob("*.md")}
    # The loop comparison and its transports' reports come from `echo20-bench loops`.
    loop_page = {"loops", "loops-tcp", "loops-tls", "loops-unix"}
    assert published - loop_page == names
    quiet = [
        line for line in listed.stdout.splitlines() if line.endswith("--strict --wait-quiet 30")
    ]
    # Every page that measures CPU (run, cold-start) is measured on a quiet machine only.
    for line in listed.stdout.splitlines():
        if ": echo20-bench run " in line or ": echo20-bench cold-start " in line:
            assert line in quiet, line
    assert any(line.startswith("cold-start: ") for line in quiet)


def test_a_run_page_and_an_idle_page_from_their_commands(tmp_path: Path) -> None:
    result = pages("latency", "idle", "--quick", "--into", str(tmp_path))
    assert result.returncode == 0, result.stderr + result.stdout
    latency = (tmp_path / "latency.md").read_text()
    assert latency.startswith("# One connection: latency per exchange\n")
    assert "    echo20-bench run --targets c,floor,streams,iostream,protocol " in latency
    assert "not for publishing" in latency
    # The report's own command line named a scratch folder: the page gives its own.
    assert "Command: `" not in latency
    assert "--out" not in latency
    for target in ("c-epoll", "floor-asyncio", "streams-asyncio", "protocol-asyncio"):
        assert f"| {target} | 1 | 8 B | closed | " in latency, target
    assert "![One connection: latency per exchange](latency.png)" in latency
    assert (tmp_path / "latency.png").stat().st_size > 0
    cells = json.loads((tmp_path / "latency.json").read_text())["cells"]
    assert all(cell["error"] is None for cell in cells)
    idle = (tmp_path / "idle.md").read_text()
    assert "| protocol-asyncio | " in idle
    assert json.loads((tmp_path / "idle.json").read_text())


def test_an_unknown_page_is_one_line() -> None:
    result = pages("lantency")
    assert result.returncode == 2
    assert "no page lantency (choose from implementations," in result.stderr
    assert "Traceback" not in result.stderr
