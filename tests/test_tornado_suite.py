"""Tornado 6.6.1's own IOStream, TCPServer and TCPClient tests, run against the port.

``tools/tornado_tests.py`` fetches them from Tornado's source distribution on PyPI (once,
into ``.cache/``), runs them unchanged with the port under Tornado's names, and lists
the tests that do not apply with the reason. Here it runs in a child process, once per
event loop, and every test that applies must pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tools" / "tornado_tests.py"
# The fewest of Tornado's tests that must apply to the port.
MIN_APPLICABLE = 55


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tornados_own_tests_pass_against_the_port(loop: str, tmp_path: Path) -> None:
    report = tmp_path / "outcomes.json"
    result = subprocess.run(
        [sys.executable, str(HARNESS), "--loop", loop, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert report.exists(), result.stderr
    outcomes = json.loads(report.read_text())
    failed = {
        test_id: test["detail"]
        for test_id, test in outcomes["tests"].items()
        if test["outcome"] == "failed"
    }
    assert failed == {}, result.stdout
    assert outcomes["stale"] == []
    assert outcomes["applicable"] >= MIN_APPLICABLE, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
