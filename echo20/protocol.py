"""The echo/reverse protocol ("echo20") with no I/O: bytes in, bytes and decisions out.

Everything that knows the protocol lives here, and every shell drives it through
:class:`EchoSession`: the ``streams`` and ``iostream`` servers (one chunk at a time, as
the Tornado seed reads), the ``protocol`` fast path (a whole received batch at once), and
the client and the benchmark's reply check (:func:`split_reply`). This module imports
nothing that does I/O, so a test can prove that ``import echo20.protocol`` leaves ``asyncio``
out of ``sys.modules``.

The protocol, from ``tcp_server.py`` in the Tornado article the project starts from
(``docs/protocol.md`` says it in full):

* the server consumes what it has received in chunks of at most :data:`CHUNK_SIZE` bytes,
  exactly as Tornado's ``read_bytes(20, partial=True)`` hands them out: every batch of
  waiting bytes is cut into 20, 20, ..., and a shorter rest;
* for every chunk ``c`` it sends ``c`` and then ``c`` reversed byte by byte;
* a chunk equal to :data:`CLOSE_CHUNK` closes the connection after both replies; bytes
  after that chunk are discarded.

The exceptions are the package's one family (``echo20/errors.py``); the core
raises :class:`ProtocolError` and re-exports the family's stream errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from echo20.errors import (
    Echo20Error,
    ProtocolError,
    StreamBufferFullError,
    StreamClosedError,
    UnsatisfiableReadError,
    describe_error,
)

__all__ = [
    "ACCELERATED",
    "BUILDER_NAME",
    "CHUNK_SIZE",
    "CLOSE_CHUNK",
    "MAX_BATCH_SIZE",
    "Echo20Error",
    "EchoSession",
    "ProtocolError",
    "StreamBufferFullError",
    "StreamClosedError",
    "UnsatisfiableReadError",
    "batch_closes",
    "build_reply",
    "build_reply_in_python",
    "build_text_reply",
    "describe_error",
    "double_reply",
    "format_bytes",
    "is_close_chunk",
    "iter_chunks",
    "iter_text_chunks",
    "reply_by_loop",
    "reply_by_slices",
    "reply_size",
    "reverse_each_chunk",
    "reverse_each_chunk_in_python",
    "reverse_text",
    "split_reply",
    "text_batch_closes",
    "text_chunk_size",
    "tornado_batches",
]

# The seed reads with ``read_bytes(20, partial=True)``: 20 is the whole of the protocol's
# framing, nothing else about it is configurable on the wire.
CHUNK_SIZE = 20

# The most a Tornado server takes from the socket at once (IOStream.read_chunk_size),
# so the longest batch it ever cuts into chunks: larger batches are answered as
# consecutive batches of this size, which is what Tornado's successive reads make.
MAX_BATCH_SIZE = 64 * 1024

# ``if msg == 'over': stream.close()`` in the seed: only a chunk equal to these four bytes
# closes, never a chunk that merely contains them.
CLOSE_CHUNK = b"over"


# --- the server side ----------------------------------------------------------------


def iter_chunks(batch: bytes | bytearray | memoryview) -> Iterator[bytes]:
    """Cut one batch of waiting bytes the way successive ``read_bytes(20, partial=True)`` do.

    The chunks never span two batches: Tornado hands out what it has buffered, so a
    25-byte batch is 20 + 5 even if 15 more bytes arrive a moment later.
    """
    view = memoryview(batch)
    for start in range(0, len(view), CHUNK_SIZE):
        yield bytes(view[start : start + CHUNK_SIZE])


def is_close_chunk(chunk: bytes | bytearray) -> bool:
    """True for the one chunk that ends the connection: exactly ``b"over"``."""
    return chunk == CLOSE_CHUNK


def double_reply(chunk: bytes) -> bytes:
    """The server's answer to one chunk: the chunk, then the chunk reversed byte by byte."""
    return chunk + chunk[::-1]


# --- building replies -----------------------------------------------------------------
#
# The reply to a batch is its 20-byte chunks, each followed by its reversal. In pure
# Python, reply_by_loop is the definition, one chunk at a time; reply_by_slices makes the
# same bytes with 40 strided slice assignments whatever the size, which pays from about
# 2 KiB. The C accelerator (``echo20/speedups.c``, built at install when a compiler
# works) does it in one pass: 35 to 75 times faster than these from 200 bytes to 1 MiB
# (measured per call). The tests prove them all byte-identical; build_reply is the C
# one when it is there.


# From this many bytes strided slices beat the per-chunk loop: the crossover measured
# between 1.5 and 2 KiB (Python 3.11, 2 cores); at 16 KiB they take 40% of its time.
SLICES_FROM = 2048

# Set to anything but "" or "0", this environment variable makes ``import protocol``
# ignore the C accelerator: for A/B runs, and to test the fallback where it is built.
PURE_PYTHON_VARIABLE = "ECHO20_PURE_PYTHON"


def reply_by_loop(batch: bytes) -> bytes:
    """The reply to one batch, one Python step per chunk: the definition."""
    if len(batch) <= CHUNK_SIZE:
        return batch + batch[::-1]
    parts = []
    for start in range(0, len(batch), CHUNK_SIZE):
        chunk = batch[start : start + CHUNK_SIZE]
        parts.append(chunk)
        parts.append(chunk[::-1])
    return b"".join(parts)


def reply_by_slices(batch: bytes) -> bytearray:
    """40 strided slice assignments, each moving one byte column of every full chunk."""
    full = len(batch) - len(batch) % CHUNK_SIZE
    out = bytearray(2 * len(batch))
    stride = 2 * CHUNK_SIZE
    end = 2 * full
    for column in range(CHUNK_SIZE):
        out[column:end:stride] = batch[column:full:CHUNK_SIZE]
        out[CHUNK_SIZE + column : end : stride] = batch[CHUNK_SIZE - 1 - column : full : CHUNK_SIZE]
    # The last, shorter chunk and its reversal, after the full chunks.
    tail = batch[full:]
    out[end : end + len(tail)] = tail
    out[end + len(tail) :] = tail[::-1]
    return out


# What a builder returns: bytes, or the bytearray reply_by_slices fills (copying it into
# bytes would cost a pass over it); transports, ``bytes.join`` and ``==`` take either.
ReplyBuffer = bytes | bytearray
ReplyBuilder = Callable[[bytes], ReplyBuffer]


def build_reply_in_python(batch: bytes) -> ReplyBuffer:
    """The whole reply to one batch, in pure Python: every chunk followed by its reversal."""
    return reply_by_slices(batch) if len(batch) >= SLICES_FROM else reply_by_loop(batch)


def reverse_each_chunk_in_python(data: bytes) -> bytes:
    """Every 20-byte chunk of ``data`` reversed in place: the reply's second halves, joined."""
    if len(data) < SLICES_FROM:
        return b"".join(
            data[start : start + CHUNK_SIZE][::-1] for start in range(0, len(data), CHUNK_SIZE)
        )
    full = len(data) - len(data) % CHUNK_SIZE
    out = bytearray(len(data))
    for column in range(CHUNK_SIZE):
        out[column:full:CHUNK_SIZE] = data[CHUNK_SIZE - 1 - column : full : CHUNK_SIZE]
    out[full:] = data[full:][::-1]
    return bytes(out)


class SessionCoreInPython:
    """The per-batch state and rule of :class:`EchoSession`: the definition.

    ``echo20.speedups.SessionCore`` is the same in C, and EchoSession's base when the
    extension runs: the fast path answers every received batch here, and a call took
    233 ns at 200 B in Python, 47 ns in C. A subclass defines ``_answer_other`` for text
    mode and batches over 64 KiB.
    """

    __slots__ = ("_text", "bytes_received", "bytes_sent", "closing")

    _text: bool
    bytes_received: int
    bytes_sent: int
    # The ``over`` chunk has been answered: send what is pending, then close.
    closing: bool

    def answer(self, batch: bytes) -> ReplyBuffer:
        """The reply to one batch, at once (``b""`` once closing).

        Every server calls this once per batch it reads and writes what it returns.
        """
        if self.closing or not batch:
            return b""
        size = len(batch)
        self.bytes_received += size
        if self._text or size > MAX_BATCH_SIZE:
            return self._answer_other(batch)
        self.bytes_sent += 2 * size
        # Every chunk but the last of a batch is a full 20 bytes, so only the last can be
        # the 4-byte close chunk (batch_closes, written out: one call fewer per batch).
        if size % CHUNK_SIZE == len(CLOSE_CHUNK) and batch.endswith(CLOSE_CHUNK):
            self.closing = True
        if size <= CHUNK_SIZE:
            # One chunk, the usual case for small messages: cheaper than the builder.
            return batch + batch[::-1]
        return build_reply_in_python(batch)

    def _answer_other(self, batch: bytes) -> ReplyBuffer:
        raise NotImplementedError


def _select_builders() -> tuple[
    str, ReplyBuilder, Callable[[bytes], bytes], type[SessionCoreInPython]
]:
    """(BUILDER_NAME, build_reply, reverse_each_chunk, SessionCore): C if built and not
    refused."""
    pure = (build_reply_in_python, reverse_each_chunk_in_python, SessionCoreInPython)
    if os.environ.get(PURE_PYTHON_VARIABLE, "") not in ("", "0"):
        return (f"pure Python ({PURE_PYTHON_VARIABLE} set)", *pure)
    try:
        from echo20 import speedups
    except ImportError:
        # No compiler at install time (setup.py skips the extension quietly).
        return ("pure Python (echo20.speedups not built)", *pure)
    # The C type has the same attributes and answer(): the tests hold them identical.
    core = cast("type[SessionCoreInPython]", speedups.SessionCore)
    return "C (echo20.speedups)", speedups.build_reply, speedups.reverse_each_chunk, core


# Chosen once, at import. BUILDER_NAME says which builders run, and why, for logs and the
# benchmark's environment block; ACCELERATED is True when they are the C ones.
# build_reply(batch): the whole reply to one batch, every chunk followed by its reversal.
# reverse_each_chunk(data): every 20-byte chunk reversed, the reply's second halves joined.
# SessionCore: EchoSession's base, the per-batch rule (SessionCoreInPython or its C twin).
BUILDER_NAME, build_reply, reverse_each_chunk, SessionCore = _select_builders()
ACCELERATED = BUILDER_NAME.startswith("C ")


# --- text mode (--text) -------------------------------------------------------------
#
# The seed's author warns to "test with English strings": 20-byte chunks and byte-wise
# reversal garble multi-byte UTF-8. Text mode cuts chunks of at most 20 bytes that never
# end inside a character, and reverses each chunk by character (code point), so
# "你好，世界" comes back readable. Bytes that are not valid UTF-8 keep the byte rule:
# surrogateescape turns each into one code point of its own. Replies stay 2N bytes.


def text_chunk_size(data: bytes) -> int:
    """How many bytes of ``data`` the next text-mode chunk takes: 1 to 20.

    The cut moves back (at most 3 bytes) to the start of a valid character that would
    straddle byte 20; anything else cuts at 20, as the byte rule does.
    """
    end = CHUNK_SIZE
    if len(data) <= end:
        return len(data)
    lead = end
    while lead > end - 3 and data[lead] & 0xC0 == 0x80:  # continuation byte 10xxxxxx
        lead -= 1
    if lead == end:
        return end
    first = data[lead]
    length = (
        2
        if first & 0xE0 == 0xC0
        else 3
        if first & 0xF0 == 0xE0
        else 4
        if first & 0xF8 == 0xF0
        else 0
    )
    if lead + length > end:
        try:
            data[lead : lead + length].decode("utf-8")
        except UnicodeDecodeError:
            return end
        return lead
    return end


def reverse_text(chunk: bytes) -> bytes:
    """``chunk`` reversed character by character; undecodable bytes count as characters."""
    return chunk.decode("utf-8", "surrogateescape")[::-1].encode("utf-8", "surrogateescape")


def iter_text_chunks(batch: bytes) -> Iterator[bytes]:
    """Cut one batch into text-mode chunks (see :func:`text_chunk_size`)."""
    start = 0
    while start < len(batch):
        # A character that straddles byte 20 ends at most 3 bytes after it.
        size = text_chunk_size(batch[start : start + CHUNK_SIZE + 3])
        yield batch[start : start + size]
        start += size


def build_text_reply(batch: bytes) -> ReplyBuffer:
    """The text-mode reply to one batch: each chunk, then its character reversal."""
    if batch.isascii():
        # One byte per character: the byte rule gives the same bytes, and faster.
        return build_reply(batch)
    parts = []
    for chunk in iter_text_chunks(batch):
        parts.append(chunk)
        parts.append(reverse_text(chunk))
    return b"".join(parts)


def batch_closes(batch: bytes) -> bool:
    """True when one chunk of this batch is ``over``.

    Every chunk but the last of a batch is a full 20 bytes, so only the last can be the
    4-byte close chunk, and nothing in the batch follows it.
    """
    return len(batch) % CHUNK_SIZE == len(CLOSE_CHUNK) and batch.endswith(CLOSE_CHUNK)


def text_batch_closes(batch: bytes) -> bool:
    """:func:`batch_closes` for text mode, where chunks may be cut short of 20 bytes."""
    if not batch.endswith(CLOSE_CHUNK):
        return False
    if batch.isascii():
        return batch_closes(batch)
    *_, last = iter_text_chunks(batch)
    return last == CLOSE_CHUNK


def tornado_batches(data: bytes) -> Iterator[bytes]:
    """``data`` as the batches of at most 64 KiB that Tornado's successive reads make.

    A shell that received more at once can answer each batch as it comes
    (``session.answer(batch)`` for each) and write each reply, instead of one joined
    reply twice the size.
    """
    if len(data) <= MAX_BATCH_SIZE:
        yield data
        return
    for start in range(0, len(data), MAX_BATCH_SIZE):
        yield data[start : start + MAX_BATCH_SIZE]


if TYPE_CHECKING:
    # For the type checker both bases are one: the C type has SessionCoreInPython's
    # attributes and answer() (speedups.pyi), and the tests hold them identical.
    _SessionBase = SessionCoreInPython
else:
    _SessionBase = SessionCore


class EchoSession(_SessionBase):
    """The server side of one connection: each batch of received bytes in, its reply out.

    With ``text=True`` chunks never end inside a UTF-8 character and are reversed by
    character (see :func:`build_text_reply`).

    What every server does with it (``echo20.servers``)::

        session = EchoSession()
        while not session.closing:
            batch = await read_partial(reader, session.read_size)  # or data_received
            writer.write(session.answer(batch))
        # closing: the ``over`` chunk was answered; close after the queued replies.

    A batch is cut into chunks exactly as :func:`iter_chunks` does, so the reply is the
    one Tornado's server gives when that batch is what it has buffered. After the
    ``over`` chunk the session is ``closing`` and answers nothing more, as the seed's
    server does by closing the stream. The peer's end of stream needs no call: every
    batch is answered as it arrives, which is what Tornado does before it sees the end.
    """

    # bytes_received, bytes_sent, closing and _text are SessionCore's.
    __slots__ = ("_build", "_closes", "read_size")

    def __init__(self, *, text: bool = False) -> None:
        self._text = text
        self._build = build_text_reply if text else build_reply
        self._closes = text_batch_closes if text else batch_closes
        # How much a shell that reads chunk by chunk asks for at once: the seed's
        # read_bytes(20, partial=True); in text mode a chunk must see past byte 20 not to
        # cut a character, so the whole buffered batch is read and the session cuts it.
        self.read_size = MAX_BATCH_SIZE if text else CHUNK_SIZE
        self.bytes_received = 0
        self.bytes_sent = 0
        # The ``over`` chunk has been answered: send what is pending, then close.
        self.closing = False

    def _answer_other(self, batch: bytes) -> ReplyBuffer:
        # SessionCore.answer's rare cases, counted already: text mode, and batches over
        # 64 KiB, which Tornado would have read in several.
        if len(batch) <= MAX_BATCH_SIZE:
            return self._answer_batch(batch)
        return b"".join(self._answer_batches(batch))

    def answer_batches(self, data: bytes) -> list[ReplyBuffer]:
        """The replies to ``data``, one per batch of at most :data:`MAX_BATCH_SIZE` bytes.

        Tornado takes at most 64 KiB from the socket at once, so it cuts a larger input
        into such batches; this answers them as it would. For shells that write each
        reply as it is made rather than one joined reply twice the size of the input
        (measured faster at 1 MiB: ~200 vs ~170 MiB/s). Nothing after ``over``.
        """
        if self.closing or not data:
            return []
        self.bytes_received += len(data)
        return list(self._answer_batches(data))

    def _answer_batches(self, data: bytes) -> Iterator[ReplyBuffer]:
        for batch in tornado_batches(data):
            yield self._answer_batch(batch)
            if self.closing:
                return

    def _answer_batch(self, batch: bytes) -> ReplyBuffer:
        # Only the last chunk of a batch can be ``over``, in text mode too: every other
        # chunk is at least 17 bytes long there.
        reply = self._build(batch)
        self.closing = self._closes(batch)
        self.bytes_sent += len(reply)
        return reply

    def chunks(self, batch: bytes) -> Iterator[bytes]:
        """The chunks this session cuts ``batch`` into (for logging them)."""
        return iter_text_chunks(batch) if self._text else iter_chunks(batch)

    def stop(self) -> None:
        """Answer nothing more, as after ``over``: the server is shutting down, or it
        refused this connection. Later batches get ``b""``."""
        self.closing = True


# --- the client side ----------------------------------------------------------------


def reply_size(message: bytes) -> int:
    """How many reply bytes a message earns: every byte comes back twice."""
    return 2 * len(message)


@dataclass(frozen=True, slots=True)
class Reply:
    """A double reply taken apart: the echo, the reversed text, and where the server cut."""

    # The echo halves joined: always equal to the message.
    echo: bytes
    # The reversed halves joined in order. (The seed's client prints this line first;
    # both clients here print the echo first, then this.)
    reversed: bytes
    chunk_sizes: tuple[int, ...]

    @property
    def chunks(self) -> list[bytes]:
        """The chunks as the server cut them."""
        chunks, start = [], 0
        for size in self.chunk_sizes:
            chunks.append(self.echo[start : start + size])
            start += size
        return chunks

    @property
    def closes(self) -> bool:
        """True when the last chunk was ``over``: the server closes after this reply.

        In a complete reply no other chunk can be: the server answers nothing after it.
        """
        return (
            bool(self.chunk_sizes)
            and self.chunk_sizes[-1] == len(CLOSE_CHUNK)
            and (self.echo.endswith(CLOSE_CHUNK))
        )


def split_reply(message: bytes, reply: bytes) -> Reply:
    """Take a reply apart into the server's chunks, checking every byte of it.

    The reply to ``message`` is ``c1, rev(c1), c2, rev(c2), ...`` where the ``c`` parts
    join to ``message`` and each is 1 to 20 bytes long. Where the server cut depends on
    how the bytes arrived; nearly always the message was one batch, and one comparison
    with :func:`build_reply` settles it. Otherwise this finds a cut that explains the
    reply, preferring full 20-byte chunks as the server does. It raises
    :class:`ProtocolError` when no cut explains the reply.
    """
    if len(reply) != reply_size(message):
        raise ProtocolError(
            f"reply is {len(reply)} bytes, expected {reply_size(message)} "
            f"for a {len(message)}-byte message"
        )
    if reply == build_reply(message):
        full_chunks, rest = divmod(len(message), CHUNK_SIZE)
        sizes = (CHUNK_SIZE,) * full_chunks + ((rest,) if rest else ())
        return Reply(message, reverse_each_chunk(message), sizes)
    sizes = _find_cut(message, reply)
    reversed_parts, start = [], 0
    for size in sizes:
        reversed_parts.append(reply[2 * start + size : 2 * (start + size)])
        start += size
    return Reply(message, b"".join(reversed_parts), sizes)


def _find_cut(message: bytes, reply: bytes) -> tuple[int, ...]:
    """Chunk sizes that explain ``reply``: a depth-first search, longest chunks first.

    Positions shown to lead nowhere are remembered, so the work stays linear in the
    message length.
    """
    total = len(message)
    sizes: list[int] = []
    dead_ends: set[int] = set()
    stack: list[tuple[int, Iterator[int]]] = [(0, _fitting_lengths(message, reply, 0))]
    while stack:
        position, lengths = stack[-1]
        if position == total:
            return tuple(sizes)
        length = next(lengths, 0)
        if not length:
            dead_ends.add(position)
            stack.pop()
            if sizes:
                sizes.pop()
            continue
        following = position + length
        if following in dead_ends:
            continue
        sizes.append(length)
        stack.append((following, _fitting_lengths(message, reply, following)))
    raise ProtocolError("reply is not the message's chunks each followed by its reversal")


def _fitting_lengths(message: bytes, reply: bytes, position: int) -> Iterator[int]:
    """Chunk lengths that explain the reply at ``position``, longest first.

    A chunk's second half is its byte reversal, or its character reversal when the
    server runs in text mode; the client accepts both without being told.
    """
    start = 2 * position
    for length in range(min(CHUNK_SIZE, len(message) - position), 0, -1):
        chunk = message[position : position + length]
        if reply[start : start + length] == chunk:
            second = reply[start + length : start + 2 * length]
            if second == chunk[::-1] or second == reverse_text(chunk):
                yield length


def format_bytes(data: bytes) -> str:
    """Text for a terminal: UTF-8, with every byte that does not decode shown as ``\\xNN``."""
    return data.decode("utf-8", errors="backslashreplace")
