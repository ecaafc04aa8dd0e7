"""``--workers N``: several server processes on one port, as Tornado's ``start(N)``.

The parent binds and listens once, then starts N copies of the server, each handed that
listening socket (``pass_fds`` and ``--fd``), as Tornado's ``bind_sockets`` followed by
``fork_processes`` does, and gunicorn's and uvicorn's ``--workers``. Every worker accepts
from the one queue, so a worker that dies takes with it only the connections it had
accepted: connections still queued are accepted by the others, or by its replacement,
which gets the same socket. With ``reuse_port`` each worker listens on a socket of its
own instead (``SO_REUSEPORT``: the kernel spreads connections evenly, but those queued
for a worker that dies are reset).

The parent prints the one ready line when every worker serves, restarts a worker that
dies (at most :data:`MAX_RESTARTS` times), forwards SIGINT/SIGTERM, and exits once every
worker has. A worker notices when the parent is gone (:func:`watch_supervisor`) and shuts
down as on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from echo20 import cli
from echo20.errors import SupervisorError
from echo20.netutil import bind_sockets, format_address, reserve_port

__all__ = [
    "MAX_RESTARTS",
    "PARENT_DEATH_SIGNAL",
    "SUPERVISOR_CHECK_INTERVAL",
    "Settings",
    "run",
    "watch_supervisor",
]

log = logging.getLogger("echo20.supervisor")

# A worker that keeps dying is a bug, not bad luck: stop restarting after this many.
MAX_RESTARTS = 5

# Seconds a worker may take to print its ready line.
STARTUP_TIMEOUT = 30.0

# Where the kernel cannot signal a worker when its parent dies (not Linux), the worker
# compares its parent pid with the supervisor's this often: one system call a second.
SUPERVISOR_CHECK_INTERVAL = 1.0

# <linux/prctl.h>: deliver a signal to this process when its parent dies.
PR_SET_PDEATHSIG = 1

# The signal a worker asks for when its supervisor dies. Not SIGTERM: the kernel sends
# it once per new parent, and a second SIGTERM means "exit at once, do not wait for
# the clients" (runtime.install_stop_signals). A worker leads a session of its own
# with no terminal, so no terminal hang-up reaches it; its handler checks the parent
# pid, so a stray SIGHUP while the supervisor lives changes nothing.
PARENT_DEATH_SIGNAL = signal.SIGHUP


@dataclass(frozen=True)
class Settings:
    """What the supervisor needs of the server's command line."""

    host: str
    port: int
    # 0: one per CPU this process may run on.
    workers: int
    backlog: int
    # One SO_REUSEPORT socket per worker instead of one socket shared by all.
    reuse_port: bool
    # How long the workers may take to stop once told to (--shutdown-timeout).
    shutdown_timeout: float


def worker_count(requested: int) -> int:
    """``--workers 0`` means one per CPU this process may run on."""
    if requested:
        return requested
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_parent_death_signal(signum: int) -> bool:
    """Have the kernel send ``signum`` to this process when its parent dies (Linux).

    Returns False where that is not available. The signal comes each time the process
    is handed to a new parent: first, perhaps, to another thread of the dying parent,
    finally to init or a subreaper; so it may come more than once.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return bool(prctl(PR_SET_PDEATHSIG, signum, 0, 0) == 0)


def watch_supervisor(supervisor_pid: int, stop: asyncio.Event) -> asyncio.Task[None] | None:
    """Set ``stop`` when the supervisor ``supervisor_pid`` is gone; for a worker.

    The worker then shuts down as on SIGTERM: a lingering close within
    --shutdown-timeout, then exit. On Linux the kernel signals the worker when its
    parent dies (:data:`PARENT_DEATH_SIGNAL`); the supervisor may have died before
    that was set up, which no signal would ever report, so the parent pid is checked
    right after (an orphan's parent is init or a subreaper). Elsewhere the parent pid
    is checked every :data:`SUPERVISOR_CHECK_INTERVAL` seconds in a task, which is
    returned; cancel it when stopping.
    """
    loop = asyncio.get_running_loop()

    def check_parent() -> None:
        if os.getppid() != supervisor_pid and not stop.is_set():
            log.warning("the supervisor (pid %d) is gone: stopping", supervisor_pid)
            stop.set()

    # The handler first: until it is installed, the signal would kill the worker.
    loop.add_signal_handler(PARENT_DEATH_SIGNAL, check_parent)
    if set_parent_death_signal(PARENT_DEATH_SIGNAL):
        check_parent()
        return None
    return loop.create_task(_poll_parent(check_parent, stop))


async def _poll_parent(check_parent: Callable[[], None], stop: asyncio.Event) -> None:
    # Polling, because nothing portable reports a parent's death to a process.
    while not stop.is_set():
        check_parent()
        await asyncio.sleep(SUPERVISOR_CHECK_INTERVAL)


class Supervisor:
    """Starts, watches and stops the worker processes."""

    def __init__(
        self,
        module: str,
        argv: list[str],
        count: int,
        *,
        shared: list[socket.socket] | None = None,
        port: int = 0,
    ) -> None:
        # Later flags win in argparse: each worker is one process, serving either the
        # shared sockets (--fd) or a SO_REUSEPORT socket of its own on the port.
        if shared is not None:
            self.pass_fds = tuple(sock.fileno() for sock in shared)
            hand_off = [arg for fd in self.pass_fds for arg in ("--fd", str(fd))]
        else:
            self.pass_fds = ()
            hand_off = ["--port", str(port), "--reuse-port"]
        self.worker_argv = [
            sys.executable,
            "-m",
            module,
            *argv,
            *hand_off,
            "--workers",
            "1",
            "--supervisor-pid",
            str(os.getpid()),
        ]
        self.count = count
        self.restarts = 0
        self.stopping = False
        self.workers: set[asyncio.subprocess.Process] = set()

    async def spawn(self) -> tuple[asyncio.subprocess.Process, str]:
        """Start one worker; returns it with its ready line, or with "" once it has
        exited without one (it is killed if it has not printed it in time)."""
        # A session of its own: Ctrl-C reaches the parent only, which forwards SIGTERM.
        process = await asyncio.create_subprocess_exec(
            *self.worker_argv,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
            pass_fds=self.pass_fds,
        )
        self.workers.add(process)
        assert process.stdout is not None
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                line = (await process.stdout.readline()).decode().strip()
        except TimeoutError:
            line = ""
        if not line:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            self.workers.discard(process)
        return process, line

    async def start_worker(self) -> tuple[asyncio.subprocess.Process, str]:
        """Start one worker and wait for its ready line; SupervisorError if none comes."""
        process, line = await self.spawn()
        if not line:
            raise SupervisorError(f"a worker did not start (exit status {process.returncode})")
        return process, line

    async def watch(self, process: asyncio.subprocess.Process) -> None:
        """Wait for a worker to exit; restart it unless stopping or out of restarts.

        A replacement that dies before its ready line counts as one more restart.
        """
        while True:
            status = await process.wait()
            self.workers.discard(process)
            if self.stopping:
                return
            if self.restarts >= MAX_RESTARTS:
                log.error(
                    "worker exited with status %s; %d restarts used, giving up",
                    status,
                    MAX_RESTARTS,
                )
                raise SupervisorError("workers keep dying")
            self.restarts += 1
            log.warning(
                "worker exited with status %s; restarting (%d/%d)",
                status,
                self.restarts,
                MAX_RESTARTS,
            )
            process, line = await self.spawn()
            if line:
                log.info("worker %d is serving (restart %d)", process.pid, self.restarts)

    def signal_workers(self, signum: int) -> None:
        for process in self.workers:
            if process.returncode is None:
                process.send_signal(signum)

    async def stop_workers(self, timeout: float) -> None:
        """SIGTERM every worker and wait for them; SIGKILL those still there after ``timeout``."""
        self.stopping = True
        self.signal_workers(signal.SIGTERM)
        remaining = [asyncio.create_task(process.wait()) for process in self.workers]
        if remaining:
            _, late = await asyncio.wait(remaining, timeout=timeout)
            if late:
                self.signal_workers(signal.SIGKILL)
                await asyncio.wait(late)

    def install_stop_signals(self, stop: asyncio.Event) -> None:
        """SIGINT and SIGTERM set ``stop``; a second one makes every process exit at once.

        The workers get SIGTERM twice then, which is their own "exit at once".
        """
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if stop.is_set():
                self.signal_workers(signal.SIGTERM)
                os._exit(128 + signum)
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)

    async def run(self, shutdown_timeout: float) -> int:
        stop = asyncio.Event()
        self.install_stop_signals(stop)
        # The workers' own shutdown takes up to shutdown_timeout; past a few seconds
        # more, one that has not exited is stuck.
        stop_timeout = shutdown_timeout + 5
        starting = [asyncio.create_task(self.start_worker()) for _ in range(self.count)]
        try:
            started = await asyncio.gather(*starting)
        except SupervisorError:
            # The others may be starting still, or serving: none outlives the failure.
            for starter in starting:
                starter.cancel()
            await asyncio.gather(*starting, return_exceptions=True)
            await self.stop_workers(stop_timeout)
            raise
        # Every worker printed the same line; the parent prints it once (unless told to
        # stop meanwhile: then it never serves).
        if not stop.is_set():
            print(started[0][1], flush=True)
        log.info("serving from %d worker processes", self.count)
        watchers = [asyncio.create_task(self.watch(process)) for process, _ in started]
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, *watchers], return_when=asyncio.FIRST_COMPLETED)
        failed = stopped not in done
        for task in done - {stopped}:
            error = task.exception()
            if error is not None:
                log.error("%s", error)
        await self.stop_workers(stop_timeout)
        for task in (stopped, *watchers):
            task.cancel()
        return 1 if failed else 0


@contextlib.contextmanager
def _closing(sockets: list[socket.socket]) -> Iterator[None]:
    try:
        yield
    finally:
        for sock in sockets:
            sock.close()


def run(program: str, module: str, argv: list[str], settings: Settings) -> int:
    """Serve ``python -m module`` from ``settings.workers`` processes; returns the exit status.

    ``argv`` is the server's own command line; each worker gets it with the listening
    socket's hand-off appended (``--fd`` or ``--port P --reuse-port``).
    """
    count = worker_count(settings.workers)
    where = format_address((settings.host, settings.port))
    try:
        if settings.reuse_port:
            held = [reserve_port(settings.host, settings.port)]
            supervisor = Supervisor(module, argv, count, port=held[0].getsockname()[1])
        else:
            held = bind_sockets(settings.host, settings.port, settings.backlog)
            supervisor = Supervisor(module, argv, count, shared=held)
    except OSError as error:
        cli.listen_error_line(program, where, error)
        return 1
    with _closing(held):
        try:
            with asyncio.Runner() as runner:
                return runner.run(supervisor.run(settings.shutdown_timeout))
        except SupervisorError as error:
            cli.error_line(program, str(error))
            return 1
