"""The one exception family of echo20, drawn here::

    Echo20Error
    ├── StreamClosedError        a read or write on a closed stream (also an OSError,
    │   │                        as Tornado's is an IOError); real_error says why
    │   └── ConnectTimeoutError  TCPClient.connect(timeout=) expired; also a
    │                            TimeoutError, as Tornado raises
    ├── UnsatisfiableReadError   a read's max_bytes was exceeded (seen as real_error)
    ├── StreamBufferFullError    a read needed more than max_buffer_size
    ├── ProtocolError            the peer's bytes are not a valid double reply
    ├── ClientError              the client cannot go on (one line for the user)
    ├── LoopUnavailableError     an event loop that is not installed was asked for
    ├── SupervisorError          --workers: a worker would not start, or kept dying
    ├── BenchError               the benchmark cannot run or a reply check failed
    └── ConformanceError         the conformance runner cannot go on (a server that
                                 will not start or died): one line for the user

Library errors from the standard library (``ConnectionResetError``,
``BrokenPipeError``, ``asyncio.IncompleteReadError``) reach callers as
:class:`StreamClosedError` with the original in ``real_error`` and ``__cause__``.
This module imports nothing, so the I/O-free core (``echo20.protocol``) can use it.
"""

from __future__ import annotations

__all__ = [
    "BenchError",
    "ClientError",
    "ConformanceError",
    "ConnectTimeoutError",
    "Echo20Error",
    "LoopUnavailableError",
    "ProtocolError",
    "StreamBufferFullError",
    "StreamClosedError",
    "SupervisorError",
    "UnsatisfiableReadError",
    "describe_error",
]


class Echo20Error(Exception):
    """Base class of every error this project raises on purpose."""


class StreamClosedError(Echo20Error, OSError):
    """A read or write on a stream that is closed, whoever closed it.

    Tornado's name and meaning: ``real_error`` holds what closed the stream (a
    ``ConnectionResetError``, a ``BrokenPipeError``, an :class:`UnsatisfiableReadError`...),
    or ``None`` when it ended cleanly (end of stream, or our own ``close()``).
    """

    def __init__(self, real_error: BaseException | None = None) -> None:
        super().__init__("Stream is closed")
        self.real_error = real_error

    def __str__(self) -> str:
        if self.real_error is None:
            return "Stream is closed"
        return f"Stream is closed ({describe_error(self.real_error)})"


class ConnectTimeoutError(StreamClosedError, TimeoutError):
    """A connect that did not finish within its ``timeout``.

    Tornado's ``TCPClient.connect`` raises a ``TimeoutError`` with a message that says
    where it stopped (``Timeout during TLS handshake with 127.0.0.1:8888``); this is
    one, with that message, and also the :class:`StreamClosedError` every other failed
    connect here raises, whose ``real_error`` is a ``TimeoutError`` with the same words.
    """

    def __init__(self, message: str) -> None:
        super().__init__(real_error=TimeoutError(message))
        self.message = message

    def __str__(self) -> str:
        return self.message


class UnsatisfiableReadError(Echo20Error):
    """A ``read_until``/``read_until_regex`` cannot finish within its ``max_bytes``.

    As in Tornado, callers never see this one raised: the stream is closed and the read
    raises :class:`StreamClosedError` whose ``real_error`` is this exception.
    """


class StreamBufferFullError(Echo20Error):
    """A read needed more buffered bytes than the stream's ``max_buffer_size`` allows."""


class ProtocolError(Echo20Error):
    """Bytes from the peer that the echo20 protocol cannot have produced."""


def describe_error(error: BaseException) -> str:
    """One line for a log or a terminal: ``ConnectionResetError: [Errno 104] ...``."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class ClientError(Echo20Error):
    """The client cannot go on: the message is one line for the user."""


class LoopUnavailableError(Echo20Error, RuntimeError):
    """An event loop was asked for by name but its package is not installed."""


class SupervisorError(Echo20Error):
    """``--workers``: a worker did not start, or the workers keep dying (one line)."""


class BenchError(Echo20Error):
    """The benchmark cannot run (no compiler, a server that will not start) or a reply
    check failed."""


class ConformanceError(Echo20Error):
    """The conformance runner cannot go on: a server that will not start, or died.

    The message is one line for the user; the scenarios' own verdicts are test results,
    never this.
    """
