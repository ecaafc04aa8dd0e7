"""Unit and property tests of the pure protocol core (``protocol.py``), no I/O at all.

As h11's ``test_io.py`` does, the server side is fed one byte at a time and in every way
of cutting a message into batches; as h2's state-machine tests do, Hypothesis checks that
any input cut any way gives a valid reply stream. The expected replies come from
:func:`oracle`, a few lines written straight from the protocol (docs/protocol.md) that
share no code with the implementation.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ROOT, TIMEOUT

from echo20.protocol import (
    CHUNK_SIZE,
    CLOSE_CHUNK,
    MAX_BATCH_SIZE,
    Echo20Error,
    EchoSession,
    ProtocolError,
    StreamBufferFullError,
    StreamClosedError,
    UnsatisfiableReadError,
    batch_closes,
    build_reply,
    describe_error,
    double_reply,
    format_bytes,
    is_close_chunk,
    iter_chunks,
    reply_size,
    split_reply,
)

# Bounded so the whole module runs in a few seconds on 2 cores; the properties are cheap,
# so 200 examples each still explore cuts, lengths and `over` placements well.
PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# 45 bytes, all distinct, none a palindrome: 20 + 20 + 5 when they arrive together.
ALPHABET_45 = bytes(range(65, 65 + 26)) + bytes(range(97, 97 + 19))


# --- an independent model of the spec -----------------------------------------------


def oracle(batches: Iterable[bytes]) -> tuple[list[bytes], bool]:
    """(chunks answered, closed) for batches as the server receives them (docs/protocol.md).

    Each batch is cut 20, 20, ..., rest; a chunk equal to b"over" closes, and nothing
    after it (in its batch or later ones) is answered.
    """
    chunks: list[bytes] = []
    for batch in batches:
        for start in range(0, len(batch), 20):
            chunk = batch[start : start + 20]
            chunks.append(chunk)
            if chunk == b"over":
                return chunks, True
    return chunks, False


def encode(chunks: Iterable[bytes]) -> bytes:
    """The reply stream for these chunks: each chunk, then its reversal."""
    return b"".join(chunk + chunk[::-1] for chunk in chunks)


def feed(batches: Iterable[bytes]) -> tuple[EchoSession, bytes]:
    """Feed batches to a fresh session, draining replies after each: (session, stream)."""
    session = EchoSession()
    stream = bytearray()
    for batch in batches:
        stream += session.answer(batch)
    return session, bytes(stream)


def compositions(data: bytes) -> Iterator[list[bytes]]:
    """Every way of cutting ``data`` into non-empty batches (2 ** (len - 1) of them)."""
    for mask in range(1 << max(len(data) - 1, 0)):
        batches, start = [], 0
        for position in range(1, len(data)):
            if mask & (1 << (position - 1)):
                batches.append(data[start:position])
                start = position
        batches.append(data[start:])
        yield batches


def check_reply_stream(message: bytes, stream: bytes) -> None:
    """The stream is exactly 2N bytes of chunks of 1..20 each followed by its reversal."""
    assert len(stream) == 2 * len(message)
    position, echo = 0, bytearray()
    # Walk the stream with the chunks the oracle would not know: take them from split_reply
    # and check every one against the raw bytes.
    for chunk in split_reply(message, stream).chunks:
        assert 1 <= len(chunk) <= CHUNK_SIZE
        assert stream[position : position + len(chunk)] == chunk
        assert stream[position + len(chunk) : position + 2 * len(chunk)] == chunk[::-1]
        position += 2 * len(chunk)
        echo += chunk
    assert position == len(stream)
    assert echo == message


# --- constants and small functions --------------------------------------------------


def test_constants_are_the_seeds() -> None:
    assert CHUNK_SIZE == 20
    assert CLOSE_CHUNK == b"over"


@pytest.mark.parametrize(
    ("size", "expected"),
    [(0, []), (1, [1]), (19, [19]), (20, [20]), (21, [20, 1]), (40, [20, 20]), (45, [20, 20, 5])],
)
def test_iter_chunks_sizes(size: int, expected: list[int]) -> None:
    data = bytes(i % 251 for i in range(size))
    chunks = list(iter_chunks(data))
    assert [len(chunk) for chunk in chunks] == expected
    assert b"".join(chunks) == data


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_iter_chunks_takes_any_buffer_and_gives_bytes(kind: type) -> None:
    chunks = list(iter_chunks(kind(ALPHABET_45)))
    assert chunks == [ALPHABET_45[:20], ALPHABET_45[20:40], ALPHABET_45[40:]]
    assert all(type(chunk) is bytes for chunk in chunks)


def test_iter_chunks_copies_a_reused_buffer() -> None:
    buffer = bytearray(b"abc")
    chunks = list(iter_chunks(buffer))
    buffer[:] = b"xyz"
    assert chunks == [b"abc"]


def test_double_reply() -> None:
    assert double_reply(b"hello") == b"helloolleh"
    assert double_reply(b"a") == b"aa"
    assert double_reply(b"") == b""
    assert double_reply(b"\x00\xff\x80") == b"\x00\xff\x80\x80\xff\x00"


@pytest.mark.parametrize(
    ("chunk", "closes"),
    [
        (b"over", True),
        (bytearray(b"over"), True),
        (b"OVER", False),
        (b"Over", False),
        (b"over\n", False),
        (b"over\r\n", False),
        (b" over", False),
        (b"ove", False),
        (b"overtime", False),
        (b"game over", False),
        (b"", False),
    ],
)
def test_is_close_chunk(chunk: bytes, closes: bool) -> None:
    assert is_close_chunk(chunk) is closes


@pytest.mark.parametrize("size", [0, 1, 5, 20, 21, 1000])
def test_reply_size(size: int) -> None:
    assert reply_size(b"x" * size) == 2 * size


# --- the server side: build_reply, batch_closes, EchoSession ------------------------


# Sizes around the chunk and around where the pure-Python build_reply switches builders.
@pytest.mark.parametrize(
    "size", [0, 1, 4, 19, 20, 21, 24, 40, 45, 64, 256, 399, 400, 401, 2047, 2048, 2049, 65_536]
)
def test_build_reply_is_every_chunk_then_its_reversal(size: int) -> None:
    batch = bytes(i % 253 for i in range(size))
    assert build_reply(batch) == encode(oracle([batch])[0])
    assert len(build_reply(batch)) == 2 * size


@pytest.mark.parametrize(
    ("batch", "closes"),
    [
        (b"over", True),
        (b"x" * 20 + b"over", True),
        (b"x" * 40 + b"over", True),
        (b"x" * 60 + b"over", True),
        (b"OVER", False),
        (b"over\n", False),
        (b"overtime", False),
        (b"game over", False),
        (b"overmore", False),
        (b"x" * 16 + b"over", False),  # one 20-byte chunk that ends in "over"
        (b"x" * 21 + b"over", False),  # 20 + "xover"
        (b"x" * 19 + b"over", False),  # 20 + "ver"
        (b"", False),
    ],
)
def test_batch_closes(batch: bytes, closes: bool) -> None:
    assert batch_closes(batch) is closes
    assert oracle([batch])[1] is closes


def test_one_byte_at_a_time() -> None:
    """h11-style: every byte alone is a chunk of its own, answered at once."""
    session = EchoSession()
    for byte in b"hello, world":
        single = bytes([byte])
        assert session.answer(single) == single + single
    assert not session.closing
    assert session.bytes_received == 12
    assert session.bytes_sent == 24


def test_one_byte_at_a_time_spelling_over_does_not_close() -> None:
    """``o``, ``v``, ``e``, ``r`` in four batches are four chunks, none of them ``over``."""
    session, stream = feed([b"o", b"v", b"e", b"r"])
    assert stream == b"oovveerr"
    assert not session.closing


def test_45_bytes_in_one_batch_are_20_20_5() -> None:
    session = EchoSession()
    chunks = [ALPHABET_45[:20], ALPHABET_45[20:40], ALPHABET_45[40:]]
    assert oracle([ALPHABET_45]) == (chunks, False)
    assert session.answer(ALPHABET_45) == encode(chunks)


def test_chunks_never_span_batches() -> None:
    """25 bytes then 15 more are 20 + 5 + 15, not 20 + 20: Tornado hands out what it has."""
    _, stream = feed([ALPHABET_45[:25], ALPHABET_45[25:40]])
    assert stream == encode([ALPHABET_45[:20], ALPHABET_45[20:25], ALPHABET_45[25:40]])


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 19, 20, 21, 39, 40, 41, 44, 45])
def test_45_bytes_in_equal_batches(batch_size: int) -> None:
    batches = [ALPHABET_45[i : i + batch_size] for i in range(0, 45, batch_size)]
    expected, closed = oracle(batches)
    session, stream = feed(batches)
    assert stream == encode(expected)
    assert not closed
    assert not session.closing
    check_reply_stream(ALPHABET_45, stream)


def test_every_two_batch_cut_of_45_bytes() -> None:
    for cut in range(46):
        batches = [ALPHABET_45[:cut], ALPHABET_45[cut:]]
        expected, _ = oracle(batches)
        _, stream = feed(batches)
        assert stream == encode(expected), cut


@pytest.mark.parametrize(
    "message", [b"hello world", b"xxxxover", b"over over", b"overover", b"abcdefghijkl"]
)
def test_every_batch_cut_of_a_short_message(message: bytes) -> None:
    """All 2 ** (n - 1) ways of cutting a message agree with the spec's model."""
    for batches in compositions(message):
        expected, closed = oracle(batches)
        session, stream = feed(batches)
        assert stream == encode(expected), batches
        assert session.closing is closed, batches


def test_every_batch_cut_of_a_message_longer_than_a_chunk() -> None:
    """A 23-byte message crosses the 20-byte line; every cut into up to 3 batches."""
    message = ALPHABET_45[:23]
    for first, second in itertools.combinations_with_replacement(range(24), 2):
        batches = [b for b in (message[:first], message[first:second], message[second:]) if b]
        expected, _ = oracle(batches)
        _, stream = feed(batches)
        assert stream == encode(expected), (first, second)
        check_reply_stream(message, stream)


def test_empty_batch_is_not_end_of_stream() -> None:
    """An empty batch is answered with nothing and closes nothing."""
    session = EchoSession()
    assert session.answer(b"") == b""
    assert not session.closing
    assert session.bytes_received == 0


def test_session_copies_what_it_keeps() -> None:
    """A shell that reuses its receive buffer must not change a reply already made."""
    buffer = bytearray(b"hello")
    session = EchoSession()
    # A BufferedProtocol shell hands over a view of its buffer as the batch.
    reply = session.answer(cast(bytes, buffer))
    buffer[:] = b"XXXXX"
    assert reply == b"helloolleh"
    assert session.answer(cast(bytes, buffer)) == b"XXXXXXXXXX"


# --- the `over` rules ---------------------------------------------------------------

OVER_CASES: list[tuple[str, list[bytes], list[bytes], bool]] = [
    # (id, batches, chunks answered, closes)
    ("over", [b"over"], [b"over"], True),
    ("OVER", [b"OVER"], [b"OVER"], False),
    ("over-newline", [b"over\n"], [b"over\n"], False),
    ("overtime", [b"overtime"], [b"overtime"], False),
    ("game-over", [b"game over"], [b"game over"], False),
    # `over` then more bytes in one batch is one chunk, not `over` (SPEC: "closes nothing").
    ("over-then-more-same-batch", [b"overmore"], [b"overmore"], False),
    ("24-bytes-ending-in-over", [b"x" * 20 + b"over"], [b"x" * 20, b"over"], True),
    ("28-bytes-over-mid-chunk", [b"x" * 20 + b"overmore"], [b"x" * 20, b"overmore"], False),
    ("over-after-a-message", [b"hello", b"over"], [b"hello", b"over"], True),
    ("later-batches-ignored", [b"over", b"more", b"over"], [b"over"], True),
    ("24-bytes-then-more", [b"x" * 20 + b"over", b"tail"], [b"x" * 20, b"over"], True),
    ("split-over", [b"ov", b"er"], [b"ov", b"er"], False),
    ("44-bytes-ending-in-over", [b"y" * 40 + b"over"], [b"y" * 20, b"y" * 20, b"over"], True),
]


@pytest.mark.parametrize(
    ("batches", "chunks", "closes"),
    [case[1:] for case in OVER_CASES],
    ids=[case[0] for case in OVER_CASES],
)
def test_over_rules(batches: list[bytes], chunks: list[bytes], closes: bool) -> None:
    assert oracle(batches) == (chunks, closes)
    session, stream = feed(batches)
    assert stream == encode(chunks)
    assert session.closing is closes


def test_over_stops_answering_and_counting() -> None:
    session = EchoSession()
    assert session.answer(b"hi") + session.answer(b"over") == b"hiihoverrevo"
    assert session.closing
    assert session.answer(b"ignored") == b""
    assert session.answer(b"over") == b""
    assert session.bytes_received == 6
    assert session.bytes_sent == 12


# --- bytes are bytes ----------------------------------------------------------------

ALL_BYTES = bytes(range(256))


def test_all_256_byte_values_in_one_batch() -> None:
    session, stream = feed([ALL_BYTES])
    assert stream == encode([ALL_BYTES[i : i + 20] for i in range(0, 256, 20)])
    assert not session.closing
    check_reply_stream(ALL_BYTES, stream)


@pytest.mark.parametrize("value", range(256))
def test_every_byte_value_alone(value: int) -> None:
    single = bytes([value])
    _, stream = feed([single])
    assert stream == single * 2
    reply = split_reply(single, stream)
    assert (reply.echo, reply.reversed, list(reply.chunks)) == (single, single, [single])


def test_all_256_byte_values_one_at_a_time() -> None:
    _, stream = feed([bytes([value]) for value in range(256)])
    assert stream == b"".join(bytes([value, value]) for value in range(256))


# --- the client side: split_reply and Reply -----------------------------------------


def test_split_reply_of_one_batch_prefers_full_chunks() -> None:
    message = b"x" * 20 + b"over"
    reply = split_reply(message, encode([b"x" * 20, b"over"]))
    assert list(reply.chunks) == [b"x" * 20, b"over"]
    assert reply.closes
    assert reply.echo == message
    assert reply.reversed == b"x" * 20 + b"revo"


def test_reply_properties_for_45_bytes() -> None:
    chunks = [ALPHABET_45[:20], ALPHABET_45[20:40], ALPHABET_45[40:]]
    reply = split_reply(ALPHABET_45, encode(chunks))
    assert list(reply.chunks) == chunks
    assert reply.echo == ALPHABET_45
    assert reply.reversed == b"".join(chunk[::-1] for chunk in chunks)
    assert not reply.closes


@pytest.mark.parametrize(("message", "closes"), [(b"over", True), (b"overtime", False)])
def test_reply_closes_only_for_an_over_chunk(message: bytes, closes: bool) -> None:
    assert split_reply(message, double_reply(message)).closes is closes


@pytest.mark.parametrize("message", [b"hello world", ALPHABET_45[:23], ALPHABET_45])
def test_split_reply_explains_any_cut(message: bytes) -> None:
    """Whatever batches the server saw, the client takes the reply apart correctly."""
    cuts = (
        compositions(message)
        if len(message) <= 12
        else ([message[:a], message[a:]] for a in range(1, len(message)))
    )
    for batches in cuts:
        chunks, _ = oracle(batches)
        stream = encode(chunks)
        reply = split_reply(message, stream)
        assert reply.echo == message, batches
        assert encode(reply.chunks) == stream, batches


@pytest.mark.parametrize("delta", [-2, -1, 1, 2])
def test_split_reply_wrong_length(delta: int) -> None:
    message = b"hello"
    stream = double_reply(message)
    wrong = stream[:delta] if delta < 0 else stream + b"h" * delta
    with pytest.raises(ProtocolError, match=r"expected 10"):
        split_reply(message, wrong)


def test_split_reply_of_the_empty_message() -> None:
    assert list(split_reply(b"", b"").chunks) == []
    with pytest.raises(ProtocolError):
        split_reply(b"", b"x")


def test_split_reply_rejects_every_single_corrupted_byte() -> None:
    chunks = [ALPHABET_45[:20], ALPHABET_45[20:40], ALPHABET_45[40:]]
    stream = encode(chunks)
    for position in range(len(stream)):
        corrupted = bytearray(stream)
        corrupted[position] ^= 0x20
        with pytest.raises(ProtocolError):
            split_reply(ALPHABET_45, bytes(corrupted))


@pytest.mark.parametrize("message", [b"hello", ALPHABET_45[:20], ALPHABET_45])
def test_split_reply_rejects_swapped_halves(message: bytes) -> None:
    chunks = list(iter_chunks(message))
    swapped = b"".join(chunk[::-1] + chunk for chunk in chunks)
    with pytest.raises(ProtocolError):
        split_reply(message, swapped)


@pytest.mark.parametrize("message", [b"hello", ALPHABET_45[:20], ALPHABET_45])
def test_split_reply_rejects_a_reversal_that_is_not_reversed(message: bytes) -> None:
    chunks = list(iter_chunks(message))
    echoed_twice = b"".join(chunk + chunk for chunk in chunks)
    with pytest.raises(ProtocolError):
        split_reply(message, echoed_twice)


def test_split_reply_rejects_the_reply_to_another_message() -> None:
    with pytest.raises(ProtocolError):
        split_reply(b"hello", double_reply(b"hellp"))


def test_split_reply_rejects_chunks_over_20_bytes() -> None:
    """One 21-byte chunk and its reversal is not something the server can send."""
    message = ALPHABET_45[:21]
    with pytest.raises(ProtocolError):
        split_reply(message, double_reply(message))


def test_split_reply_stays_fast_on_an_unexplainable_reply() -> None:
    """All-`a` replies let every cut match until the last byte: the search must not explode.

    Exponential backtracking would never finish here; the memo keeps it linear.
    """
    message = b"a" * 3000
    with pytest.raises(ProtocolError):
        split_reply(message, b"a" * (2 * len(message) - 1) + b"b")


def test_split_reply_on_a_large_reply() -> None:
    message = bytes(i % 251 for i in range(100_000))
    chunks = list(iter_chunks(message))
    reply = split_reply(message, encode(chunks))
    assert list(reply.chunks) == chunks
    assert reply.reversed == b"".join(chunk[::-1] for chunk in chunks)


# --- format_bytes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"hello", "hello"),
        (b"", ""),
        ("héllo wörld".encode(), "héllo wörld"),
        (b"\xff", "\\xff"),
        (b"a\xffb\xfe", "a\\xffb\\xfe"),
        # A chunk border, or the reversal, can split a UTF-8 character: its bytes show as \xNN.
        ("é".encode()[::-1], "\\xa9\\xc3"),
        ("é".encode()[:1], "\\xc3"),
        (b"a\x00b", "a\x00b"),
    ],
)
def test_format_bytes(data: bytes, text: str) -> None:
    assert format_bytes(data) == text


def test_format_bytes_of_all_256_values_round_trips() -> None:
    text = format_bytes(ALL_BYTES)
    assert text[:128] == ALL_BYTES[:128].decode("ascii")
    assert text[128:] == "".join(f"\\x{value:02x}" for value in range(128, 256))


# --- exceptions ---------------------------------------------------------------------


def test_exception_family() -> None:
    for cls in (StreamClosedError, UnsatisfiableReadError, StreamBufferFullError, ProtocolError):
        assert issubclass(cls, Echo20Error)
    assert issubclass(StreamClosedError, OSError)


def test_stream_closed_error_real_error() -> None:
    clean = StreamClosedError()
    assert clean.real_error is None
    assert str(clean) == "Stream is closed"
    reset = ConnectionResetError(104, "Connection reset by peer")
    error = StreamClosedError(real_error=reset)
    assert error.real_error is reset
    assert "ConnectionResetError" in str(error)
    assert "Connection reset by peer" in str(error)


def test_describe_error() -> None:
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert describe_error(ValueError("bad")) == "ValueError: bad"


# --- properties (Hypothesis) --------------------------------------------------------

# Batches biased towards the interesting lengths (around 20) and bytes (`over`).
batch_strategy = st.one_of(
    st.binary(min_size=1, max_size=45),
    st.sampled_from([b"over", b"OVER", b"over\n", b"x" * 20 + b"over", b"o", b"ver"]),
)


def cut_points(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """Every way of cutting ``data`` into non-empty batches."""
    positions = st.sets(st.integers(min_value=1, max_value=max(len(data) - 1, 1)), max_size=12)

    def cut(points: set[int]) -> list[bytes]:
        edges = [0, *sorted(p for p in points if p < len(data)), len(data)]
        return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]

    return positions.map(cut)


@PROPERTY_SETTINGS
@given(data=st.data(), message=st.binary(max_size=200))
def test_property_any_cut_gives_a_valid_reply_stream(data: st.DataObject, message: bytes) -> None:
    """For any input cut any way: 2N reply bytes until `over`, echo parts join to the input."""
    batches = data.draw(cut_points(message))
    assert b"".join(batches) == message
    expected, closed = oracle(batches)
    session, stream = feed(batches)
    assert stream == encode(expected)
    assert session.closing is closed
    answered = b"".join(expected)
    if not closed:
        assert answered == message
        check_reply_stream(message, stream)
    else:
        # Up to and including `over`, and nothing after it.
        assert message.startswith(answered)
        assert answered.endswith(b"over")
        check_reply_stream(answered, stream)


@PROPERTY_SETTINGS
@given(batches=st.lists(batch_strategy, max_size=8))
def test_property_batches_biased_towards_over(batches: list[bytes]) -> None:
    expected, closed = oracle(batches)
    session, stream = feed(batches)
    assert stream == encode(expected)
    assert session.closing is closed
    assert session.bytes_sent == len(stream) == 2 * sum(map(len, expected))
    if not closed:
        check_reply_stream(b"".join(batches), stream)


@PROPERTY_SETTINGS
@given(batch=st.one_of(st.binary(max_size=100), st.binary(min_size=380, max_size=3000)))
def test_property_build_reply(batch: bytes) -> None:
    """The one-buffer reply to a batch, whatever builder makes it, is the spec's."""
    chunks = [batch[start : start + 20] for start in range(0, len(batch), 20)]
    assert bytes(build_reply(batch)) == encode(chunks)
    assert batch_closes(batch) is (bool(chunks) and chunks[-1] == b"over")


@PROPERTY_SETTINGS
@given(batch=st.binary(max_size=300))
def test_property_iter_chunks(batch: bytes) -> None:
    chunks = list(iter_chunks(batch))
    assert b"".join(chunks) == batch
    assert all(len(chunk) == CHUNK_SIZE for chunk in chunks[:-1])
    assert all(1 <= len(chunk) <= CHUNK_SIZE for chunk in chunks)


@PROPERTY_SETTINGS
@given(data=st.data(), message=st.binary(min_size=1, max_size=200))
def test_property_split_reply_recovers_a_cut(data: st.DataObject, message: bytes) -> None:
    """The client finds a cut that explains the reply, whatever cut the server made."""
    batches = data.draw(cut_points(message))
    chunks = [chunk for batch in batches for chunk in iter_chunks(batch)]
    stream = encode(chunks)
    reply = split_reply(message, stream)
    assert reply.echo == message
    assert encode(reply.chunks) == stream
    assert all(1 <= len(chunk) <= CHUNK_SIZE for chunk in reply.chunks)
    assert reply.reversed == b"".join(chunk[::-1] for chunk in reply.chunks)


@PROPERTY_SETTINGS
@given(batches=st.lists(batch_strategy, min_size=1, max_size=8))
def test_property_client_sees_the_close_the_server_makes(batches: list[bytes]) -> None:
    """Reply.closes (the client's cue to stop) is true exactly when the server closed."""
    chunks, closed = oracle(batches)
    message = b"".join(chunks)
    reply = split_reply(message, encode(chunks))
    assert reply.closes is closed


@PROPERTY_SETTINGS
@given(message=st.binary(max_size=60), garbage=st.binary(max_size=120))
def test_property_split_reply_never_accepts_what_it_cannot_explain(
    message: bytes, garbage: bytes
) -> None:
    """Any bytes at all: either ProtocolError, or a cut that re-encodes to exactly them."""
    for stream in (garbage, garbage[: 2 * len(message)].ljust(2 * len(message), b"\x00")):
        try:
            reply = split_reply(message, stream)
        except ProtocolError:
            continue
        assert encode(reply.chunks) == stream
        assert reply.echo == message


# --- purity -------------------------------------------------------------------------


def test_protocol_imports_no_io() -> None:
    """A fresh interpreter (no site, no user path) imports protocol without any I/O module."""
    forbidden: Sequence[str] = ("asyncio", "socket", "selectors", "ssl", "tornado", "uvloop")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import protocol; "
        "print(' '.join(sorted(m for m in sys.argv[2:] if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(ROOT), *forbidden],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert result.stdout.strip() == "", f"protocol imported {result.stdout.strip()}"


def test_a_batch_over_64_kib_is_answered_as_tornado_reads_it() -> None:
    """Tornado reads at most 64 KiB at a time, so chunking restarts every 64 KiB."""
    message = bytes(range(256)) * 1024 + b"rest"  # 256 KiB + 4 bytes
    session = EchoSession()
    reply = bytes(session.answer(message))
    step = MAX_BATCH_SIZE
    expected = b"".join(
        _model_reply(message[start : start + step]) for start in range(0, len(message), step)
    )
    assert reply == expected
    assert session.bytes_sent == len(reply) == 2 * len(message)
    assert not session.closing


def test_over_at_the_end_of_a_long_batch_still_closes() -> None:
    message = b"x" * (MAX_BATCH_SIZE + 20) + b"over"
    session = EchoSession()
    reply = bytes(session.answer(message))
    assert session.closing
    assert reply.endswith(b"overrevo")


def _model_reply(batch: bytes) -> bytes:
    chunks = [batch[start : start + 20] for start in range(0, len(batch), 20)]
    return b"".join(chunk + chunk[::-1] for chunk in chunks)
