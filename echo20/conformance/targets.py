"""echo20's own implementations as conformance targets, run as any other would be.

``make test`` (``tests/conformance/``) runs ``echo20-conformance`` once per target with
:meth:`Target.runner_arguments`: the same entry point and flags an outside
implementation uses. A target id says which implementation on which event loop, in the
words the CLIs and the benchmark use (``tornado``, ``streams``, ``iostream``,
``protocol``; ``asyncio``, ``uvloop``). ``echo20-conformance compare`` takes them by
name (:data:`PRESETS`), and ``make compare`` puts them side by side.
"""

from __future__ import annotations

import importlib.util
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

import echo20.reference
from echo20.servers import IMPLEMENTATIONS

__all__ = [
    "CLIENT_TARGETS",
    "DEFAULT_PRESETS",
    "PRESETS",
    "SEED_DIRECTORY",
    "SEED_SERVER_FILE",
    "SEED_TARGETS",
    "SERVER_TARGETS",
    "Target",
    "missing_packages",
]

# How long our own clients wait for a reply in the client scenarios: the stalled-reply
# scenario waits this long, and the suite's timeout must be longer.
CLIENT_TIMEOUT = 2

# How each of our implementations is described in the target list.
ABOUT = {
    "streams": "the seed's loop on asyncio streams",
    "iostream": "the seed's loop on the asyncio IOStream",
    "protocol": "the fast path (an asyncio Protocol)",
}


def missing_packages(names: tuple[str, ...]) -> list[str]:
    """The packages of ``names`` this interpreter cannot import."""
    return [name for name in names if importlib.util.find_spec(name) is None]


@dataclass(frozen=True)
class Target:
    """One implementation: a server or client command (``{port}`` filled in by the runner)."""

    id: str
    kind: str
    command: str
    about: str
    # Packages it needs beyond the standard library (the test extras have them).
    requires: tuple[str, ...] = ()
    # How reports show the command, when the real one is only plumbing.
    shown: str = ""
    # A server that must exit 0 on SIGTERM with no traceback (the CLI convention of
    # echo20's servers; the seed's dies of the signal, as most servers do).
    clean_exit: bool = True
    # What a comparison's report says about it, when it is one of the columns.
    note: str = ""
    # Kept to show what the suite catches (the seed's client): its failures are the
    # documented ones, and do not fail a comparison.
    known_to_fail: bool = False

    def missing(self) -> list[str]:
        """The required packages this interpreter cannot import."""
        return missing_packages(self.requires)

    def runner_arguments(self) -> list[str]:
        """What ``echo20-conformance`` needs to test it, reports named by its id."""
        if self.kind == "client":
            return ["--client-cmd", self.command, "--name", self.id]
        clean = ["--clean-exit"] if self.clean_exit else []
        return ["--server-cmd", self.command, *clean, "--name", self.id]


def _server(impl: str, loop: str, about: str) -> Target:
    if impl == "tornado":
        command = f"python -m echo20.reference.tornado_server --port {{port}} --loop {loop}"
        requires: tuple[str, ...] = ("tornado",)
    else:
        command = f"python -m echo20.server --port {{port}} --loop {loop} --impl {impl}"
        requires = ()
    if loop == "uvloop":
        requires += ("uvloop",)
    return Target(f"{impl}-{loop}", "server", command, f"{about}, {loop}", requires)


SERVER_TARGETS: tuple[Target, ...] = (
    _server("tornado", "asyncio", "the seed's server on Tornado 6 (the reference)"),
    _server("tornado", "uvloop", "the seed's server on Tornado 6 (the reference)"),
    *(
        _server(impl, loop, f"the port: {ABOUT[impl]}")
        for impl in IMPLEMENTATIONS
        for loop in ("asyncio", "uvloop")
    ),
)

CLIENT_TARGETS: tuple[Target, ...] = (
    Target(
        "echo-client",
        "client",
        f"python -m echo20.client --port {{port}} --timeout {CLIENT_TIMEOUT}",
        "the port's client",
    ),
    Target(
        "tornado-client",
        "client",
        f"python -m echo20.reference.tornado_client --port {{port}} --timeout {CLIENT_TIMEOUT}",
        "the seed's client on Tornado 6, reading whole replies",
        ("tornado",),
    ),
)

# The seed's own server and client, ported to Python 3 as they are: shipped in the
# package, so that they run wherever echo20 is installed (``examples/seed/`` in a
# checkout links to them). The server takes no flags and listens on 8888; here it is
# started through its ``main(port, address)`` on a free loopback port, so that a server
# someone left on 8888 cannot get in the way.
SEED_DIRECTORY = Path(echo20.reference.__file__).resolve().parent / "seed"
SEED_SERVER_FILE = SEED_DIRECTORY / "tcp_server.py"
_SEED_SERVER = (
    f'python -c "import sys; sys.path.insert(0, {str(SEED_DIRECTORY)!r}); '
    "import tcp_server; tcp_server.main({port}, '127.0.0.1')\""
)

SEED_CLIENT_NOTE = (
    "The seed's client reads each reply with two `read_bytes(20, partial=True)` calls, as "
    "if the echo and its reversal always came as two reads of at most 20 bytes. Where a "
    "reply comes in one segment (`one_segment`, `uneven_cut`, and the scripts that break "
    "the second reply, whose first reply is one segment) the first read takes all of it "
    "and the second waits for bytes that never come: it hangs on its first message and "
    "is killed. Where the reply comes in pieces it gets further, but prints the "
    "`TCPClient` class before every prompt (and the prompt itself), shows the second "
    "read before the first, sends a line's carriage return, and falls out of step on "
    "messages over 20 bytes; when its input ends it stops with a traceback. Clients "
    "migrating from the seed: read `2 * len(message)` bytes, as `echo_client.py` and "
    "`tornado_client.py` do."
)

SEED_TARGETS: tuple[Target, ...] = (
    Target(
        "seed-server",
        "server",
        _SEED_SERVER,
        "the seed's tcp_server.py, ported as is (prints nothing, takes no flags)",
        ("tornado",),
        shown="python tcp_server.py (the seed's, port 8888 made {port})",
        clean_exit=False,
    ),
    Target(
        "seed-client",
        "client",
        f"python {shlex.quote(str(SEED_DIRECTORY / 'tcp_client.py'))} {{port}}",
        "the seed's tcp_client.py, ported as is, its defects kept",
        ("tornado",),
        shown="python tcp_client.py {port} (the seed's)",
        note=SEED_CLIENT_NOTE,
        known_to_fail=True,
    ),
)

# What ``echo20-conformance compare`` knows by name: each implementation's server on its
# default loop, by the implementation's name alone; every target above by its id; the
# seed's server also as ``seed``. The first four are what ``compare`` with no server
# compares.
DEFAULT_PRESETS = ("tornado", "streams", "iostream", "protocol")
PRESETS: dict[str, Target] = {
    "tornado": replace(
        SERVER_TARGETS[0],
        id="tornado",
        command="python -m echo20.reference.tornado_server --port {port}",
        about="the seed's server on Tornado 6 (the reference)",
    ),
    **{
        impl: Target(
            impl,
            "server",
            f"python -m echo20.server --impl {impl} --port {{port}}",
            f"the port: {ABOUT[impl]}",
        )
        for impl in IMPLEMENTATIONS
    },
    "seed": replace(SEED_TARGETS[0], id="seed"),
    **{target.id: target for target in (*SERVER_TARGETS, *SEED_TARGETS, *CLIENT_TARGETS)},
}
