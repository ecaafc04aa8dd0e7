"""The implementations under test as processes: commands, free ports, a server's life.

A server command is ready when its port accepts a connection, so any server will do,
whatever it prints (the seed's prints nothing); ``--ready REGEX`` waits for a line as
well. A failure to start is a :class:`ConformanceError` whose message is one line.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from echo20.errors import ConformanceError, describe_error

__all__ = [
    "ServerProcess",
    "ServerSpec",
    "command_argv",
    "describe_status",
    "free_port",
    "parse_address",
    "start_server",
]

# How long to wait between two connection attempts to a server that is starting. A poll
# interval, not a synchronisation sleep: each wait also ends early when the server prints
# a line, and it only bounds how often we knock.
KNOCK_INTERVAL = 0.05

# Lines of a server's output kept for the message when it fails (it may print a line
# per chunk, as the seed's does: the whole of it is never kept).
TAIL_LINES = 50

# How Python starts printing an uncaught exception (``--clean-exit`` looks for it).
PYTHON_TRACEBACK = "Traceback (most recent call last)"

# A server's last words, cut to this length in a one-line message.
LAST_WORDS_LENGTH = 200


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6-host]:port``; ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS's pick for port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def command_argv(command: str, **values: object) -> list[str]:
    """``command`` split as a shell would, ``{port}``/``{host}`` filled in.

    A leading ``python`` means the interpreter this runs on, so a command given to a
    runner installed in a virtual environment finds that environment's packages
    without activating it; a program found nowhere on PATH is looked for beside that
    interpreter, where the environment's console scripts are. No shell runs: pipes
    and ``VAR=value`` prefixes are not understood (``sh -c '...'`` gives them back).
    ValueError when it cannot be split.
    """
    for name, value in values.items():
        command = command.replace("{" + name + "}", str(value))
    argv = shlex.split(command)
    if not argv:
        raise ValueError("the command is empty")
    if argv[0] == "python":
        argv[0] = sys.executable
    elif os.sep not in argv[0] and shutil.which(argv[0]) is None:
        # A console script installed beside this interpreter (echo20-server in the
        # runner's own virtual environment), found without activating it.
        beside = Path(sys.executable).parent / argv[0]
        if beside.is_file() and os.access(beside, os.X_OK):
            argv[0] = str(beside)
    return argv


def describe_status(status: int) -> str:
    """``exited with status 1`` or ``was killed by SIGKILL``."""
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def require_listening(address: tuple[str, int], timeout: float) -> None:
    """Raise :class:`ConformanceError` unless ``address`` accepts a connection.

    For ``--server-addr``: a server that is not there is one line, not every scenario
    failing with the same refused connection.
    """
    try:
        with socket.create_connection(address, timeout=timeout):
            return
    except OSError as error:
        host, port = address
        raise ConformanceError(
            f"nothing accepts connections on {host}:{port}: {describe_error(error)}"
        ) from None


def _accepts(address: tuple[str, int], timeout: float) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class ServerSpec:
    """A server command as the user gave it (``--server-cmd``, ``--port``, ``--ready``)."""

    command: str
    host: str = "127.0.0.1"
    port: int | None = None
    ready: re.Pattern[str] | None = None


class _Lines:
    """Lines a process writes on its stdout and stderr, drained by two threads.

    Draining keeps a talkative server from blocking on a full pipe. Until the server is
    ready every line is kept (``--ready`` looks through them); after that only a tail.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.keep_all = True
        self.traceback = False
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._drain, args=(pipe, pipe is process.stderr), daemon=True)
            for pipe in (process.stdout, process.stderr)
            if pipe is not None
        ]
        for thread in self._threads:
            thread.start()

    def _drain(self, pipe: IO[bytes], is_stderr: bool) -> None:
        for raw in pipe:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._lock:
                if self.keep_all:
                    self.lines.append(line)
                if is_stderr:
                    self.stderr_tail.append(line)
                    self.traceback = self.traceback or line.startswith(PYTHON_TRACEBACK)
            self.changed.set()

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def stop_keeping(self) -> None:
        with self._lock:
            self.keep_all = False
            self.lines.clear()

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def last_words(self) -> str:
        """The server's last non-empty line on stderr, for a one-line message."""
        with self._lock:
            said = [line.strip() for line in self.stderr_tail if line.strip()]
        if not said:
            return ""
        words = said[-1]
        if len(words) > LAST_WORDS_LENGTH:
            words = words[: LAST_WORDS_LENGTH - 3] + "..."
        return f" (its last words on stderr: {words!r})"


class ServerProcess:
    """A server the runner started; it listens on ``address``."""

    def __init__(
        self, spec: ServerSpec, process: subprocess.Popen[bytes], lines: _Lines, port: int
    ) -> None:
        self.spec = spec
        self.process = process
        self.address = (spec.host, port)
        self._lines = lines

    def exit_status(self) -> int | None:
        """The exit status once it has exited, None while it runs."""
        return self.process.poll()

    def last_words(self) -> str:
        return self._lines.last_words()

    def saw_traceback(self) -> bool:
        """Whether it ever wrote a Python traceback on stderr."""
        return self._lines.traceback

    def stop(self, timeout: float) -> int:
        """SIGTERM to its process group, then SIGKILL after ``timeout``; the exit status.

        The server runs in a session of its own, so a wrapper script's children stop
        with it.
        """
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
        status = self.process.wait()
        self._lines.join(timeout)
        return status

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


def start_server(spec: ServerSpec, timeout: float) -> ServerProcess:
    """Start ``spec.command`` and wait until it listens; ConformanceError if it does not.

    ``{port}`` in the command becomes ``spec.port`` or, without one, a free port. The
    server is ready when the port accepts a connection; with ``spec.ready`` it must also
    have printed a matching line (on stdout or stderr), whose ``port`` group, if any,
    names the port.
    """
    port = spec.port
    if "{port}" in spec.command and port is None:
        port = free_port(spec.host)
    elif port is not None and _accepts((spec.host, port), timeout):
        raise ConformanceError(
            f"something already listens on {spec.host}:{port} before the server started; "
            "stop it first, or test it with --server-addr"
        )
    try:
        argv = command_argv(spec.command, port=port, host=spec.host)
    except ValueError as error:
        raise ConformanceError(f"--server-cmd: {error}") from None
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as error:
        raise ConformanceError(f"cannot run {argv[0]!r}: {error.strerror or error}") from None
    lines = _Lines(process)
    server = ServerProcess(spec, process, lines, port or 0)
    try:
        server.address = (spec.host, _wait_until_listening(spec, process, lines, port, timeout))
    except ConformanceError:
        server.stop(timeout)
        raise
    lines.stop_keeping()
    return server


def _wait_until_listening(
    spec: ServerSpec,
    process: subprocess.Popen[bytes],
    lines: _Lines,
    port: int | None,
    timeout: float,
) -> int:
    deadline = time.monotonic() + timeout
    seen_ready = spec.ready is None
    while True:
        lines.changed.clear()
        if not seen_ready and spec.ready is not None:
            for line in lines.snapshot():
                match = spec.ready.search(line)
                if match is None:
                    continue
                seen_ready = True
                named = match.groupdict().get("port")
                if named is not None:
                    port = int(named)
                break
        if seen_ready and port is not None and _accepts((spec.host, port), timeout):
            return port
        status = process.poll()
        if status is not None:
            raise ConformanceError(
                f"the server {describe_status(status)} before it listened"
                + (f" on {spec.host}:{port}" if port else "")
                + lines.last_words()
            )
        if time.monotonic() >= deadline:
            if not seen_ready:
                why = (
                    f"printed no line matching --ready {spec.ready.pattern if spec.ready else ''!r}"
                )
            else:
                why = f"did not accept connections on {spec.host}:{port}"
            raise ConformanceError(f"the server {why} within {timeout:g} s{lines.last_words()}")
        lines.changed.wait(KNOCK_INTERVAL)
