"""Every implementation through ``echo20-conformance``, the way an outsider runs it.

Each test here is one run of the runner as a process (``python -m
echo20.conformance``), judged by its exit status, its output and its JUnit XML:

* every server target (tornado, streams, iostream, protocol; asyncio and uvloop) and
  both of our clients pass;
* a correct server with odd segmentation and timing passes, and servers and clients
  that break the protocol fail exactly the scenarios that catch their defect;
* the seed's server passes and the seed's client fails, as ``docs/protocol.md`` says;
* the runner's own behaviour: a server that will not start or dies is one line and
  exit 1, bad flags exit 2, ``--list``, ``--ready``, ``--server-addr``, reports.

The runs are independent processes, so the ones a session selects start together,
RUNS_AT_ONCE at a time (most of their time is spent waiting on sockets); each test
then waits for its own.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import PYTHON, ROOT, TIMEOUT, echo_server_argv, running_server

from echo20.conformance.processes import free_port
from echo20.conformance.report import Result, read_junit
from echo20.conformance.targets import (
    CLIENT_TARGETS,
    SEED_TARGETS,
    SERVER_TARGETS,
    Target,
    missing_packages,
)

RUNNER = (PYTHON, "-m", "echo20.conformance")
HERE = Path(__file__).resolve().parent
ODD_SERVER = HERE / "odd_timing_server.py"
BROKEN_SERVERS = HERE / "broken_servers.py"
BROKEN_CLIENTS = HERE / "broken_clients.py"

# Runs in flight at once. Most of a run is waiting (Nagle's 40 ms on the Tornado
# targets, the client scenarios' pauses), so three share two cores well.
RUNS_AT_ONCE = 3

# The 8 MiB scenarios take Tornado's seed loop some 25 s (44 us a chunk, 840,000
# chunks); the reference passes them in `make compare`, and here runs the rest.
WITHOUT_BIG = "not beyond_kernel_buffers"

# A seed client run waits out the suite's timeout on every scenario it hangs in.
SEED_CLIENT_TIMEOUT = 3


@dataclass(frozen=True)
class Run:
    """One invocation of the runner: its id and arguments, and what it needs installed."""

    id: str
    arguments: tuple[str, ...]
    requires: tuple[str, ...] = ()
    timeout: float = TIMEOUT


@dataclass
class Outcome:
    """A finished run: exit status, output, and every scenario's result."""

    status: int
    stdout: str
    stderr: str
    results: list[Result] = field(default_factory=list)
    markdown: str = ""

    def failed(self) -> dict[str, str]:
        return {r.scenario: r.detail for r in self.results if r.outcome not in ("pass", "skipped")}

    def explain(self) -> str:
        """For an assertion message: the summary and every failure."""
        lines = [f"exit status {self.status}"]
        lines += [f"  {name}: {detail}" for name, detail in self.failed().items()]
        lines += [self.stdout.strip().splitlines()[-1] if self.stdout.strip() else "(no output)"]
        if self.stderr.strip():
            lines.append("stderr: " + self.stderr.strip()[-2000:])
        return "\n".join(lines)


def target_run(target: Target, *extra: str) -> Run:
    return Run(target.id, (*target.runner_arguments(), *extra), target.requires)


def server_runs() -> list[Run]:
    runs = []
    for target in SERVER_TARGETS:
        extra = ("-k", WITHOUT_BIG) if target.id.startswith("tornado") else ()
        runs.append(target_run(target, *extra))
    return runs


SERVER_RUNS = server_runs()
CLIENT_RUNS = [target_run(target) for target in CLIENT_TARGETS]

# A port for the odd server, given with --port (no {port}): the path a server with a
# fixed port, such as the seed's, takes.
ODD_PORT = free_port()
ODD_RUN = Run(
    "odd-timing",
    (
        "--server-cmd",
        f"python {shlex.quote(str(ODD_SERVER))} --port {ODD_PORT}",
        "--port",
        str(ODD_PORT),
        "--markdown",
        "{tmp}/odd.md",
    ),
)

# A broken server answers at once or never: a wait that long is already a verdict.
BROKEN_TIMEOUT = TIMEOUT / 3

# Each defect, the scenarios run against it (-k), and exactly those that must fail.
BROKEN: dict[str, tuple[str, set[str]]] = {
    "answers-after-over": ("over and not beyond", {"bytes_after_over_get_no_answer"}),
    "drops-queue-on-eof": ("half_close", {"half_close_beyond_kernel_buffers"}),
    "drops-queue-on-over": (
        "over_ends_input or over_closes",
        {"over_ends_input_beyond_kernel_buffers"},
    ),
    "no-reversal": (
        "message_of_size or 0B",
        {f"message_of_size[{n}B]" for n in (1, 19, 20, 21, 45)},
    ),
    "chunks-of-21": ("message_of_size", {"message_of_size[21B]", "message_of_size[45B]"}),
    "closes-on-lookalike": (
        "lookalike or 256",
        {
            f"over_lookalike_does_not_close[{name}]"
            for name in (
                "OVER",
                "over-newline",
                "overtime",
                "game-over",
                "over-then-more",
                "Over",
                "space-over",
            )
        },
    ),
    "watches-the-stream": ("trickled", {"over_trickled_byte_by_byte_does_not_close"}),
    "never-closes": (
        "closes or half_close_gets_every_reply",
        {"over_closes", "over_after_other_messages_closes", "24_bytes_ending_in_over_closes"},
    ),
    "resets-after-over": (
        "over_closes or bytes_after_over or tornado_client",
        {
            "over_closes",
            "24_bytes_ending_in_over_closes",
            "server_close_is_stream_closed_for_tornado_client",
        },
    ),
    # One half-close scenario: each waits out the timeout on this server.
    "ignores-eof": (
        "half_close_gets_every_reply and 0B or over_closes",
        {"half_close_gets_every_reply[0B]"},
    ),
    "text-not-bytes": (
        "utf8 or 256 or nul_bytes",
        {"invalid_utf8", "utf8_split_across_chunk_border", "all_256_byte_values"},
    ),
    "stops-at-nul": (
        "nul_bytes or over_closes",
        {f"nul_bytes[{name}]" for name in ("one", "twenty", "forty-five", "mixed", "before-over")},
    ),
    # Only the concurrent scenario: the connections it leaves waiting would keep this
    # server from answering any scenario after it.
    "serves-one-at-a-time": ("concurrent or over_closes", {"200_concurrent_connections"}),
    "drops-everyone-on-reset": (
        "client_reset or over_closes",
        {"client_reset_does_not_disturb_others"},
    ),
}
BROKEN_RUNS = [
    Run(
        f"broken-{defect}",
        (
            "--server-cmd",
            f"python {shlex.quote(str(BROKEN_SERVERS))} --defect {defect} --port {{port}}",
            "-k",
            keyword,
        ),
        # The scenario seen through Tornado's client is skipped without it.
        requires=("tornado",) if "tornado_client" in keyword else (),
        timeout=BROKEN_TIMEOUT,
    )
    for defect, (keyword, _) in BROKEN.items()
]

# Each client defect, the scenarios run against it (-k), and exactly those that must
# fail, each with what its failure must say: the check that catches the defect.
BROKEN_CLIENT: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "sends-after-over": (
        "one_segment or input_ends",
        {"replies[one_segment]": ("sent b'after over: never sent' after over's reply",)},
    ),
    "says-over-at-end": (
        "one_segment or input_ends",
        {"replies[input_ends_without_over]": ("sent b'over' beyond its input",)},
    ),
    "trusts-the-reply": (
        "one_segment or uneven_cut or garbage",
        {
            "replies[uneven_cut]": ("its output is not the transcript: line 3",),
            "server_fault[garbage]": ("its output is not the transcript: 2 lines more",),
        },
    ),
    "swallows-errors": (
        "one_segment or closed_early or no_server",
        {
            name: ("yet it exited with status 0", "it failed without a word on stderr")
            for name in ("server_fault[closed_early]", "cannot_connect[no_server]")
        },
    ),
    "goes-on-after-fault": (
        "one_segment or garbage",
        {"server_fault[garbage]": ("the client went on, sending",)},
    ),
    "stops-at-empty-line": (
        "one_segment or closed_early",
        {"replies[one_segment]": ("it stopped after 2 of 8 messages",)},
    ),
    "fails-after-over": (
        "one_segment or input_ends",
        {"replies[one_segment]": ("it failed: exit status 1",)},
    ),
    "connection-per-message": (
        "one_segment or no_server",
        {"replies[one_segment]": ("the client opened a second connection",)},
    ),
    "drops-undecodable-bytes": (
        "one_segment or no_server",
        {
            "replies[one_segment]": (
                "expected b'\\xff\\xfe not UTF-8', got b' not UTF-8' and the end",
            )
        },
    ),
}
# The broken clients' own reply timeout: the runner's (BROKEN_TIMEOUT) must be longer.
BROKEN_CLIENT_TIMEOUT = 1
BROKEN_CLIENT_RUNS = [
    Run(
        f"broken-client-{defect}",
        (
            "--client-cmd",
            f"python {shlex.quote(str(BROKEN_CLIENTS))} --defect {defect} --port {{port}} "
            f"--timeout {BROKEN_CLIENT_TIMEOUT}",
            "-k",
            keyword,
        ),
        timeout=BROKEN_TIMEOUT,
    )
    for defect, (keyword, _) in BROKEN_CLIENT.items()
]

SEED_SERVER, SEED_CLIENT = SEED_TARGETS
SEED_SERVER_RUN = target_run(SEED_SERVER, "-k", WITHOUT_BIG)
# Enough of the client scenarios to show both of its faults: it hangs when a reply
# comes in one segment, and falls out of step when the halves come apart.
SEED_CLIENT_RUN = Run(
    SEED_CLIENT.id,
    (
        *SEED_CLIENT.runner_arguments(),
        "-k",
        "one_segment or halves_apart",
        "--timeout",
        str(SEED_CLIENT_TIMEOUT),
    ),
    SEED_CLIENT.requires,
    timeout=SEED_CLIENT_TIMEOUT,
)

_unused = free_port()
RUNNER_RUNS = {
    "start-fails": Run(
        "start-fails",
        ("--server-cmd", "python -c 'import sys; sys.exit(3)'", "--port", str(_unused)),
    ),
    "no-such-program": Run(
        "no-such-program", ("--server-cmd", "no-such-program-for-echo20 --port {port}")
    ),
    "dies": Run(
        "dies",
        (
            "--server-cmd",
            f"python {shlex.quote(str(BROKEN_SERVERS))} --defect exits-on-over --port {{port}}",
            "-k",
            "message_of_size or nul_bytes",
        ),
    ),
    "ready-line": Run(
        "ready-line",
        (
            "--server-cmd",
            "python -m echo20.server --port 0 --impl streams",
            "--ready",
            r"listening on [\d.]+:(?P<port>\d+)",
            "--clean-exit",
            "-k",
            "over_closes or message_of_size",
        ),
    ),
    "list": Run("list", ("--list",)),
    "no-match": Run(
        "no-match",
        ("--server-cmd", "python -m echo20.server --port {port}", "-k", "no_scenario_is_named_so"),
    ),
}

ALL_RUNS = [
    *SERVER_RUNS,
    *CLIENT_RUNS,
    ODD_RUN,
    *BROKEN_RUNS,
    *BROKEN_CLIENT_RUNS,
    SEED_SERVER_RUN,
    SEED_CLIENT_RUN,
    *RUNNER_RUNS.values(),
]


def execute(run: Run, scratch: Path) -> Outcome:
    """Run the runner once, as a user would; its outcome."""
    junit = scratch / f"{run.id}.xml"
    arguments = [argument.replace("{tmp}", str(scratch)) for argument in run.arguments]
    command = [*RUNNER, *arguments]
    if "--list" not in arguments:
        command += ["--junit-xml", str(junit), "--timeout", str(run.timeout)]
    done = subprocess.run(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        # Bounds a hang of the runner itself, far beyond any run's length.
        timeout=60 * TIMEOUT,
        check=False,
    )
    outcome = Outcome(done.returncode, done.stdout, done.stderr)
    if junit.exists():
        outcome.results = read_junit(junit)
    if "--markdown" in arguments:
        report = Path(arguments[arguments.index("--markdown") + 1])
        outcome.markdown = report.read_text(encoding="utf-8") if report.exists() else ""
    return outcome


@pytest.fixture(scope="session")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Outcome]]]:
    """The selected tests' runs, started RUNS_AT_ONCE at a time, in the table's order."""
    selected = {
        item.callspec.params["run"].id
        for item in request.session.items
        if hasattr(item, "callspec") and "run" in item.callspec.params
    }
    scratch = tmp_path_factory.mktemp("conformance-runs")
    with ThreadPoolExecutor(RUNS_AT_ONCE) as pool:
        futures = {
            run.id: pool.submit(execute, run, scratch)
            for run in ALL_RUNS
            if run.id in selected and not missing(run)
        }
        yield futures
        for future in futures.values():
            future.cancel()


def missing(run: Run) -> list[str]:
    return missing_packages(run.requires)


def outcome_of(outcomes: dict[str, Future[Outcome]], run: Run) -> Outcome:
    if missing(run):
        pytest.skip(f"needs {', '.join(missing(run))}: pip install -e '.[test]'")
    return outcomes[run.id].result()


def by_id(runs: list[Run]) -> list[object]:
    return [pytest.param(run, id=run.id) for run in runs]


# --- our implementations pass -------------------------------------------------------


@pytest.mark.parametrize("run", by_id(SERVER_RUNS + CLIENT_RUNS))
def test_target_passes(outcomes: dict[str, Future[Outcome]], run: Run) -> None:
    outcome = outcome_of(outcomes, run)
    assert outcome.status == 0, outcome.explain()
    assert outcome.results, outcome.explain()
    assert not outcome.failed(), outcome.explain()
    assert "PASS" in outcome.stdout.splitlines()[-1]


# --- the suite judges timing-free, and catches what it should -----------------------


@pytest.mark.parametrize("run", by_id([ODD_RUN]))
def test_correct_server_with_odd_timing_passes(
    outcomes: dict[str, Future[Outcome]], run: Run
) -> None:
    # Echo and reversal apart, delayed up to 50 ms, one byte per segment: all allowed.
    outcome = outcome_of(outcomes, run)
    assert outcome.status == 0, outcome.explain()
    server_scenarios = [r for r in outcome.results if r.kind == "server"]
    assert len(server_scenarios) > 30
    assert all(r.outcome == "pass" for r in server_scenarios)
    # The report says so, scenario by scenario.
    assert f"{len(server_scenarios)} passed in " in outcome.markdown
    assert "| `half_close_beyond_kernel_buffers` | pass" in outcome.markdown


@pytest.mark.parametrize("run", by_id(BROKEN_RUNS))
def test_broken_server_fails_where_it_breaks(
    outcomes: dict[str, Future[Outcome]], run: Run
) -> None:
    outcome = outcome_of(outcomes, run)
    _, expected = BROKEN[run.id.removeprefix("broken-")]
    assert outcome.status == 1, outcome.explain()
    assert set(outcome.failed()) == expected, outcome.explain()
    assert len(outcome.results) > len(expected), "the other scenarios ran, and passed"
    for name in expected:
        assert f"FAIL server {name}: " in outcome.stdout


@pytest.mark.parametrize("run", by_id(BROKEN_CLIENT_RUNS))
def test_broken_client_fails_where_it_breaks(
    outcomes: dict[str, Future[Outcome]], run: Run
) -> None:
    outcome = outcome_of(outcomes, run)
    _, expected = BROKEN_CLIENT[run.id.removeprefix("broken-client-")]
    assert outcome.status == 1, outcome.explain()
    failed = outcome.failed()
    assert set(failed) == set(expected), outcome.explain()
    assert len(outcome.results) > len(expected), "the other scenarios ran, and passed"
    for name, says in expected.items():
        assert f"FAIL client {name}: " in outcome.stdout
        for words in says:
            assert words in failed[name], outcome.explain()


# --- the seed -----------------------------------------------------------------------


@pytest.mark.parametrize("run", by_id([SEED_SERVER_RUN]))
def test_seed_server_passes(outcomes: dict[str, Future[Outcome]], run: Run) -> None:
    # Prints nothing, takes no flags: ready once its port accepts connections.
    outcome = outcome_of(outcomes, run)
    assert outcome.status == 0, outcome.explain()


@pytest.mark.parametrize("run", by_id([SEED_CLIENT_RUN]))
def test_seed_client_fails_as_documented(outcomes: dict[str, Future[Outcome]], run: Run) -> None:
    outcome = outcome_of(outcomes, run)
    assert outcome.status == 1, outcome.explain()
    failed = outcome.failed()
    assert set(failed) == {"replies[one_segment]", "replies[halves_apart]"}, outcome.explain()
    # Echo and reversal in one segment: its first read takes both, the second waits.
    assert "did not exit" in failed["replies[one_segment]"]
    # Halves apart, it gets through but prints the class and sends the CR of a line.
    assert "not the transcript" in failed["replies[halves_apart]"]
    assert "the server saw: message 5: expected b'a" in failed["replies[halves_apart]"]


# --- the runner's own behaviour -----------------------------------------------------


def only_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {text!r}"
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize("run", by_id([RUNNER_RUNS["start-fails"]]))
def test_server_that_exits_at_start_is_one_line(
    outcomes: dict[str, Future[Outcome]], run: Run
) -> None:
    outcome = outcome_of(outcomes, run)
    assert outcome.status == 1
    assert only_line(outcome.stderr) == (
        f"echo20-conformance: the server exited with status 3 before it listened on "
        f"127.0.0.1:{_unused}"
    )


@pytest.mark.parametrize("run", by_id([RUNNER_RUNS["no-such-program"]]))
def test_missing_program_is_one_line(outcomes: dict[str, Future[Outcome]], run: Run) -> None:
    outcome = outcome_of(outcomes, run)
    assert outcome.status == 1
    assert only_line(outcome.stderr).startswith(
        "echo20-conformance: cannot run 'no-such-program-for-echo20': "
    )


@pytest.mark.parametrize("run", by_id([RUNNER_RUNS["dies"]]))
def test_server_that_dies_is_one_line(outcomes: dict[str, Future[Outcome]], run: Run) -> None:
    outcome = outcome_of(outcomes, run)
    assert outcome.status == 1, outcome.explain()
    # It exits at the first scenario's ``over``; the runner notices by the next one.
    assert only_line(outcome.stderr).startswith(
        "echo20-conformance: the server exited with status 9 during scenario message_of_size["
    )
    assert len(outcome.results) <= 2, "the run stops with the server"


@pytest.mark.parametrize("run", by_id([RUNNER_RUNS["ready-line"]]))
def test_ready_line_names_the_port(outcomes: dict[str, Future[Outcome]], run: Run) -> None:
    outcome = outcome_of(outcomes, run)
    assert outcome.status == 0, outcome.explain()
    assert {r.scenario for r in outcome.results} >= {"over_closes", "message_of_size[1B]"}


@pytest.mark.parametrize("run", by_id([RUNNER_RUNS["list"]]))
def test_list_names_every_scenario(outcomes: dict[str, Future[Outcome]], run: Run) -> None:
    outcome = outcome_of(outcomes, run)
    assert outcome.status == 0, outcome.explain()
    listed = outcome.stdout.splitlines()
    assert "server  half_close_beyond_kernel_buffers" in listed
    assert "server  bytes_after_over_get_no_answer" in listed
    assert "client  replies[byte_by_byte]" in listed
    assert listed.index("server  message_of_size[1B]") < listed.index(
        "client  replies[one_segment]"
    )


@pytest.mark.parametrize("run", by_id([RUNNER_RUNS["no-match"]]))
def test_keyword_matching_nothing_fails(outcomes: dict[str, Future[Outcome]], run: Run) -> None:
    outcome = outcome_of(outcomes, run)
    assert outcome.status == 1
    assert only_line(outcome.stderr) == (
        "echo20-conformance: no scenario matches -k 'no_scenario_is_named_so'"
    )


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ([], "nothing to test"),
        (["--port", "8888"], "--port only goes with --server-cmd"),
        (["--server-cmd", "python tcp_server.py"], "--server-cmd needs to say where it listens"),
        (["--server-cmd", "x {port}", "--server-addr", "127.0.0.1:1"], "not both"),
        (["--client-cmd", "my_client"], "--client-cmd needs {port}"),
        (["--server-addr", "localhost"], "expected HOST:PORT"),
        (["--server-cmd", "x {port}", "--ready", "("], "not a regular expression"),
    ],
)
def test_bad_flags_exit_2(arguments: list[str], says: str) -> None:
    done = subprocess.run(
        [*RUNNER, *arguments], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("echo20-conformance: error:")
    assert says in line


def test_server_addr_with_nothing_listening_is_one_line() -> None:
    port = free_port()
    done = subprocess.run(
        [*RUNNER, "--server-addr", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"echo20-conformance: nothing accepts connections on 127.0.0.1:{port}: ")
    assert "refused" in line.lower()


def test_server_addr_and_markdown(tmp_path: Path) -> None:
    # A server someone else started; the runner only connects, and writes its report.
    report = tmp_path / "report.md"
    with running_server(echo_server_argv("--impl", "protocol")) as server:
        done = subprocess.run(
            [
                *RUNNER,
                "--server-addr",
                f"{server.host}:{server.port}",
                "-k",
                "nul_bytes",
                "--markdown",
                str(report),
                "--timeout",
                str(TIMEOUT),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10 * TIMEOUT,
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("echo20-conformance: PASS: 5 passed in ")
    text = report.read_text()
    assert "| `nul_bytes[before-over]` | pass |" in text
    assert "5 passed" in text


def test_plugin_works_in_any_pytest(tmp_path: Path) -> None:
    # Loaded by name, the plugin's options work from any directory, with no conftest.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "echo20.conformance.plugin",
            "--pyargs",
            "echo20.conformance.scenarios.test_server",
            "--server-cmd",
            "python -m echo20.server --port {port}",
            "-k",
            "over_closes",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=10 * TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "echo20-conformance"
    done = subprocess.run([script, "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert "--server-cmd" in done.stdout
