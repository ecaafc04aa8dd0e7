"""``echo20-conformance``: the echo20 conformance suite, run against any implementation.

It starts the server (or connects to one), runs the packaged scenarios with pytest and
the suite's plugin, and ends with a one-line summary; the exit status is 0 only when
every scenario passed::

    echo20-conformance --server-cmd "python tcp_server.py" --port 8888
    echo20-conformance --server-cmd "./my_server --port {port}" --junit-xml report.xml
    echo20-conformance --server-addr 127.0.0.1:8888 -k over
    echo20-conformance --client-cmd "./my_client --port {port}"
    echo20-conformance --list

``echo20-conformance compare`` (:mod:`echo20.conformance.compare`) runs them on several
servers and puts the results side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import echo20.conformance.scenarios
from echo20 import cli
from echo20.conformance.processes import (
    ServerProcess,
    ServerSpec,
    describe_status,
    parse_address,
    require_listening,
    start_server,
)
from echo20.conformance.report import (
    FAIL,
    Column,
    Result,
    counts_text,
    read_junit,
    render_report,
)
from echo20.conformance.watch import ServerWatch
from echo20.errors import ConformanceError

__all__ = ["main"]

PROGRAM = "echo20-conformance"
SCENARIOS = Path(echo20.conformance.scenarios.__file__).parent
PLUGIN = "echo20.conformance.plugin"

# Exit statuses: scenarios failed or the run could not go on; bad flags (argparse's);
# interrupted by Ctrl-C, as shells report a process ended by SIGINT.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# pytest's own exit statuses that the runner tells apart.
PYTEST_INTERRUPTED = 2
PYTEST_USAGE_ERROR = 4
PYTEST_NO_TESTS = 5


def regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"not a regular expression: {error}") from None


def address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=PROGRAM,
        description=(
            "Run the echo20 conformance scenarios against a server, a client, or both.\n"
            "Exit status 0 when every scenario passed, 1 when one failed or the server\n"
            "would not start or died, 2 for bad flags."
        ),
        epilog=(
            "examples:\n"
            '  echo20-conformance --server-cmd "python tcp_server.py" --port 8888\n'
            '  echo20-conformance --server-cmd "./server --port {port}"\n'
            "  echo20-conformance --server-addr 127.0.0.1:8888 -k over\n"
            '  echo20-conformance --client-cmd "./client --port {port}"\n'
            '  echo20-conformance compare tornado --server-cmd "./server --port {port}"\n'
            "\n"
            "echo20-conformance compare --help: several servers side by side"
        ),
        formatter_class=cli.HelpFormatter,
    )
    server = parser.add_argument_group("the server under test")
    server.add_argument(
        "--server-cmd",
        metavar="CMD",
        help=(
            "start this server, stop it afterwards; {port} becomes a free port, a leading "
            "'python' this interpreter; ready once the port accepts connections"
        ),
    )
    server.add_argument(
        "--port", type=cli.port_number, help="the port CMD listens on, when CMD has no {port}"
    )
    server.add_argument("--host", default="127.0.0.1", help="the address CMD listens on")
    server.add_argument(
        "--ready",
        type=regex,
        metavar="REGEX",
        help="also wait for a line of CMD's matching REGEX; a (?P<port>...) group names the port",
    )
    server.add_argument(
        "--clean-exit",
        action="store_true",
        help="also require CMD to exit 0 on SIGTERM with no Python traceback on stderr",
    )
    server.add_argument(
        "--server-addr", type=address, metavar="HOST:PORT", help="test a server already running"
    )
    client = parser.add_argument_group("the client under test")
    client.add_argument(
        "--client-cmd",
        metavar="CMD",
        help="test this client: messages on its stdin, {port} the scripted server's port",
    )
    run = parser.add_argument_group("the run")
    run.add_argument("--list", action="store_true", help="list the scenarios and exit")
    add_selection_arguments(run)
    run.add_argument("--junit-xml", type=Path, metavar="FILE", help="write JUnit XML here")
    run.add_argument("--markdown", type=Path, metavar="FILE", help="write a Markdown report here")
    run.add_argument("--name", help="the implementation's name in reports (default: its command)")
    run.add_argument(
        "-v", "--verbose", action="store_true", help="every scenario's name, and failures in full"
    )
    return parser


def add_selection_arguments(group: argparse._ArgumentGroup) -> None:
    """``-k`` and ``--timeout``, the same for a single run and ``compare``."""
    group.add_argument("-k", dest="keyword", metavar="EXPR", help="only scenarios matching EXPR")
    group.add_argument(
        "--timeout",
        type=cli.positive_float,
        default=10.0,
        help="seconds any wait may take: a server starting, a reply, a client finishing",
    )


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The combinations argparse cannot check on its own (exit 2 through parser.error)."""
    if args.server_cmd is not None and args.server_addr is not None:
        parser.error("give --server-cmd or --server-addr, not both")
    if args.server_cmd is None:
        given = [
            flag
            for flag, value in (
                ("--port", args.port),
                ("--ready", args.ready),
                ("--clean-exit", args.clean_exit or None),
            )
            if value is not None
        ]
        if given:
            parser.error(f"{', '.join(given)} only goes with --server-cmd")
    else:
        if not args.server_cmd.strip():
            parser.error("--server-cmd is empty")
        named_port = args.ready is not None and "port" in args.ready.groupindex
        if "{port}" not in args.server_cmd and args.port is None and not named_port:
            parser.error(
                "--server-cmd needs to say where it listens: put {port} in it, or give "
                "--port N (or a --ready pattern with a (?P<port>...) group)"
            )
    if args.client_cmd is not None and "{port}" not in args.client_cmd:
        parser.error("--client-cmd needs {port}, where the scripted servers listen")
    if (
        not args.list
        and args.server_cmd is None
        and args.server_addr is None
        and not args.client_cmd
    ):
        parser.error(
            "nothing to test: give --server-cmd, --server-addr or --client-cmd (or --list)"
        )


def target_name(args: argparse.Namespace) -> str:
    if args.name:
        return str(args.name)
    parts = []
    if args.server_cmd:
        parts.append(args.server_cmd)
    elif args.server_addr:
        parts.append(f"{args.server_addr[0]}:{args.server_addr[1]}")
    if args.client_cmd:
        parts.append(args.client_cmd)
    return " + ".join(parts)


@contextlib.contextmanager
def isolated_pytest() -> Iterator[None]:
    """pytest without the user's plugins or PYTEST_ADDOPTS: the scenarios' own setup only.

    Another plugin (a random order, a per-test timeout, an asyncio mode) would change
    what the scenarios do; only their own plugin is loaded, by name.
    """
    saved = {
        name: os.environ.get(name) for name in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS")
    }
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    os.environ.pop("PYTEST_ADDOPTS", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pytest_arguments(args: argparse.Namespace, junit: Path | None) -> list[str]:
    """The pytest command line for the packaged scenarios and their plugin."""
    argv = [
        # Server scenarios first, as --list shows them.
        str(SCENARIOS / "test_server.py"),
        str(SCENARIOS / "test_client.py"),
        # No configuration file and a root of its own: the scenarios behave the same
        # from a checkout, a wheel, or inside another project.
        "-c",
        os.devnull,
        "--rootdir",
        str(SCENARIOS),
        "-p",
        PLUGIN,
        "-p",
        "no:cacheprovider",
        "--conformance-timeout",
        str(args.timeout),
    ]
    if junit is not None:
        # xunit1 keeps each scenario's recorded properties (round-trip time, notes).
        argv += ["--junitxml", str(junit), "-o", "junit_family=xunit1"]
    if args.keyword:
        argv += ["-k", args.keyword]
    if args.verbose:
        argv += ["-v", "--tb=short", "-rfE"]
    else:
        # Progress dots only: the runner prints each failure's reason and the summary.
        argv += ["-qq", "--tb=no", "-rN", "-o", "console_output_style=classic"]
    return argv


class Collected:
    """A pytest plugin object that keeps the scenarios a --list run collected."""

    def __init__(self) -> None:
        self.items: list[pytest.Item] = []

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.items = list(session.items)


def list_scenarios(args: argparse.Namespace) -> int:
    collected = Collected()
    output = io.StringIO()
    with isolated_pytest(), contextlib.redirect_stdout(output):
        status = pytest.main([*pytest_arguments(args, None), "--collect-only"], plugins=[collected])
    if status == PYTEST_NO_TESTS or (status == 0 and not collected.items):
        cli.error_line(PROGRAM, f"no scenario matches -k {args.keyword!r}")
        return EXIT_FAILED
    if status != 0:
        sys.stderr.write(output.getvalue())
        return EXIT_USAGE if status == PYTEST_USAGE_ERROR else EXIT_FAILED
    kinds = set()
    if args.server_cmd or args.server_addr:
        kinds.add("server")
    if args.client_cmd:
        kinds.add("client")
    for item in collected.items:
        kind = item.path.stem.removeprefix("test_")
        if not kinds or kind in kinds:
            print(f"{kind:6}  {item.name.removeprefix('test_')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == "compare":
        from echo20.conformance import compare

        return compare.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    if args.list:
        return list_scenarios(args)
    server: ServerProcess | None = None
    started = time.monotonic()
    try:
        if args.server_cmd is not None:
            spec = ServerSpec(args.server_cmd, args.host, args.port, args.ready)
            server = start_server(spec, args.timeout)
        elif args.server_addr is not None:
            require_listening(args.server_addr, args.timeout)
        return run(args, server, started)
    except ConformanceError as error:
        cli.error_line(PROGRAM, str(error))
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if server is not None and server.exit_status() is None:
            server.stop(args.timeout)


def run_scenarios(
    args: argparse.Namespace,
    address: tuple[str, int] | None,
    client_cmd: str | None,
    junit: Path,
    watch: ServerWatch | None,
) -> int:
    """pytest on the packaged scenarios, against ``address`` and/or ``client_cmd``.

    ``args`` gives ``timeout``, ``keyword`` and ``verbose``; the results go to ``junit``.
    pytest's exit status.
    """
    extra = []
    if address is not None:
        host, port = address
        extra += ["--server-addr", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if client_cmd:
        extra += ["--client-cmd", client_cmd]
    with isolated_pytest():
        return pytest.main(
            [*pytest_arguments(args, junit), *extra], plugins=[watch] if watch else []
        )


def stop_server(
    server: ServerProcess, watch: ServerWatch, *, clean_exit: bool, timeout: float
) -> list[str]:
    """Stop a server after its run; what went wrong with it, one line each."""
    if watch.died:
        return [watch.died]
    problems = []
    exit_status = server.stop(timeout)
    if clean_exit and exit_status != 0:
        problems.append(f"the server {describe_status(exit_status)} on SIGTERM, not 0")
    if clean_exit and server.saw_traceback():
        problems.append(f"the server wrote a Python traceback on stderr{server.last_words()}")
    return problems


def run(args: argparse.Namespace, server: ServerProcess | None, started: float) -> int:
    """Run the scenarios; report; the exit status."""
    watch = ServerWatch(server, owned=False, timeout=args.timeout) if server is not None else None
    address = server.address if server is not None else args.server_addr
    with tempfile.TemporaryDirectory(prefix="echo20-conformance-") as scratch:
        junit = args.junit_xml or Path(scratch) / "junit.xml"
        status = run_scenarios(args, address, args.client_cmd, junit, watch)
        results = read_junit(junit) if junit.exists() else []
    problems = []
    if server is not None and watch is not None:
        problems = stop_server(server, watch, clean_exit=args.clean_exit, timeout=args.timeout)
    seconds = time.monotonic() - started
    if status == PYTEST_NO_TESTS or (status == 0 and not results):
        cli.error_line(PROGRAM, f"no scenario matches -k {args.keyword!r}")
        return EXIT_FAILED
    if status == PYTEST_USAGE_ERROR:
        return EXIT_USAGE
    if status == PYTEST_INTERRUPTED and not problems:
        problems.append("interrupted")
    if args.markdown is not None:
        column = Column(target_name(args), target_name(args), results)
        report = render_report(column, seconds=seconds, problem="; ".join(problems) or None)
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report, encoding="utf-8")
    return summarize(args, results, problems, seconds, status)


def summarize(
    args: argparse.Namespace,
    results: list[Result],
    problems: list[str],
    seconds: float,
    status: int,
) -> int:
    failed = [result for result in results if result.outcome not in ("pass", "skipped")]
    if not args.verbose:
        for result in failed:
            print(f"{result.outcome} {result.kind} {result.scenario}: {result.detail}")
    for problem in problems:
        cli.error_line(PROGRAM, problem)
    ok = not failed and not problems and status == 0
    verdict = "PASS" if ok else FAIL
    print(f"{PROGRAM}: {verdict}: {counts_text(results)} in {seconds:.1f} s ({target_name(args)})")
    return 0 if ok else EXIT_FAILED
