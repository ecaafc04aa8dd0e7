"""How much a client that sends without reading grows the server: backpressure, measured.

Starts ``echo_server.py`` on the given loop and implementation, pushes 64 KiB sends at it
for ``--seconds`` without reading a byte of the replies, then prints what got in and the
server's resident memory. Where backpressure holds (asyncio, uvloop) the push stalls
after a few MiB and the server stays near its resting size; where the loop keeps
reading while paused (rloop 0.5) both grow for as long as the client pushes::

    .venv/bin/python tools/unread_push.py --loop rloop --impl protocol
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

from echo20 import cli, loops
from echo20.bench.processes import read_line, read_status_kib

ROOT = Path(__file__).resolve().parent.parent

SEND_SIZE = 64 * 1024
# The push has stalled once sends have been refused for this long in a row.
STALL_SECONDS = 1.0
START_TIMEOUT = 10.0


def resident_mib(pid: int) -> float:
    kib = read_status_kib(pid, "VmRSS")
    return kib / 1024 if kib is not None else float("nan")


def push_unread(address: tuple[str, int], seconds: float) -> tuple[int, bool]:
    """Bytes the server took in ``seconds`` of sending without reading; whether it stalled."""
    data = b"x" * SEND_SIZE
    sent = 0
    with socket.create_connection(address) as sock:
        sock.setblocking(False)
        deadline = time.monotonic() + seconds
        refused_since: float | None = None
        while (now := time.monotonic()) < deadline:
            try:
                sent += sock.send(data)
                refused_since = None
            except BlockingIOError:
                refused_since = refused_since or now
                if now - refused_since >= STALL_SECONDS:
                    return sent, True
                time.sleep(0.001)  # nothing to wait on: the server is not reading
    return sent, False


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", default="uvloop", choices=loops.LOOP_NAMES)
    parser.add_argument("--impl", default="streams", choices=("streams", "iostream", "protocol"))
    parser.add_argument("--seconds", type=cli.positive_float, default=5.0)
    args = parser.parse_args(argv)
    argv = [sys.executable, str(ROOT / "echo_server.py"), "--port", "0"]
    server = subprocess.Popen([*argv, "--loop", args.loop, "--impl", args.impl], stdout=PIPE)
    try:
        assert server.stdout is not None
        try:
            ready = cli.parse_ready_line(read_line(server.stdout, time.monotonic() + START_TIMEOUT))
        except TimeoutError:
            ready = None
        if ready is None:
            cli.error_line("unread_push", "the server did not start (see its stderr above)")
            return 1
        address = (ready.host, ready.port)
        resting = resident_mib(server.pid)
        sent, stalled = push_unread(address, args.seconds)
        grown = resident_mib(server.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(signal.SIGTERM)
        server.wait()
    outcome = "stalled" if stalled else f"still taking bytes after {args.seconds:g} s"
    print(
        f"{args.impl} on {args.loop}: pushed {sent / 2**20:.0f} MiB unread ({outcome}); "
        f"server RSS {resting:.0f} -> {grown:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
