"""Conformance suite plumbing: the ``server`` fixture, parametrised over the targets.

Each target's server starts once per session (the fixture is session-scoped, and pytest
runs one target's scenarios together) and stops at the end: a built-in target must then
exit 0 on SIGTERM without a traceback in its log. ``--server-cmd`` or ``--server-addr``
replaces the table with that one server. Every test is tagged with its ``target`` and
``scenario`` (``user_properties``) so ``tools/compare.py`` can draw the matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conformance_targets import (
    SERVER_ADDR,
    SERVER_CMD,
    TARGETS,
    RunningServer,
    Target,
    external_address,
    parse_address,
    start_command,
    start_target,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("echo20 conformance")
    group.addoption(
        "--server-cmd",
        metavar="COMMAND",
        help=(
            "run the conformance scenarios against this server command only; {port} is "
            "replaced by a free port and a leading 'python' by this interpreter, e.g. "
            '"python echo_server.py --port {port}"'
        ),
    )
    group.addoption(
        "--server-addr",
        metavar="HOST:PORT",
        help="run the conformance scenarios against this running server only",
    )


def pytest_configure(config: pytest.Config) -> None:
    command = config.getoption("--server-cmd")
    address = config.getoption("--server-addr")
    if command and address:
        raise pytest.UsageError("give --server-cmd or --server-addr, not both")
    if command is not None and not command.strip():
        raise pytest.UsageError("--server-cmd is empty")
    if address is not None:
        try:
            parse_address(address)
        except ValueError as error:
            raise pytest.UsageError(f"--server-addr: {error}") from None


ServerSpec = Target | tuple[str, str]


def selected_servers(config: pytest.Config) -> list[Any]:
    """A ``pytest.param`` for every server the scenarios run against.

    A built-in target whose packages are missing is skipped, with the reason; with the
    test extras installed (``pip install -e '.[test]'``) nothing is.
    """
    command = config.getoption("--server-cmd")
    if command:
        return [pytest.param((SERVER_CMD, command), id=SERVER_CMD)]
    address = config.getoption("--server-addr")
    if address:
        return [pytest.param((SERVER_ADDR, address), id=SERVER_ADDR)]
    params = []
    for target in TARGETS:
        missing = target.missing()
        marks = (
            [pytest.mark.skip(reason=f"needs {', '.join(missing)}: pip install -e '.[test]'")]
            if missing
            else []
        )
        params.append(pytest.param(target, id=target.id, marks=marks))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server" in metafunc.fixturenames:
        metafunc.parametrize(
            "server", selected_servers(metafunc.config), indirect=True, scope="session"
        )


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The server under test, listening; stopped (and its exit checked) after the session."""
    spec: ServerSpec = request.param
    if isinstance(spec, Target):
        running = start_target(spec)
    elif spec[0] == SERVER_CMD:
        running = start_command(spec[1])
    else:
        running = external_address(spec[1])
    yield running
    status = running.stop()
    if running.strict_exit:
        log = running.stderr_text()
        assert status == 0, f"{running.id} exited with status {status} on SIGTERM:\n{log}"
        assert "Traceback" not in log, f"{running.id} logged a traceback:\n{log}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or "server" not in callspec.params:
            continue
        spec = callspec.params["server"]
        target = spec.id if isinstance(spec, Target) else spec[0]
        command = spec.command if isinstance(spec, Target) else spec[1]
        about = spec.about if isinstance(spec, Target) else f"the server given by --{target}"
        # The scenario is the test with its other parameters: the id minus the target.
        rest = f"-{callspec.id}-".replace(f"-{target}-", "-", 1).strip("-")
        name = getattr(item, "originalname", item.name).removeprefix("test_")
        item.user_properties.append(("target", target))
        item.user_properties.append(("target_command", command))
        item.user_properties.append(("target_about", about))
        item.user_properties.append(("scenario", f"{name}[{rest}]" if rest else name))
