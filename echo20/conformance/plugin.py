"""The pytest plugin of the conformance suite: its options, fixtures and server watch.

Loaded by name, it works wherever pytest runs, which a folder's conftest does not::

    pytest -p echo20.conformance.plugin --pyargs echo20.conformance.scenarios \\
        --server-cmd "python tcp_server.py" --server-port 8888

``echo20-conformance`` (:mod:`echo20.conformance.runner`) runs exactly that, with
shorter option names, a summary and reports. A scenario needs the server under test
(``server_under_test``) or the client under test (``client_under_test``); a run given
only one of them leaves the other kind's scenarios out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from echo20.conformance.processes import ServerSpec, parse_address, start_server
from echo20.conformance.watch import ServerWatch
from echo20.errors import ConformanceError

__all__ = ["ClientUnderTest", "ServerUnderTest"]

# The wait for anything on the network, and for a server to start (seconds).
DEFAULT_TIMEOUT = 10.0

SERVER_FIXTURE = "server_under_test"
CLIENT_FIXTURE = "client_under_test"


@dataclass(frozen=True)
class ServerUnderTest:
    """Where the server under test listens, and how long any wait on it may take."""

    address: tuple[str, int]
    timeout: float


@dataclass(frozen=True)
class ClientUnderTest:
    """The client command (``{port}`` to fill in) and how long a run of it may take."""

    command: str
    timeout: float


@dataclass
class Settings:
    """What this session tests, from the options (or handed over by the runner)."""

    timeout: float
    server_spec: ServerSpec | None = None
    server_address: tuple[str, int] | None = None
    client_command: str | None = None


SETTINGS = pytest.StashKey[Settings]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("echo20 conformance", "the echo20 conformance suite")
    group.addoption(
        "--server-cmd",
        metavar="COMMAND",
        help="start this server for the run; {port} becomes a free port (else --server-port)",
    )
    group.addoption(
        "--server-port", type=int, metavar="N", help="the port the --server-cmd listens on"
    )
    group.addoption(
        "--server-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address the --server-cmd listens on (default: 127.0.0.1)",
    )
    group.addoption(
        "--server-ready",
        metavar="REGEX",
        help="also wait for a line matching this; a (?P<port>...) group names the port",
    )
    group.addoption(
        "--server-addr", metavar="HOST:PORT", help="test the server already running there"
    )
    group.addoption(
        "--client-cmd",
        metavar="COMMAND",
        help="test this client; {port} becomes the scripted server's port",
    )
    group.addoption(
        "--conformance-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"bound on every wait (default: {DEFAULT_TIMEOUT:g})",
    )


def settings_from_options(config: pytest.Config) -> Settings:
    """The session's targets from the command line; UsageError for a bad combination."""
    command = config.getoption("--server-cmd")
    address = config.getoption("--server-addr")
    port = config.getoption("--server-port")
    ready = config.getoption("--server-ready")
    client = config.getoption("--client-cmd")
    timeout = config.getoption("--conformance-timeout")
    if timeout <= 0:
        raise pytest.UsageError("--conformance-timeout must be positive")
    settings = Settings(timeout=timeout, client_command=client)
    if command is not None and address is not None:
        raise pytest.UsageError("give --server-cmd or --server-addr, not both")
    if address is not None:
        try:
            settings.server_address = parse_address(address)
        except ValueError as error:
            raise pytest.UsageError(f"--server-addr: {error}") from None
    if command is not None:
        try:
            pattern = re.compile(ready) if ready is not None else None
        except re.error as error:
            raise pytest.UsageError(f"--server-ready: {error}") from None
        if not command.strip():
            raise pytest.UsageError("--server-cmd is empty")
        if (
            "{port}" not in command
            and port is None
            and not (pattern and "port" in pattern.groupindex)
        ):
            raise pytest.UsageError(
                "--server-cmd: put {port} in the command, give --server-port N, "
                "or a --server-ready pattern with a (?P<port>...) group"
            )
        settings.server_spec = ServerSpec(command, config.getoption("--server-host"), port, pattern)
    if client is not None and "{port}" not in client:
        raise pytest.UsageError("--client-cmd needs {port}: where the scripted server listens")
    return settings


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # The runner hands its settings over (with the server it started) before this.
    if SETTINGS not in config.stash:
        config.stash[SETTINGS] = settings_from_options(config)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Start the --server-cmd server, unless only collecting; stop it at the end."""
    settings = session.config.stash[SETTINGS]
    if settings.server_spec is None or session.config.option.collectonly:
        return
    try:
        started = start_server(settings.server_spec, settings.timeout)
    except ConformanceError as error:
        raise pytest.UsageError(str(error)) from None
    settings.server_address = started.address
    watch = ServerWatch(started, owned=True, timeout=settings.timeout)
    session.config.pluginmanager.register(watch, "echo20-server-watch")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the scenarios of the kind nobody asked for (server or client)."""
    settings = config.stash[SETTINGS]
    has_server = settings.server_spec is not None or settings.server_address is not None
    has_client = settings.client_command is not None
    if not (has_server or has_client):
        return
    keep, drop = [], []
    for item in items:
        needs = set(getattr(item, "fixturenames", ()))
        if (SERVER_FIXTURE in needs and not has_server) or (
            CLIENT_FIXTURE in needs and not has_client
        ):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def server_under_test(pytestconfig: pytest.Config) -> ServerUnderTest:
    """The server the scenarios talk to (--server-cmd or --server-addr)."""
    settings = pytestconfig.stash[SETTINGS]
    if settings.server_address is None:
        pytest.skip("no server given: --server-cmd or --server-addr")
    return ServerUnderTest(settings.server_address, settings.timeout)


@pytest.fixture(scope="session")
def client_under_test(pytestconfig: pytest.Config) -> ClientUnderTest:
    """The client the scripted servers judge (--client-cmd)."""
    settings = pytestconfig.stash[SETTINGS]
    if settings.client_command is None:
        pytest.skip("no client given: --client-cmd")
    return ClientUnderTest(settings.client_command, settings.timeout)
