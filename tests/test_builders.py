"""Every reply builder against the plain per-chunk definition, with and without NumPy.

The definition is written here from SPEC.md, sharing no code with ``protocol.py``: cut
a batch into 20-byte chunks and a shorter rest, answer each with itself and its byte
reversal; batches over 64 KiB are cut as Tornado's successive 64 KiB reads would be.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol
from protocol import EchoSession, ReplyBuffer

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Sizes that matter: around one chunk, the loop/vectorised crossovers (400 B, 2 KiB),
# and past the 64 KiB batch limit.
INTERESTING_SIZES = [0, 1, 19, 20, 21, 24, 399, 400, 401, 2047, 2048, 2049, 65536, 65557, 200_004]


def definition(batch: bytes) -> bytes:
    """The reply to one batch, one chunk at a time (SPEC.md)."""
    chunks = [batch[start : start + 20] for start in range(0, len(batch), 20)]
    return b"".join(chunk + chunk[::-1] for chunk in chunks)


def session_definition(batch: bytes) -> bytes:
    """A session's reply: batches over 64 KiB are the batches Tornado's reads make."""
    step = 64 * 1024
    return b"".join(definition(batch[start : start + step]) for start in range(0, len(batch), step))


def text_definition(batch: bytes) -> bytes:
    """Text mode: chunks that never end inside a character, reversed by character."""
    out, start = [], 0
    while start < len(batch):
        end = min(start + 20, len(batch))
        if end < len(batch):
            # Move back to the start of a complete character straddling the cut.
            for lead in range(end - 1, max(start, end - 4), -1):
                length = _sequence_length(batch[lead])
                if length and lead + length > end:
                    candidate = batch[lead : lead + length]
                    if lead > start and _decodes(candidate):
                        end = lead
                    break
        chunk = batch[start:end]
        reversed_text = chunk.decode("utf-8", "surrogateescape")[::-1]
        out.append(chunk + reversed_text.encode("utf-8", "surrogateescape"))
        start = end
    return b"".join(out)


def _sequence_length(lead: int) -> int:
    if lead & 0xE0 == 0xC0:
        return 2
    if lead & 0xF0 == 0xE0:
        return 3
    if lead & 0xF8 == 0xF0:
        return 4
    return 0


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


Builder = Callable[[bytes], ReplyBuffer]
BUILDERS: dict[str, Builder] = {
    "loop": protocol.reply_by_loop,
    "itemgetter": protocol.reply_by_itemgetter,
    "slices": protocol.reply_by_slices,
    "numpy": protocol.reply_by_numpy,
    "build_reply": protocol.build_reply,
}

batches = st.one_of(
    st.binary(max_size=3000),
    st.sampled_from(INTERESTING_SIZES).flatmap(
        lambda size: (
            st.binary(min_size=size, max_size=size) if size < 5000 else st.just(bytes(size))
        )
    ),
    st.builds(
        lambda head, tail: head + tail,
        st.binary(max_size=200),
        st.sampled_from([b"over", b"overtime", b"OVER"]),
    ),
)


@pytest.mark.parametrize("name", list(BUILDERS))
@SETTINGS
@given(batch=batches)
def test_every_builder_is_the_definition(name: str, batch: bytes) -> None:
    assert bytes(BUILDERS[name](batch)) == definition(batch)


@pytest.mark.parametrize("size", INTERESTING_SIZES)
def test_builders_on_patterned_batches(size: int) -> None:
    batch = bytes((index * 7 + 3) % 256 for index in range(size))
    expected = definition(batch)
    for build in BUILDERS.values():
        assert bytes(build(batch)) == expected


@SETTINGS
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0, max_value=3000)))
def test_a_session_answers_any_cut_as_the_definition(data: bytes, cuts: list[int]) -> None:
    """Any cut into batches: each batch answered by the definition, until ``over``."""
    session = EchoSession()
    reply = b""
    for batch in _cut(data, cuts):
        if session.closing:
            break
        reply += bytes(session.answer(batch))
        expected_closing = len(batch) % 20 == 4 and batch.endswith(b"over")
        assert session.closing == expected_closing
    expected = b""
    for batch in _cut(data, cuts):
        expected += session_definition(batch)
        if len(batch) % 20 == 4 and batch.endswith(b"over"):
            break
    assert reply == expected


@SETTINGS
@given(
    text=st.text(alphabet=st.sampled_from("ab é你😀\x00"), max_size=80), noise=st.binary(max_size=6)
)
def test_text_mode_builder_is_the_definition(text: str, noise: bytes) -> None:
    batch = text.encode() + noise  # noise: possibly invalid UTF-8 at the end
    assert bytes(protocol.build_text_reply(batch)) == text_definition(batch)


@SETTINGS
@given(batch=batches)
def test_reverse_each_chunk_is_the_second_halves(batch: bytes) -> None:
    chunks = [batch[start : start + 20] for start in range(0, len(batch), 20)]
    assert protocol.reverse_each_chunk(batch) == b"".join(chunk[::-1] for chunk in chunks)


@pytest.fixture
def without_numpy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make ``import numpy`` fail, as on a machine without the ``speed`` extra."""
    monkeypatch.setitem(sys.modules, "numpy", None)
    protocol._numpy.cache_clear()
    protocol.vectorised_builder.cache_clear()
    yield
    protocol._numpy.cache_clear()
    protocol.vectorised_builder.cache_clear()


def test_without_numpy_large_batches_use_strided_slices(without_numpy: None) -> None:
    builder, threshold = protocol.vectorised_builder()
    assert builder is protocol.reply_by_slices
    assert threshold > protocol.SMALL_BATCH
    with pytest.raises(RuntimeError, match="speed"):
        protocol.reply_by_numpy(b"x" * 1000)


@pytest.mark.parametrize("size", INTERESTING_SIZES)
def test_without_numpy_every_path_is_the_definition(without_numpy: None, size: int) -> None:
    batch = bytes((index * 11 + 5) % 256 for index in range(size))
    assert bytes(protocol.build_reply(batch)) == definition(batch)
    assert bytes(EchoSession().answer(batch)) == session_definition(batch)
    assert protocol.reverse_each_chunk(batch) == b"".join(
        batch[start : start + 20][::-1] for start in range(0, len(batch), 20)
    )
    if batch:
        reply = protocol.split_reply(batch, definition(batch))
        assert reply.echo == batch


def test_itemgetter_builder_is_the_definition_at_every_small_size() -> None:
    """It keeps one table entry per batch size: check each, and again from the table."""
    for _ in range(2):
        for size in range(protocol.SMALL_BATCH + 50):
            batch = bytes((index * 7 + size) % 256 for index in range(size))
            assert protocol.reply_by_itemgetter(batch) == definition(batch), size


def test_with_numpy_large_batches_use_numpy() -> None:
    pytest.importorskip("numpy")
    builder, threshold = protocol.vectorised_builder()
    assert builder is protocol.reply_by_numpy
    assert threshold == protocol.SMALL_BATCH


def _cut(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({0, len(data), *(cut for cut in cuts if cut < len(data))})
    for start, end in itertools.pairwise(points):
        yield data[start:end]
