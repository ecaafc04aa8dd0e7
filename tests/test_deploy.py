"""The HAProxy configuration of ``docs/deploy.md``, run: HAProxy on 127.0.0.1 in front of
two echo20 servers, and the protocol checked through it.

The configuration is read from the document's ``haproxy`` block, so the two cannot
drift apart. Only the ``bind`` line (replaced by a listening socket this test hands
over, so no port is guessed) and the servers' addresses change, and a stats socket is
added to learn when HAProxy counts both servers up. Skipped where ``haproxy`` is not
installed; ``make test-deploy`` installs it where it can.
"""

from __future__ import annotations

import csv
import random
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import PYTHON, ROOT, TIMEOUT, ServerProcess, echo_server_argv, start_server
from test_hardening import (
    assert_double_reply,
    connect,
    exchange,
    recv_exactly,
    recv_until_eof,
    send_all_nonblocking,
    stopped_lines,
    wait_until,
)

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")

pytestmark = pytest.mark.skipif(
    HAPROXY is None,
    reason="haproxy is not installed (make test-deploy installs it: apt-get install -y haproxy)",
)

DEPLOY_DOC = ROOT / "docs" / "deploy.md"
BACKEND = "echo20_servers"
# The servers behind HAProxy: one of each implementation.
IMPLS = ("streams", "protocol")
MiB = 1024 * 1024


def documented_config() -> str:
    """The one ``haproxy`` code block of docs/deploy.md."""
    blocks = re.findall(r"^```haproxy\n(.*?)^```", DEPLOY_DOC.read_text(), re.M | re.S)
    assert len(blocks) == 1, f"{DEPLOY_DOC} must hold one haproxy block, found {len(blocks)}"
    return str(blocks[0])


def config_for(listen_fd: int, servers: list[tuple[str, int]]) -> str:
    """The documented configuration, listening on ``listen_fd``, in front of ``servers``."""
    config, binds = re.subn(
        r"^(\s*bind\s+)\S+", rf"\g<1>fd@{listen_fd}", documented_config(), flags=re.M
    )
    assert binds == 1, "the documented configuration must have one bind line"
    addresses = [f"{host}:{port}" for host, port in servers]
    lines = re.findall(r"^\s*server\s", config, flags=re.M)
    assert len(lines) == len(addresses), "the documented configuration must name two servers"
    replacements = iter(addresses)
    return re.sub(
        r"^(\s*server\s+\S+\s+)\S+",
        lambda match: match[1] + next(replacements),
        config,
        flags=re.M,
    )


@dataclass
class Deployment:
    """HAProxy in front of echo20 servers, every process running."""

    address: tuple[str, int]
    haproxy: subprocess.Popen[bytes]
    servers: list[ServerProcess]
    stats_path: Path

    def server_stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's counters for each server of the backend (``show stat``), by name."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(self.stats_path))
            sock.sendall(b"show stat\n")
            text = recv_until_eof(sock).decode()
        rows = csv.DictReader(text.lstrip("# ").splitlines())
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def all_up(self) -> bool:
        try:
            stats = self.server_stats()
        except OSError:
            return False  # HAProxy has not opened its stats socket yet
        return len(stats) == len(self.servers) and all(
            row["status"] == "UP" for row in stats.values()
        )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    assert HAPROXY is not None
    directory = tmp_path_factory.mktemp("haproxy")
    servers: list[ServerProcess] = []
    haproxy: subprocess.Popen[bytes] | None = None
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        for impl in IMPLS:
            servers.append(start_server(echo_server_argv("--impl", impl)))
        config = directory / "echo20.cfg"
        config.write_text(config_for(listener.fileno(), [s.address for s in servers]))
        stats_path = directory / "stats.sock"
        # A second global section: HAProxy merges it with the documented one.
        extra = directory / "test.cfg"
        extra.write_text(f"global\n    stats socket {stats_path} level admin\n")
        log = (directory / "haproxy.log").open("wb")
        haproxy = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config), "-f", str(extra)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
        )
        log.close()
        deployed = Deployment(listener.getsockname(), haproxy, servers, stats_path)

        def up_or_exited() -> bool:
            return haproxy.poll() is not None or deployed.all_up()

        wait_until(up_or_exited, "HAProxy counts both servers up")
        assert haproxy.poll() is None, (directory / "haproxy.log").read_text()
        yield deployed
    finally:
        listener.close()
        if haproxy is not None and haproxy.poll() is None:
            haproxy.terminate()
            haproxy.wait(timeout=TIMEOUT)
        statuses = [server.stop(signal.SIGTERM) for server in servers]
    assert statuses == [0] * len(servers)
    for server in servers:
        stderr = server.stderr_text()
        assert "Traceback" not in stderr, stderr
        assert len(stopped_lines(stderr)) == 1


def test_double_reply_through_haproxy(deployment: Deployment) -> None:
    with connect(deployment.address) as sock:
        for message in (
            b"hello",
            b"x" * 45,
            bytes(range(256)),
            random.Random(7).randbytes(100_000),
        ):
            exchange(sock, message)


def test_half_close_with_a_large_message(deployment: Deployment) -> None:
    """1 MiB, then the sending side shut: every reply byte comes back, then the end."""
    message = random.Random(11).randbytes(MiB)
    with connect(deployment.address) as sock:
        send_all_nonblocking(sock, message)
        sock.shutdown(socket.SHUT_WR)
        assert_double_reply(message, recv_until_eof(sock))


def test_over_closes(deployment: Deployment) -> None:
    with connect(deployment.address) as sock:
        exchange(sock, b"before over")
        sock.sendall(b"over")
        assert recv_exactly(sock, 8) == b"overrevo"
        assert recv_until_eof(sock) == b""


def test_both_servers_serve(deployment: Deployment) -> None:
    """``balance leastconn`` takes turns among equally loaded servers."""
    before = {name: int(row["stot"]) for name, row in deployment.server_stats().items()}
    for number in range(4):
        with connect(deployment.address) as sock:
            exchange(sock, f"connection {number}".encode())
    after = {name: int(row["stot"]) for name, row in deployment.server_stats().items()}
    assert all(after[name] > before[name] for name in before), (before, after)


def test_conformance_suite_through_haproxy(deployment: Deployment) -> None:
    """Every server scenario of the conformance suite, through HAProxy."""
    host, port = deployment.address
    result = subprocess.run(
        [PYTHON, "-m", "echo20.conformance", "--server-addr", f"{host}:{port}"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20 * TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "PASS:" in result.stdout + result.stderr
