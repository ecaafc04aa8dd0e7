"""What the benchmark runs: each server implementation on each event loop it supports.

Targets (the same words as the command lines; labels are ``target-loop``):

* ``c``: the minimal epoll server, one recv and one send per batch: the yardstick.
* ``floor``: the least a Python server can do on the loop: a bare protocol that writes
  each batch's reply and nothing else (``echo20-bench serve-floor``). Not a product:
  it shows how much of a ratio to ``c`` is the event loop's own cost.
* ``sockets``: the echo20 server on the loop's ``sock_accept``, ``sock_recv`` and
  ``sock_sendall``, a task per connection (``echo20-bench serve-sockets``): vmbench's
  third shape, beside the streams and protocol ones.
* ``tornado``: the Tornado reference as it is (Nagle on: about 40 ms per exchange).
* ``tornado-nodelay``: the same with ``TCP_NODELAY``, to compare CPU fairly.
* ``streams``, ``iostream``, ``protocol``: ``echo20-server --impl NAME``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from echo20 import loops
from echo20.bench.certs import TLSFiles
from echo20.servers import IMPLEMENTATIONS

__all__ = [
    "COMMAND_TARGET",
    "C_LOOP",
    "DEFAULT_TARGETS",
    "TARGETS",
    "Target",
    "Wire",
    "command_targets",
    "expand_targets",
    "server_argv",
]

TARGETS = ("c", "floor", "sockets", "tornado", "tornado-nodelay", *IMPLEMENTATIONS, "protocol-pure")
# protocol-pure is the fast path with the C accelerator turned off
# (ECHO20_PURE_PYTHON=1): asked for by name, to see what the accelerator buys.
DEFAULT_TARGETS = TARGETS[:-1]
# The Tornado reference's --loop choices: Tornado drives asyncio's and uvloop's loops.
TORNADO_LOOPS = ("asyncio", "uvloop")
# What the C reference's ready line says instead of a Python loop's name.
C_LOOP = "epoll"
# The label of a server started from --server-cmd.
COMMAND_TARGET = "server-cmd"


@dataclass(frozen=True, order=True)
class Target:
    """One server implementation on one event loop: ``streams`` on ``uvloop``; or a
    server the user's ``--server-cmd`` starts (``command``, no loop of ours)."""

    name: str
    loop: str
    command: str = ""

    @property
    def label(self) -> str:
        return f"{self.name}-{self.loop}" if self.loop else self.name


def command_targets(commands: Sequence[str]) -> list[Target]:
    """One target per ``--server-cmd``: ``server-cmd``, then ``server-cmd-2`` and on."""
    return [
        Target(COMMAND_TARGET if i == 0 else f"{COMMAND_TARGET}-{i + 1}", "", command)
        for i, command in enumerate(commands)
    ]


@dataclass(frozen=True)
class Wire:
    """How every server listens and the load generator reaches it: TCP on ``host``, or
    a Unix socket in ``unix_dir`` (one per target); under TLS with ``tls``'s files."""

    host: str = "127.0.0.1"
    unix_dir: Path | None = None
    tls: TLSFiles | None = None

    def unix_path(self, target: Target) -> str | None:
        """Where ``target`` listens under --unix (None: on TCP)."""
        return None if self.unix_dir is None else str(self.unix_dir / f"{target.label}.sock")

    def describe(self) -> str:
        """``TCP over 127.0.0.1``, ``TLS over Unix sockets``: for a report's head."""
        plain = "Unix sockets" if self.unix_dir is not None else f"TCP over {self.host}"
        return f"TLS over {plain}" if self.tls is not None else plain

    def tls_args(self) -> list[str]:
        """A server's arguments that make it serve the run's certificate (none on TCP)."""
        if self.tls is None:
            return []
        return ["--certfile", str(self.tls.certfile), "--keyfile", str(self.tls.keyfile)]


# Targets that listen through the loop's create_unix_server under --unix (sockets binds
# its own socket, c is C): a loop without one cannot run them there.
UNIX_SERVER_TARGETS = ("floor", *IMPLEMENTATIONS, "protocol-pure")
# What the loops of the loop table lack, found by trying each (the rows of the run's
# table say so, rather than a traceback or a failed start).
NO_UNIX_SERVER = {
    "rloop": "rloop 0.5 has no Unix sockets (create_unix_server raises NotImplementedError)",
    "veloxloop": "veloxloop 0.2 has no Unix sockets",
}
# The floor serves TLS with the loop's own (create_server(ssl=...)); the echo20 servers
# with the port's TLSTransport over a plain transport, and sockets by hand (MemoryBIO),
# which every loop runs.
LOOP_TLS_TARGETS = ("floor",)
NO_LOOP_TLS = {
    "rloop": "rloop 0.5 has no TLS of its own (create_server(ssl=...) raises NotImplementedError)",
    "veloxloop": "veloxloop 0.2's own TLS fails the handshake (SSL: UNEXPECTED_MESSAGE)",
}


def unsupported_on(name: str, loop: str, wire: Wire) -> str | None:
    """Why the loop cannot run target ``name`` over ``wire``: a result, shown as a row."""
    if wire.unix_dir is not None and name in UNIX_SERVER_TARGETS and loop in NO_UNIX_SERVER:
        return NO_UNIX_SERVER[loop]
    if wire.tls is not None and name in LOOP_TLS_TARGETS and loop in NO_LOOP_TLS:
        return NO_LOOP_TLS[loop]
    return None


def expand_targets(
    names: Sequence[str], loop_names: Sequence[str], wire: Wire | None = None
) -> tuple[list[Target], list[str], dict[Target, str]]:
    """Every requested target on every requested loop it runs on; for each pair left
    out, ``label: why`` (every report prints these: nothing is left out silently); and
    which of the targets the loop cannot run over ``wire``, with why (a result: rows of
    the table that say so, in their place among the others)."""
    wire = wire or Wire()
    targets: list[Target] = []
    skipped: list[str] = []
    unsupported: dict[Target, str] = {}
    for name in names:
        if name == "c":
            targets.append(Target("c", C_LOOP))
            continue
        if name.startswith("tornado") and importlib.util.find_spec("tornado") is None:
            skipped.append(f"{name}: Tornado is not installed (pip install 'echo20[tornado]')")
            continue
        if name.startswith("tornado") and (wire.unix_dir is not None or wire.tls is not None):
            skipped.append(
                f"{name}: the Tornado reference serves plain TCP only (no --unix, no TLS)"
            )
            continue
        for loop in loop_names:
            if name.startswith("tornado") and loop not in TORNADO_LOOPS:
                why = f"the Tornado reference runs on {' and '.join(TORNADO_LOOPS)} only"
                if loop.startswith("aiofastnet-"):
                    # Tornado reads and writes its sockets itself, not through transports.
                    why += " (it uses no asyncio transports: on aiofastnet it is its base loop)"
                skipped.append(f"{name}-{loop}: {why}")
                continue
            lacking = unsupported_on(name, loop, wire)
            if lacking is not None:
                unsupported[Target(name, loop)] = lacking
            targets.append(Target(name, loop))
    return targets, skipped, unsupported


def server_argv(target: Target, wire: Wire, c_server: str) -> list[str]:
    """The command line that starts ``target`` on a free port of ``wire.host``, or on
    its Unix socket."""
    path = wire.unix_path(target)
    where = ["--unix", path] if path is not None else ["--host", wire.host, "--port", "0"]
    where += wire.tls_args()
    if target.name == "c":
        return [c_server, *where]
    python = sys.executable
    # Warnings only: per-connection log lines would be measured as server work.
    common = [*where, "--loop", target.loop, "--log-level", "warning"]
    if target.name == "tornado":
        return [python, "-m", "echo20.reference.tornado_server", *common]
    if target.name == "tornado-nodelay":
        return [python, "-m", "echo20.reference.tornado_server", *common, "--nodelay"]
    if target.name in ("floor", "sockets"):
        return [python, "-m", "echo20.bench", f"serve-{target.name}", *common]
    if target.name == "protocol-pure":
        # env(1) execs the server in place: the process measured is the server itself.
        return [
            "env",
            "ECHO20_PURE_PYTHON=1",
            python,
            "-m",
            "echo20.server",
            *common,
            "--impl",
            "protocol",
        ]
    return [python, "-m", "echo20.server", *common, "--impl", target.name]


def loop_choices() -> list[str]:
    """The loops a run may name: the installed ones."""
    return loops.available_loops()
