"""``echo20-bench run --unix``: every target over another transport, replies verified.

Small cells on asyncio and uvloop: what is checked is that every target answers
correctly over the transport (the load generator verifies every reply), that a loop
which cannot listen there gets a row saying why, and that a ``--server-cmd`` server
gets its socket too. Never speed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_bench import bench

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the benchmark needs cc")

TARGETS = "c,floor,sockets,streams,protocol"
# Shorter cells than test_bench's: many targets, and only their replies matter here.
SHORT = ("--warmup", "0.05", "--duration", "0.2", "--repeats", "1")
# A loop of the loop table with no Unix sockets (veloxloop is in the dev install).
NO_UNIX_LOOP = "veloxloop"


def cells_of(out: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    document = json.loads((out / "bench.json").read_text())
    return document, {cell["label"]: cell for cell in document["cells"]}


def test_every_target_over_unix_sockets(bench_out: Path) -> None:
    server_cmd = "python -m echo20.server --unix {path} --impl iostream --log-level warning"
    result = bench(
        "run", "--targets", TARGETS, "--loops", f"asyncio,uvloop,{NO_UNIX_LOOP}",
        "--connections", "2", "--sizes", "200", *SHORT, "--unix", "--out", str(bench_out),
        "--server-cmd", server_cmd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    document, cells = cells_of(bench_out)
    assert document["settings"]["transport"] == "Unix sockets"
    assert "transport: Unix sockets" in result.stdout
    measured = ["c-epoll", "server-cmd"] + [
        f"{name}-{loop}" for name in TARGETS.split(",")[1:] for loop in ("asyncio", "uvloop")
    ]
    for label in measured:
        cell = cells[label]
        assert cell["error"] is None, f"{label}: {cell['error']}"
        assert cell["rt_per_s"] > 0
        assert cell["cpu_us_per_rt"] is not None
    # The sockets server binds its own socket: it runs there too.
    assert cells[f"sockets-{NO_UNIX_LOOP}"]["error"] is None
    for name in ("floor", "streams", "protocol"):
        row = cells[f"{name}-{NO_UNIX_LOOP}"]
        assert row["error"] == "veloxloop 0.2 has no Unix sockets"
        assert row["failed"] is False
        assert row["unsupported"] is True
    assert "veloxloop 0.2 has no Unix sockets" in result.stdout
