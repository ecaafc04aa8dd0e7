"""Every reply builder against the plain per-chunk definition, in C and in pure Python.

The definition is written here from the protocol (docs/protocol.md), sharing no code
with ``protocol.py``: cut a batch into 20-byte chunks and a shorter rest, answer each
with itself and its byte reversal; batches over 64 KiB are cut as Tornado's successive
64 KiB reads would be. The tests that go through ``protocol``'s selected builders (the
session, the text mode, the client's check) run twice, once with the C accelerator
selected and once with the pure-Python fallback (the ``builders`` fixture).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echo20 import protocol
from echo20.protocol import EchoSession, ReplyBuffer, SessionCoreInPython

try:
    from echo20 import speedups
except ImportError:  # no C compiler at install time: the C cases are skipped
    speedups = None  # type: ignore[assignment]

SKIP_UNBUILT = pytest.mark.skipif(speedups is None, reason="echo20.speedups is not built")

# The fixture patches protocol's module globals once per test, not per example.
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Sizes that matter: around one chunk, the loop/strided-slices crossover (2 KiB), and past
# the 64 KiB batch limit.
INTERESTING_SIZES = [0, 1, 19, 20, 21, 24, 399, 400, 401, 2047, 2048, 2049, 65536, 65557, 200_004]


def definition(batch: bytes) -> bytes:
    """The reply to one batch, one chunk at a time (docs/protocol.md)."""
    chunks = [batch[start : start + 20] for start in range(0, len(batch), 20)]
    return b"".join(chunk + chunk[::-1] for chunk in chunks)


def session_definition(batch: bytes) -> bytes:
    """A session's reply: batches over 64 KiB are the batches Tornado's reads make."""
    step = 64 * 1024
    return b"".join(definition(batch[start : start + step]) for start in range(0, len(batch), step))


def reversal_definition(data: bytes) -> bytes:
    """The reply's second halves: every chunk reversed, joined."""
    return b"".join(data[start : start + 20][::-1] for start in range(0, len(data), 20))


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
    "slices": protocol.reply_by_slices,
    "python": protocol.build_reply_in_python,
    "build_reply": protocol.build_reply,
}
if speedups is not None:
    BUILDERS["c"] = speedups.build_reply


@pytest.fixture(
    params=[pytest.param("c", marks=SKIP_UNBUILT), "python"],
)
def builders(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Select the C builders or the pure-Python ones in ``protocol``, as its import does:
    the builders, and ``protocol.EchoSession`` on the matching session core."""
    accelerated = request.param == "c"
    build: Builder
    reverse: Callable[[bytes], bytes]
    core: type[SessionCoreInPython]
    if accelerated:
        assert speedups is not None
        build, reverse = speedups.build_reply, speedups.reverse_each_chunk
        core = speedups.SessionCore  # type: ignore[assignment]
    else:
        build, reverse = protocol.build_reply_in_python, protocol.reverse_each_chunk_in_python
        core = SessionCoreInPython
    monkeypatch.setattr(protocol, "build_reply", build)
    monkeypatch.setattr(protocol, "reverse_each_chunk", reverse)
    monkeypatch.setattr(protocol, "ACCELERATED", accelerated)
    monkeypatch.setattr(protocol, "EchoSession", session_class_on(core))
    return str(request.param)


def session_class_on(core: type[SessionCoreInPython]) -> type[EchoSession]:
    """``protocol.EchoSession`` as its import makes it on ``core``: the same methods."""
    own_slots = set(EchoSession.__slots__)
    namespace = {
        name: value
        for name, value in vars(EchoSession).items()
        if name not in own_slots and name not in ("__dict__", "__weakref__")
    }
    made: type[EchoSession] = type("EchoSession", (core,), namespace)
    return made


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
    for name, build in BUILDERS.items():
        assert bytes(build(batch)) == expected, name


@SETTINGS
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0, max_value=3000)))
def test_a_session_answers_any_cut_as_the_definition(
    builders: str, data: bytes, cuts: list[int]
) -> None:
    """Any cut into batches: each batch answered by the definition, until ``over``."""
    session = protocol.EchoSession()
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
def test_text_mode_builder_is_the_definition(builders: str, text: str, noise: bytes) -> None:
    batch = text.encode() + noise  # noise: possibly invalid UTF-8 at the end
    assert bytes(protocol.build_text_reply(batch)) == text_definition(batch)


@SETTINGS
@given(
    text=st.text(alphabet=st.sampled_from("ab é你😀\x00"), max_size=80), noise=st.binary(max_size=6)
)
def test_a_text_session_answers_as_the_text_definition(
    builders: str, text: str, noise: bytes
) -> None:
    batch = text.encode() + noise
    session = protocol.EchoSession(text=True)
    assert bytes(session.answer(batch)) == text_definition(batch)
    assert (session.bytes_received, session.bytes_sent) == (len(batch), 2 * len(batch))


@SETTINGS
@given(batch=batches)
def test_reverse_each_chunk_is_the_second_halves(builders: str, batch: bytes) -> None:
    assert protocol.reverse_each_chunk(batch) == reversal_definition(batch)


@pytest.mark.parametrize("size", INTERESTING_SIZES)
def test_every_path_is_the_definition(builders: str, size: int) -> None:
    """The session, the client's check and the reversal, at the sizes that switch paths."""
    batch = bytes((index * 11 + 5) % 256 for index in range(size))
    assert bytes(protocol.build_reply(batch)) == definition(batch)
    assert bytes(protocol.EchoSession().answer(batch)) == session_definition(batch)
    assert protocol.reverse_each_chunk(batch) == reversal_definition(batch)
    if batch:
        reply = protocol.split_reply(batch, definition(batch))
        assert reply.echo == batch
        assert reply.reversed == reversal_definition(batch)


def test_the_fixture_selects_what_it_says(builders: str) -> None:
    """Guard for the tests above: a new session really builds with the selected builder,
    on the selected session core."""
    assert protocol.ACCELERATED is (builders == "c")
    expected = speedups.build_reply if builders == "c" else protocol.build_reply_in_python
    session = protocol.EchoSession()
    assert session._build is expected
    core = speedups.SessionCore if builders == "c" else SessionCoreInPython
    assert type(session).__mro__[1] is core


def _cut(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({0, len(data), *(cut for cut in cuts if cut < len(data))})
    for start, end in itertools.pairwise(points):
        yield data[start:end]
