"""``echo20-conformance compare``: servers side by side, and where they differ.

Two runs of the subcommand as a process (``python -m echo20.conformance compare``),
each on a small selection of scenarios with two repeats of the observations: the
seed's Tornado server (fixed port, prints nothing) against ours, where only the round
trip differs (Nagle), and a correct server against one that answers bytes sent after
``over``, where exactly the scenario about that differs. The verdicts, the noise rule,
the exit status and the flags are checked in process, on made-up runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest
from support import PYTHON, ROOT, TIMEOUT

from echo20.conformance import compare
from echo20.conformance.matrix import observation_rows, scenario_rows
from echo20.conformance.observe import ANSWERED_AFTER_OVER, CLOSE_AFTER_OVER, ROUND_TRIP, Samples
from echo20.conformance.processes import free_port
from echo20.conformance.report import Column, Result
from echo20.conformance.targets import PRESETS, SEED_SERVER_FILE, SEED_TARGETS

COMPARE = (PYTHON, "-m", "echo20.conformance", "compare")
BROKEN_SERVERS = Path(__file__).resolve().parent / "broken_servers.py"

# Enough scenarios to prove the mechanism; two repeats of each observation.
REPEATS = "2"


def run_compare(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMPARE, *arguments, "--repeats", REPEATS, "--timeout", str(TIMEOUT)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        # Bounds a hang of the runner itself, far beyond the run's length.
        timeout=30 * TIMEOUT,
        check=False,
    )


def table_line(stdout: str, name: str) -> str:
    """The terminal table's line for a scenario or observation."""
    [line] = [line for line in stdout.splitlines() if line.startswith(name + " ")]
    return line


def differing(document: dict[str, Any], kind: str) -> dict[str, list[str]]:
    return {
        row["name"]: row["apart"]
        for row in document["rows"]
        if row["kind"] == kind and row["differs"]
    }


# --- two real servers ---------------------------------------------------------------


def test_seed_tornado_server_with_a_fixed_port_against_ours(tmp_path: Path) -> None:
    # The seed's server on Tornado prints nothing and listens where it is told once:
    # given here with --port, as a server with a fixed port is. Ours takes {port}.
    port = free_port()
    seed = SEED_TARGETS[0].command.replace("{port}", str(port))
    files = {name: tmp_path / name for name in ("cmp.md", "cmp.json", "cmp.xml")}
    done = run_compare(
        "--server-cmd",
        seed,
        "--port",
        str(port),
        "--name",
        "seed-tornado",
        "--server-cmd",
        "python -m echo20.server --port {port}",
        "-k",
        "message_of_size or over_closes",
        "--markdown",
        str(files["cmp.md"]),
        "--json",
        str(files["cmp.json"]),
        "--junit-xml",
        str(files["cmp.xml"]),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    header = next(line for line in done.stdout.splitlines() if "verdict" in line)
    assert header.split() == ["seed-tornado", "echo20.server", "verdict"]
    for scenario in ("message_of_size[1B]", "message_of_size[45B]", "over_closes"):
        assert table_line(done.stdout, scenario).split()[1:] == ["pass", "pass", "same"]
    # Nagle on (Tornado) against TCP_NODELAY (asyncio): ~44 ms against ~0.1 ms, a
    # difference far beyond the noise, which the next line states.
    rtt = table_line(done.stdout, "round trip of 8 B (median of 20)")
    assert rtt.endswith("differs: seed-tornado"), rtt
    assert "  run to run  " in done.stdout
    assert table_line(done.stdout, "bytes after over answered").endswith("same")
    assert done.stdout.splitlines()[-1].startswith(
        "echo20-conformance compare: PASS: every one passed every scenario; "
    )
    document = json.loads(files["cmp.json"].read_text())
    assert [server["name"] for server in document["columns"]] == ["seed-tornado", "echo20.server"]
    assert differing(document, "server") == {}
    assert differing(document, "observation")["round trip of 8 B (median of 20)"] == [
        "seed-tornado"
    ]
    seed_rtt = document["columns"][0]["observations"][ROUND_TRIP]["values"]
    assert len(seed_rtt) == int(REPEATS), seed_rtt
    assert min(seed_rtt) > 20, seed_rtt
    markdown = files["cmp.md"].read_text()
    assert "| `over_closes` | pass | pass | same |" in markdown
    assert "| round trip of 8 B (median of 20) | " in markdown
    suites = ElementTree.parse(files["cmp.xml"]).getroot().findall("testsuite")
    assert [suite.get("name") for suite in suites] == ["seed-tornado", "echo20.server", "verdicts"]
    assert suites[0].get("tests") == "7"  # 5 sizes, over_closes, 24_bytes_ending_in_over_closes
    assert suites[0].get("failures") == "0"


def test_server_answering_after_over_differs_on_that_scenario_only(tmp_path: Path) -> None:
    report = tmp_path / "cmp.json"
    broken = (
        f"python {shlex.quote(str(BROKEN_SERVERS))} --defect answers-after-over --port {{port}}"
    )
    done = run_compare(
        "protocol",
        "--server-cmd",
        broken,
        "--name",
        "late",
        "-k",
        "over and not beyond",
        "--json",
        str(report),
    )
    # A scenario failed: exit 1, and the failure is named.
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL late server bytes_after_over_get_no_answer: the server answered" in done.stdout
    document = json.loads(report.read_text())
    over_rows = [row["name"] for row in document["rows"] if row["kind"] == "server"]
    assert len(over_rows) > 10
    assert "over_closes" in over_rows
    assert differing(document, "server") == {"bytes_after_over_get_no_answer": ["late"]}
    assert table_line(done.stdout, "bytes_after_over_get_no_answer").endswith("differs: late FAIL")
    observed = differing(document, "observation")
    # It answers for 300 ms after over, then closes: both show, beyond any noise.
    assert observed["bytes after over answered"] == ["late"]
    assert observed["close after over's reply"] == ["late"]
    late = document["columns"][1]["observations"]
    assert min(late[CLOSE_AFTER_OVER]["values"]) > 200
    assert min(late[ANSWERED_AFTER_OVER]["values"]) > 0


def test_servers_that_cannot_run_are_one_line_each_and_the_rest_still_runs() -> None:
    unused = free_port()
    done = run_compare(
        "--server-cmd",
        "python -c 'import sys; sys.exit(3)'",
        "--port",
        str(unused),
        "--server-addr",
        f"127.0.0.1:{unused}",
        "--server-cmd",
        "python -m echo20.server --port {port}",
        "-k",
        "over_closes",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    first, second = done.stderr.splitlines()
    assert first == (
        "echo20-conformance compare: python -c: the server exited with status 3 before it "
        f"listened on 127.0.0.1:{unused}"
    )
    assert second.startswith(
        f"echo20-conformance compare: 127.0.0.1:{unused}: nothing accepts connections on "
    )
    assert "refused" in second.lower()
    # The table still comes, the two that did not run marked so.
    row = table_line(done.stdout, "over_closes")
    assert row.count("not run") == 2
    assert row.count("pass") == 1
    assert row.endswith("not compared: 1 server(s) to compare")


# --- verdicts and the noise rule, on made-up runs -------------------------------------


def made_up(name: str, **samples: list[float]) -> Column:
    return Column(
        name,
        f"{name} --port {{port}}",
        [],
        observations={k: Samples(v) for k, v in samples.items()},
    )


def observation_verdicts(*runs: Column) -> dict[str, str]:
    return {row.name: row.verdict for row in observation_rows(list(runs), 3)}


ROUND_TRIP_ROW = "round trip of 8 B (median of 20)"


@pytest.mark.parametrize(
    ("one", "other", "verdict"),
    [
        # Nagle's delayed ACK against TCP_NODELAY: far beyond the noise.
        ([44.0, 44.1, 47.9], [0.1, 0.15, 0.2], "differs: a"),
        ([0.1, 0.15, 0.2], [44.0, 44.1, 47.9], "differs: b"),
        # The repeats overlap: noise could explain it.
        ([2.0, 9.0, 3.0], [5.0, 6.0, 7.0], "same"),
        # Apart, but by less than twice.
        ([10.0, 10.5, 11.0], [12.0, 12.5, 13.0], "same"),
        # Apart and four times as long, but less than a millisecond apart.
        ([0.05, 0.06, 0.07], [0.2, 0.25, 0.3], "same"),
    ],
)
def test_times_differ_only_beyond_noise(one: list[float], other: list[float], verdict: str) -> None:
    verdicts = observation_verdicts(
        made_up("a", **{ROUND_TRIP: one}), made_up("b", **{ROUND_TRIP: other})
    )
    assert verdicts[ROUND_TRIP_ROW] == verdict


def test_noise_is_the_range_of_the_repeats() -> None:
    [row] = observation_rows(
        [
            made_up("a", **{ROUND_TRIP: [44.0, 47.9, 44.1]}),
            made_up("b", **{ROUND_TRIP: [0.1, 0.1, 0.1]}),
        ],
        3,
    )
    assert row.cells == ["44.1 ms", "0.100 ms"]
    assert row.noise == ["44.0-47.9 ms", "0.100 ms every run"]


def test_any_answer_after_over_is_a_difference() -> None:
    verdicts = observation_verdicts(
        made_up("a", **{ANSWERED_AFTER_OVER: [0.0, 0.0, 0.0]}),
        made_up("b", **{ANSWERED_AFTER_OVER: [0.0, 38.0, 0.0]}),
        made_up("c", **{ANSWERED_AFTER_OVER: [0.0, 0.0, 0.0]}),
    )
    assert verdicts["bytes after over answered"] == "differs: b"


def test_scenario_verdict_names_the_odd_server_and_its_outcome() -> None:
    runs = [
        Column("a", "a", results=[Result("over_closes", "server", "pass")]),
        Column("b", "b", results=[Result("over_closes", "server", "FAIL")]),
        Column("c", "c", results=[Result("over_closes", "server", "pass")]),
    ]
    [row] = scenario_rows(runs)
    assert (row.cells, row.verdict, row.apart) == (
        ["pass", "FAIL", "pass"],
        "differs: b FAIL",
        ["b"],
    )
    # Two servers, one failing: the failing one is the odd one, whatever the order.
    assert scenario_rows(runs[1::-1])[0].verdict == "differs: b FAIL"
    runs[1].results[0].outcome = "pass"
    assert scenario_rows(runs)[0].verdict == "same"


def summarize(runs: list[Column], *flags: str) -> int:
    args = argparse.Namespace(fail_on_difference="--fail-on-difference" in flags)
    rows = [*scenario_rows(runs), *observation_rows(runs, 3)]
    return compare.summarize(args, runs, rows, 1.0)


def test_exit_status_ignores_differences_unless_asked() -> None:
    passing = [Result("over_closes", "server", "pass")]
    runs = [
        Column(
            "a", "a", results=list(passing), observations={ROUND_TRIP: Samples([44.0, 44.0, 44.1])}
        ),
        Column(
            "b", "b", results=list(passing), observations={ROUND_TRIP: Samples([0.1, 0.1, 0.2])}
        ),
    ]
    assert summarize(runs) == 0
    assert summarize(runs, "--fail-on-difference") == 1
    runs[1].observations[ROUND_TRIP] = Samples([44.0, 44.0, 44.1])
    assert summarize(runs, "--fail-on-difference") == 0
    runs[1].results[0] = Result("over_closes", "server", "FAIL", "it did not close")
    assert summarize(runs) == 1


# --- the command line -----------------------------------------------------------------


def test_servers_come_in_the_order_given_with_their_ports_and_names() -> None:
    _, entries = compare.parse(
        [
            "--server-cmd",
            "python my_tornado_server.py",
            "--port",
            "8888",
            "tornado",
            "--server-cmd",
            "echo20-server --port {port}",
            "--name",
            "ours",
            "--server-addr",
            "127.0.0.1:9000",
        ]
    )
    assert [(e.name, e.port) for e in entries] == [
        ("tornado", None),
        ("my_tornado_server.py", 8888),
        ("ours", None),
        ("127.0.0.1:9000", None),
    ]


def test_no_server_compares_tornado_against_ours() -> None:
    _, entries = compare.parse([])
    assert [e.name for e in entries] == ["tornado", "streams", "iostream", "protocol"]


def test_seed_preset_runs_the_file_that_ships_in_the_package() -> None:
    # Package data beside the reference server, so the preset works from a wheel; the
    # checkout's examples/seed/tcp_server.py is a link to it, not a second copy.
    assert SEED_SERVER_FILE.is_file()
    assert SEED_SERVER_FILE.parent.parent == Path(compare.__file__).parent.parent / "reference"
    assert str(SEED_SERVER_FILE.parent) in PRESETS["seed"].command
    assert (ROOT / "examples" / "seed" / "tcp_server.py").resolve() == SEED_SERVER_FILE


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["tornado"], "compare needs two or more servers"),
        (["--port", "8888"], "--port goes right after the --server-cmd it is for"),
        (
            ["tornado", "--server-addr", "127.0.0.1:1", "--port", "8888"],
            "--port goes right after the --server-cmd",
        ),
        (["tornado", "--server-cmd", "./server"], "needs to say where it listens"),
        (["tornado", "--server-cmd", "  "], "--server-cmd is empty"),
        (["tornado", "nonesuch"], "unknown server 'nonesuch'"),
        (["tornado", "streams", "--repeats", "1"], "one run shows no noise"),
        (
            ["tornado", "streams", "--server-addr", "127.0.0.1:1", "--name", "tornado"],
            "two servers named 'tornado'",
        ),
        (["--name", "x", "tornado", "streams"], "--name goes right after the --server-cmd"),
        (["tornado", "--server-addr", "localhost"], "expected HOST:PORT"),
    ],
)
def test_bad_flags_exit_2_in_one_line(
    arguments: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        compare.parse(arguments)
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("echo20-conformance compare: error:")
    assert says in line


def test_compare_help_names_every_preset() -> None:
    done = subprocess.run(
        [*COMPARE, "--help"], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0
    for name in PRESETS:
        assert name in done.stdout
