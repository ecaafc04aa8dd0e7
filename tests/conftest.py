"""Run every async test once per installed event loop, with the loop's name as test id.

The loops come from the project's one table (``loops.py``): the same body runs on
asyncio and uvloop (and rloop when installed), as uvloop's own tests do with a mixin.
Suites that only need a client-side loop (the conformance suite speaks raw TCP to
server processes) run on asyncio alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from echoverse import loops

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

# Suites whose loop is only the test's own client side; one loop is enough there.
SINGLE_LOOP_DIRS = ("conformance",)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    path = Path(str(item.path))
    if any(part in SINGLE_LOOP_DIRS for part in path.parts):
        return {"asyncio": asyncio.new_event_loop}
    return {name: loops.loop_factory(name) for name in loops_under_test()}


def loops_under_test() -> list[str]:
    """The loops the in-process tests run on: asyncio, uvloop, and others installed.

    rloop is left out: it is young and tested through the benchmark and its own
    scenarios (see README).
    """
    return [name for name in loops.available_loops() if name != "rloop"]
