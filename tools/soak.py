"""`make soak`: minutes of good and hostile clients against one server, then a reckoning.

Usage::

    python tools/soak.py                      # 2 minutes, the default server
    python tools/soak.py --seconds 30 --impl protocol --loop asyncio
    python tools/soak.py --tls                # every client over TLS (a throwaway CA)

The script starts ``echo_server.py`` on 127.0.0.1 (a free port) and runs, for
``--seconds``, a fixed number of good clients (exchanges of 1 byte to 1 MiB, each reply
checked byte for byte, sessions ended by ``over`` or a close) beside a fixed number of
hostile ones (resets, clients that vanish mid-reply, connect and idle, binary garbage,
slow readers, half-closers). Every client step has a timeout, so the run ends within
``--seconds`` plus that. Then it checks:

* lost bytes: replies owed to good clients, slow readers and half-closers that never
  came (must be 0), and replies that came wrong (must be 0);
* tracebacks in the server's log (must be 0), and the server's exit status on SIGTERM;
* the server's open file descriptors and resident memory, after warm-up vs at the end
  (the descriptors must come back to the start, the memory within ``--rss-margin-mib``).

It prints one summary and exits 1 if any check fails.
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
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from echo20 import cli, loops  # noqa: E402  (the project's loop table, for the clients' own loop)
from echo20.servers import DEFAULT_IMPLEMENTATION, IMPLEMENTATIONS  # noqa: E402

HOST = "127.0.0.1"
CHUNK = 20
KiB = 1024
MiB = 1024 * KiB

# Every client step (connect, a whole exchange, a whole slow read) must finish within
# this many seconds; a good client that takes longer counts as a failure.
STEP_TIMEOUT = 30.0
# Seconds for the server to start, to give back its descriptors, and to exit.
SERVER_TIMEOUT = 30.0
# How often the descriptor count is looked at while waiting for it to settle.
POLL_INTERVAL = 0.1
# Seconds between progress lines.
PROGRESS_EVERY = 10.0
# The reply to a message of N bytes is 2N bytes, whatever the server's batches.
OVER = b"over"

STOPPED = re.compile(r"stopped: (\d+) connections served, (\d+) bytes in, (\d+) bytes out")


# --- the server, from the outside ------------------------------------------------------


class Server:
    """The server process: its port, its log, its descriptors and memory from /proc."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._stderr: list[bytes] = []
        self._reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._reader.start()
        self.port = 0
        self.loop = ""

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        # A raw read returns what is there; the log is read as it comes, never blocking
        # the server on a full pipe.
        while chunk := os.read(self.process.stderr.fileno(), 65536):
            self._stderr.append(chunk)

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        stdout = self.process.stdout
        box: list[bytes] = []
        reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(SERVER_TIMEOUT)
        ready = cli.parse_ready_line(box[0].decode()) if box else None
        if ready is None:
            self.process.kill()
            self.process.wait()
            raise SystemExit(f"soak: the server did not start; its log:\n{self.log()}")
        self.port = ready.port
        self.loop = ready.loop

    def log(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=SERVER_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self._reader.join(SERVER_TIMEOUT)
        return status


# --- checking replies ------------------------------------------------------------------


def answers(message: bytes, reply: bytes) -> bool:
    """True when ``reply`` is the double reply to ``message``, however it was cut.

    Chunks are 1 to 20 bytes, the reply is ``c1 rev(c1) c2 rev(c2) ...`` and the chunks
    make up the message. Taken apart greedily, longest chunk first: with random
    messages a wrong cut fits by chance with odds of 1 in 256 per byte.
    """
    if len(reply) != 2 * len(message):
        return False
    position = 0
    while position < len(message):
        out = 2 * position
        for size in range(min(CHUNK, len(message) - position), 0, -1):
            chunk = message[position : position + size]
            if (
                reply[out : out + size] == chunk
                and reply[out + size : out + 2 * size] == chunk[::-1]
            ):
                break
        else:
            return False
        position += size
    return True


def random_message(rng: random.Random) -> bytes:
    """Mostly short, sometimes long: under, at and over 20 bytes, up to 1 MiB."""
    roll = rng.random()
    if roll < 0.35:
        size = rng.randint(1, CHUNK - 1)
    elif roll < 0.45:
        size = CHUNK
    elif roll < 0.85:
        size = rng.randint(CHUNK + 1, 400)
    elif roll < 0.99:
        size = rng.randint(400, 64 * KiB)
    else:
        size = rng.randint(64 * KiB, MiB)
    message = rng.randbytes(size)
    # A 4-byte message that happens to be "over" would close the session.
    return message if message != OVER else b"ovex"


# --- the clients -----------------------------------------------------------------------


@dataclass
class Tally:
    exchanges: int = 0
    bytes_verified: int = 0
    lost_bytes: int = 0
    wrong_replies: int = 0
    good_failures: list[str] = field(default_factory=list)
    sessions: int = 0
    hostile: Counter[str] = field(default_factory=Counter)
    hostile_errors: Counter[str] = field(default_factory=Counter)

    def owed(self, message: bytes, reply: bytes, who: str) -> None:
        """Account for a reply owed to a client that must get it."""
        if len(reply) < 2 * len(message):
            self.lost_bytes += 2 * len(message) - len(reply)
            self.good_failures.append(f"{who}: {len(reply)} of {2 * len(message)} reply bytes")
        elif not answers(message, reply):
            self.wrong_replies += 1
            self.good_failures.append(f"{who}: a wrong reply to {len(message)} bytes")
        else:
            self.exchanges += 1
            self.bytes_verified += len(reply)


Address = tuple[str, int]


# With --tls: how the clients reach the server (set once, in main).
CLIENT_TLS: ssl.SSLContext | None = None


async def connect(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(STEP_TIMEOUT):
        return await asyncio.open_connection(
            *address,
            limit=4 * MiB,
            ssl=CLIENT_TLS,
            server_hostname="localhost" if CLIENT_TLS else None,
        )


def shut_down_sending(writer: asyncio.StreamWriter) -> None:
    """The end of stream: a FIN; under TLS a bare FIN on the socket, since asyncio's TLS
    transport cannot half-close (the server must take it as the end of stream)."""
    if CLIENT_TLS is None:
        writer.write_eof()
        return
    # uvloop's stand-in socket refuses shutdown(); a duplicate of the descriptor is the
    # same socket, and a shutdown is the socket's, not the descriptor's.
    with socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno())) as sock:
        sock.shutdown(socket.SHUT_WR)


async def read_up_to(reader: asyncio.StreamReader, size: int) -> bytes:
    """Up to ``size`` bytes, fewer if the stream ends first."""
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as error:
        return error.partial


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes
) -> bytes:
    """Send ``message`` while reading its reply, as a client that never blocks the server."""
    async with asyncio.timeout(STEP_TIMEOUT):
        _, reply = await asyncio.gather(send(writer, message), read_up_to(reader, 2 * len(message)))
    return reply


def reset(writer: asyncio.StreamWriter) -> None:
    """Vanish: close with SO_LINGER 0, so the server sees a reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def good_client(address: Address, deadline: float, rng: random.Random, tally: Tally) -> None:
    """Sessions of exchanges until the deadline; each ends with ``over`` or a plain close."""
    while time.monotonic() < deadline:
        tally.sessions += 1
        try:
            reader, writer = await connect(address)
        except (OSError, TimeoutError) as error:
            tally.good_failures.append(f"good client: connect failed: {error!r}")
            continue
        try:
            for _ in range(rng.randint(1, 40)):
                if time.monotonic() >= deadline:
                    break
                message = random_message(rng)
                reply = await exchange(reader, writer, message)
                tally.owed(message, reply, "good client")
                if len(reply) < 2 * len(message):
                    break
            else:
                if rng.random() < 0.5:
                    reply = await exchange(reader, writer, OVER)
                    tally.owed(OVER, reply, "good client (over)")
                    async with asyncio.timeout(STEP_TIMEOUT):
                        extra = await reader.read(1)
                    if extra:
                        tally.good_failures.append("good client: no end of stream after over")
        except (OSError, TimeoutError) as error:
            tally.good_failures.append(f"good client: {error!r}")
        finally:
            await close(writer)


async def resetter(address: Address, rng: random.Random) -> None:
    """Connect, maybe send, maybe read a little, then reset."""
    reader, writer = await connect(address)
    if rng.random() < 0.8:
        await send(writer, rng.randbytes(rng.randint(1, 4 * KiB)))
        if rng.random() < 0.5:
            async with asyncio.timeout(STEP_TIMEOUT):
                await reader.read(rng.randint(1, 64))
    reset(writer)


async def vanisher(address: Address, rng: random.Random) -> None:
    """Send a long message, read a little of its reply, reset mid-reply."""
    reader, writer = await connect(address)
    async with asyncio.timeout(STEP_TIMEOUT):
        await send(writer, rng.randbytes(rng.randint(64 * KiB, 512 * KiB)))
        await reader.read(rng.randint(1, 16 * KiB))
    reset(writer)


async def idler(address: Address, rng: random.Random) -> None:
    """Connect, say nothing for a while, then leave (end of stream or reset)."""
    _, writer = await connect(address)
    await asyncio.sleep(rng.uniform(0.5, 5.0))  # sleep-ok: idling is this client's attack
    if rng.random() < 0.5:
        reset(writer)
    else:
        await close(writer)


async def garbage(address: Address, rng: random.Random) -> None:
    """Binary junk (NULs, high bytes, bare ``over`` inside), read some, close unread."""
    reader, writer = await connect(address)
    junk = bytes(rng.choice((0, 0xFF, 0x80, 0x0A, rng.randrange(256))) for _ in range(2 * KiB))
    junk += rng.randbytes(rng.randint(0, 64 * KiB)) + b"overover\x00over"
    async with asyncio.timeout(STEP_TIMEOUT):
        await send(writer, junk)
        await reader.read(rng.randint(1, 4 * KiB))
    await close(writer)


async def slow_reader(address: Address, rng: random.Random, tally: Tally) -> None:
    """Send up to 1 MiB while reading the reply in small sips; every byte is owed."""
    reader, writer = await connect(address)
    message = rng.randbytes(rng.randint(64 * KiB, MiB))
    sip = rng.choice((512, 4 * KiB, 16 * KiB))

    async def sip_all() -> bytes:
        reply = bytearray()
        while len(reply) < 2 * len(message):
            data = await reader.read(min(sip, 2 * len(message) - len(reply)))
            if not data:
                break
            reply += data
            await asyncio.sleep(0.001)  # sleep-ok: a slow reader is slow on purpose
        return bytes(reply)

    try:
        async with asyncio.timeout(STEP_TIMEOUT * 4):
            _, reply = await asyncio.gather(send(writer, message), sip_all())
        tally.owed(message, reply, "slow reader")
    finally:
        await close(writer)


async def half_closer(address: Address, rng: random.Random, tally: Tally) -> None:
    """Send, shut down the sending side, then read: every reply, then the end of stream."""
    reader, writer = await connect(address)
    message = rng.randbytes(rng.choice((rng.randint(1, 100), rng.randint(100, 1 * MiB))))
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            await send(writer, message)
            shut_down_sending(writer)
            reply = await reader.read(-1)
        tally.owed(message, reply, "half-closer")
    finally:
        await close(writer)


HostileKind = Callable[[Address, random.Random, Tally], Awaitable[None]]
HOSTILE: dict[str, HostileKind] = {
    "reset": lambda address, rng, _: resetter(address, rng),
    "vanish mid-reply": lambda address, rng, _: vanisher(address, rng),
    "connect and idle": lambda address, rng, _: idler(address, rng),
    "garbage": lambda address, rng, _: garbage(address, rng),
    "slow reader": slow_reader,
    "half-closer": half_closer,
}
# Kinds whose replies are owed: their failures are the server's.
OWED = {"slow reader", "half-closer"}


async def hostile_client(
    address: Address, deadline: float, rng: random.Random, tally: Tally
) -> None:
    while time.monotonic() < deadline:
        kind = rng.choice(list(HOSTILE))
        tally.hostile[kind] += 1
        try:
            await HOSTILE[kind](address, rng, tally)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as error:
            if kind in OWED:
                tally.good_failures.append(f"{kind}: {error!r}")
            else:
                # The server may close on a hostile client first; that is its right.
                tally.hostile_errors[type(error).__name__] += 1


async def run_clients(
    address: Address, seconds: float, good: int, hostile: int, seed: int, server: Server
) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds
    master = random.Random(seed)
    tasks = [
        asyncio.create_task(good_client(address, deadline, random.Random(master.random()), tally))
        for _ in range(good)
    ]
    tasks += [
        asyncio.create_task(
            hostile_client(address, deadline, random.Random(master.random()), tally)
        )
        for _ in range(hostile)
    ]
    started = time.monotonic()
    while not all(task.done() for task in tasks):
        await asyncio.wait(tasks, timeout=PROGRESS_EVERY)
        print(
            f"  {time.monotonic() - started:5.0f} s: {tally.exchanges} exchanges, "
            f"{tally.bytes_verified / MiB:.1f} MiB verified, {sum(tally.hostile.values())} "
            f"hostile clients; server {server.rss_kib() / KiB:.1f} MiB, {server.fds()} fds",
            flush=True,
        )
    for task in tasks:
        if task.exception() is not None:
            tally.good_failures.append(f"client task failed: {task.exception()!r}")
    return tally


async def warm_up(address: Address) -> None:
    """Let the server size its buffers for every kind of client before the baseline."""
    tally = Tally()
    rng = random.Random(0)
    reader, writer = await connect(address)
    for size in (5, 20, 45, 1000, 300 * KiB):
        message = rng.randbytes(size)
        tally.owed(message, await exchange(reader, writer, message), "warm-up")
    await close(writer)
    await half_closer(address, rng, tally)
    await resetter(address, rng)
    if tally.good_failures:
        raise SystemExit(f"soak: the warm-up failed: {tally.good_failures}")


async def wait_for_fds(server: Server, target: int) -> int:
    """Poll the server's descriptor count until it is back to ``target`` (bounded)."""
    deadline = time.monotonic() + SERVER_TIMEOUT
    count = server.fds()
    while count > target and time.monotonic() < deadline:
        await asyncio.sleep(POLL_INTERVAL)  # sleep-ok: /proc announces nothing; polled
        count = server.fds()
    return count


def throwaway_certificate() -> str:
    """A certificate for localhost from a throwaway CA (trustme) that the clients trust."""
    global CLIENT_TLS
    try:
        import trustme
    except ImportError:
        sys.exit("soak: --tls needs trustme: pip install 'echo20[test]'")
    ca = trustme.CA()
    path = Path(tempfile.mkdtemp(prefix="soak-tls-")) / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(path))
    CLIENT_TLS = ssl.create_default_context()
    ca.configure_trust(CLIENT_TLS)
    return str(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Good and hostile clients against echo20-server, then a reckoning.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the clients run")
    parser.add_argument("--impl", choices=tuple(IMPLEMENTATIONS), default=DEFAULT_IMPLEMENTATION)
    parser.add_argument("--loop", default="auto", help="the server's event loop")
    parser.add_argument("--client-loop", default="auto", help="this script's event loop")
    parser.add_argument("--good", type=int, default=16, help="good clients at a time")
    parser.add_argument("--hostile", type=int, default=32, help="hostile clients at a time")
    parser.add_argument("--seed", type=int, default=5, help="random seed for the clients")
    parser.add_argument(
        "--tls", action="store_true", help="serve and connect over TLS (needs trustme)"
    )
    parser.add_argument(
        "--rss-margin-mib",
        type=float,
        default=16.0,
        help="how far above its warmed-up size the server's memory may end",
    )
    return parser


@dataclass
class Reckoning:
    """What a soak run measured: the clients' tally and the server's state around it."""

    tally: Tally
    loop: str
    start_fds: int
    end_fds: int
    start_rss: int
    end_rss: int
    status: int
    log: str


def soak(args: argparse.Namespace) -> Reckoning:
    """Start the server, warm it up, run the clients, and measure it before and after."""
    server_argv = [sys.executable, str(ROOT / "echo_server.py"), "--host", HOST, "--port", "0"]
    server_argv += ["--impl", args.impl, "--loop", args.loop]
    if args.tls:
        server_argv += ["--certfile", throwaway_certificate()]
    print(f"soak: {' '.join(server_argv[1:])}, {args.seconds:g} s", flush=True)
    server = Server(server_argv)
    server.wait_ready()
    address = (HOST, server.port)
    try:
        with asyncio.Runner(loop_factory=loops.loop_factory(args.client_loop)) as runner:
            idle_fds = server.fds()
            runner.run(warm_up(address))
            # Back to the idle count once the warm-up's connections are gone.
            start_fds = runner.run(wait_for_fds(server, idle_fds))
            start_rss = server.rss_kib()
            print(
                f"soak: server on port {server.port} (loop: {server.loop}); after warm-up "
                f"{start_rss / KiB:.1f} MiB, {start_fds} fds; {args.good} good and "
                f"{args.hostile} hostile clients",
                flush=True,
            )
            tally = runner.run(
                run_clients(address, args.seconds, args.good, args.hostile, args.seed, server)
            )
            end_fds = runner.run(wait_for_fds(server, start_fds))
        # The server hands freed memory back 0.5 s after its last connection ends
        # (echo20.servers.base.MEMORY_RELEASE_DELAY); measure after that.
        time.sleep(1.0)  # sleep-ok: a measurement delay, not synchronisation
        end_rss = server.rss_kib()
    finally:
        status = server.stop()
    return Reckoning(
        tally, server.loop, start_fds, end_fds, start_rss, end_rss, status, server.log()
    )


def report(args: argparse.Namespace, run: Reckoning) -> int:
    """Print the summary and the verdict; 0 when every check passed."""
    tally = run.tally
    tracebacks = run.log.count("Traceback")
    stopped = STOPPED.search(run.log)
    margin_kib = args.rss_margin_mib * KiB
    checks = {
        "lost bytes": tally.lost_bytes == 0,
        "wrong replies": tally.wrong_replies == 0,
        "good-client failures": not tally.good_failures,
        "tracebacks in the server log": tracebacks == 0,
        "descriptors back to the start": run.end_fds == run.start_fds,
        "memory back within the margin": run.end_rss <= run.start_rss + margin_kib,
        "server exit status 0 on SIGTERM": run.status == 0 and stopped is not None,
    }
    hostile = ", ".join(f"{kind} {count}" for kind, count in sorted(tally.hostile.items()))
    print(
        "\nsoak summary\n"
        f"  duration          {args.seconds:g} s, server --impl {args.impl} (loop: {run.loop})"
        f"{', TLS' if args.tls else ''}\n"
        f"  exchanges         {tally.exchanges} verified in {tally.sessions} good sessions\n"
        f"  bytes verified    {tally.bytes_verified} ({tally.bytes_verified / MiB:.1f} MiB)\n"
        f"  lost bytes        {tally.lost_bytes}\n"
        f"  wrong replies     {tally.wrong_replies}\n"
        f"  hostile clients   {sum(tally.hostile.values())} ({hostile})\n"
        f"  hostile errors    {dict(tally.hostile_errors) or 'none'} (expected: the server may"
        " drop them first)\n"
        f"  tracebacks        {tracebacks}\n"
        f"  server memory     {run.start_rss / KiB:.1f} MiB after warm-up, "
        f"{run.end_rss / KiB:.1f} MiB at the end (margin {args.rss_margin_mib:g} MiB)\n"
        f"  server fds        {run.start_fds} after warm-up, {run.end_fds} at the end\n"
        f"  server exit       status {run.status}; "
        f"{stopped.group(0) if stopped else 'no summary line'}"
    )
    for failure in tally.good_failures[:20]:
        print(f"  failure: {failure}")
    failed = [name for name, ok in checks.items() if not ok]
    print(f"\nsoak: {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report(args, soak(args))


if __name__ == "__main__":
    sys.exit(main())
