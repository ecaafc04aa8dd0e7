"""Differential tests: Tornado's own IOStream and the port, driven by the same operations.

Hypothesis draws a sequence of operations on one TCP connection over 127.0.0.1. The
*local* end is the stream under test: ``tornado.iostream.IOStream`` in one run, the
port's :class:`iostream.IOStream` in another, each on a fresh event loop of its own. The
*remote* end is a plain non-blocking socket that the test drives through the same loop.
Both runs must give the same outcome for every operation: the bytes a read returns, or
the exception raised (its type, and the class of ``real_error``). A small model of the
semantics in ``docs/tornado-semantics.md`` predicts every outcome too, so a sequence that
would hang is never run, and a failure says whether Tornado, the port or the model
disagrees.

Determinism. Each operation waits for its own result, bounded by ``TIMEOUT``. Reads are
generated only where their result cannot depend on timing: a read that must wait for
the peer is started first and then the peer's bytes or end of stream follow
(:class:`ReadPending`), or our own ``close()`` ends it (:class:`ReadThenClose`). Bytes we
write are read by the remote at once, so the remote closes with nothing unread (an end
of stream, FIN); :class:`RemoteAbort` sends a reset (RST) on purpose. Regular expressions
match a fixed number of bytes, so their first match in the stream never depends on how
the bytes were cut into segments; ``max_bytes`` verdicts do not either.

Where the two cannot match by design, the generator does not look (or compares loosely),
and names why: every such place cites a key of :data:`DIVERGENCES`, and the tests at the
end of this file show each named difference on a fixed sequence, against both. Tornado's
own quirks (:data:`TORNADO_QUIRKS`; ``docs/tornado-semantics.md``, "Tornado's quirks, not
copied") are worked around in its adapter.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeAlias

import pytest
import tornado.iostream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import TIMEOUT

from echo20 import loops
from echo20.iostream import IOStream

# --- where the port differs from Tornado by design ------------------------------------

DIVERGENCES: dict[str, str] = {
    "partial-read-size": (
        "read_bytes(n, partial=True) returns what is buffered, and what is buffered depends "
        "on timing and on how each reads: Tornado reads the socket only when a read needs "
        "bytes, the port reads eagerly. Compared by invariant (1..n bytes, a prefix of what "
        "was sent), then topped up with read_bytes to the same total on both."
    ),
    "unread-bytes-at-close": (
        "After close() (ours, or a max_bytes overrun) with bytes the peer sent but no read "
        "returned, Tornado may still have them in the kernel (lost, and the peer gets a "
        "reset), the port has them in its buffer (still readable, and the peer gets an end "
        "of stream). read_until_close() is then compared as 'a prefix of the unread bytes'; "
        "reads that could be served from those bytes are not generated."
    ),
    "end-seen-while-idle": (
        "The port notices the peer's end of stream (or reset) as soon as it arrives, and "
        "closes an idle stream at once; Tornado notices only when it listens (a close "
        "callback set, a read, or once it has waited on the IOLoop). So closed(), a write "
        "after the peer closed, and the real_error of a stream we close after the peer "
        "reset it depend on timing: not generated until a read has met the end."
    ),
    "write-future-resolves-when-queued": (
        "The port's write() future resolves once the bytes are queued below the high-water "
        "mark; Tornado's once they reached the kernel. A write into a connection the peer "
        "has reset may succeed in the port and fail in Tornado: the failure shows on the "
        "port's next operation. Not generated (see end-seen-while-idle)."
    ),
    "close-sends-queued-writes": (
        "close() with written bytes the kernel could not take yet: the port still sends "
        "them, then the end of stream (asyncio's transport.close() flushes); Tornado drops "
        "them. Pending write futures fail with StreamClosedError in both. Not generated: "
        "the remote reads every write at once."
    ),
    "max-buffer-size-granularity": (
        "Tornado checks max_buffer_size after each socket read of at most 64 KiB (or "
        "max_buffer_size / 2) and before it looks at the bytes; the port lets the waiting "
        "read look first, at whatever batch asyncio delivered. So a read completed by the "
        "very bytes that overflow fails in Tornado and succeeds in the port. Not generated "
        "(the default limit is 100 MiB); test_iostream covers the port's rule."
    ),
}

# Tornado's bugs, which the port does not copy (docs/tornado-semantics.md, "Tornado's
# quirks, not copied"): its adapter works around them in the property test, and
# test_tornado_quirk_not_copied shows each one, and the port without.
TORNADO_QUIRKS: dict[str, str] = {
    "stale-pending-read": (
        "A read that fails at once on a closed stream stays pending, so every later read "
        "raises StreamClosedError, even one the buffered bytes could serve."
    ),
    "lingering-criteria": (
        "A failed read's delimiter and max_bytes stay set and are checked by the next read: "
        "a read_bytes() can then raise UnsatisfiableReadError itself, unwrapped."
    ),
}

# --- operations -----------------------------------------------------------------------

# The bytes the remote sends: few enough symbols that delimiters and matches are common.
ALPHABET = "ab;\nxy1"
DELIMITERS = (b"\n", b";", b"xy", b"1a", b"aaa", b"\n\n")
# Every pattern matches a fixed number of bytes (see the module docstring).
PATTERNS = (rb"[;\n]", rb"x[ab]", rb"a.a", rb"\d", rb"(?:;;|yy)")
# All the remote sends in one sequence fit in the kernel's buffers and in one of
# Tornado's 64 KiB socket reads, so nobody has to read for a send to finish.
MAX_REMOTE_TOTAL = 40_000
MAX_WRITE = 20_000
MAX_OPS = 16

ReadKind = Literal["bytes", "partial", "until", "regex", "close"]


@dataclass(frozen=True)
class Read:
    """One read on the local stream.

    ``top_up`` (partial reads): the total the model expects; the harness adds a
    ``read_bytes`` for the rest when the partial read returned less
    (``DIVERGENCES["partial-read-size"]``). ``unread`` (lenient ``read_until_close``):
    the result only has to be a prefix of these bytes (``"unread-bytes-at-close"``).
    """

    kind: ReadKind
    n: int = 0
    delimiter: bytes = b""
    pattern: bytes = b""
    max_bytes: int | None = None
    top_up: int = 0
    unread: bytes | None = None

    def __repr__(self) -> str:
        if self.kind == "bytes":
            return f"read_bytes({self.n})"
        if self.kind == "partial":
            return f"read_bytes({self.n}, partial=True)"
        if self.kind == "until":
            return f"read_until({self.delimiter!r}, max_bytes={self.max_bytes})"
        if self.kind == "regex":
            return f"read_until_regex({self.pattern!r}, max_bytes={self.max_bytes})"
        return "read_until_close()"


@dataclass(frozen=True, init=False)
class LocalWrite:
    """``stream.write()`` of each part in one go, then all of them awaited.

    Meanwhile the remote reads exactly the bytes written. Parts written in one turn of
    the event loop leave in one send from the port (coalesced writes).
    """

    parts: tuple[bytes, ...]

    def __init__(self, *parts: bytes) -> None:
        object.__setattr__(self, "parts", parts)

    def __repr__(self) -> str:
        return f"LocalWrite({', '.join(map(_short, self.parts))})"


@dataclass(frozen=True, init=False)
class WriteAndClose:
    """``stream.write()`` of each part, then ``close()`` at once; the remote reads to the end."""

    parts: tuple[bytes, ...]

    def __init__(self, *parts: bytes) -> None:
        object.__setattr__(self, "parts", parts)

    def __repr__(self) -> str:
        return f"WriteAndClose({', '.join(map(_short, self.parts))})"


@dataclass(frozen=True)
class LocalClose:
    """``stream.close()``."""


@dataclass(frozen=True)
class RemoteWrite:
    data: bytes

    def __repr__(self) -> str:
        return f"RemoteWrite({_short(self.data)})"


@dataclass(frozen=True)
class RemoteShutdown:
    """The remote shuts down its sending side (FIN); it still reads."""


@dataclass(frozen=True)
class RemoteClose:
    """The remote closes, having read everything we wrote: an end of stream (FIN)."""


@dataclass(frozen=True)
class RemoteAbort:
    """The remote closes with ``SO_LINGER`` 0: a reset (RST)."""


@dataclass(frozen=True)
class RemoteExpectEnd:
    """The remote reads: after our close it must see the end of stream."""


@dataclass(frozen=True)
class WriteThenClose:
    """Write ``size`` bytes the remote is not reading, close, then the remote reads all.

    Only in the fixed sequences that show ``DIVERGENCES["close-sends-queued-writes"]``.
    """

    size: int


RemoteOp: TypeAlias = RemoteWrite | RemoteShutdown | RemoteClose | RemoteAbort


@dataclass(frozen=True)
class ReadPending:
    """Start ``read`` (it cannot finish yet), then ``then``, then await the read.

    ``then`` is what the remote does, and writes of ours while the read waits.
    """

    read: Read
    then: tuple[RemoteOp | LocalWrite, ...]


@dataclass(frozen=True)
class ReadThenClose:
    """Start ``read`` (it cannot finish yet), then our own ``close()``, then await it."""

    read: Read


Op: TypeAlias = (
    Read
    | LocalWrite
    | WriteAndClose
    | LocalClose
    | RemoteOp
    | RemoteExpectEnd
    | ReadPending
    | ReadThenClose
    | WriteThenClose
)

# What an operation gave: ("ok",), ("ok", data), ("raise", type, real_error type),
# ("prefix",) for a lenient read that passed, ("remote-end", "eof"|"reset"), or a
# harness-level failure ("hang", ...), ("bad-partial", ...), ("remote-error", ...).
Outcome: TypeAlias = tuple[object, ...]
OK: Outcome = ("ok",)


def raised(error: str | None) -> Outcome:
    return ("raise", "StreamClosedError", error)


def _short(data: bytes) -> str:
    return repr(data) if len(data) <= 24 else f"<{len(data)} bytes {data[:12]!r}...>"


# --- the model: docs/tornado-semantics.md as a few rules -------------------------------

Verdict = Literal["ok", "violation", "wait"]


@dataclass
class Model:
    """The state of one connection as the semantics predict it, for both implementations."""

    unread: bytes = b""  # sent by the remote, not yet returned by a read
    remote: Literal["open", "shut", "closed", "aborted"] = "open"
    fin: bool = False  # the remote sent an end of stream (before any reset)
    closed: bool = False  # closed() of the local stream
    error: str | None = None  # class of the local stream's error (real_error)
    # Closed with unread bytes whose presence in the buffer depends on timing
    # (DIVERGENCES["unread-bytes-at-close"]).
    uncertain: bool = False
    clean_close: bool = False  # we closed with nothing unread: the remote sees a FIN
    remote_saw_end: bool = False
    remote_total: int = 0

    @property
    def end_error(self) -> str | None:
        """The real_error of a read that meets the remote's end."""
        return None if self.fin else "ConnectionResetError"

    @property
    def reset_unseen(self) -> bool:
        """The remote reset the connection and no read has met it yet."""
        return self.remote == "aborted" and not self.fin and not self.closed

    def verdict(self, read: Read) -> tuple[Verdict, int]:
        """What ``read`` does given exactly ``unread`` buffered: ok (and how many bytes)."""
        data = self.unread
        if read.kind == "bytes":
            return ("ok", read.n) if len(data) >= read.n else ("wait", 0)
        if read.kind == "partial":
            return ("ok", min(read.n, len(data))) if data else ("wait", 0)
        if read.kind == "close":
            return ("ok", len(data)) if self.closed else ("wait", 0)
        if not data:
            # Tornado searches only a non-empty buffer.
            return ("wait", 0)
        end = _match_end(read, data)
        if end is not None:
            if read.max_bytes is not None and end > read.max_bytes:
                return ("violation", 0)
            return ("ok", end)
        if read.max_bytes is not None and len(data) > read.max_bytes:
            return ("violation", 0)
        return ("wait", 0)

    def apply(self, op: Op) -> Outcome:
        """Advance the state by ``op`` and return the outcome both must give."""
        if isinstance(op, RemoteWrite):
            self.unread += op.data
            self.remote_total += len(op.data)
            return OK
        if isinstance(op, RemoteShutdown):
            self.remote, self.fin = "shut", True
            return OK
        if isinstance(op, RemoteClose):
            self.remote, self.fin = "closed", True
            return OK
        if isinstance(op, RemoteAbort):
            self.remote = "aborted"
            return OK
        if isinstance(op, RemoteExpectEnd):
            self.remote_saw_end = True
            return ("remote-end", "eof")
        if isinstance(op, LocalWrite):
            return raised(self.error) if self.closed else OK
        if isinstance(op, WriteAndClose):
            # Generated only with nothing unread and the remote open: it gets it all,
            # then the end of stream.
            self._close_locally()
            self.remote_saw_end = True
            return ("written", True, "eof", ("ok",) * len(op.parts))
        if isinstance(op, LocalClose):
            self._close_locally()
            return OK
        if isinstance(op, ReadPending):
            for remote_op in op.then:
                self.apply(remote_op)
            return self.read(op.read)
        if isinstance(op, ReadThenClose):
            outcome = ("ok", b"") if op.read.kind == "close" else raised(None)
            self._close_locally()
            return outcome
        if isinstance(op, WriteThenClose):
            raise AssertionError("never generated: its outcome differs by design")
        return self.read(op)

    def read(self, read: Read) -> Outcome:
        if self.uncertain:
            if read.kind == "close":
                self.unread, self.uncertain = b"", False
                return ("prefix",)
            # Generated only when no prefix of the unread bytes satisfies it.
            return raised(self.error)
        verdict, size = self.verdict(read)
        if verdict == "ok":
            data, self.unread = self.unread[:size], self.unread[size:]
            return ("ok", data)
        if verdict == "violation":
            if not self.closed:
                self.closed, self.error = True, "UnsatisfiableReadError"
                self.uncertain, self.clean_close = True, False
            # On a stream already closed, the first error stays (as in Tornado).
            return raised(self.error)
        if self.closed:
            return raised(self.error)
        if self.remote == "open":
            raise AssertionError(f"{read!r} would wait forever")
        # The read meets the remote's end once the unread bytes cannot satisfy it: the
        # stream closes, with every byte sent before the end still buffered.
        self.closed, self.error, self.clean_close = True, self.end_error, True
        if read.kind == "close":
            data, self.unread = self.unread, b""
            return ("ok", data)
        return raised(self.error)

    def _close_locally(self) -> None:
        if not self.closed:
            self.closed = True
            self.clean_close = not self.unread
            self.uncertain = bool(self.unread)


def _match_end(read: Read, data: bytes) -> int | None:
    if read.kind == "until":
        location = data.find(read.delimiter)
        return None if location == -1 else location + len(read.delimiter)
    match = re.search(read.pattern, data)
    return None if match is None else match.end()


# --- generating sequences ---------------------------------------------------------------


def payloads(max_size: int) -> st.SearchStrategy[bytes]:
    """Mostly short runs of the alphabet; sometimes long ones or arbitrary bytes."""
    short = st.text(alphabet=ALPHABET, max_size=40).map(str.encode)
    long = st.builds(
        lambda size, seed: "".join(random.Random(seed).choices(ALPHABET, k=size)).encode(),
        st.integers(200, max_size),
        st.integers(0, 2**32),
    )
    return st.one_of(short, short, long, st.binary(max_size=64))


def near(*values: int) -> st.SearchStrategy[int]:
    """One of ``values`` or a neighbour: the edges where off-by-one bugs live."""
    return st.sampled_from(sorted({v + d for v in values for d in (-1, 0, 1)}))


@st.composite
def reads(draw: st.DrawFn, model: Model) -> Read:
    kind: ReadKind = draw(st.sampled_from(("bytes", "partial", "until", "regex", "close")))
    size = len(model.unread)
    if kind in ("bytes", "partial"):
        n = max(1, draw(near(1, size, size + 30, 5000)))
        return Read(kind, n=n)
    if kind == "close":
        return Read(kind)
    if kind == "until":
        read = Read(kind, delimiter=draw(st.sampled_from(DELIMITERS)))
    else:
        read = Read(kind, pattern=draw(st.sampled_from(PATTERNS)))
    end = _match_end(read, model.unread) if model.unread else None
    edges = (size,) if end is None else (end, size)
    max_bytes = draw(st.none() | near(0, *edges).map(lambda v: max(0, v)))
    return replace(read, max_bytes=max_bytes)


def finish_read(read: Read, model: Model) -> Read:
    """Fill in what the harness needs from the model: the top-up, the lenient prefix."""
    if model.uncertain and read.kind == "close":
        return replace(read, unread=model.unread)
    if read.kind == "partial":
        verdict, size = model.verdict(read)
        return replace(read, top_up=size if verdict == "ok" else 0)
    return read


def can_send(model: Model, data: bytes) -> bool:
    return model.remote_total + len(data) <= MAX_REMOTE_TOTAL


# How often each kind of operation is drawn: the ones that end the conversation rarely,
# so that most sequences have something left to read and write after them.
CHOICES = (
    *("read",) * 5,
    *("remote-write",) * 4,
    *("local-write",) * 2,
    "local-close",
    "write-and-close",
    "remote-end",
    "expect-end",
)


@st.composite
def operations(draw: st.DrawFn, model: Model) -> Op | None:
    """One operation that is deterministic in ``model``'s state (None: none drawn)."""
    choice = draw(st.sampled_from(CHOICES))
    remote_open = model.remote == "open"
    if choice == "remote-write":
        data = draw(payloads(8000))
        # After our close the remote's bytes may meet a reset; nothing to learn there.
        if remote_open and not model.closed and can_send(model, data):
            return RemoteWrite(data)
        return None
    if choice == "remote-end":
        if model.remote in ("closed", "aborted"):
            return None
        options: list[RemoteOp] = [RemoteClose(), RemoteAbort()]
        # DIVERGENCES["unread-bytes-at-close"]: the remote may have had a reset from
        # Tornado, and shutdown() then fails with ENOTCONN.
        if remote_open and (model.clean_close or not model.closed):
            options.append(RemoteShutdown())
        return draw(st.sampled_from(options))
    if choice == "expect-end":
        if (
            model.closed
            and model.clean_close
            and model.remote in ("open", "shut")
            and not model.remote_saw_end
        ):
            return RemoteExpectEnd()
        return None
    if choice == "local-close":
        # DIVERGENCES["end-seen-while-idle"]: closing after an unseen reset.
        return None if model.reset_unseen else LocalClose()
    if choice == "local-write":
        writable = model.closed or remote_open or (model.remote == "shut" and model.unread)
        # DIVERGENCES["end-seen-while-idle"], ["write-future-resolves-when-queued"].
        return draw(local_writes()) if writable else None
    if choice == "write-and-close":
        # Nothing unread, so Tornado's close sends a FIN too (["unread-bytes-at-close"]).
        if model.closed or not remote_open or model.unread:
            return None
        return WriteAndClose(*draw(local_writes()).parts)
    return draw(read_operations(model))


def local_writes() -> st.SearchStrategy[LocalWrite]:
    parts = st.lists(payloads(MAX_WRITE // 4), min_size=1, max_size=4)
    return parts.map(lambda parts: LocalWrite(*parts))


@st.composite
def read_operations(draw: st.DrawFn, model: Model) -> Op | None:
    read = draw(reads(model))
    verdict, _ = model.verdict(read)
    if model.uncertain:
        # DIVERGENCES["unread-bytes-at-close"]: only reads no buffered prefix satisfies.
        if read.kind == "close" or verdict != "ok":
            return finish_read(read, model)
        return None
    if verdict != "wait" or model.closed or model.remote != "open":
        return finish_read(read, model)
    # The read must wait for the remote: start it, then make the remote act.
    if draw(st.booleans()) and (read.kind != "close" or not model.unread):
        # Our own close() ends it. A pending read_until_close() returns what is
        # buffered, which is timing-dependent unless nothing is unread.
        return ReadThenClose(read)
    trial = replace(model)
    then: list[RemoteOp | LocalWrite] = []
    for _ in range(3):
        if draw(st.booleans()):
            then.append(draw(local_writes()))
        data = draw(payloads(8000).filter(bool))
        if not can_send(trial, data):
            break
        then.append(RemoteWrite(data))
        trial.apply(then[-1])
        if trial.verdict(read)[0] != "wait":
            break
    if trial.verdict(read)[0] == "wait":
        ends: tuple[RemoteOp, ...] = (RemoteShutdown(), RemoteClose(), RemoteAbort())
        end = draw(st.sampled_from(ends))
        then.append(end)
        trial.apply(end)
    return ReadPending(finish_read(read, trial), tuple(then))


@dataclass
class Scenario:
    ops: list[Op]
    expected: list[Outcome] = field(default_factory=list)

    def __repr__(self) -> str:
        return "Scenario([\n" + "".join(f"    {op!r},\n" for op in self.ops) + "])"


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    model = Model()
    scenario = Scenario([])
    for _ in range(draw(st.integers(1, MAX_OPS))):
        op = draw(operations(model))
        if op is None:
            continue
        scenario.ops.append(op)
        scenario.expected.append(model.apply(op))
    return scenario


# --- the two implementations behind one small interface ---------------------------------


class Side:
    """The stream under test, as the harness drives it."""

    async def read(self, read: Read) -> bytes:
        raise NotImplementedError

    def write(self, data: bytes) -> Awaitable[None]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def after_failed_read(self) -> None:
        """Undo implementation quirks a failed read leaves behind."""

    async def finish(self) -> None:
        self.close()


class TornadoSide(Side):
    def __init__(self, sock: socket.socket, *, work_around_quirks: bool = True) -> None:
        self.stream = tornado.iostream.IOStream(sock)
        self.work_around_quirks = work_around_quirks

    async def read(self, read: Read) -> bytes:
        stream = self.stream
        if read.kind == "bytes":
            return await stream.read_bytes(read.n)
        if read.kind == "partial":
            return await stream.read_bytes(read.n, partial=True)
        if read.kind == "until":
            return await stream.read_until(read.delimiter, max_bytes=read.max_bytes)
        if read.kind == "regex":
            return await stream.read_until_regex(read.pattern, max_bytes=read.max_bytes)
        return await stream.read_until_close()

    def write(self, data: bytes) -> Awaitable[None]:
        return self.stream.write(data)

    def close(self) -> None:
        self.stream.close()

    def after_failed_read(self) -> None:
        # TORNADO_QUIRKS (docs/tornado-semantics.md): a read that fails on a closed
        # stream stays pending in Tornado, so every later read raises until close() runs
        # again (close() on a closed stream only fails the stale read); and the failed
        # read's search criteria linger into the next read. Every failed read leaves
        # Tornado's stream closed, so this changes nothing else.
        if not self.work_around_quirks:
            return
        stream: Any = self.stream
        stream.close()
        stream._read_bytes = stream._read_delimiter = stream._read_regex = None
        stream._read_max_bytes = None
        stream._read_partial = stream._read_until_close = False


class PortSide(Side):
    def __init__(self, stream: IOStream) -> None:
        self.stream = stream

    async def read(self, read: Read) -> bytes:
        stream = self.stream
        if read.kind == "bytes":
            return await stream.read_bytes(read.n)
        if read.kind == "partial":
            return await stream.read_bytes(read.n, partial=True)
        if read.kind == "until":
            return await stream.read_until(read.delimiter, max_bytes=read.max_bytes)
        if read.kind == "regex":
            return await stream.read_until_regex(read.pattern, max_bytes=read.max_bytes)
        return await stream.read_until_close()

    def write(self, data: bytes) -> Awaitable[None]:
        return self.stream.write(data)

    def close(self) -> None:
        self.stream.close()

    async def finish(self) -> None:
        self.stream.close()
        await self.stream.wait_closed()


SideFactory = Callable[[socket.socket], Coroutine[Any, Any, Side]]


async def tornado_side(sock: socket.socket) -> Side:
    return TornadoSide(sock)


async def tornado_side_as_is(sock: socket.socket) -> Side:
    return TornadoSide(sock, work_around_quirks=False)


async def port_side(sock: socket.socket) -> Side:
    loop = asyncio.get_running_loop()
    _, stream = await loop.create_connection(IOStream, sock=sock)
    return PortSide(stream)


# --- running a scenario -----------------------------------------------------------------


def describe(error: BaseException) -> Outcome:
    real_error = getattr(error, "real_error", None)
    return (
        "raise",
        type(error).__name__,
        None if real_error is None else type(real_error).__name__,
    )


class Harness:
    """One run: a fresh connection, the operations in order, one outcome each."""

    def __init__(self, side: Side, remote: socket.socket) -> None:
        self.side = side
        self.remote: socket.socket | None = remote
        self.loop = asyncio.get_running_loop()

    async def run(self, ops: Sequence[Op]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for op in ops:
            try:
                async with asyncio.timeout(TIMEOUT):
                    outcomes.append(await self.perform(op))
            except TimeoutError:
                outcomes.append(("hang", repr(op)))
                break
        return outcomes

    async def perform(self, op: Op) -> Outcome:
        if isinstance(op, Read):
            return await self.read(op)
        if isinstance(op, ReadPending):
            task = await self.start(self.read(op.read))
            for remote_op in op.then:
                outcome = await self.perform(remote_op)
                if outcome != OK:
                    task.cancel()
                    return outcome
            return await task
        if isinstance(op, ReadThenClose):
            task = await self.start(self.read(op.read))
            self.side.close()
            return await task
        if isinstance(op, LocalWrite):
            return await self.write(op.parts)
        if isinstance(op, WriteAndClose):
            return await self.write_and_close(op.parts)
        if isinstance(op, LocalClose):
            self.side.close()
            return OK
        if isinstance(op, WriteThenClose):
            return await self.write_then_close(op.size)
        return await self.remote_op(op)

    async def start(self, coro: Coroutine[Any, Any, Outcome]) -> asyncio.Task[Outcome]:
        """Run ``coro`` as a task and return once it has started (and is waiting)."""
        started = asyncio.Event()

        async def run() -> Outcome:
            started.set()
            return await coro

        task = asyncio.ensure_future(run())
        await started.wait()
        return task

    async def read(self, read: Read) -> Outcome:
        try:
            data = await self.side.read(read)
            if read.kind == "partial":
                if not 1 <= len(data) <= read.n:
                    return ("bad-partial", len(data))
                if len(data) < read.top_up:
                    # DIVERGENCES["partial-read-size"].
                    data += await self.side.read(Read("bytes", n=read.top_up - len(data)))
        except Exception as error:
            self.side.after_failed_read()
            return describe(error)
        if read.unread is not None:
            # DIVERGENCES["unread-bytes-at-close"].
            return ("prefix",) if read.unread.startswith(data) else ("not-a-prefix", data)
        return ("ok", data)

    async def write(self, parts: tuple[bytes, ...]) -> Outcome:
        data = b"".join(parts)
        try:
            written = [self.side.write(part) for part in parts]
        except Exception as error:
            return describe(error)
        received = asyncio.ensure_future(self.receive(len(data)))
        try:
            for future in written:
                await future
        except Exception as error:
            received.cancel()
            return describe(error)
        got = await received
        return OK if got == data else ("remote-received", _short(got))

    async def write_and_close(self, parts: tuple[bytes, ...]) -> Outcome:
        try:
            written = [self.side.write(part) for part in parts]
        except Exception as error:
            return describe(error)
        self.side.close()
        end = "eof"
        try:
            got = await self.receive_all(reset_ok=False)
        except ConnectionResetError:
            got, end = b"", "reset"
        results: list[object] = []
        for future in written:
            try:
                await future
                results.append("ok")
            except Exception as error:
                results.append(describe(error))
        return ("written", got == b"".join(parts), end, tuple(results))

    async def write_then_close(self, size: int) -> Outcome:
        data = bytes(range(256)) * (size // 256)
        try:
            written = self.side.write(data)
        except Exception as error:
            return ("write", describe(error))
        self.side.close()
        got = await self.receive_all()
        try:
            await written
            write_outcome = OK
        except Exception as error:
            write_outcome = describe(error)
        return ("write", write_outcome, "remote got", "all" if got == data else "part")

    async def receive_all(self, *, reset_ok: bool = True) -> bytes:
        """Everything the remote can read until the end of stream (or a reset)."""
        assert self.remote is not None
        chunks: list[bytes] = []
        try:
            while chunk := await self.loop.sock_recv(self.remote, 65536):
                chunks.append(chunk)
        except ConnectionResetError:
            if not reset_ok:
                raise
        return b"".join(chunks)

    async def receive(self, size: int) -> bytes:
        if self.remote is None:
            return b""
        chunks: list[bytes] = []
        while size > 0:
            chunk = await self.loop.sock_recv(self.remote, min(size, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    async def remote_op(self, op: RemoteOp | RemoteExpectEnd) -> Outcome:
        remote = self.remote
        assert remote is not None
        try:
            if isinstance(op, RemoteWrite):
                await self.loop.sock_sendall(remote, op.data)
            elif isinstance(op, RemoteShutdown):
                remote.shutdown(socket.SHUT_WR)
            elif isinstance(op, RemoteExpectEnd):
                try:
                    data = await self.loop.sock_recv(remote, 1)
                except ConnectionResetError:
                    return ("remote-end", "reset")
                return ("remote-end", "eof") if not data else ("remote-data", data)
            else:
                if isinstance(op, RemoteAbort):
                    remote.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                remote.close()
                self.remote = None
        except OSError as error:
            return ("remote-error", type(error).__name__)
        return OK

    async def finish(self) -> None:
        await self.side.finish()
        if self.remote is not None:
            self.remote.close()


# Kernel buffers for the sequences that need the kernel to be full: set explicitly, they
# stop Linux growing them (up to tens of MiB on loopback), so a few MiB overflow them.
SMALL_BUFFER = 64 * 1024


async def run_scenario(
    make_side: SideFactory, ops: Sequence[Op], *, small_buffers: bool = False
) -> list[Outcome]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        local = socket.socket()
        if small_buffers:
            # Accepted sockets inherit the listener's receive buffer.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
            local.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        local.connect(listener.getsockname()[:2])
        remote, _ = listener.accept()
    local.setblocking(False)
    remote.setblocking(False)
    # Each remote send leaves at once: with Nagle's algorithm a small send can wait in
    # the remote's kernel for an ACK, and an abort (RST) would then discard it unsent.
    remote.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    harness = Harness(await make_side(local), remote)
    try:
        return await harness.run(ops)
    finally:
        async with asyncio.timeout(TIMEOUT):
            await harness.finish()


def run_on(
    loop_name: str, make_side: SideFactory, ops: Sequence[Op], *, small_buffers: bool = False
) -> list[Outcome]:
    with asyncio.Runner(loop_factory=loops.loop_factory(loop_name)) as runner:
        return runner.run(run_scenario(make_side, ops, small_buffers=small_buffers))


def report(ops: Sequence[Op], **columns: Sequence[Outcome]) -> str:
    lines = []
    for index, op in enumerate(ops):
        lines.append(f"{index:2} {op!r}")
        for name, outcomes in columns.items():
            outcome = outcomes[index] if index < len(outcomes) else "(not run)"
            lines.append(f"     {name:8} {outcome!r}")
    return "\n".join(lines)


# --- the differential property ----------------------------------------------------------

# The port runs on each loop the in-process tests use; Tornado on asyncio's own loop.
PORT_LOOPS = [pytest.param(name, id=name) for name in ("asyncio", "uvloop")]


@pytest.mark.parametrize("loop_name", PORT_LOOPS)
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
def test_port_matches_tornado(loop_name: str, scenario: Scenario) -> None:
    tornado_outcomes = run_on("asyncio", tornado_side, scenario.ops)
    port_outcomes = run_on(loop_name, port_side, scenario.ops)
    table = report(
        scenario.ops, tornado=tornado_outcomes, port=port_outcomes, model=scenario.expected
    )
    assert port_outcomes == tornado_outcomes, "the port differs from Tornado:\n" + table
    assert tornado_outcomes == scenario.expected, "both differ from the model:\n" + table


# --- each named difference, shown on a fixed sequence -------------------------------------


@dataclass(frozen=True)
class Difference:
    """One entry of DIVERGENCES or TORNADO_QUIRKS, and what each side gives.

    The sequences may differ per side where one of them would wait forever.
    """

    tornado_ops: tuple[Op, ...]
    tornado: tuple[Outcome, ...]
    port_ops: tuple[Op, ...]
    port: tuple[Outcome, ...]
    small_buffers: bool = False


def same_ops(
    ops: tuple[Op, ...], *, tornado: tuple[Outcome, ...], port: tuple[Outcome, ...]
) -> Difference:
    return Difference(ops, tornado, ops, port)


ROUND_TRIP = LocalWrite(b"x")  # the remote reads it: the port's loop has read what came before

DIFFERENCES: dict[str, Difference] = {
    # Bytes that arrived before close() but that no read had asked for.
    "unread-bytes-at-close": same_ops(
        (RemoteWrite(b"abc"), ROUND_TRIP, LocalClose(), Read("bytes", n=3), RemoteExpectEnd()),
        tornado=(OK, OK, OK, raised(None), ("remote-end", "reset")),
        port=(OK, OK, OK, ("ok", b"abc"), ("remote-end", "eof")),
    ),
    # The peer's end of stream while we neither read nor write. The port closes at once
    # (its FIN reaches the remote); Tornado, listening for nothing, takes another write.
    "end-seen-while-idle": Difference(
        tornado_ops=(RemoteShutdown(), LocalWrite(b"x"), Read("bytes", n=1), LocalWrite(b"y")),
        tornado=(OK, OK, raised(None), raised(None)),
        port_ops=(RemoteShutdown(), RemoteExpectEnd(), LocalWrite(b"x")),
        port=(OK, ("remote-end", "eof"), raised(None)),
    ),
    "close-sends-queued-writes": Difference(
        tornado_ops=(WriteThenClose(4 * 1024 * 1024),),
        tornado=(("write", raised(None), "remote got", "part"),),
        port_ops=(WriteThenClose(4 * 1024 * 1024),),
        port=(("write", raised(None), "remote got", "all"),),
        small_buffers=True,
    ),
}

QUIRK_OPS: tuple[Op, ...] = (
    RemoteWrite(b"abc"),
    RemoteShutdown(),
    Read("until", delimiter=b"c", max_bytes=1),  # overrun: the stream closes
    Read("bytes", n=10),  # more than is buffered: fails
    Read("bytes", n=1),  # served from the buffered bytes
)
QUIRKS: dict[str, Difference] = {
    "lingering-criteria and stale-pending-read": same_ops(
        QUIRK_OPS,
        tornado=(
            OK,
            OK,
            raised("UnsatisfiableReadError"),
            ("raise", "UnsatisfiableReadError", None),  # lingering-criteria
            raised("UnsatisfiableReadError"),  # stale-pending-read
        ),
        port=(
            OK,
            OK,
            raised("UnsatisfiableReadError"),
            raised("UnsatisfiableReadError"),
            ("ok", b"a"),
        ),
    ),
}


@pytest.mark.parametrize("loop_name", PORT_LOOPS)
@pytest.mark.parametrize("name", DIFFERENCES)
def test_named_divergence(name: str, loop_name: str) -> None:
    assert name in DIVERGENCES, "every difference shown here is documented"
    case = DIFFERENCES[name]
    tornado_outcomes = run_on(
        "asyncio", tornado_side, case.tornado_ops, small_buffers=case.small_buffers
    )
    port_outcomes = run_on(loop_name, port_side, case.port_ops, small_buffers=case.small_buffers)
    assert tornado_outcomes == list(case.tornado), report(
        case.tornado_ops, tornado=tornado_outcomes
    )
    assert port_outcomes == list(case.port), report(case.port_ops, port=port_outcomes)


def test_every_divergence_is_shown_or_not_generated() -> None:
    # These show only with timing (a partial read racing the bytes' arrival, a reset
    # racing a write) or far past the generator's sizes: the generator avoids them or
    # compares loosely, and test_iostream covers the port's side of each.
    assert set(DIVERGENCES) - set(DIFFERENCES) == {
        "partial-read-size",
        "write-future-resolves-when-queued",
        "max-buffer-size-granularity",
    }


@pytest.mark.parametrize("loop_name", PORT_LOOPS)
@pytest.mark.parametrize("name", QUIRKS)
def test_tornado_quirk_not_copied(name: str, loop_name: str) -> None:
    assert all(key in TORNADO_QUIRKS for key in name.split(" and "))
    case = QUIRKS[name]
    tornado_outcomes = run_on("asyncio", tornado_side_as_is, case.tornado_ops)
    port_outcomes = run_on(loop_name, port_side, case.port_ops)
    assert tornado_outcomes == list(case.tornado), report(
        case.tornado_ops, tornado=tornado_outcomes
    )
    assert port_outcomes == list(case.port), report(case.port_ops, port=port_outcomes)
