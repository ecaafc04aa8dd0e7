"""A debug facility, off by default: where a connection's handler was when its reset came.

Set ``ECHO20_RESET_WATCH=SECONDS`` in the server's environment and every connection is
watched. When its transport reports ``connection_lost`` (a reset, or any other end), the
watch notes where the connection's handler task was: ``reading``, ``draining``, ``not
yet started``, ``done`` (it had ended and closed; the transport was finishing), or ``no
task`` (the protocol server has none). A handler never waits inside a write (writes
queue and return), so one that was writing when the reset came is ``draining``: waiting
for the transport to take its replies. (The transport's own unsent bytes are gone by
then: it drops them before it reports the loss.) A connection still open ``SECONDS``
after its loss is logged with the handler's stack. ``SIGUSR1`` logs the tally of those
states and every connection still open, whether or not its loss was reported: a
descriptor whose reset never reached the server shows up there.
``tools/reset_storm.py`` turns it on and reads the reports.

It costs a task and a wrapped ``connection_lost`` per connection; without the variable
:class:`~echo20.tcpserver.ConnectionServer` holds ``None`` and pays one attribute test
per connection.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import weakref
from collections import Counter
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from echo20.tcpserver import Connection, ConnectionServer

__all__ = ["ENVIRONMENT_VARIABLE", "ResetWatch", "handler_state"]

log = logging.getLogger("echo20.resetwatch")

ENVIRONMENT_VARIABLE = "ECHO20_RESET_WATCH"

# The innermost frames that say what a suspended handler waits for. (A handler is never
# suspended in a write: writes queue and return.)
_READING = frozenset({"read", "read_partial", "_wait_for_data", "read_bytes", "_read"})
_DRAINING = frozenset({"drain", "_drain_helper"})


def handler_state(task: asyncio.Task[None] | None, connection: object = None) -> str:
    """Where ``task`` (the handler of ``connection``) is: ``reading``, ``draining``,
    ``not yet started``, ``done``, or ``no task`` (the protocol server has none)."""
    if task is None:
        return "no task"
    if task.done():
        return "done"
    coro = task.get_coro()
    if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
        return "not yet started"
    names = [frame.f_code.co_name for frame in _coroutine_frames(coro)]
    for name in reversed(names):
        if name in _DRAINING:
            return "draining"
        if name in _READING:
            return "reading"
    # The IOStream port's write() returns one of its drain waiters for the handler to
    # await (debug code: it reads the task's and the stream's private attributes).
    if getattr(task, "_fut_waiter", None) in getattr(connection, "_drain_waiters", ()):
        return "draining"
    return f"in {names[-1]}" if names else "suspended"


def _coroutine_frames(coro: object) -> list[FrameType]:
    # Task.get_stack() stops at the task's own coroutine's frame; following cr_await
    # reaches the innermost one.
    frames: list[FrameType] = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def _stack_text(task: asyncio.Task[None] | None) -> str:
    """The handler's await chain, outermost first (``Task.print_stack`` shows only the
    task's own coroutine)."""
    if task is None or task.done():
        return ""
    return "".join(
        f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}\n'
        for frame in _coroutine_frames(task.get_coro())
    )


class ResetWatch:
    """Watches every connection of ``server``; see the module's docstring."""

    def __init__(self, server: ConnectionServer, delay: float) -> None:
        self.delay = delay
        self._server = weakref.ref(server)
        # Connection -> its handler task, until the watch of the connection ends.
        self._tasks: dict[Connection, asyncio.Task[None]] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._signal_set = False
        # Where handlers were when their connection was lost, since the server started.
        self.at_loss: Counter[str] = Counter()

    @classmethod
    def from_environment(cls, server: ConnectionServer) -> ResetWatch | None:
        """The watch ``ECHO20_RESET_WATCH`` asks for, or None (the default)."""
        value = os.environ.get(ENVIRONMENT_VARIABLE)
        if not value:
            return None
        try:
            delay = float(value)
        except ValueError:
            delay = -1.0
        if not delay > 0:
            log.warning(
                "%s=%r is not a positive number of seconds: no reset watch",
                ENVIRONMENT_VARIABLE,
                value,
            )
            return None
        return cls(server, delay)

    def start(self) -> None:
        """The server listens: take SIGUSR1 (once)."""
        if self._signal_set:
            return
        self._signal_set = True
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.report_open)
        except (NotImplementedError, RuntimeError, ValueError):
            log.warning("reset watch: no SIGUSR1 report on this loop")

    def watch(self, connection: Connection) -> None:
        """Watch ``connection``, just tracked."""
        transport = _transport_of(connection)
        protocol = transport.get_protocol() if transport is not None else None
        if protocol is not None:
            # An instance attribute, so the transport's call lands here first.
            lost = protocol.connection_lost

            def connection_lost(error: Exception | None) -> None:
                self._note_loss(connection)
                lost(error)

            protocol.connection_lost = connection_lost
        watcher = asyncio.get_running_loop().create_task(self._watch(connection))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    def handled_by(self, connection: Connection, task: asyncio.Task[None]) -> None:
        """``task`` serves ``connection``."""
        self._tasks[connection] = task

    def _note_loss(self, connection: Connection) -> None:
        self.at_loss[handler_state(self._tasks.get(connection), connection)] += 1

    async def _watch(self, connection: Connection) -> None:
        try:
            await connection.wait_closed()
            loop = asyncio.get_running_loop()
            lost = loop.time()
            await asyncio.sleep(self.delay)
            server = self._server()
            if server is not None and server.is_tracked(connection):
                self._report(connection, f"still open {loop.time() - lost:.2f} s after it was lost")
        finally:
            self._tasks.pop(connection, None)

    def report_open(self) -> None:
        """Log every connection still open, with where its handler is."""
        server = self._server()
        if server is None:
            return
        open_now = server.tracked_connections()
        tally = ", ".join(f"{state}={count}" for state, count in sorted(self.at_loss.items()))
        log.warning("reset watch: handlers when their connection was lost: %s", tally or "none")
        log.warning("reset watch: %d connections open", len(open_now))
        for connection in open_now:
            self._report(connection, "open")
        log.warning("reset watch: end of report")

    def _report(self, connection: Connection, when: str) -> None:
        task = self._tasks.get(connection)
        log.warning(
            "reset watch: connection %s %s; handler %s (%s; %s)\n%s",
            id(connection),
            when,
            handler_state(task, connection),
            type(connection).__name__,
            _transport_state(connection),
            _stack_text(task),
        )


def _transport_of(connection: object) -> Any:
    """The connection's transport, where each server keeps it (debug only)."""
    writer = getattr(connection, "writer", None)
    return getattr(writer, "transport", None) or getattr(connection, "_transport", None)


def _transport_state(connection: object) -> str:
    """What the connection's transport says: its peer, closing, unsent bytes."""
    transport = _transport_of(connection)
    if transport is None:
        return "no transport"
    try:
        return (
            f"peer {transport.get_extra_info('peername')} closing={transport.is_closing()} "
            f"unsent={transport.get_write_buffer_size()} {transport!r}"
        )
    except Exception as error:  # a closed uvloop transport raises from some getters
        return f"transport {transport!r}: {error!r}"
