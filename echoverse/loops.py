"""The event loops echoverse runs on, chosen by name: one table for every entry point.

The server, the client, the Tornado reference, the benchmark and the tests all pick a
loop here and hand the factory to ``asyncio.Runner(loop_factory=...)``; nothing installs
a global policy (``uvloop.install()`` and event-loop policies are deprecated from Python
3.12 on). Example::

    with asyncio.Runner(loop_factory=loops.loop_factory("uvloop")) as runner:
        runner.run(main())
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Callable

from echoverse.errors import LoopUnavailableError

__all__ = ["AUTO", "LOOP_NAMES", "LoopUnavailableError", "available_loops", "loop_factory"]

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

AUTO = "auto"

# Loop name -> module that provides it ("asyncio" is the standard library's default
# loop). The order is the order of preference for ``auto`` after uvloop.
_LOOP_MODULES: dict[str, str] = {
    "asyncio": "asyncio",
    "uvloop": "uvloop",
    "rloop": "rloop",
}

LOOP_NAMES: tuple[str, ...] = tuple(_LOOP_MODULES)


def is_available(name: str) -> bool:
    """True when the loop's package can be imported (without importing it)."""
    module = _LOOP_MODULES.get(name)
    return module is not None and importlib.util.find_spec(module) is not None


def available_loops() -> list[str]:
    """The loop names usable on this machine, ``asyncio`` first."""
    return [name for name in LOOP_NAMES if is_available(name)]


def resolve(name: str) -> str:
    """The concrete loop name for ``name``: ``auto`` is uvloop when installed, else asyncio."""
    if name == AUTO:
        return "uvloop" if is_available("uvloop") else "asyncio"
    if name not in _LOOP_MODULES:
        raise LoopUnavailableError(
            f"unknown loop {name!r} (choose from {', '.join((AUTO, *LOOP_NAMES))})"
        )
    if not is_available(name):
        raise LoopUnavailableError(
            f"loop {name!r} is not installed (pip install 'echoverse[{name}]')"
        )
    return name


def loop_factory(name: str) -> LoopFactory:
    """A zero-argument callable that makes a new event loop of the named kind."""
    concrete = resolve(name)
    if concrete == "asyncio":
        return asyncio.new_event_loop
    module = importlib.import_module(_LOOP_MODULES[concrete])
    factory: LoopFactory = module.new_event_loop
    return factory
