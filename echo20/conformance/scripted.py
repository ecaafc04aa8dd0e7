"""Scripted servers that judge a client: each delivers the replies its own way.

A client under test (``--client-cmd "CMD {port}"``) gets the same messages on standard
input, one per line, against a scripted server per scenario. The server reads each
message (it knows which to expect), answers it as its script says (one segment, a byte
at a time, the halves apart, cut across the 20-byte border, cut where a batch might
end), or breaks the protocol on purpose (closes early, sends garbage, stalls), and
notes everything the client did: what it sent, whether it went on after ``over``,
whether it closed. ``docs/protocol.md`` says what a client must do in each case.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from echo20.conformance.processes import command_argv, free_port
from echo20.conformance.wire import CHUNK_SIZE, CLOSE_CHUNK, double_reply, one_batch_chunks

__all__ = [
    "INPUT_LINES",
    "SCRIPTS",
    "ClientRun",
    "Script",
    "expected_transcript",
    "run_client",
    "sent_messages",
]

# One of each kind of line: short, longer than a chunk, empty (never sent), a NUL byte,
# a CRLF ending (not sent), UTF-8 cut by the 20-byte border, bytes that are not UTF-8,
# a lookalike of ``over``, then ``over`` and a line that must never be sent.
INPUT_LINES: tuple[bytes, ...] = (
    b"hello",
    b"a message longer than twenty bytes",
    b"",
    b"\0 NUL",
    b"crlf line\r",
    "a你好世界再见朋友".encode(),
    b"\xff\xfe not UTF-8",
    b"overtime",
    b"over",
    b"after over: never sent",
)

# The message a faulty script breaks: the second, the one longer than a chunk, so the
# transcript before it is one whole reply.
FAULT_AT = 1

# Pauses that make pieces of a reply separate segments that arrive separately: the
# behaviour under test, not synchronisation. A byte every 2 ms keeps a whole session
# under a second; 50 ms between the halves is longer than any client's read loop turn.
BYTE_PAUSE = 0.002
HALF_PAUSE = 0.05
PIECE_PAUSE = 0.01

# Where the cut-across-the-border script splits a reply: one byte past each 20-byte
# boundary, so no segment is a whole chunk or a whole half.
ACROSS_BORDER_SEGMENT = CHUNK_SIZE + 1

# Where the uneven-cut script ends its first chunk, as a server does whose batch ended
# there: the client must take the cut from the reply, not assume 20, 20, ...
UNEVEN_FIRST_CHUNK = 7


def sent_messages(lines: tuple[bytes, ...]) -> list[bytes]:
    """The messages a client sends for these input lines.

    Line endings are not part of a message, empty lines are not sent (the server would
    answer nothing), and nothing is sent after the message that ends with ``over``.
    """
    messages = []
    for line in lines:
        message = line.rstrip(b"\r\n")
        if not message:
            continue
        messages.append(message)
        if one_batch_chunks(message)[-1] == CLOSE_CHUNK:
            break
    return messages


def show(data: bytes) -> bytes:
    """One line of a transcript: UTF-8, every byte that does not decode as ``\\xNN``."""
    return data.decode("utf-8", "backslashreplace").encode() + b"\n"


def expected_transcript(replies: list[list[bytes]]) -> bytes:
    """Two lines per reply (given as its chunks): the echo, then the reversed halves."""
    return b"".join(
        show(b"".join(chunks)) + show(b"".join(chunk[::-1] for chunk in chunks))
        for chunks in replies
    )


# --- how each script delivers a reply -----------------------------------------------

# A reply as the segments it goes out in, each with the pause before it (seconds).
Segments = list[tuple[float, bytes]]


def one_segment(chunks: list[bytes]) -> Segments:
    return [(0.0, double_reply(chunks))]


def byte_by_byte(chunks: list[bytes]) -> Segments:
    return [(BYTE_PAUSE, bytes([byte])) for byte in double_reply(chunks)]


def halves_apart(chunks: list[bytes]) -> Segments:
    return [(HALF_PAUSE, half) for chunk in chunks for half in (chunk, chunk[::-1])]


def across_border(chunks: list[bytes]) -> Segments:
    reply = double_reply(chunks)
    step = ACROSS_BORDER_SEGMENT
    return [(PIECE_PAUSE, reply[start : start + step]) for start in range(0, len(reply), step)]


async def deliver(writer: asyncio.StreamWriter, segments: Segments) -> None:
    """Send the segments; the pause before the first is skipped (the client is waiting)."""
    for index, (pause, segment) in enumerate(segments):
        if index and pause:
            await asyncio.sleep(pause)  # sleep-ok: the gap between segments is the test
        writer.write(segment)
        await writer.drain()


def standard_cut(message: bytes) -> list[bytes]:
    return one_batch_chunks(message)


def uneven_cut(message: bytes) -> list[bytes]:
    head, rest = message[:UNEVEN_FIRST_CHUNK], message[UNEVEN_FIRST_CHUNK:]
    return [head, *one_batch_chunks(rest)] if rest else [head]


@dataclass(frozen=True)
class Script:
    """One scripted server: how it cuts and delivers replies, and which fault it has."""

    name: str
    about: str
    segments: Callable[[list[bytes]], Segments] = one_segment
    cut: Callable[[bytes], list[bytes]] = standard_cut
    # None, or what happens to the reply to message FAULT_AT: "close" (half the echo,
    # then the server closes), "garbage" (the right length, the reversal missing),
    # "stall" (half the reply, then silence with the connection open).
    fault: str | None = None
    # The input ends without ``over``: the client must close when its input ends.
    without_over: bool = False
    # Nobody listens on the port at all.
    no_server: bool = False

    def input_lines(self) -> tuple[bytes, ...]:
        if self.without_over:
            return tuple(line for line in INPUT_LINES if CLOSE_CHUNK not in line)
        return INPUT_LINES


SCRIPTS: tuple[Script, ...] = (
    Script("one_segment", "each reply in one segment (TCP_NODELAY)"),
    Script("byte_by_byte", "each reply one byte per segment", segments=byte_by_byte),
    Script(
        "halves_apart",
        f"each chunk's echo, then {HALF_PAUSE * 1000:g} ms later its reversal",
        segments=halves_apart,
    ),
    Script(
        "across_chunk_border",
        f"each reply in segments of {ACROSS_BORDER_SEGMENT} bytes",
        segments=across_border,
    ),
    Script(
        "uneven_cut",
        f"chunks cut {UNEVEN_FIRST_CHUNK}, 20, 20, ... (a batch that ended early)",
        cut=uneven_cut,
    ),
    Script("input_ends_without_over", "no over: the client closes", without_over=True),
    Script("closed_early", "closes halfway through the echo of message 2", fault="close"),
    Script("garbage", "answers message 2 with its echo twice (no reversal)", fault="garbage"),
    Script("stalled", "sends half of reply 2, then nothing (connection open)", fault="stall"),
    Script("no_server", "nothing listens on the port", no_server=True),
)


# --- one client run against one script --------------------------------------------


@dataclass
class ClientRun:
    """What happened: the client's exit and output, and what the server saw of it."""

    script: Script
    messages: list[bytes]
    status: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    # The chunks of every reply the server sent whole, in order.
    replies: list[list[bytes]] = field(default_factory=list)
    connections: int = 0
    # Everything the server found wrong in what the client sent.
    problems: list[str] = field(default_factory=list)
    # The client closed its side (end of stream seen by the server).
    client_closed: bool = False
    # Where the server was when the run ended, for the messages of a hang.
    progress: str = "none: no connection yet"
    # Where the server was when the client was killed for taking too long.
    progress_at_timeout: str = ""
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    handlers: list[asyncio.Task[None]] = field(default_factory=list)


async def _serve(
    run: ClientRun, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    run.connections += 1
    run.writers.append(writer)
    task = asyncio.current_task()
    if task is not None:
        run.handlers.append(task)
    if run.connections > 1:
        run.problems.append("the client opened a second connection")
        writer.close()
        return
    script = run.script
    try:
        for index, message in enumerate(run.messages):
            run.progress = f"waiting for message {index + 1} ({message!r})"
            try:
                data = await reader.readexactly(len(message))
            except asyncio.IncompleteReadError as error:
                if error.partial:
                    run.problems.append(
                        f"message {index + 1}: expected {message!r}, got {error.partial!r} "
                        "and the end of stream"
                    )
                else:
                    run.client_closed = True
                    run.progress = f"saw the client close before message {index + 1}"
                return
            if data != message:
                run.problems.append(f"message {index + 1}: expected {message!r}, got {data!r}")
                return
            chunks = script.cut(message)
            if index == FAULT_AT and script.fault is not None:
                await _fault(run, script.fault, chunks, reader, writer)
                return
            run.progress = f"sending reply {index + 1}"
            await deliver(writer, script.segments(chunks))
            run.replies.append(chunks)
            run.progress = f"sent reply {index + 1} whole"
            if chunks[-1] == CLOSE_CHUNK:
                # Close our side as a server does after ``over``, but keep reading: a
                # client must send nothing more.
                writer.write_eof()
                rest = await reader.read()
                if rest:
                    run.problems.append(f"the client sent {rest!r} after over's reply")
                run.client_closed = True
                return
        run.progress = "answered every message, waiting for the client to close"
        rest = await reader.read()
        if rest:
            run.problems.append(f"the client sent {rest!r} beyond its input")
        run.client_closed = True
        run.progress = "saw the client close after its last message"
    except ConnectionError:
        run.client_closed = True
    finally:
        writer.close()


async def _fault(
    run: ClientRun,
    fault: str,
    chunks: list[bytes],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    reply = double_reply(chunks)
    if fault == "close":
        run.progress = "closed halfway through reply 2, as scripted"
        await deliver(writer, [(0.0, reply[: len(chunks[0]) // 2])])
        return
    if fault == "garbage":
        run.progress = "sent garbage for reply 2, as scripted"
        await deliver(writer, [(0.0, b"".join(chunk + chunk for chunk in chunks))])
    else:
        run.progress = "sent half of reply 2, then nothing, as scripted"
        await deliver(writer, [(0.0, reply[: len(reply) // 2])])
    # The client must give up on this connection: anything more it sends is a problem.
    rest = await reader.read()
    if rest:
        run.problems.append(f"the client went on, sending {rest!r}")
    run.client_closed = True


async def run_client(script: Script, command: str, timeout: float) -> ClientRun:
    """Run ``command`` (``{port}`` filled in) against ``script``; what happened.

    The client gets ``timeout`` seconds to finish; after that it is killed and the run
    says so (``timed_out``).
    """
    lines = script.input_lines()
    run = ClientRun(script, sent_messages(lines))
    server: asyncio.Server | None = None
    if script.no_server:
        port = free_port()
    else:
        server = await asyncio.start_server(
            lambda r, w: _serve(run, r, w), "127.0.0.1", 0, start_serving=True
        )
        port = server.sockets[0].getsockname()[1]
    try:
        argv = command_argv(command, port=port, host="127.0.0.1")
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(timeout):
                run.stdout, run.stderr = await process.communicate(
                    b"".join(line + b"\n" for line in lines)
                )
        except TimeoutError:
            run.timed_out = True
            run.progress_at_timeout = run.progress
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            run.stdout, run.stderr = await process.communicate()
        run.status = process.returncode
    finally:
        if server is not None:
            server.close()
            # The client has exited, so its connection is over: cut ours too, and let
            # each handler finish (a pause between segments at most) before the loop
            # ends, so none is cancelled halfway.
            for writer in run.writers:
                writer.transport.abort()
            if run.handlers:
                await asyncio.wait(run.handlers, timeout=timeout)
            await server.wait_closed()
    return run
