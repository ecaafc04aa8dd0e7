"""Every echo20 client scenario: the client under test against scripted servers.

The client runs as a process (``--client-cmd "CMD {port}"``) with the messages on its
standard input, one per line. What it must do, as ``docs/protocol.md`` says:

* send each non-empty line's bytes (no line ending), read the whole double reply
  (``2 * len(message)`` bytes, however the server's segments cut it) and print two
  lines: the echo, then the reversed halves joined, bytes that are not UTF-8 as
  ``\\xNN``; nothing after the reply to a message whose last chunk was ``over``;
* close the connection when its input ends and exit 0;
* when the server closes early, sends bytes that are no double reply, or stalls: print
  nothing for that message, say why on stderr, exit non-zero, within the suite's
  timeout (give the client a shorter timeout of its own);
* when nothing listens: say so on stderr, exit non-zero.
"""

from __future__ import annotations

import pytest

from echoverse.conformance.plugin import ClientUnderTest
from echoverse.conformance.scripted import SCRIPTS, ClientRun, Script, expected_transcript, run_client
from echoverse.conformance.wire import run_async

GOOD = [s for s in SCRIPTS if s.fault is None and not s.no_server]
FAULTY = [s for s in SCRIPTS if s.fault is not None]
NO_SERVER = [s for s in SCRIPTS if s.no_server]


def first_difference(expected: bytes, got: bytes) -> str:
    """Where two transcripts part, line by line (for the failure message)."""
    want, have = expected.splitlines(keepends=True), got.splitlines(keepends=True)
    for number, (line, other) in enumerate(zip(want, have, strict=False), 1):
        if line != other:
            return f"line {number}: expected {line!r}, got {other!r}"
    if len(want) > len(have):
        return f"{len(have)} lines, expected {len(want)}; the first missing: {want[len(have)]!r}"
    return f"{len(have) - len(want)} lines more than expected, from {have[len(want)]!r}"


def assert_finished(run: ClientRun, timeout: float) -> None:
    """The client exited on its own, and everything it sent was what it should send."""
    if run.timed_out:
        raise AssertionError(
            f"the client did not exit within {timeout:g} s (killed); the server had "
            f"{run.progress}; its output so far: {run.stdout[-200:]!r}"
        )
    assert not run.problems, "; ".join(run.problems)


def say_status(run: ClientRun) -> str:
    errors = run.stderr.decode("utf-8", "replace").strip()
    return f"exit status {run.status}, stderr {errors[-300:]!r}"


@pytest.mark.parametrize("script", GOOD, ids=[s.name for s in GOOD])
@run_async
async def test_replies(client_under_test: ClientUnderTest, script: Script) -> None:
    run = await run_client(script, client_under_test.command, client_under_test.timeout)
    assert_finished(run, client_under_test.timeout)
    assert len(run.replies) == len(run.messages), (
        f"the client sent {len(run.replies)} of {len(run.messages)} messages "
        f"({run.progress}); {say_status(run)}"
    )
    expected = expected_transcript(run.replies)
    assert run.stdout == expected, "transcript: " + first_difference(expected, run.stdout)
    assert run.status == 0, say_status(run)
    assert run.client_closed, "the client did not close the connection"


@pytest.mark.parametrize("script", FAULTY, ids=[s.name for s in FAULTY])
@run_async
async def test_server_fault(client_under_test: ClientUnderTest, script: Script) -> None:
    run = await run_client(script, client_under_test.command, client_under_test.timeout)
    assert_finished(run, client_under_test.timeout)
    # The whole replies before the fault are shown; nothing of the broken one.
    expected = expected_transcript(run.replies)
    assert run.stdout == expected, "transcript: " + first_difference(expected, run.stdout)
    assert run.status != 0, f"{script.about}, yet {say_status(run)}"
    assert run.stderr.strip(), f"{script.about}: a failing client says why on stderr"


@pytest.mark.parametrize("script", NO_SERVER, ids=[s.name for s in NO_SERVER])
@run_async
async def test_cannot_connect(client_under_test: ClientUnderTest, script: Script) -> None:
    run = await run_client(script, client_under_test.command, client_under_test.timeout)
    assert_finished(run, client_under_test.timeout)
    assert run.stdout == b"", f"output with nobody listening: {run.stdout[:200]!r}"
    assert run.status != 0, f"nobody listens, yet {say_status(run)}"
    assert run.stderr.strip(), "a client that cannot connect says so on stderr"
