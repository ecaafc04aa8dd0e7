"""Client conformance: ``echo_client.py`` and ``tornado_client.py`` print the same transcript.

Both clients get the same scripted input against the same server, through a pipe on
standard input, through ``-m`` arguments and, in a pseudo-terminal, at the seed's prompt.
Their output must be equal byte for byte, and equal to the transcript this suite expects
on its own: per message, the echo line and the reversed line (chunk by chunk, as the
server cut it), bytes that are not UTF-8 shown as ``\\xNN``; nothing after ``over``.
The clients run as processes, so nothing of theirs is imported here.
"""

from __future__ import annotations

import asyncio
import os

import pexpect  # type: ignore[import-untyped]  # no stubs; only the tests use it
import pytest
from conformance_targets import RunningServer, free_port, installed
from echo20 import CLOSE_CHUNK, one_batch_chunks, shown_reversed
from support import PYTHON, ROOT, TIMEOUT

CLIENTS = ("echo_client.py", "echoverse/reference/tornado_client.py")

pytestmark = pytest.mark.skipif(
    not installed("tornado"), reason="tornado_client.py needs tornado: pip install -e '.[test]'"
)
PROMPT = "Enter your input: "

# One of each kind of line: short, longer than a chunk, empty (skipped), UTF-8 cut by
# the 20-byte border, invalid UTF-8, then ``over`` and a line that is never sent.
MESSAGES = [
    b"hello",
    b"a message longer than twenty bytes",
    b"",
    "a你好世界再见朋友".encode(),
    b"\xff\xfe not UTF-8",
    b"overtime",
    b"over",
    b"after over: never sent",
]
# Standard input also carries what argv cannot: a NUL byte, a carriage return ending.
STDIN_ONLY = [b"\0 NUL", b"crlf line\r"]


def show(data: bytes) -> bytes:
    """A line as the clients print it: UTF-8, undecodable bytes as ``\\xNN``."""
    return data.decode("utf-8", "backslashreplace").encode() + b"\n"


def expected_transcript(messages: list[bytes]) -> bytes:
    """The two lines per message; empty messages are skipped, ``over`` ends the session."""
    out = b""
    for message in messages:
        message = message.removesuffix(b"\r")
        if not message:
            continue
        chunks = one_batch_chunks(message)
        out += show(message) + show(shown_reversed(chunks))
        if CLOSE_CHUNK in chunks:
            break
    return out


async def run_client(
    script: str, server: RunningServer, args: list[bytes], stdin: bytes
) -> tuple[int, bytes, bytes]:
    host, port = server.address
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        script,
        "--host",
        host,
        "--port",
        str(port),
        "--timeout",
        str(TIMEOUT),
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            stdout, stderr = await process.communicate(stdin)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{script} did not finish within {TIMEOUT:g} s") from None
    assert process.returncode is not None
    return process.returncode, stdout, stderr


async def test_clients_same_transcript(server: RunningServer) -> None:
    # Two sessions per client, all four at once: from a pipe, where the session ends
    # with standard input (no ``over``; the client closes), and from -m arguments,
    # where it ends with ``over`` (the server closes; the last message is never sent).
    piped = [m for m in STDIN_ONLY + MESSAGES if CLOSE_CHUNK not in one_batch_chunks(m)]
    stdin = b"".join(m + b"\n" for m in piped)
    args = [arg for message in MESSAGES for arg in (b"-m", message)]
    sessions: list[tuple[str, str, list[bytes], bytes, list[bytes]]]
    sessions = [(f"{c} <stdin", c, [], stdin, piped) for c in CLIENTS]
    sessions += [(f"{c} -m", c, args, b"", MESSAGES) for c in CLIENTS]
    results = await asyncio.gather(
        *(run_client(script, server, argv, data) for _, script, argv, data, _ in sessions)
    )
    for (name, _, _, _, messages), (status, stdout, stderr) in zip(sessions, results, strict=True):
        assert (status, stderr) == (0, b""), f"{name}: {stderr.decode(errors='replace')}"
        assert stdout == expected_transcript(messages), f"{name}: transcript"


def interactive_transcripts(server: RunningServer, lines: list[str]) -> list[str]:
    """What a user sees in a terminal, for each client: prompts, typed lines, replies.

    Both clients run side by side in pseudo-terminals and get each line as soon as
    they show the seed's prompt.
    """
    host, port = server.address
    children = [
        pexpect.spawn(
            PYTHON,
            [script, "--host", host, "--port", str(port)],
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


def test_clients_same_interactive_session(server: RunningServer) -> None:
    lines = ["hello", "", "a message longer than twenty bytes", "héllo", "over"]
    transcripts = interactive_transcripts(server, lines)
    assert transcripts[0] == transcripts[1]
    # The terminal echoes each typed line after the prompt; then the two reply lines.
    expected = "".join(
        PROMPT + line + "\r\n" + expected_transcript([line.encode()]).decode().replace("\n", "\r\n")
        for line in lines
    )
    assert transcripts[0] == expected


async def test_clients_same_error_when_nobody_listens() -> None:
    # Not a server scenario: the same one-line error from both, and exit status 1.
    port = free_port()
    outputs = []
    for script in CLIENTS:
        process = await asyncio.create_subprocess_exec(
            PYTHON,
            script,
            "--port",
            str(port),
            "-m",
            "hello",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(TIMEOUT):
            stdout, stderr = await process.communicate()
        program, _, message = stderr.decode().partition(": ")
        outputs.append((process.returncode, stdout, message))
        assert program.endswith("-client"), stderr
    assert outputs[0] == outputs[1]
    assert outputs[0][0] == 1
    assert outputs[0][2].startswith(f"cannot connect to 127.0.0.1:{port}: ")
