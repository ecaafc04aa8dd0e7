"""``echo20-bench``: the command line of the event-loop benchmark.

Run it::

    echo20-bench run                                  # every target, every loop
    echo20-bench run --targets c,protocol --loops uvloop --connections 16 --sizes 200
    echo20-bench run --targets protocol --rate 50%    # open loop at half its capacity
    echo20-bench run --targets c,protocol --rates 20%,50%,80%   # latency against load
    echo20-bench run --server-cmd "python my_server.py --port {port}"   # any echo20 server
    echo20-bench loops --page docs/benchmark/loops.md   # every loop, TCP, TLS and Unix
    echo20-bench compare old/bench.json new/bench.json
    echo20-bench idle --connections 10000             # RSS per idle connection
    echo20-bench cold-start                           # a fresh server against a warm one
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

from echo20 import cli, loops
from echo20.bench.budgets import parse_budget
from echo20.bench.compare import command_compare
from echo20.bench.loop_run import LOOP_PAGE_TARGETS, TRANSPORTS, command_loops
from echo20.bench.matrix import command_run
from echo20.bench.measure import RAMP_TIMEOUT
from echo20.bench.memory import command_cold_start, command_idle
from echo20.bench.processes import READY_TIMEOUT
from echo20.bench.servers import command_serve_floor, command_serve_sockets
from echo20.bench.targets import DEFAULT_TARGETS, TARGETS
from echo20.bench.units import (
    byte_count,
    count_list,
    name_list,
    parse_rate,
    parse_size,
    rate_list,
    size_list,
)
from echo20.errors import BenchError

__all__ = ["main"]

PROGRAM = "echo20-bench"

# Only loopback: the benchmark never listens on or connects to anything else.
HOSTS = ("127.0.0.1", "::1")


def loopback_host(text: str) -> str:
    if text not in HOSTS:
        raise argparse.ArgumentTypeError(f"loopback only: {' or '.join(HOSTS)}")
    return text


def server_command(text: str) -> str:
    """argparse type for ``--server-cmd``: a command line with ``{port}`` in it."""
    try:
        argv = shlex.split(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"cannot split {text!r}: {error}") from None
    if not argv:
        raise argparse.ArgumentTypeError("the command is empty")
    return text


def check_server_commands(args: argparse.Namespace) -> None:
    """Each --server-cmd has the placeholders the run fills in, or exit 2 in one line:
    ``{port}`` on TCP, ``{path}`` with --unix, ``{certfile}`` with --tls."""
    needed = [("{path}", "its Unix socket's path") if args.unix else ("{port}", "its port")]
    if args.tls:
        needed.append(("{certfile}", "its certificate (key and chain; {keyfile}: the key)"))
    for command in args.server_cmds or []:
        for placeholder, what in needed:
            if placeholder not in command:
                args.run_parser.error(
                    f"--server-cmd: put {placeholder} where the server takes {what}: {command!r}"
                )


def add_selection_arguments(
    parser: argparse.ArgumentParser, targets: Sequence[str] | None = None
) -> None:
    """``--targets`` (default: ``targets``, or DEFAULT_TARGETS) and ``--loops``."""
    available = loops.available_loops()
    default = (
        ",".join(targets)
        if targets is not None
        else f"{','.join(DEFAULT_TARGETS)}; with --server-cmd: c"
    )
    parser.add_argument(
        "--targets",
        type=name_list(TARGETS),
        default=None if targets is None else ",".join(targets),
        help="comma-separated targets; each runs on each of --loops (c on epoll only) "
        f"(default: {default})",
    )
    parser.add_argument(
        "--loops",
        type=name_list(available),
        default=",".join(available),
        help="comma-separated event loops (the installed ones)",
    )


def add_matrix_arguments(
    parser: argparse.ArgumentParser,
    *,
    connections: str,
    sizes: str,
    warmup: float,
    duration: float,
    repeats: int,
    targets: Sequence[str] | None = None,
) -> None:
    add_selection_arguments(parser, targets)
    parser.add_argument(
        "--connections",
        type=count_list,
        default=connections,
        help="comma-separated connection counts",
    )
    parser.add_argument(
        "--sizes",
        type=size_list,
        default=sizes,
        help="comma-separated message sizes in bytes; k and m suffixes work (16k, 256k, 1m)",
    )
    parser.add_argument(
        "--warmup",
        type=cli.positive_float,
        default=warmup,
        help="seconds of load before each measured window",
    )
    parser.add_argument(
        "--duration",
        type=cli.positive_float,
        default=duration,
        help="seconds of each measured window",
    )
    parser.add_argument(
        "--repeats",
        type=cli.positive_int,
        default=repeats,
        help="runs per cell; the tables show medians and keep the spread",
    )
    parser.add_argument(
        "--ramp-timeout",
        type=cli.positive_float,
        default=RAMP_TIMEOUT,
        help="seconds for every connection's first reply; a slower target is reported too slow",
    )
    parser.add_argument(
        "--max-inflight",
        type=byte_count,
        default="0",
        help="leave out points whose connections x size exceeds this many bytes (0: none)",
    )
    add_common_arguments(parser)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        type=loopback_host,
        default=HOSTS[0],
        help="loopback address the servers listen on",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="directory for reports, logs and the compiled C programs",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the server and the load generator to CPUs of their own",
    )


# What add_subparsers returns; argparse gives the type no public name (and it is
# generic only to the type checker).
Subcommands: TypeAlias = "argparse._SubParsersAction[cli.ArgumentParser]"


def add_quiet_arguments(parser: argparse.ArgumentParser) -> None:
    """``--strict`` and ``--wait-quiet``: numbers from a quiet machine only."""
    parser.add_argument(
        "--strict",
        action="store_true",
        help="write no report if any cell was not measured on a quiet machine (other "
        "processes busy, CPU steal, a high load average): a noisy cell is measured again, "
        "four attempts in all, then the run stops with one line, exit 1 (a saturated "
        "load generator is shown, not refused)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=cli.non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="before each cell, wait up to this long for other processes to stop using "
        "the CPUs and the load average to fall under the CPUs + 1 (0: only look, and "
        "note who was busy)",
    )


def add_open_sizes_argument(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--open-sizes",
        type=size_list,
        default=default,
        help="with a rate, run the open loop only at these message sizes (default: every size)"
        if default is None
        else "message sizes of the open loop",
    )


def add_run_command(commands: Subcommands) -> None:
    """``run``: the matrix, closed or open loop, and its flags."""
    run = commands.add_parser(
        "run",
        help="the matrix: throughput, latency percentiles, CPU per round trip, RSS",
        description=(
            "Every target at every (connections, size): a table, bench.json, bench.md, "
            "bench.png (and sweep.png with --rates)."
        ),
        formatter_class=cli.HelpFormatter,
    )
    add_matrix_arguments(
        run, connections="1,16,256", sizes="8,200,16384", warmup=0.5, duration=2.0, repeats=3
    )
    # For the checks that span several of run's flags, in run's own words.
    run.set_defaults(run_parser=run)
    open_loop = run.add_mutually_exclusive_group()
    open_loop.add_argument(
        "--rate",
        type=parse_rate,
        help="open loop: this many round trips per second in all (20000, 20k), or a share "
        "of each target's closed-loop rate in the same repeat (50%%); latency is counted "
        "from when each message was due",
    )
    open_loop.add_argument(
        "--rates",
        type=rate_list,
        help="open loop at each of these rates (10%%,50%%,90%% or 5k,10k,20k): latency "
        "against throughput, drawn in sweep.png",
    )
    add_open_sizes_argument(run, None)
    run.add_argument(
        "--server-cmd",
        dest="server_cmds",
        action="append",
        type=server_command,
        metavar="CMD",
        help="also benchmark this echo20 server, repeatable: {port} in CMD becomes a free "
        "port ({host} the --host; with --unix, {path} a socket's path); ready once it "
        "accepts connections, every reply verified; labelled server-cmd, server-cmd-2, ...",
    )
    run.add_argument(
        "--unix",
        action="store_true",
        help="every target over a Unix socket (the C server and load generator too); a "
        "loop that cannot listen on one gets a row that says so",
    )
    run.add_argument(
        "--ready-timeout",
        type=cli.positive_float,
        default=READY_TIMEOUT,
        help="seconds each server gets to listen (its ready line; for --server-cmd, its "
        "port accepting connections)",
    )
    run.add_argument(
        "--tls",
        action="store_true",
        help="every target over TLS with a certificate made for the run (the C server and "
        "load generator through OpenSSL, found when they are compiled); a loop without "
        "TLS of its own gets a floor row that says so",
    )
    add_quiet_arguments(run)
    run.add_argument(
        "--budget",
        dest="budgets",
        action="append",
        type=parse_budget,
        metavar="BUDGET",
        help="a limit to check, repeatable: LABEL@CONNSxSIZE[:cpu|p50|p99|mib](<=|>=)RATIO "
        "to the C server, e.g. protocol-uvloop@16x200<=1.3; one not met exits 1",
    )


def add_loops_command(commands: Subcommands) -> None:
    """``loops``: the loop comparison page, every transport, in one command."""
    page = commands.add_parser(
        "loops",
        help="the loop comparison page: every loop, TCP, TLS and Unix sockets, closed "
        "and open loop",
        description=(
            "Every target on every installed loop over each transport (the matrix of "
            "`run` once per transport), the open loop at one size: writes the page "
            "(--page), its chart and each transport's full report beside it."
        ),
        formatter_class=cli.HelpFormatter,
    )
    add_matrix_arguments(
        page,
        connections="16",
        sizes="200,1k,10k,100k",
        warmup=0.15,
        duration=0.3,
        repeats=3,
        targets=LOOP_PAGE_TARGETS,
    )
    page.add_argument(
        "--transports",
        type=name_list(tuple(TRANSPORTS)),
        default=",".join(TRANSPORTS),
        help="comma-separated transports, each a matrix of its own",
    )
    page.add_argument(
        "--rate",
        type=parse_rate,
        default="50%",
        help="the open loop's rate: a share of each target's closed-loop rate in the same "
        "repeat (50%%), or round trips per second in all",
    )
    add_open_sizes_argument(page, "1k")
    page.add_argument(
        "--page",
        type=Path,
        metavar="PATH",
        help="the page to write; its chart and the transports' reports go beside it "
        "(default: OUT/loops.md)",
    )
    page.add_argument(
        "--ready-timeout",
        type=cli.positive_float,
        default=READY_TIMEOUT,
        help="seconds each server gets to listen (its ready line)",
    )
    add_quiet_arguments(page)


def add_compare_command(commands: Subcommands) -> None:
    """``compare OLD NEW``: two reports cell by cell."""
    compare = commands.add_parser(
        "compare",
        help="NEW / OLD per cell, and whether it lies outside the repeats' spread",
        description=(
            "Compare two bench.json files cell by cell: the ratio of each figure and "
            "whether the repeats' spreads overlap (noise) or not (a change)."
        ),
        formatter_class=cli.HelpFormatter,
    )
    compare.add_argument("old", type=Path, help="the earlier bench.json")
    compare.add_argument("new", type=Path, help="the later bench.json")


def add_idle_command(commands: Subcommands) -> None:
    """``idle``: RSS per idle connection."""
    idle = commands.add_parser(
        "idle",
        help="RSS per idle connection",
        description="N connections per target, one message each, then idle: RSS per connection.",
        formatter_class=cli.HelpFormatter,
    )
    add_selection_arguments(idle)
    idle.add_argument(
        "--connections", type=cli.positive_int, default=10_000, help="idle connections per target"
    )
    idle.add_argument(
        "--size", type=parse_size, default="8", help="bytes of the one message each sends"
    )
    idle.add_argument(
        "--ramp-timeout",
        type=cli.positive_float,
        default=120.0,
        help="seconds to get every connection answered",
    )
    add_common_arguments(idle)


def add_cold_start_command(commands: Subcommands) -> None:
    """``cold-start``: a fresh server against a warmed one."""
    cold = commands.add_parser(
        "cold-start",
        help="a fresh server's CPU per round trip against one that has served a client",
        description=command_cold_start.__doc__,
        formatter_class=cli.HelpFormatter,
    )
    add_matrix_arguments(cold, connections="16", sizes="200", warmup=0.5, duration=2.0, repeats=3)
    add_quiet_arguments(cold)


def add_server_commands(commands: Subcommands) -> None:
    """``serve-floor`` and ``serve-sockets``: the bench-only servers on their own."""
    floor = commands.add_parser(
        "serve-floor",
        help="run the floor target (a bare protocol, nothing else)",
        description="The least a Python server can do per batch on the chosen loop.",
        formatter_class=cli.HelpFormatter,
    )
    sockets = commands.add_parser(
        "serve-sockets",
        help="run the sockets target (loop.sock_recv and loop.sock_sendall, no transports)",
        description=(
            "The echo20 server on the loop's socket calls (sock_accept, sock_recv, "
            "sock_sendall), a task per connection: vmbench's third shape."
        ),
        formatter_class=cli.HelpFormatter,
    )
    for server in (floor, sockets):
        # Its errors in its own words: "echo20-bench serve-floor: ...".
        server.set_defaults(server_parser=server)
        cli.add_connection_arguments(server)
        server.add_argument(
            "--unix", metavar="PATH", help="listen on this Unix socket instead of --host/--port"
        )
        server.add_argument("--certfile", help="serve TLS with this certificate chain (PEM)")
        server.add_argument(
            "--keyfile", help="the certificate's private key (PEM; default: in certfile)"
        )
        cli.add_logging_arguments(server)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=PROGRAM,
        description=(
            "Benchmark every echo20 server on every event loop against a C epoll "
            "reference, with a C load generator (closed or open loop, every reply verified)."
        ),
        formatter_class=cli.HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_command(commands)
    add_loops_command(commands)
    add_compare_command(commands)
    add_idle_command(commands)
    add_cold_start_command(commands)
    add_server_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command == "run":
        check_server_commands(args)
    if args.command == "serve-floor":
        return command_serve_floor(args, args.server_parser)
    if args.command == "serve-sockets":
        return command_serve_sockets(args, args.server_parser)
    if cli.missing_extra(PROGRAM, "bench", ["rich", "hdrh"]):  # hdrh: hdrhistogram's module
        return 1
    wants_tls = getattr(args, "tls", False) or "tls" in getattr(args, "transports", [])
    if wants_tls and cli.missing_extra(PROGRAM, "bench", ["trustme"]):
        return 1
    handlers = {
        "run": command_run,
        "loops": command_loops,
        "compare": command_compare,
        "idle": command_idle,
        "cold-start": command_cold_start,
    }
    try:
        status = handlers[args.command](args)
        # Output into a pipe is buffered: flush it here, where a reader gone away
        # (``| head``) is caught, not at exit, where Python reports it.
        sys.stdout.flush()
        return status
    except BenchError as error:
        cli.error_line(PROGRAM, str(error))
        return 1
    except KeyboardInterrupt:
        cli.error_line(PROGRAM, "interrupted: every server was stopped")
        return 130
    except BrokenPipeError:
        return cli.reader_went_away()


if __name__ == "__main__":
    sys.exit(main())
