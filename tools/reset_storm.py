"""Reset storms: thousands of clients that send a little and reset, with the CPUs busy.

Usage::

    python tools/reset_storm.py                          # 20 storms, every --impl, both loops
    python tools/reset_storm.py --impl streams --loop uvloop --storms 200
    python tools/reset_storm.py --busy 0 --connections 500        # an unloaded machine
    python tools/reset_storm.py --vanish 0.01 --server-arg=--keepalive=0   # lost resets

For each ``--impl`` on each ``--loop`` the script starts ``echo_server.py`` on 127.0.0.1
(port 0) with its reset watch on (``ECHO20_RESET_WATCH``, ``echo20/resetwatch.py``),
starts ``--busy`` processes that spin (each ends by itself after ``--busy-seconds``, and
all are stopped when the combination is done), and runs ``--storms`` storms in a row.

A storm opens ``--connections`` connections, ``--concurrency`` at a time (``--phased``:
all of them, resetting none before every one has sent). On each it sends 100 to 600
bytes, then closes with SO_LINGER 0, so that the server sees a reset: at once (often
before the server has accepted or read), after reading part of the reply (while the
server is replying), or a few loop turns later. ``--vanish F`` makes a fraction F of
the clients read their whole reply and then disappear without a reset (``TCP_REPAIR``,
root only), as a client does whose reset the kernel dropped.

After the last reset the script reads ``/proc/PID/fd`` of the server every few
milliseconds: how long each descriptor open at that moment takes to close, and whether
the count is back where it was before the storms (with nothing left in the listen
queue) within ``--deadline`` seconds. A storm that misses it is watched ``--window``
seconds more (a late close or a leak?), and the kernel's view of each descriptor still
open is printed: its TCP state, and whether its client's socket still exists. After
every storm the server's reset watch reports (SIGUSR1) where each handler was when its
connection was lost: reading, draining (a handler writing when the reset came waits
for the transport there), not yet started, done; and any connection still open a
deadline after its loss, with the handler's stack (``--show-log`` prints those).

One line per storm, one summary per combination; exit status 1 if any storm failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import soak  # noqa: E402  (tools/soak.py: its server process, found beside this script)

from echo20 import loops  # noqa: E402  (the project's loop table, for the client's own loop)

HOST = "127.0.0.1"
IMPLS = ("streams", "iostream", "protocol")
LOOPS = ("asyncio", "uvloop")
# SO_LINGER on, timeout 0: close() sends a reset.
LINGER_ZERO = struct.pack("ii", 1, 0)
# In repair mode a socket closes without sending anything (Linux, CAP_NET_ADMIN).
TCP_REPAIR = 19
# Seconds for one client step (connect, send, a read) before it gives up.
STEP_TIMEOUT = 10.0
# How often /proc/PID/fd is read while descriptors are expected to close.
POLL_INTERVAL = 0.005
MESSAGE_SIZES = (100, 600)

# The reset watch's reports (echo20/resetwatch.py).
TALLY = re.compile(r"reset watch: handlers when their connection was lost: (?P<tally>.*)")
END_OF_REPORT = "reset watch: end of report"
LATE = re.compile(r"reset watch: connection \d+ still open [\d.]+ s after it was lost")
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


# --- the server, from the outside ------------------------------------------------------


class Server(soak.Server):
    """The server process (soak's), with its descriptors and its reset watch's reports."""

    def __init__(self, impl: str, loop: str, extra: list[str]) -> None:
        argv = [sys.executable, str(ROOT / "echo_server.py"), "--host", HOST, "--port", "0"]
        super().__init__([*argv, "--impl", impl, "--loop", loop, *extra])
        self.wait_ready()

    def watch_report(self) -> str:
        """The reset watch's report, asked for with SIGUSR1: the log written since."""
        start = len(self.log())
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + soak.SERVER_TIMEOUT
        while END_OF_REPORT not in self.log()[start:]:
            if time.monotonic() > deadline:
                raise SystemExit("reset_storm: the server did not answer SIGUSR1")
            time.sleep(POLL_INTERVAL)  # sleep-ok: the log is read by soak's thread
        return self.log()[start:]

    def descriptors(self) -> dict[int, str]:
        """The server's open descriptors and what each is (``socket:[inode]``)."""
        found: dict[int, str] = {}
        folder = f"/proc/{self.process.pid}/fd"
        for name in os.listdir(folder):
            with contextlib.suppress(FileNotFoundError):
                found[int(name)] = os.readlink(f"{folder}/{name}")
        return found


class BusyLoops:
    """``count`` processes spinning, each ending by itself after ``seconds`` (should
    this script die first) and stopped by :meth:`stop`."""

    def __init__(self, count: int, seconds: float) -> None:
        code = (
            f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
        )
        self.processes = [
            subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
            for _ in range(count)
        ]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            process.wait()


# --- what the kernel says ------------------------------------------------------------------


def tcp_table() -> list[tuple[str, int, int, str]]:
    """(state, local port, remote port, ``socket:[inode]``) of every hashed IPv4 TCP
    socket. A socket the kernel has reset or closed is unhashed: it is not listed."""
    rows = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            state = TCP_STATES.get(fields[3], fields[3])
            local = int(fields[1].split(":")[1], 16)
            remote = int(fields[2].split(":")[1], 16)
            rows.append((state, local, remote, f"socket:[{fields[9]}]"))
    return rows


def accept_queue(port: int) -> int:
    """Connections the kernel has completed and the server not yet accepted."""
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                return int(fields[4].split(":")[1], 16)
    return 0


def describe(pending: dict[int, str], port: int) -> list[str]:
    """The kernel's view of each descriptor still open: its TCP state, and whether its
    client's socket still exists."""
    rows = tcp_table()
    servers = {link: (state, peer) for state, local, peer, link in rows if local == port}
    clients = {local: state for state, local, peer, link in rows if peer == port}
    lines = []
    for fd, link in sorted(pending.items()):
        if link not in servers:
            lines.append(f"fd {fd}: reset or closed by the kernel, still open in the server")
            continue
        state, peer = servers[link]
        client = clients.get(peer)
        whose = f"whose socket is {client}" if client else "whose socket is gone"
        lines.append(f"fd {fd}: {state} with client port {peer}, {whose}")
    return lines


def kernel_counters() -> Counter[str]:
    """Machine-wide counters that tell lost or late packets: the loopback backlog's
    drops (/proc/net/softnet_stat), listen queue overflows and SYN cookies sent."""
    counts: Counter[str] = Counter()
    with open("/proc/net/softnet_stat") as table:
        counts["backlog drops"] = sum(int(line.split()[1], 16) for line in table)
    with open("/proc/net/netstat") as table:
        lines = table.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        for name, value in zip(names.split()[1:], values.split()[1:], strict=True):
            if name in ("ListenOverflows", "SyncookiesSent"):
                counts[name] = int(value)
    return counts


# --- one storm ---------------------------------------------------------------------------


@dataclass
class Plan:
    """A storm's shape."""

    connections: int
    concurrency: int
    phased: bool
    vanish: float


class Barrier:
    """Phased storms: each client resets only once every client has sent."""

    def __init__(self, parties: int) -> None:
        self.waiting = parties
        self.event = asyncio.Event()

    async def arrive(self) -> None:
        self.waiting -= 1
        if self.waiting <= 0:
            self.event.set()
        await self.event.wait()


def reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
    sock.close()


def vanish(sock: socket.socket) -> None:
    """Close without a trace: what the server sees when a client's reset was lost."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    sock.close()


async def recv_exactly(sock: socket.socket, size: int) -> None:
    loop = asyncio.get_running_loop()
    got = 0
    while got < size:
        data = await loop.sock_recv(sock, size - got)
        if not data:
            raise ConnectionResetError("end of stream before the whole reply")
        got += len(data)


async def client(
    port: int,
    rng: random.Random,
    gate: asyncio.Semaphore,
    barrier: Barrier | None,
    plan: Plan,
    outcomes: Counter[str],
) -> None:
    """Connect, send 100 to 600 bytes, reset: at once, mid-reply, or a few turns later;
    or, with ``plan.vanish``, read the whole reply and vanish."""
    loop = asyncio.get_running_loop()
    message = rng.randbytes(rng.randint(*MESSAGE_SIZES))
    how = "vanish" if rng.random() < plan.vanish else rng.choice(("at once", "mid-reply", "later"))
    async with gate:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                await loop.sock_connect(sock, (HOST, port))
                await loop.sock_sendall(sock, message)
                if how == "mid-reply":
                    # Part of the reply, so that the server is still writing the rest.
                    await recv_exactly(sock, rng.randint(1, len(message)))
                elif how == "later":
                    for _ in range(rng.randint(1, 5)):
                        await asyncio.sleep(0)  # sleep-ok: a few loop turns, on purpose
                elif how == "vanish":
                    await recv_exactly(sock, 2 * len(message))
            outcomes[how] += 1
        except (OSError, TimeoutError) as error:
            outcomes[f"client error: {type(error).__name__}"] += 1
            how = "reset"
        finally:
            if barrier is not None:
                await barrier.arrive()
            if how == "vanish":
                vanish(sock)
            else:
                reset(sock)


async def storm(port: int, plan: Plan, rng: random.Random) -> Counter[str]:
    gate = asyncio.Semaphore(plan.connections if plan.phased else plan.concurrency)
    barrier = Barrier(plan.connections) if plan.phased else None
    outcomes: Counter[str] = Counter()
    seeds = [rng.random() for _ in range(plan.connections)]
    await asyncio.gather(
        *(client(port, random.Random(seed), gate, barrier, plan, outcomes) for seed in seeds)
    )
    return outcomes


@dataclass
class Settling:
    """How the server's descriptors came back after the last reset."""

    open_at_end: int
    queued_at_end: int
    # Seconds from the last reset to each descriptor's close, for those that closed.
    close_times: list[float] = field(default_factory=list)
    # Descriptors still open when watching stopped.
    still_open: dict[int, str] = field(default_factory=dict)
    back_at_base: float | None = None


def settle(
    server: Server,
    base: dict[int, str],
    start: float,
    window: float,
    pending: dict[int, str] | None = None,
) -> Settling:
    """Watch the descriptors open now (not in ``base``), or ``pending``, close, for at
    most ``window`` seconds from ``start``; back at base once all have and the listen
    queue is empty."""
    if pending is None:
        pending = {fd: link for fd, link in server.descriptors().items() if base.get(fd) != link}
    pending = dict(pending)
    result = Settling(len(pending), accept_queue(server.port))
    deadline = start + window
    while True:
        now_open = server.descriptors()
        now = time.monotonic()
        for fd, link in list(pending.items()):
            if now_open.get(fd) != link:
                result.close_times.append(now - start)
                del pending[fd]
        # Descriptors accepted since the last look are watched too.
        for fd, link in now_open.items():
            if base.get(fd) != link and fd not in pending:
                pending[fd] = link
        if not pending and accept_queue(server.port) == 0:
            result.back_at_base = now - start
            return result
        if now >= deadline:
            result.still_open = pending
            return result
        time.sleep(POLL_INTERVAL)  # sleep-ok: /proc has no way to wait for a close


# --- the run -------------------------------------------------------------------------------


def parse_tally(report: str) -> Counter[str]:
    match = TALLY.search(report)
    tally: Counter[str] = Counter()
    if match and match["tally"] != "none":
        for item in match["tally"].split(", "):
            state, _, count = item.rpartition("=")
            tally[state] += int(count)
    return tally


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def run_combination(
    args: argparse.Namespace, impl: str, loop_name: str, plan: Plan, rng: random.Random
) -> bool:
    server = Server(impl, loop_name, args.server_arg)
    busy = BusyLoops(args.busy, args.busy_seconds)
    failures = 0
    slowest: float | None = None
    durations: list[float] = []
    at_loss: Counter[str] = Counter()
    late_reports = 0
    client_loop = loops.loop_factory(args.client_loop)
    try:
        base = server.descriptors()
        print(f"{impl} on {loop_name}: {len(base)} descriptors before the storms", flush=True)
        seen = Counter[str]()
        for number in range(1, args.storms + 1):
            counters = kernel_counters()
            started = time.monotonic()
            with asyncio.Runner(loop_factory=client_loop) as runner:
                outcomes = runner.run(storm(server.port, plan, rng))
            ended = time.monotonic()
            durations.append(ended - started)
            result = settle(server, base, ended, args.deadline)
            lines: list[str] = []
            if result.back_at_base is not None and result.back_at_base > args.deadline:
                # Back, but only at the poll just past the deadline.
                failures += 1
                verdict = f"FAIL: back at base in {result.back_at_base:.3f} s"
            elif result.back_at_base is None:
                failures += 1
                lines += describe(result.still_open, server.port)
                later = settle(server, base, ended, args.deadline + args.window, result.still_open)
                closed = [t for t in later.close_times if t > args.deadline]
                verdict = (
                    f"FAIL: {len(result.still_open)} open {args.deadline:g} s after the last "
                    f"reset; {len(closed)} closed later"
                    + (f" (by {max(closed):.2f} s)" if closed else "")
                    + f", {len(later.still_open)} still open at {args.deadline + args.window:g} s"
                )
            else:
                slowest = max(slowest or 0.0, result.back_at_base)
                verdict = f"back at base in {result.back_at_base:.3f} s"
            counters = kernel_counters() - counters
            report = server.watch_report()
            tally = parse_tally(report)
            storm_tally, seen = tally - seen, tally
            at_loss += storm_tally
            late = len(LATE.findall(report))
            late_reports += late
            errors = {k: v for k, v in outcomes.items() if k.startswith("client error")}
            times = result.close_times
            print(
                f"  storm {number:3d}: {durations[-1]:.2f} s, "
                f"{result.open_at_end} open + {result.queued_at_end} queued at the last reset, "
                f"closed in p50 {percentile(times, 0.5):.3f} / max {max(times, default=0):.3f} s: "
                f"{verdict}",
                flush=True,
            )
            print(
                "    handlers at their loss: "
                + (", ".join(f"{k} {v}" for k, v in sorted(storm_tally.items())) or "none")
                + (f"; {late} still open {args.deadline:g} s after their loss" if late else "")
                + "; kernel: "
                + (", ".join(f"{k} +{v}" for k, v in counters.items()) or "nothing")
                + "".join(f"; {v} {k}" for k, v in errors.items()),
                flush=True,
            )
            for line in lines:
                print(f"    {line}", flush=True)
            if args.show_log and (late or lines):
                print(report, flush=True)
    finally:
        busy.stop()
        status = server.stop()
    tracebacks = server.log().count("Traceback")
    print(
        f"{impl} on {loop_name}: {args.storms - failures}/{args.storms} storms back at base "
        f"within {args.deadline:g} s"
        + (f" (slowest {slowest:.3f} s)" if slowest is not None else "")
        + "; a storm took "
        f"{min(durations):.1f}-{max(durations):.1f} s; handlers at their loss: "
        + (", ".join(f"{k} {v}" for k, v in sorted(at_loss.items())) or "none")
        + f"; {late_reports} still open {args.deadline:g} s after their loss"
        + f"; server exit {status}, {tracebacks} tracebacks",
        flush=True,
    )
    return failures == 0 and tracebacks == 0 and status == 0


def name_list(allowed: tuple[str, ...], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        for name in names:
            if name not in allowed:
                raise argparse.ArgumentTypeError(
                    f"unknown {what} {name!r} (choose from {', '.join(allowed)})"
                )
        return names

    return parse


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reset_storm.py",
        description="Reset storms with the CPUs busy: do the server's descriptors come back?",
    )
    parser.add_argument(
        "--impl",
        type=name_list(IMPLS, "implementation"),
        default=list(IMPLS),
        help="comma-separated implementations (default: all three)",
    )
    parser.add_argument(
        "--loop",
        type=name_list(LOOPS, "loop"),
        default=list(LOOPS),
        help="comma-separated server loops (default: asyncio,uvloop)",
    )
    parser.add_argument("--storms", type=int, default=20, help="storms per combination")
    parser.add_argument("--connections", type=int, default=3000, help="connections per storm")
    parser.add_argument("--concurrency", type=int, default=500, help="connections at once")
    parser.add_argument(
        "--phased", action="store_true", help="open and send on all, then reset them all"
    )
    parser.add_argument(
        "--vanish",
        type=fraction,
        default=0.0,
        metavar="F",
        help="this fraction of clients vanish without a reset (TCP_REPAIR; needs root)",
    )
    parser.add_argument(
        "--busy",
        type=int,
        default=os.cpu_count() or 2,
        help="spinning processes beside the server (default: one per CPU)",
    )
    parser.add_argument(
        "--busy-seconds",
        type=float,
        default=1800.0,
        help="each spinning process ends by itself after this long",
    )
    parser.add_argument(
        "--deadline", type=float, default=1.0, help="seconds for the descriptors to come back"
    )
    parser.add_argument(
        "--window", type=float, default=3.0, help="seconds a failing storm is watched more"
    )
    parser.add_argument(
        "--client-loop",
        choices=loops.available_loops(),
        default="uvloop" if "uvloop" in loops.available_loops() else "asyncio",
        help="the clients' own event loop",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to the server (repeatable), e.g. --server-arg=--keepalive=0",
    )
    parser.add_argument("--seed", type=int, help="the random seed (default: a new one)")
    parser.add_argument(
        "--show-log", action="store_true", help="print the reset watch's reports of late closes"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = Plan(args.connections, args.concurrency, args.phased, args.vanish)
    if plan.vanish:
        probe = socket.socket()
        try:
            probe.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        except OSError as error:
            print(f"reset_storm.py: --vanish needs TCP_REPAIR (root): {error}", file=sys.stderr)
            return 2
        finally:
            probe.close()
    # The server's reset watch (echo20/resetwatch.py) reports late closes after a deadline.
    os.environ["ECHO20_RESET_WATCH"] = str(args.deadline)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(
        f"reset_storm: seed {seed}; {plan.connections} connections a storm, "
        f"{'all at once' if plan.phased else f'{plan.concurrency} at once'}; "
        f"{args.busy} busy loops",
        flush=True,
    )
    rng = random.Random(seed)
    ok = True
    for loop_name in args.loop:
        for impl in args.impl:
            ok &= run_combination(args, impl, loop_name, plan, rng)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
