"""bench.py smoke tests: one tiny matrix end to end, the reply check, the bench-only servers.

No timing is asserted: the numbers depend on the machine. What is checked is that the
benchmark produces its reports, that a wrong reply is an error and never a number, and
that the naive baseline and the floor speak the protocol.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from support import PYTHON, TIMEOUT, running_server

from echoverse.bench import main as bench

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="bench.py needs a C compiler")

Reply = Callable[[bytes], bytes]


def test_run_writes_reports_with_verified_cells(tmp_path: Path) -> None:
    pytest.importorskip("rich")
    argv = [
        PYTHON, "-m", "echoverse.bench", "run",
        "--targets", "c,floor,protocol", "--loops", "asyncio",
        "--connections", "16", "--sizes", "8",
        "--warmup", "0.1", "--duration", "0.3", "--repeats", "1",
        "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=6 * TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr + result.stdout
    document = json.loads((tmp_path / "bench.json").read_text())
    assert document["kind"] == "echoverse-bench"
    assert {"date", "cpu_model", "loadavg_start", "loadavg_end"} <= document["meta"].keys()
    cells = {cell["label"]: cell for cell in document["cells"]}
    assert set(cells) == {"c-epoll", "floor-asyncio", "protocol-asyncio"}
    for cell in cells.values():
        assert cell["error"] is None, cell["error"]
        assert cell["connections"] == 16
        assert cell["size"] == 8
        assert cell["rt_per_s"] > 0
        assert cell["mib_per_s"] > 0
        assert set(cell["latency_us"]) == {"p50", "p90", "p99", "p99.9", "max"}
        assert cell["cpu_us_per_rt"] is not None
        assert cell["peak_rss_kib"] > 0
        assert cell["loadgen_cpu_pct"] is not None
        assert isinstance(cell["flags"], list)
        assert cell["vs_c"]["cpu_us_per_rt"] is not None
    assert cells["c-epoll"]["vs_c"]["cpu_us_per_rt"] == pytest.approx(1.0)
    assert all(target["exit_status"] == 0 for target in document["targets"])
    assert "| protocol-asyncio | 16 | 8 B |" in (tmp_path / "bench.md").read_text()
    # The issue-4 check for this cell, with the floor beside it.
    (check,) = [c for c in document["checks"] if c["target"] == "protocol-asyncio"]
    assert check["measured"] is not None
    assert check["floor"] == cells["floor-asyncio"]["vs_c"]["cpu_us_per_rt"]


@contextmanager
def fake_server(reply: Reply) -> Iterator[int]:
    """A blocking server on a free port that answers every message with ``reply(message)``.

    Messages are read as they come; the load generator sends 8-byte messages, so a read
    of up to 8 bytes that returns fewer waits for the rest.
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
                    message = b""
                    while len(message) < 8:
                        try:
                            data = conn.recv(8 - len(message))
                        except OSError:
                            return
                        if not data:
                            return
                        message += data
                    try:
                        conn.sendall(reply(message))
                    except OSError:
                        return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(TIMEOUT)


def run_loadgen_against(tmp_path: Path, reply: Reply) -> dict[str, object]:
    tools = bench.build_tools(tmp_path / "build")
    with fake_server(reply) as port:
        argv = [
            str(tools.loadgen), "--port", str(port), "--connections", "1", "--size", "8",
            "--warmup", "0.05", "--duration", "0.1",
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=True)
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def cut_reply(message: bytes, size: int) -> bytes:
    """A valid double reply whose chunks are ``size`` bytes: a server that read in pieces."""
    chunks = [message[i : i + size] for i in range(0, len(message), size)]
    return b"".join(chunk + chunk[::-1] for chunk in chunks)


def test_loadgen_accepts_any_valid_cut(tmp_path: Path) -> None:
    report = run_loadgen_against(tmp_path, lambda message: cut_reply(message, 3))
    assert report["errors"] == 0, report["first_error"]
    assert isinstance(report["round_trips"], int)
    assert report["round_trips"] > 0


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(lambda m: m + m, id="echo-twice"),
        pytest.param(lambda m: m + m[::-1] + b"!", id="one-byte-too-many"),
        pytest.param(lambda m: m[:4] + m[4:][::-1] + m[:4][::-1] + m[4:], id="halves-swapped"),
    ],
)
def test_loadgen_reports_a_wrong_reply_as_an_error(tmp_path: Path, reply: Reply) -> None:
    report = run_loadgen_against(tmp_path, reply)
    assert report["errors"] == 1
    assert "reversal" in str(report["first_error"])
    assert report["round_trips"] == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_floor_server_answers_each_batch(loop: str) -> None:
    """The floor target (a bare protocol; the stdlib loop has its own buffered one)."""
    argv = [PYTHON, "-m", "echoverse.bench", "serve-floor", "--port", "0", "--loop", loop]
    with running_server(argv) as server, socket.create_connection(server.address, TIMEOUT) as sock:
        assert_answers_a_two_chunk_message(sock)
    assert server.process.returncode == 0


def assert_answers_a_two_chunk_message(sock: socket.socket) -> None:
    message = b"a message longer than twenty bytes"
    sock.sendall(message)
    reply = b""
    while len(reply) < 2 * len(message):
        reply += sock.recv(4096)
    assert reply == b"".join(chunk + chunk[::-1] for chunk in (message[:20], message[20:]))


def test_naive_server_speaks_echo20() -> None:
    argv = [PYTHON, "-m", "echoverse.bench", "serve-naive", "--port", "0", "--loop", "asyncio"]
    with running_server(argv) as server, socket.create_connection(server.address, TIMEOUT) as sock:
        assert_answers_a_two_chunk_message(sock)
        sock.sendall(b"over")
        tail = b""
        while data := sock.recv(4096):
            tail += data
        assert tail == b"overrevo"
    assert server.process.returncode == 0


@pytest.mark.parametrize(
    ("text", "size"), [("8", 8), ("16k", 16384), ("256KiB", 262144), ("1m", 1048576)]
)
def test_sizes_take_binary_suffixes(text: str, size: int) -> None:
    assert bench.parse_size(text) == size
