"""Test plumbing shared by every suite: one timeout, server processes, ready lines.

Nothing here imports a server implementation (only the command line's ready-line
parser): the conformance suite runs against any server command, the Tornado
reference included.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from echo20 import cli

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# The one timeout every wait in the tests uses, in seconds. Generous, because it only
# bounds a failure (a hang fails loudly after it); ECHO20_TEST_TIMEOUT_SCALE=3 on a
# slow machine.
TIMEOUT = 10.0 * float(os.environ.get("ECHO20_TEST_TIMEOUT_SCALE", "1"))


@dataclass
class ServerProcess:
    """A server started as its own process, known to be listening."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    loop: str
    ready_line: str
    _stderr: list[bytes] = field(default_factory=list)
    _stderr_reader: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far."""
        return b"".join(self._stderr).decode("utf-8", "replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit status (killed after TIMEOUT: a failure)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            status = self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"server did not exit within {TIMEOUT} s of signal {sig}"
            ) from None
        finally:
            if self._stderr_reader is not None:
                self._stderr_reader.join(TIMEOUT)
        return status


def parse_ready_line(line: str) -> cli.ReadyLine:
    """(host, port, loop) from ``echo20 listening on HOST:PORT (loop: NAME)``.

    For a Unix socket (``echo20 listening on unix:PATH (loop: NAME)``) the host is
    the socket's path and the port 0.
    """
    ready = cli.parse_ready_line(line)
    if ready is None:
        raise AssertionError(f"not a ready line: {line!r}")
    return ready


def start_server(argv: Sequence[str], *, cwd: Path = ROOT) -> ServerProcess:
    """Start ``argv`` (which must print the ready line) and wait until it listens.

    Raises AssertionError, with the server's stderr, when no ready line comes within
    TIMEOUT seconds.
    """
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    stderr_chunks: list[bytes] = []
    # Popen's pipes are buffered readers, which have read1 (typeshed says IO[bytes]).
    stderr = cast(io.BufferedReader, process.stderr)

    def drain_stderr() -> None:
        for chunk in iter(lambda: stderr.read1(65536), b""):
            stderr_chunks.append(chunk)

    reader = threading.Thread(target=drain_stderr, daemon=True)
    reader.start()
    line_box: list[bytes] = []
    stdout = process.stdout
    line_reader = threading.Thread(target=lambda: line_box.append(stdout.readline()), daemon=True)
    line_reader.start()
    line_reader.join(TIMEOUT)
    if not line_box or not line_box[0]:
        process.kill()
        process.wait()
        reader.join(TIMEOUT)
        raise AssertionError(
            f"{' '.join(argv)} printed no ready line within {TIMEOUT} s; stderr:\n"
            + b"".join(stderr_chunks).decode("utf-8", "replace")
        )
    line = line_box[0].decode()
    host, port, loop = parse_ready_line(line)
    return ServerProcess(process, host, port, loop, line.strip(), stderr_chunks, reader)


@contextmanager
def running_server(argv: Sequence[str]) -> Iterator[ServerProcess]:
    """``start_server`` as a context manager that stops the server on the way out."""
    server = start_server(argv)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def echo_server_argv(*extra: str) -> list[str]:
    """Command line of this project's server on a free port."""
    return [PYTHON, str(ROOT / "echo_server.py"), "--port", "0", *extra]


def close_with_reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a reset, not an end of stream."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
