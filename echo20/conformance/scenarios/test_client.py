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

from echo20.conformance.plugin import ClientUnderTest
from echo20.conformance.scripted import (
    SCRIPTS,
    ClientRun,
    Script,
    expected_transcript,
    run_client,
)
from echo20.conformance.wire import run_async

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


def say_status(run: ClientRun) -> str:
    errors = run.stderr.decode("utf-8", "replace").strip()
    return f"exit status {run.status}, stderr {errors[-200:]!r}"


def findings(run: ClientRun, *, fault: bool) -> list[str]:
    """Everything the client did wrong in this run, most telling first; empty if nothing.

    All of it goes into the failure message: a client that hangs, prints the wrong
    lines and sends the wrong bytes is easier to fix when each is named.
    """
    found = []
    if run.timed_out:
        found.append(
            "it did not exit within the suite's timeout and was killed (the scripted "
            f"server's last step: {run.progress_at_timeout})"
        )
    expected = expected_transcript(run.replies)
    if run.stdout != expected:
        found.append("its output is not the transcript: " + first_difference(expected, run.stdout))
    found += [f"the server saw: {problem}" for problem in run.problems]
    if (
        not fault
        and not run.timed_out
        and not run.problems
        and len(run.replies) < len(run.messages)
    ):
        found.append(f"it stopped after {len(run.replies)} of {len(run.messages)} messages")
    if not run.timed_out:
        if fault and run.status == 0:
            found.append(f"{run.script.about}, yet it exited with status 0")
        elif not fault and run.status != 0:
            found.append(f"it failed: {say_status(run)}")
        if fault and not run.stderr.strip():
            found.append("it failed without a word on stderr")
    return found


@pytest.mark.parametrize("script", GOOD, ids=[s.name for s in GOOD])
@run_async
async def test_replies(client_under_test: ClientUnderTest, script: Script) -> None:
    # Every reply whole, shown as two lines; the client closes and exits 0.
    run = await run_client(script, client_under_test.command, client_under_test.timeout)
    found = findings(run, fault=False)
    assert not found, "; ".join(found)
    assert run.client_closed, "it exited without closing the connection first"


@pytest.mark.parametrize("script", FAULTY, ids=[s.name for s in FAULTY])
@run_async
async def test_server_fault(client_under_test: ClientUnderTest, script: Script) -> None:
    # The replies before the fault shown, nothing of the broken one; stderr says why,
    # the exit status is not 0, and nothing more is sent.
    run = await run_client(script, client_under_test.command, client_under_test.timeout)
    found = findings(run, fault=True)
    assert not found, "; ".join(found)


@pytest.mark.parametrize("script", NO_SERVER, ids=[s.name for s in NO_SERVER])
@run_async
async def test_cannot_connect(client_under_test: ClientUnderTest, script: Script) -> None:
    run = await run_client(script, client_under_test.command, client_under_test.timeout)
    found = findings(run, fault=True)
    assert not found, "; ".join(found)
