"""Server processes for the benchmark: start, pin, prime, watch and stop them.

Every target is its own process, in its own session (a Ctrl-C reaches the benchmark
only, which then stops every server itself), pinned to one CPU, known to be listening
from its ready line; a ``--server-cmd`` server, which may print nothing, once its port
accepts connections. Its CPU is measured in the process that holds the listening
socket, so a wrapper (a shell, a launcher script) is not mistaken for the server.
"""

from __future__ import annotations

import os
import re
import selectors
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from echo20.bench.certs import SERVER_NAME, TLSFiles
from echo20.bench.environment import MachineSample, busy_processes, load_average, loaded
from echo20.bench.targets import Target, Wire, server_argv
from echo20.bench.tools import Tools
from echo20.cli import parse_ready_line
from echo20.conformance.processes import command_argv, describe_status, free_port
from echo20.errors import BenchError, ProtocolError
from echo20.netutil import format_address
from echo20.protocol import split_reply

__all__ = [
    "Address",
    "Pinning",
    "Quiet",
    "Server",
    "choose_cpus",
    "servers_running",
    "start_command",
    "start_target",
]

# Seconds a server gets to print its ready line (Tornado and uvloop imports on a busy
# machine take a while), and to exit after SIGTERM before it is killed.
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Seconds for the priming exchange.
PRIME_TIMEOUT = 10.0
# Before each cell the server must have been quiet (under QUIET_SHARE of a CPU beyond
# what it uses with no client at all) for one QUIET_INTERVAL, waiting at most
# QUIET_TIMEOUT seconds; other processes are looked at over the same interval. The
# server's CPU time is in nanoseconds, so a short interval tells idle from busy; it is
# paid before every run, and at 0.2 s it was a quarter of a loop page's time.
QUIET_INTERVAL = 0.05
# The servers' CPU with no client at all is sampled once, at start, over this long.
IDLE_INTERVAL = 0.2
QUIET_SHARE = 0.02
QUIET_TIMEOUT = 15.0
# Another process using this much of a CPU before or during a cell is named in its notes.
OTHER_BUSY_PCT = 10.0
# A server using more than this share of a CPU with no client spins: it is stopped
# (SIGSTOP) while the other targets are measured, so it does not take their CPU.
SPIN_SHARE = 0.05

# Seconds between two connection attempts to a --server-cmd server that is starting.
KNOCK_INTERVAL = 0.05
# A server's last words on stderr, cut to this length in a one-line message.
LAST_WORDS_LENGTH = 200

# Where a server listens: (host, port), or a Unix socket's path.
Address = tuple[str, int] | str


@dataclass(frozen=True)
class Pinning:
    """Which CPU the server and the load generator run on (None: wherever)."""

    server_cpu: int | None
    loadgen_cpu: int | None
    note: str


def choose_cpus(enabled: bool) -> Pinning:
    """Server on the first usable CPU, load generator on the second, when there are two."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled:
        return Pinning(None, None, "not pinned (--no-pin)")
    if len(cpus) < 2:
        return Pinning(None, None, "not pinned: one usable CPU, shared by server and load")
    return Pinning(cpus[0], cpus[1], f"server on CPU {cpus[0]}, load generator on CPU {cpus[1]}")


def pin_process(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` to ``cpu``; threads it starts later inherit the mask."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), {cpu})


def read_line(stream: IO[bytes], deadline: float) -> str:
    """One line from a child's pipe, waiting until ``deadline`` (``time.monotonic``).

    Returns ``""`` at end of file; raises ``TimeoutError`` when the deadline passes.
    """
    fd = stream.fileno()
    data = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace")


def read_status_kib(pid: int, key: str) -> int | None:
    """A ``/proc/PID/status`` value in KiB (``VmRSS``, ``VmHWM``), None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB$", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def process_cpu_ns(pid: int) -> int | None:
    """CPU time of every thread of ``pid`` so far (scheduler run time), None if gone."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with suppress(FileNotFoundError):
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    except OSError:
        return None
    return total


@dataclass(frozen=True)
class Quiet:
    """What the machine was doing up to a cell: whether the server was still busy (after
    QUIET_TIMEOUT); the other processes still busy when a ``--wait-quiet`` wait ran
    out, by their share over the whole wait; and the sample the last interval began
    with, from which the cell counts other processes' CPU (``others-busy``)."""

    server_busy: bool
    others: list[str]
    since: MachineSample | None = field(default=None, compare=False)


def wait_until_quiet(server: Server, *, wait: float = 0.0) -> Quiet:
    """Wait until the server is idle (at most QUIET_TIMEOUT) and, for up to ``wait``
    seconds, until no other process is busy and the load average is low; what was
    still busy at the end.

    A slow server may still be answering the previous cell's last messages after its
    clients left; that work must not land in the next cell's window. Idle is the
    server's own idle share: a server that spins with no client is idle at that level.
    Another process's time is counted in 10 ms ticks, so over one short interval a
    single tick looks busy: that only makes a wait go on, and the cell's own window
    (from ``since`` to its end) is what names a process that shaped it.
    """
    started = time.monotonic()
    exclude = {os.getpid(), server.pid, server.process.pid}
    allowed = QUIET_INTERVAL * 1e9 * (server.idle_share + QUIET_SHARE)
    first = machine = MachineSample.take()
    while True:
        before = process_cpu_ns(server.pid)
        time.sleep(QUIET_INTERVAL)  # sleep-ok: sampling CPU times over an interval
        after = process_cpu_ns(server.pid)
        now = MachineSample.take()
        others = busy_processes(machine, now, exclude=exclude, least_pct=OTHER_BUSY_PCT)
        idle = before is None or after is None or after - before < allowed
        elapsed = time.monotonic() - started
        # The load average too: it stays up for a minute after a burst (the run's own
        # servers starting, say), and a cell measured meanwhile is marked ``loaded``.
        average = load_average()
        calm = not others and not loaded(average[0] if average else None)
        waited_out = elapsed >= wait
        if (idle and (calm or waited_out)) or (not idle and elapsed >= QUIET_TIMEOUT):
            lasting = []
            if others and wait > 0:
                lasting = busy_processes(first, now, exclude=exclude, least_pct=OTHER_BUSY_PCT)
            return Quiet(not idle, lasting, machine)
        machine = now


def measure_idle_shares(servers: Sequence[Server]) -> None:
    """Each server's share of a CPU with no client, over one IDLE_INTERVAL for all."""
    before = {server.pid: process_cpu_ns(server.pid) for server in servers}
    time.sleep(IDLE_INTERVAL)  # sleep-ok: sampling the servers' CPU times
    for server in servers:
        first, then = before[server.pid], process_cpu_ns(server.pid)
        if first is not None and then is not None:
            server.idle_share = (then - first) / (IDLE_INTERVAL * 1e9)


@dataclass
class Server:
    """A target's server process, known to be listening on ``address``."""

    target: Target
    process: subprocess.Popen[bytes]
    address: Address
    ready_line: str
    stderr_path: Path
    # The process whose CPU and memory are measured: the one holding the listening
    # socket (None: the process started).
    measured_pid: int | None = None
    # Its share of a CPU with no client (measure_idle_shares), and whether it is
    # stopped now because that share says it spins.
    idle_share: float = 0.0
    paused: bool = False
    # The run's certificates when it serves TLS.
    tls: TLSFiles | None = None

    @property
    def spins(self) -> bool:
        """It keeps a CPU busy with nothing to do."""
        return self.idle_share > SPIN_SHARE

    def pause(self) -> None:
        """SIGSTOP: a spinning server must not take the CPU of the one measured."""
        if not self.paused and self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            signal_group(self.process.pid, signal.SIGCONT)
            self.paused = False

    @property
    def pid(self) -> int:
        return self.measured_pid or self.process.pid

    def loadgen_args(self) -> list[str]:
        """The C load generator's arguments that name this server: its address, and the
        authority to trust under TLS."""
        tls = ["--tls-ca", str(self.tls.cafile)] if self.tls is not None else []
        if isinstance(self.address, str):
            return ["--unix", self.address, *tls]
        return ["--host", self.address[0], "--port", str(self.address[1]), *tls]

    def connect(self, timeout: float, *, handshake: bool = True) -> socket.socket:
        """A blocking connection to the server; under TLS, with its handshake done (the
        certificate checked) unless ``handshake`` is False."""
        if isinstance(self.address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.address)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(self.address, timeout=timeout)
        if self.tls is None or not handshake:
            return sock
        try:
            return self.tls.client_context().wrap_socket(sock, server_hostname=SERVER_NAME)
        except OSError:
            sock.close()
            raise

    def exit_status(self) -> int | None:
        """None while it runs."""
        return self.process.poll()

    def stderr_tail(self, lines: int = 6) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM to its process group, then the exit status; killed (and -9 returned)
        after STOP_TIMEOUT. The group: a wrapper's server goes with it."""
        if self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGTERM)
            self.resume()  # a stopped server handles SIGTERM once continued
        try:
            status = self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            signal_group(self.process.pid, signal.SIGKILL)
            status = self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return status


def signal_group(pid: int, sig: signal.Signals) -> None:
    """``sig`` to the process group ``pid`` leads (each server starts a session)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def launch(target: Target, argv: Sequence[str], *, log_dir: Path) -> subprocess.Popen[bytes]:
    """Start a server's process, its stdout a pipe for the ready line, stderr its log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{target.label}.stderr").open("ab") as stderr:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )


def wait_ready(
    target: Target,
    process: subprocess.Popen[bytes],
    argv: Sequence[str],
    *,
    log_dir: Path,
    cpu: int | None,
    ready_timeout: float = READY_TIMEOUT,
    tls: TLSFiles | None = None,
) -> Server:
    """Wait for a launched server's ready line and pin it; BenchError (with stderr) if it
    prints none (it is stopped then)."""
    assert process.stdout is not None
    try:
        line = read_line(process.stdout, time.monotonic() + ready_timeout)
    except TimeoutError:
        line = ""
    except BaseException:  # Ctrl-C while it starts: no server is left behind
        process.kill()
        process.wait()
        raise
    ready = parse_ready_line(line)
    stderr_path = log_dir / f"{target.label}.stderr"
    server = Server(target, process, "", line.strip(), stderr_path, tls=tls)
    if ready is None:
        status = server.stop()
        said = f"printed {line.strip()!r}" if line.strip() else "printed no ready line"
        tail = server.stderr_tail(1)
        raise BenchError(
            f"{shlex.join(argv)} {said} (exit status {status})" + (f": {tail}" if tail else "")
        )
    # A Unix socket's ready line names its path, with port 0.
    server.address = ready.host if ready.port == 0 else (ready.host, ready.port)
    if cpu is not None:
        pin_process(server.pid, cpu)
    return server


def start_target(
    target: Target,
    *,
    tools: Tools,
    wire: Wire,
    log_dir: Path,
    cpu: int | None,
    ready_timeout: float = READY_TIMEOUT,
) -> Server:
    """Start one target's server (a --server-cmd one through :func:`start_command`)."""
    if target.command:
        return start_command(
            target, wire=wire, log_dir=log_dir, cpu=cpu, ready_timeout=ready_timeout
        )
    argv = server_argv(target, wire, str(tools.server))
    process = launch(target, argv, log_dir=log_dir)
    return wait_ready(
        target, process, argv, log_dir=log_dir, cpu=cpu, ready_timeout=ready_timeout, tls=wire.tls
    )


def start_command(
    target: Target,
    *,
    wire: Wire,
    log_dir: Path,
    cpu: int | None,
    ready_timeout: float = READY_TIMEOUT,
) -> Server:
    """Start a ``--server-cmd`` server on a free port (``{port}``), or its Unix socket
    (``{path}``), and wait until it accepts a connection: any echo20 server will do,
    whatever it prints (its output goes to its log). BenchError, one line, if it exits
    first or does not listen in time."""
    path = wire.unix_path(target)
    port = free_port(wire.host) if path is None else 0
    address: Address = (wire.host, port) if path is None else path
    files = {}
    if wire.tls is not None:
        files = {"certfile": wire.tls.certfile, "keyfile": wire.tls.keyfile}
    argv = command_argv(target.command, port=port, host=wire.host, path=path or "", **files)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{target.label}.stderr"
    shown = f"--server-cmd {target.command!r}"
    with log_path.open("ab") as log:
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        except OSError as error:
            raise BenchError(
                f"{shown}: cannot run {argv[0]!r}: {error.strerror or error}"
            ) from None
    server = Server(target, process, address, "", log_path, tls=wire.tls)
    try:
        wait_until_listening(server, shown, ready_timeout)
    except BaseException:  # BenchError, or Ctrl-C while it starts: no server is left behind
        server.stop()
        raise
    server.measured_pid = listening_pid(process.pid, server.address)
    if cpu is not None:
        pin_process(server.pid, cpu)
    return server


def wait_until_listening(server: Server, shown: str, timeout: float) -> None:
    """Knock until the server accepts a connection; BenchError if it exits or times out."""
    deadline = time.monotonic() + timeout
    where = format_address(server.address)
    while True:
        try:
            with server.connect(KNOCK_INTERVAL * 10, handshake=False):
                return
        except OSError:
            pass  # not listening yet
        status = server.exit_status()
        if status is not None:
            raise BenchError(
                f"{shown}: the server {describe_status(status)} before it listened on "
                f"{where}{last_words(server)}"
            )
        if time.monotonic() >= deadline:
            raise BenchError(
                f"{shown}: nothing accepted connections on {where} within {timeout:g} s "
                f"(is {{port}} or {{path}} where it listens?){last_words(server)}"
            )
        time.sleep(KNOCK_INTERVAL)  # sleep-ok: polling a port that no event announces


def last_words(server: Server) -> str:
    """`` (its last words: '...')`` from its log, for a one-line message; or nothing."""
    words = server.stderr_tail(1).strip()
    if not words:
        return ""
    if len(words) > LAST_WORDS_LENGTH:
        words = words[: LAST_WORDS_LENGTH - 3] + "..."
    return f" (its last words: {words!r})"


def listening_inodes(address: Address) -> set[str]:
    """The inodes of the listening sockets bound to ``address``, from ``/proc/net``."""
    inodes: set[str] = set()
    if isinstance(address, str):
        with suppress(OSError):
            for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
                fields = line.split()
                # Num RefCount Protocol Flags Type St Inode Path; St 01: listening.
                if len(fields) >= 8 and fields[7] == address and fields[5] == "01":
                    inodes.add(fields[6])
        return inodes
    port = f"{address[1]:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # sl local rem st ... inode (field 9); st 0A: LISTEN.
                if len(fields) > 9 and fields[1].endswith(f":{port}") and fields[3] == "0A":
                    inodes.add(fields[9])
    return inodes


def listening_pid(leader: int, address: Address) -> int:
    """The process of ``leader``'s session that holds the socket listening on
    ``address``: the server itself when ``leader`` is a wrapper; ``leader`` if none is
    found (or several are: the session's first is as good a guess as any)."""
    inodes = {f"socket:[{inode}]" for inode in listening_inodes(address)}
    holders: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) != leader:
                continue
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue
        if links & inodes:
            holders.append(pid)
    return holders[0] if len(holders) == 1 else leader


def prime(server: Server) -> None:
    """One exchange on one connection, then close it: the server has served a client.

    On the default asyncio loop this matters: until a connection's end of stream frees a
    256 KiB receive buffer, glibc keeps its mmap threshold low and every recv maps and
    unmaps memory (python/cpython#85451). ``echo20-bench cold-start`` measures that
    effect; the matrix measures servers past it.
    """
    message = b"prime"
    with server.connect(PRIME_TIMEOUT) as sock:
        sock.sendall(message)
        reply = b""
        while len(reply) < 2 * len(message):
            data = sock.recv(2 * len(message) - len(reply))
            if not data:
                break
            reply += data
    try:
        split_reply(message, reply)
    except ProtocolError as error:
        raise WrongReplyError(f"wrong reply to {message!r}: {error}") from None


class WrongReplyError(BenchError):
    """The priming exchange's reply is not the echo20 reply: the server is wrong."""


@contextmanager
def servers_running(
    targets: Sequence[Target],
    *,
    tools: Tools,
    wire: Wire,
    log_dir: Path,
    cpu: int | None,
    failures: dict[Target, str],
    exit_statuses: dict[Target, int],
    ready_timeout: float = READY_TIMEOUT,
) -> Iterator[dict[Target, Server]]:
    """Start and prime every target; stop them all on the way out, whatever happens.

    ``--server-cmd`` servers start first, and one that does not listen is a BenchError:
    the user's own server is the point of such a run. Another target that does not start
    is left out of the yielded dict; its reason (``did not start: ...``, or ``wrong
    reply: ...`` for one that answered the priming exchange wrongly) goes into
    ``failures``. Every exit status after SIGTERM goes into ``exit_statuses``.
    """
    servers: dict[Target, Server] = {}
    starting: dict[Target, subprocess.Popen[bytes]] = {}
    try:
        for target in [target for target in targets if target.command]:
            try:
                servers[target] = start_command(
                    target, wire=wire, log_dir=log_dir, cpu=cpu, ready_timeout=ready_timeout
                )
            except (BenchError, OSError) as error:
                raise BenchError(str(error)) from None
        # The others all start at once (each interpreter's imports overlap), and are
        # waited for one by one.
        argvs = {
            target: server_argv(target, wire, str(tools.server))
            for target in targets
            if not target.command
        }
        for target, argv in argvs.items():
            try:
                starting[target] = launch(target, argv, log_dir=log_dir)
            except OSError as error:
                failures[target] = f"did not start: {error}"
        for target, process in list(starting.items()):
            del starting[target]
            try:
                servers[target] = wait_ready(
                    target,
                    process,
                    argvs[target],
                    log_dir=log_dir,
                    cpu=cpu,
                    ready_timeout=ready_timeout,
                    tls=wire.tls,
                )
            except BenchError as error:
                failures[target] = f"did not start: {error}"
        for target, server in servers.items():
            try:
                prime(server)
            except WrongReplyError as error:
                failures[target] = str(error)
            except (BenchError, OSError) as error:
                failures[target] = f"did not answer: {error}"
        measure_idle_shares(list(servers.values()))
        for server in servers.values():
            if server.spins:
                server.pause()
        yield servers
    finally:
        for process in starting.values():  # interrupted while they started
            signal_group(process.pid, signal.SIGKILL)
            process.wait()
        for target, server in servers.items():
            exit_statuses[target] = server.stop()
