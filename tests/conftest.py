"""Run every async test once per installed event loop, with the loop's name as test id.

The loops come from the project's one table (``loops.py``): the same body runs on
asyncio and uvloop, as uvloop's own tests do with a mixin.
Suites that only need a client-side loop (the conformance suite speaks raw TCP to
server processes) run on asyncio alone.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from echo20 import loops

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

# The conformance tests start their runner processes from eight threads at once; on
# CPython 3.11 one such start failed with "OSError: [Errno 14] Bad address" naming the
# interpreter (subprocess's vfork() path), once in about eight suite runs. Plain fork()
# for the test process's own children; the product is untouched.
subprocess._USE_VFORK = False  # type: ignore[misc]

# Suites whose loop is only the test's own client side; one loop is enough there.
SINGLE_LOOP_DIRS = ("conformance",)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    path = Path(str(item.path))
    if any(part in SINGLE_LOOP_DIRS for part in path.parts):
        return {"asyncio": asyncio.new_event_loop}
    return {name: loops.loop_factory(name) for name in loops_under_test()}


# The loops the in-process tests run on. The others (rloop, veloxloop, aiofastnet on
# asyncio and on uvloop) are young or thin layers, and each would add the whole
# in-process suite's time again: tests/test_loops.py runs every server on each of them
# over real sockets, and the benchmark's smoke test checks their replies (see README).
IN_PROCESS_LOOPS = ("asyncio", "uvloop")


def loops_under_test() -> list[str]:
    """The installed loops among IN_PROCESS_LOOPS."""
    return [name for name in loops.available_loops() if name in IN_PROCESS_LOOPS]


@pytest.fixture(scope="session")
def built_c_programs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmark's C server and load generator, plain and with TLS, compiled once
    for the session."""
    from echo20.bench import tools

    build = tmp_path_factory.mktemp("bench-build")
    tools.build_tools(build)
    tools.build_tools(build, tls=True)
    return build


@pytest.fixture
def bench_out(tmp_path: Path, built_c_programs: Path) -> Path:
    """An ``echo20-bench --out`` directory whose C programs are built already."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "build").symlink_to(built_c_programs)
    return out
