"""The servers the conformance suite judges: one table, and how to start each one.

Every scenario runs against every target of :data:`TARGETS`, or against the one server
given on the command line::

    pytest tests/conformance
    pytest tests/conformance --server-cmd "python echo_server.py --port {port}"
    pytest tests/conformance --server-addr 127.0.0.1:8888

A target id says which implementation on which event loop, in the words the CLIs and
the benchmark use (``tornado``, ``streams``, ``protocol``; ``asyncio``, ``uvloop``).
"""

from __future__ import annotations

import importlib
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

from support import PYTHON, ROOT, TIMEOUT, ServerProcess, parse_ready_line, start_server

# The ids of the two kinds of external target (``--server-cmd``, ``--server-addr``).
SERVER_CMD = "server-cmd"
SERVER_ADDR = "server-addr"

# How long to wait between two connection attempts to a server command that prints no
# ready line. A poll interval (each wait also ends early when the server prints a
# line), not a synchronisation sleep: it only bounds how often we knock.
KNOCK_INTERVAL = 0.05


@dataclass(frozen=True)
class Target:
    """A server the suite starts itself: a command that prints the ready line."""

    id: str
    argv: tuple[str, ...]
    about: str
    # Packages the server needs beyond the standard library (the test extras have them).
    requires: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        """The required packages that this interpreter cannot import."""
        return [name for name in self.requires if not installed(name)]

    @property
    def command(self) -> str:
        """The command as a user would type it (for reports)."""
        return shlex.join(("python", *self.argv[1:]))


def installed(package: str) -> bool:
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


def _target(module: str, loop: str, *extra: str) -> tuple[str, ...]:
    return (PYTHON, "-m", module, "--port", "0", "--loop", loop, *extra)


TARGETS: tuple[Target, ...] = (
    Target(
        "tornado-asyncio",
        _target("echoverse.reference.tornado_server", "asyncio"),
        "the seed's server on Tornado 6 (the reference), asyncio loop",
        ("tornado",),
    ),
    Target(
        "tornado-uvloop",
        _target("echoverse.reference.tornado_server", "uvloop"),
        "the seed's server on Tornado 6 (the reference), uvloop",
        ("tornado", "uvloop"),
    ),
    Target(
        "streams-asyncio",
        _target("echo_server", "asyncio", "--impl", "streams"),
        "the port: the seed's loop on the asyncio IOStream, asyncio loop",
    ),
    Target(
        "streams-uvloop",
        _target("echo_server", "uvloop", "--impl", "streams"),
        "the port: the seed's loop on the asyncio IOStream, uvloop",
        ("uvloop",),
    ),
    Target(
        "protocol-asyncio",
        _target("echo_server", "asyncio", "--impl", "protocol"),
        "the port's fast path (a BufferedProtocol on the stdlib loop), asyncio loop",
    ),
    Target(
        "protocol-uvloop",
        _target("echo_server", "uvloop", "--impl", "protocol"),
        "the port's fast path (an asyncio.Protocol on uvloop), uvloop",
        ("uvloop",),
    ),
)


@dataclass
class RunningServer:
    """A server under test: where it listens, and its process when the suite started it."""

    id: str
    address: tuple[str, int]
    process: subprocess.Popen[bytes] | None = None
    # Built-in targets must exit 0 on SIGTERM with a clean log (the CLI convention).
    strict_exit: bool = False
    _stderr: list[bytes] = field(default_factory=list)

    def stderr_text(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def stop(self) -> int | None:
        """SIGTERM, then wait (kill after TIMEOUT); the exit status, None if not ours."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.id}: no exit within {TIMEOUT:g} s of SIGTERM") from None


def start_target(target: Target) -> RunningServer:
    """Start a built-in target and wait for its ready line."""
    started: ServerProcess = start_server(target.argv)
    return RunningServer(
        target.id, started.address, started.process, strict_exit=True, _stderr=started._stderr
    )


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6-host]:port``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected host:port, got {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def start_command(command: str) -> RunningServer:
    """Start ``--server-cmd``: ``{port}`` becomes a free port, ``python`` this interpreter.

    It is ready when it prints the ready line or, for a server that prints none, when
    the port accepts a connection. Without ``{port}`` the ready line is required, since
    it is the only way to learn the port.
    """
    port = free_port() if "{port}" in command else None
    argv = shlex.split(command.replace("{port}", str(port)))
    if argv and argv[0] == "python":
        argv[0] = PYTHON
    process = subprocess.Popen(
        argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stderr is not None
    stderr: list[bytes] = []
    lines: list[bytes] = []
    printed = threading.Event()
    err_stream, out_stream = process.stderr, process.stdout

    def drain_stderr() -> None:
        # os.read: whatever is there, as soon as it is there (the pipe is unbuffered).
        for chunk in iter(lambda: os.read(err_stream.fileno(), 65536), b""):
            stderr.append(chunk)

    def drain_stdout() -> None:
        for line in out_stream:
            lines.append(line)
            printed.set()

    threading.Thread(target=drain_stderr, daemon=True).start()
    threading.Thread(target=drain_stdout, daemon=True).start()
    server = RunningServer(SERVER_CMD, ("127.0.0.1", port or 0), process, _stderr=stderr)

    def fail(why: str) -> AssertionError:
        if process.poll() is None:
            process.kill()
        process.wait()
        return AssertionError(f"--server-cmd {command!r}: {why}; stderr:\n{server.stderr_text()}")

    deadline = time.monotonic() + TIMEOUT
    while True:
        for line in lines:
            try:
                host, ready_port, _ = parse_ready_line(line.decode("utf-8", "replace"))
            except AssertionError:
                continue
            server.address = (host, ready_port)
            return server
        if process.poll() is not None:
            raise fail(f"exited with status {process.returncode} before listening")
        if port is not None and _accepts(server.address):
            return server
        if time.monotonic() >= deadline:
            if port is None:
                raise fail(f"no ready line within {TIMEOUT:g} s (needed when there is no {{port}})")
            raise fail(f"not listening on port {port} within {TIMEOUT:g} s")
        printed.clear()
        printed.wait(KNOCK_INTERVAL)


def _accepts(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=TIMEOUT):
            return True
    except OSError:
        return False


def external_address(text: str) -> RunningServer:
    """``--server-addr``: a server someone else started; the suite only connects."""
    return RunningServer(SERVER_ADDR, parse_address(text))
