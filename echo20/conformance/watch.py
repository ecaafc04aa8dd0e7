"""A pytest plugin object that ends the session as soon as the server under test exits.

Kept apart from :mod:`echo20.conformance.plugin` so that the runner can hand one to
pytest without importing the plugin module itself first (pytest loads that by name).
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from echo20.conformance.processes import ServerProcess, describe_status

__all__ = ["ServerWatch"]


class ServerWatch:
    """Stops the session once the server has exited; :attr:`died` says when, in a line.

    Every scenario after that would only fail with "connection refused".
    """

    def __init__(self, server: ServerProcess, *, owned: bool, timeout: float) -> None:
        self.server = server
        # Whether this session started the server (and so stops it at the end).
        self.owned = owned
        self.timeout = timeout
        self.died: str | None = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if self.died is None:
            status = self.server.exit_status()
            if status is not None:
                self.died = (
                    f"the server {describe_status(status)} during scenario "
                    f"{item.name.removeprefix('test_')}{self.server.last_words()}"
                )
                item.session.shouldstop = self.died
                if report.when == "setup" and report.passed:
                    report.outcome = "failed"
                    report.longrepr = self.died
        return report

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.owned:
            self.server.stop(self.timeout)
