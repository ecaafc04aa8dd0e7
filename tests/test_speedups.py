"""The C accelerator (``echo20/speedups.c``) against the pure-Python definition.

Its output must be byte-identical to ``protocol.reply_by_loop`` (the definition) for
any bytes-like input; bad arguments raise, never crash; buffers are released on every
path; and ``ECHO20_PURE_PYTHON`` chooses between it and the fallback at import.
tests/test_builders.py runs the protocol-level tests with each of the two selected.
"""

from __future__ import annotations

import array
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Protocol, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import PYTHON, ROOT, TIMEOUT

from echo20 import protocol

speedups = pytest.importorskip(
    "echo20.speedups", reason="echo20.speedups is not built (no C compiler at install)"
)

SETTINGS = settings(max_examples=300, deadline=None)
MAX_BATCH = protocol.MAX_BATCH_SIZE

# The input types a shell may hand over: what transports deliver, the buffered
# protocol's receive buffer, and a window into it that starts at an offset.
Wrap = Callable[[bytes], bytes | bytearray | memoryview]
WRAPS: dict[str, Wrap] = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": memoryview,
    "memoryview-window": lambda data: memoryview(b"head" + data + b"tail")[4:-4],
}


def pure_reversal(data: bytes) -> bytes:
    return b"".join(data[start : start + 20][::-1] for start in range(0, len(data), 20))


@pytest.mark.parametrize("wrap", list(WRAPS))
@SETTINGS
@given(batch=st.binary(max_size=2000))
def test_the_c_builders_are_the_python_definition(wrap: str, batch: bytes) -> None:
    data = WRAPS[wrap](batch)
    reply = speedups.build_reply(data)
    assert type(reply) is bytes
    assert reply == protocol.reply_by_loop(batch)
    assert speedups.reverse_each_chunk(data) == pure_reversal(batch)
    assert speedups.reverse_each_chunk(data) == protocol.reverse_each_chunk_in_python(batch)


@pytest.mark.parametrize("size", [0, 1, 4, 19, 20, 21, 39, 40, 41, 65536, 1024 * 1024 + 7])
def test_sizes_around_the_chunk_and_large(size: int) -> None:
    batch = bytes((index * 13 + size) % 256 for index in range(size))
    assert speedups.build_reply(batch) == protocol.build_reply_in_python(batch)
    assert speedups.reverse_each_chunk(batch) == protocol.reverse_each_chunk_in_python(batch)


@pytest.mark.parametrize("wrap", list(WRAPS))
def test_a_batch_of_0_bytes_has_an_empty_reply(wrap: str) -> None:
    assert speedups.build_reply(WRAPS[wrap](b"")) == b""
    assert speedups.reverse_each_chunk(WRAPS[wrap](b"")) == b""


def test_any_contiguous_buffer_counts_by_its_bytes() -> None:
    numbers = array.array("H", range(30))  # 60 bytes of unsigned shorts
    raw = numbers.tobytes()
    assert speedups.build_reply(numbers) == protocol.reply_by_loop(raw)
    assert speedups.reverse_each_chunk(numbers) == pure_reversal(raw)


@pytest.mark.parametrize(
    "argument", [None, 20, "text", [b"a"], object()], ids=lambda argument: type(argument).__name__
)
@pytest.mark.parametrize("name", ["build_reply", "reverse_each_chunk"])
def test_a_non_buffer_argument_is_a_type_error(name: str, argument: object) -> None:
    with pytest.raises(TypeError, match="bytes-like object is required"):
        getattr(speedups, name)(argument)


@pytest.mark.parametrize("name", ["build_reply", "reverse_each_chunk"])
def test_a_strided_view_is_refused_not_misread(name: str) -> None:
    with pytest.raises(BufferError):
        getattr(speedups, name)(memoryview(bytes(range(40)))[::2])


@pytest.mark.parametrize("name", ["build_reply", "reverse_each_chunk"])
def test_the_buffer_is_released_after_every_call(name: str) -> None:
    """A bytearray still exported cannot be resized; a memoryview cannot be released."""
    function = getattr(speedups, name)
    receive_buffer = bytearray(b"x" * 45)
    function(receive_buffer)
    receive_buffer.extend(b"more")  # BufferError if the export leaked
    view = memoryview(bytearray(45))
    function(view)
    view.release()  # BufferError if the export leaked


def test_the_input_is_not_leaked() -> None:
    batch = bytes(range(100))
    before = sys.getrefcount(batch)
    for _ in range(1000):
        speedups.build_reply(batch)
        speedups.reverse_each_chunk(batch)
    assert sys.getrefcount(batch) == before


class RecordingCore(Protocol):
    """What the tests read of a session core built by :func:`recording_core`."""

    bytes_received: int
    bytes_sent: int
    closing: bool
    handed_over: list[bytes]

    def answer(self, batch: bytes | bytearray | memoryview, /) -> bytes | bytearray: ...


def recording_core(base: type) -> Callable[[bool], RecordingCore]:
    """A session core on ``base`` whose rare cases (text, batches over 64 KiB) are recorded."""

    class Recording(base):  # type: ignore[misc]
        def __init__(self, text: bool) -> None:
            self._text = text
            self.bytes_received = 0
            self.bytes_sent = 0
            self.closing = False
            self.handed_over: list[bytes] = []

        def _answer_other(self, batch: bytes) -> bytes:
            self.handed_over.append(bytes(batch))
            return b"<other>"

    return cast(Callable[[bool], RecordingCore], Recording)


session_batches = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda head, tail: head + tail,
        st.binary(max_size=100),
        st.sampled_from([b"over", b"overtime", b"OVER", b"ove"]),
    ),
    st.sampled_from([65536, 65537]).map(bytes),
)


@SETTINGS
@given(batches=st.lists(session_batches, max_size=8), text=st.booleans())
def test_the_c_session_core_is_the_python_definition(batches: list[bytes], text: bool) -> None:
    """Reply, counters, ``closing`` and what is handed to ``_answer_other``, batch by batch."""
    c_core = recording_core(speedups.SessionCore)(text)
    python_core = recording_core(protocol.SessionCoreInPython)(text)
    for batch in batches:
        assert bytes(c_core.answer(batch)) == bytes(python_core.answer(batch))
        state = (c_core.bytes_received, c_core.bytes_sent, c_core.closing, c_core.handed_over)
        assert state == (
            python_core.bytes_received,
            python_core.bytes_sent,
            python_core.closing,
            python_core.handed_over,
        )


def test_the_c_session_core_leaks_nothing() -> None:
    """No reference to the batch or the reply is kept, on every path: answered in C,
    handed to Python (text mode, over 64 KiB), refused, and after ``over``."""
    small, large = bytes(range(100)), bytes(MAX_BATCH + 1)
    session = protocol.EchoSession()
    text_session = protocol.EchoSession(text=True)
    before = [sys.getrefcount(small), sys.getrefcount(large)]
    for _ in range(200):
        reply = session.answer(small)
        assert sys.getrefcount(reply) == 2  # ``reply`` and getrefcount's argument
        del reply
        text_session.answer(small)
        session.answer(large)
    protocol.EchoSession().answer(b"over")
    closed = protocol.EchoSession()
    closed.answer(b"over")
    for _ in range(200):
        closed.answer(small)
        with pytest.raises(TypeError):
            session.answer(None)  # type: ignore[arg-type]
    assert [sys.getrefcount(small), sys.getrefcount(large)] == before


def test_the_c_session_core_takes_any_buffer_and_refuses_the_rest() -> None:
    core = recording_core(speedups.SessionCore)(False)
    assert core.answer(memoryview(b"..hello")[2:]) == b"helloolleh"
    assert core.answer(bytearray(b"over")) == b"overrevo"
    assert core.closing is True
    assert core.answer(b"after over") == b""
    assert (core.bytes_received, core.bytes_sent) == (9, 18)
    with pytest.raises(TypeError):
        recording_core(speedups.SessionCore)(False).answer("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        core.closing = 1  # type: ignore[assignment]


# Every size from 0 to 300 and a few large ones, in every input type, and the error paths,
# each result compared with the pure-Python definition: under PYTHONMALLOC=debug a write
# past the end of a reply or a double free ends the process with "Fatal Python error".
MALLOC_DEBUG_SCRIPT = """
import sys
from echo20 import protocol
from echo20 import speedups

sizes = [*range(301), 4096, 65536, 65557, 1048583]
count = 0
for size in sizes:
    batch = bytes((i * 31 + size) % 256 for i in range(size))
    want = protocol.reply_by_loop(batch)
    want_reversed = protocol.reverse_each_chunk_in_python(batch)
    for data in (batch, bytearray(batch), memoryview(batch), memoryview(b"." + batch)[1:]):
        assert speedups.build_reply(data) == want, size
        assert speedups.reverse_each_chunk(data) == want_reversed, size
        count += 1
    # The session's C core, on bytes as the shells hand it over (past 64 KiB, in batches).
    want_session = b"".join(map(protocol.reply_by_loop, protocol.tornado_batches(batch)))
    assert protocol.EchoSession().answer(batch) == want_session, size
    count += 1
functions = (speedups.build_reply, speedups.reverse_each_chunk, protocol.EchoSession().answer)
for bad in (None, 1, "text", memoryview(bytes(40))[::2]):
    for function in functions:
        try:
            function(bad)
        except (TypeError, BufferError):
            count += 1
        else:
            sys.exit(f"no error for {bad!r}")
print("ok", count)
"""


def test_no_memory_errors_under_the_debug_allocator() -> None:
    env = {**os.environ, "PYTHONMALLOC": "debug"}
    env.pop("ECHO20_PURE_PYTHON", None)
    result = subprocess.run(
        [PYTHON, "-X", "dev", "-c", MALLOC_DEBUG_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=6 * TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # 305 sizes x (4 input types + a session), then 4 bad arguments x 3 functions.
    assert result.stdout.split() == ["ok", str(305 * 5 + 12)]


def selection_in_a_fresh_interpreter(pure_python: str | None) -> list[str]:
    """``protocol``'s choice, imported with ECHO20_PURE_PYTHON set so (or unset)."""
    env = dict(os.environ)
    env.pop("ECHO20_PURE_PYTHON", None)
    if pure_python is not None:
        env["ECHO20_PURE_PYTHON"] = pure_python
    code = (
        "import protocol; "
        "print(protocol.ACCELERATED, protocol.build_reply.__module__, protocol.BUILDER_NAME)"
    )
    result = subprocess.run(
        [PYTHON, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split(maxsplit=2)


def test_echo20_pure_python_selects_the_fallback() -> None:
    accelerated, module, name = selection_in_a_fresh_interpreter("1")
    assert (accelerated, module) == ("False", "echo20.protocol")
    assert name.strip() == "pure Python (ECHO20_PURE_PYTHON set)"


@pytest.mark.parametrize("pure_python", [None, "", "0"])
def test_the_extension_is_selected_unless_refused(pure_python: str | None) -> None:
    accelerated, module, name = selection_in_a_fresh_interpreter(pure_python)
    assert (accelerated, module) == ("True", "echo20.speedups")
    assert name.strip() == "C (echo20.speedups)"


def test_this_process_runs_what_the_environment_asks_for() -> None:
    """Under ``make test`` the C builders; under ECHO20_PURE_PYTHON=1, the fallback."""
    forced = os.environ.get("ECHO20_PURE_PYTHON", "") not in ("", "0")
    assert protocol.ACCELERATED is not forced
    assert (protocol.build_reply is speedups.build_reply) is not forced
