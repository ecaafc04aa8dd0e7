"""Our two clients side by side where the conformance suite cannot look: a terminal.

The suite's client scenarios feed a client through a pipe (``echo20-conformance
--client-cmd``, run for both clients in ``test_conformance_targets.py``). A person at
the seed's prompt is another path through the clients; here both get the same typed
lines in pseudo-terminals and must show the same session, and both fail the same way
when nobody listens.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pexpect  # type: ignore[import-untyped]  # no stubs; only the tests use it
import pytest
from support import PYTHON, ROOT, TIMEOUT, ServerProcess, echo_server_argv, running_server

from echo20.conformance.processes import free_port
from echo20.conformance.scripted import expected_transcript
from echo20.conformance.wire import one_batch_chunks

pytest.importorskip("tornado", reason="tornado_client.py needs tornado: pip install -e '.[test]'")

CLIENTS = ("echo_client.py", "echo20/reference/tornado_client.py")
PROMPT = "Enter your input: "


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server(echo_server_argv("--impl", "protocol")) as started:
        yield started


def interactive_transcripts(server: ServerProcess, lines: list[str]) -> list[str]:
    """What a user sees in a terminal, for each client: prompts, typed lines, replies.

    Both clients run side by side in pseudo-terminals and get each line as soon as
    they show the seed's prompt.
    """
    children = [
        pexpect.spawn(
            PYTHON,
            [script, "--host", server.host, "--port", str(server.port)],
            cwd=str(ROOT),
            timeout=TIMEOUT,
            encoding="utf-8",
            env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        )
        for script in CLIENTS
    ]
    seen = ["" for _ in children]
    try:
        for line in lines:
            for index, child in enumerate(children):
                child.expect_exact(PROMPT)
                seen[index] += child.before + PROMPT
                child.sendline(line)
        for index, child in enumerate(children):
            child.expect(pexpect.EOF)
            seen[index] += child.before
    finally:
        for child in children:
            child.close(force=True)
    for script, child, transcript in zip(CLIENTS, children, seen, strict=True):
        assert child.exitstatus == 0, f"{script} exited with {child.exitstatus}: {transcript!r}"
    return seen


def test_clients_same_interactive_session(server: ServerProcess) -> None:
    lines = ["hello", "", "a message longer than twenty bytes", "héllo", "over"]
    transcripts = interactive_transcripts(server, lines)
    assert transcripts[0] == transcripts[1]
    # The terminal echoes each typed line after the prompt; then the two reply lines.
    expected = "".join(
        PROMPT
        + line
        + "\r\n"
        + expected_transcript([one_batch_chunks(line.encode())] if line else [])
        .decode()
        .replace("\n", "\r\n")
        for line in lines
    )
    assert transcripts[0] == expected


def test_clients_same_error_when_nobody_listens() -> None:
    # The same one-line error from both, and exit status 1.
    port = free_port()
    outputs = []
    for script in CLIENTS:
        done = subprocess.run(
            [PYTHON, script, "--port", str(port), "-m", "hello"],
            cwd=ROOT,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        program, _, message = done.stderr.decode().partition(": ")
        outputs.append((done.returncode, done.stdout, message))
        assert program.endswith("-client"), done.stderr
    assert outputs[0] == outputs[1]
    assert outputs[0][0] == 1
    assert outputs[0][2].startswith(f"cannot connect to 127.0.0.1:{port}: ")
