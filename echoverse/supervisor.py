"""``--workers N``: several server processes sharing one port, as Tornado's ``start(N)``.

The parent starts N copies of the server with ``SO_REUSEPORT`` on the same port (the
kernel spreads connections among them), prints the one ready line when all of them
listen, restarts a worker that dies (at most :data:`MAX_RESTARTS` times), forwards
SIGINT/SIGTERM, and exits once every worker has.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from echoverse import cli, runtime
from echoverse.netutil import format_address

__all__ = ["MAX_RESTARTS", "run"]

log = logging.getLogger("echoverse.supervisor")

# A worker that keeps dying is a bug, not bad luck: stop restarting after this many.
MAX_RESTARTS = 5

# Seconds a worker may take to print its ready line.
STARTUP_TIMEOUT = 30.0


def worker_count(requested: int) -> int:
    """``--workers 0`` means one per CPU this process may run on."""
    return requested or len(os.sched_getaffinity(0))


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) a SO_REUSEPORT socket, so ``--port 0`` names one port.

    The socket stays open while the workers run: it keeps the port ours between worker
    restarts, and a socket that does not listen is never handed connections.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, sock.getsockname()[1]


class Supervisor:
    """Starts, watches and stops the worker processes."""

    def __init__(self, program: str, script: str, argv: list[str], count: int, port: int) -> None:
        self.program = program
        # Later flags win in argparse: each worker serves one process on the shared port.
        self.worker_argv = [
            sys.executable,
            script,
            *argv,
            "--port",
            str(port),
            "--workers",
            "1",
            "--reuse-port",
        ]
        self.count = count
        self.restarts = 0
        self.stopping = False
        self.workers: set[asyncio.subprocess.Process] = set()

    async def start_worker(self) -> tuple[asyncio.subprocess.Process, str]:
        """Start one worker and wait for its ready line."""
        # A session of its own: Ctrl-C reaches the parent only, which forwards SIGTERM.
        process = await asyncio.create_subprocess_exec(
            *self.worker_argv, stdout=asyncio.subprocess.PIPE, start_new_session=True
        )
        self.workers.add(process)
        assert process.stdout is not None
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                line = (await process.stdout.readline()).decode().strip()
        except TimeoutError:
            line = ""
        if not line:
            process.kill()
            await process.wait()
            self.workers.discard(process)
            raise RuntimeError(f"a worker did not start (exit status {process.returncode})")
        return process, line

    async def watch(self, process: asyncio.subprocess.Process) -> None:
        """Wait for a worker to exit; restart it unless stopping or out of restarts."""
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
                raise RuntimeError("workers keep dying")
            self.restarts += 1
            log.warning(
                "worker exited with status %s; restarting (%d/%d)",
                status,
                self.restarts,
                MAX_RESTARTS,
            )
            process, _ = await self.start_worker()

    def signal_workers(self, signum: int) -> None:
        for process in self.workers:
            if process.returncode is None:
                process.send_signal(signum)

    async def run(self, shutdown_timeout: float) -> int:
        started = await asyncio.gather(*(self.start_worker() for _ in range(self.count)))
        # Every worker printed the same line; the parent prints it once.
        print(started[0][1], flush=True)
        log.info("serving from %d worker processes", self.count)
        stop = asyncio.Event()
        runtime.install_stop_signals(stop)
        watchers = [asyncio.create_task(self.watch(process)) for process, _ in started]
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, *watchers], return_when=asyncio.FIRST_COMPLETED)
        failed = stopped not in done
        for task in done - {stopped}:
            error = task.exception()
            if error is not None:
                log.error("%s", error)
        self.stopping = True
        self.signal_workers(signal.SIGTERM)
        remaining = [asyncio.create_task(process.wait()) for process in self.workers]
        if remaining:
            _, late = await asyncio.wait(remaining, timeout=shutdown_timeout + 5)
            if late:
                self.signal_workers(signal.SIGKILL)
        for task in (stopped, *watchers):
            task.cancel()
        return 1 if failed else 0


def run(program: str, script: str, argv: list[str], args: argparse.Namespace) -> int:
    """Serve ``script`` from ``args.workers`` processes; returns the exit status."""
    try:
        reservation, port = reserve_port(args.host, args.port)
    except OSError as error:
        cli.listen_error_line(program, format_address((args.host, args.port)), error)
        return 1
    supervisor = Supervisor(program, script, argv, worker_count(args.workers), port)
    try:
        with asyncio.Runner() as runner:
            return runner.run(supervisor.run(args.shutdown_timeout))
    except RuntimeError as error:
        cli.error_line(program, str(error))
        return 1
    finally:
        reservation.close()
