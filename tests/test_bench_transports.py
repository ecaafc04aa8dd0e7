"""``echo20-bench run --unix`` and ``--tls``: every target over another transport, replies
verified.

Small cells on asyncio and uvloop: what is checked is that every target answers
correctly over the transport (the load generator verifies every reply), that a loop
which cannot listen there gets a row saying why, and that a ``--server-cmd`` server
gets its socket too. Never speed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_bench import bench

from echo20.bench.certs import TLSFiles
from echo20.bench.targets import Wire, expand_targets

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the benchmark needs cc")

TARGETS = "c,floor,sockets,streams,protocol"
# Shorter cells than test_bench's: many targets, and only their replies matter here.
SHORT = ("--warmup", "0.05", "--duration", "0.2", "--repeats", "1")
# A loop of the loop table with no Unix sockets (veloxloop is in the dev install).
NO_UNIX_LOOP = "veloxloop"


def cells_of(out: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    document = json.loads((out / "bench.json").read_text())
    return document, {cell["label"]: cell for cell in document["cells"]}


def assert_measured(cells: dict[str, dict[str, Any]]) -> None:
    """The C reference, the --server-cmd server and every target on asyncio and uvloop
    answered every message right, and were measured."""
    measured = ["c-epoll", "server-cmd"] + [
        f"{name}-{loop}" for name in TARGETS.split(",")[1:] for loop in ("asyncio", "uvloop")
    ]
    for label in measured:
        cell = cells[label]
        assert cell["error"] is None, f"{label}: {cell['error']}"
        assert cell["rt_per_s"] > 0
        assert cell["cpu_us_per_rt"] is not None


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
    assert_measured(cells)
    # The sockets server binds its own socket: it runs there too.
    assert cells[f"sockets-{NO_UNIX_LOOP}"]["error"] is None
    for name in ("floor", "streams", "protocol"):
        row = cells[f"{name}-{NO_UNIX_LOOP}"]
        assert row["error"] == "veloxloop 0.2 has no Unix sockets"
        assert row["failed"] is False
        assert row["unsupported"] is True
    assert "veloxloop 0.2 has no Unix sockets" in result.stdout


def test_every_target_over_tls(bench_out: Path) -> None:
    server_cmd = "python -m echo20.server --port {port} --certfile {certfile} --keyfile {keyfile}"
    result = bench(
        "run", "--targets", TARGETS, "--loops", "asyncio,uvloop",
        "--connections", "2", "--sizes", "200", *SHORT, "--tls", "--out", str(bench_out),
        "--server-cmd", server_cmd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    document, cells = cells_of(bench_out)
    assert document["settings"]["transport"] == "TLS over TCP over 127.0.0.1"
    (negotiated,) = document["environment"]["tls"]
    assert negotiated.startswith("TLSv1.3 ")
    assert_measured(cells)
    # Every cell went through TLS: the load generator says what it negotiated.
    assert {cell["tls"] for cell in cells.values()} == {negotiated}


def test_tls_over_unix_sockets(bench_out: Path) -> None:
    result = bench(
        "run", "--targets", "c,floor,sockets,protocol", "--loops", "asyncio",
        "--connections", "1", "--sizes", "200", *SHORT, "--tls", "--unix",
        "--out", str(bench_out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    document, cells = cells_of(bench_out)
    assert document["settings"]["transport"] == "TLS over Unix sockets"
    for label in ("c-epoll", "floor-asyncio", "sockets-asyncio", "protocol-asyncio"):
        assert cells[label]["error"] is None, f"{label}: {cells[label]['error']}"
        assert cells[label]["tls"], label


def test_the_floor_on_a_loop_without_tls_is_a_row() -> None:
    """The floor serves the loop's own TLS; the others bring theirs (the port's
    TLSTransport, MemoryBIO by hand), which every loop runs."""
    tls = TLSFiles(Path("cert"), Path("key"), Path("ca"))
    targets, skipped, unsupported = expand_targets(
        ["c", "floor", "sockets", "protocol", "tornado"],
        ["asyncio", "rloop", "veloxloop"],
        Wire(tls=tls),
    )
    assert {target.label: why.split()[0] for target, why in unsupported.items()} == {
        "floor-rloop": "rloop",
        "floor-veloxloop": "veloxloop",
    }
    assert len(targets) == 1 + 3 * 3
    assert skipped == ["tornado: the Tornado reference serves plain TCP only (no --unix, no TLS)"]


def test_tls_without_openssl_is_one_line(bench_out: Path, tmp_path: Path) -> None:
    """A compiler that cannot build against OpenSSL (its headers missing) stands in for a
    machine without libssl-dev."""
    compiler = tmp_path / "cc-without-openssl"
    compiler.write_text(
        "#!/bin/sh\n"
        'case "$*" in *-lssl*) echo "fatal error: openssl/ssl.h: No such file" >&2; exit 1;; '
        "esac\n"
        'exec cc "$@"\n'
    )
    compiler.chmod(0o755)
    result = bench(
        "run", "--targets", "c", "--connections", "1", "--sizes", "8", *SHORT, "--tls",
        "--out", str(bench_out), env={**os.environ, "CC": str(compiler)},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "--tls needs OpenSSL" in result.stderr
    assert "apt-get install libssl-dev" in result.stderr
