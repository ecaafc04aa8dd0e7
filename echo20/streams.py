"""asyncio's StreamReader and StreamWriter with Tornado's closed-stream semantics.

The default server (``echo20.servers.streams``, ``--impl streams``) is built on
``asyncio.start_server`` and the client (``echo20.client``) on the lines of
``asyncio.open_connection``. Three things separate asyncio's streams from the Tornado
original, and this module closes each gap with public API or the smallest subclass:

* **Closed-stream errors.** asyncio signals the peer's end of stream with ``b""`` from
  ``read()``, an ``IncompleteReadError`` from ``readexactly()``, and a lost connection
  with ``ConnectionResetError`` or ``BrokenPipeError``; a ``write()`` on a closed
  transport is silently dropped. Tornado raises ``StreamClosedError`` for all of them.
  :func:`closed_stream_errors` is the one place where they become
  :class:`~echo20.errors.StreamClosedError` (``raise ... from``), and
  :class:`CoalescingWriter` raises it on a write to a closed stream.
* **Bytes received before a reset.** CPython's ``StreamReader.read``, ``readexactly``
  and ``readuntil`` raise a stored connection error before they hand out the bytes
  already buffered (python/cpython#75044), so a client that reads a reply after the
  server's reset loses it; Tornado hands those bytes out first. :class:`StreamReader`
  does too.
* **One send per loop turn.** A handler that writes each 20-byte chunk as it goes makes
  one ``send()`` per chunk, the main cost of a naive port. :class:`CoalescingWriter`
  collects the writes of one loop turn and hands them to the transport together, as
  the IOStream port does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections.abc import Iterator
from typing import Any, cast

from echo20.coalescing import WRITE_FLUSH_THRESHOLD, WriteBuffer, WriteCoalescer
from echo20.errors import StreamClosedError
from echo20.netutil import (
    abort_with_reset,
    close_gracefully,
    format_address,
    start_lingering_close,
)
from echo20.protocol import MAX_BATCH_SIZE

__all__ = [
    "CoalescingWriter",
    "StreamReader",
    "closed_stream_errors",
    "open_connection",
    "open_unix_connection",
    "read_partial",
    "stream_closed_error",
]


def stream_closed_error(error: BaseException) -> StreamClosedError:
    """The ``StreamClosedError`` that stands for one of asyncio's closed-stream errors.

    ``IncompleteReadError`` (the end of stream came first) gives ``real_error`` None, as
    Tornado's clean close does; a connection error (reset, broken pipe, a TLS failure)
    becomes the ``real_error``. The caller raises it ``from`` the original.
    """
    if isinstance(error, StreamClosedError):
        return error
    if isinstance(error, asyncio.IncompleteReadError):
        return StreamClosedError()
    return StreamClosedError(real_error=error)


@contextlib.contextmanager
def closed_stream_errors() -> Iterator[None]:
    """Raise asyncio's closed-stream errors as :func:`stream_closed_error` says."""
    try:
        yield
    except (asyncio.IncompleteReadError, OSError) as error:
        raise stream_closed_error(error) from error


async def read_partial(reader: asyncio.StreamReader, size: int) -> bytes:
    """1 to ``size`` bytes as soon as any are buffered: Tornado's
    ``read_bytes(size, partial=True)``. At the end of stream, or once the connection is
    lost, it raises :class:`StreamClosedError` where asyncio returns ``b""``."""
    # try/except rather than closed_stream_errors(): this runs once per 20-byte chunk,
    # and a context manager object per call would cost more than the read.
    try:
        data = await reader.read(size)
    except OSError as error:
        raise stream_closed_error(error) from error
    if not data:
        raise StreamClosedError()
    return data


class StreamReader(asyncio.StreamReader):
    """asyncio's ``StreamReader``, handing out bytes received before a connection error.

    CPython's reader raises a stored error (``ConnectionResetError``) before it looks at
    its buffer, and a read parked while the error arrives waits for data that will never
    come. This one returns what the buffer can satisfy first, then raises, as Tornado's
    IOStream does. It reads two private attributes of asyncio's pure-Python reader,
    which uvloop uses too: ``_buffer`` and ``_exception``.
    """

    # asyncio sets both in __init__; typeshed does not declare them.
    _buffer: bytearray
    _exception: BaseException | None

    @property
    def buffered_size(self) -> int:
        """How many received bytes wait unread."""
        return len(self._buffer)

    async def read(self, n: int = -1) -> bytes:
        if n > 0 and self._buffer:
            with self._error_deferred():
                return await super().read(n)
        return await super().read(n)

    async def readexactly(self, n: int) -> bytes:
        if len(self._buffer) >= n:
            with self._error_deferred():
                return await super().readexactly(n)
        return await super().readexactly(n)

    # Narrower than typeshed's private separator type: the client needs bytes only.
    async def readuntil(self, separator: bytes = b"\n") -> bytes:  # type: ignore[override]
        if separator in self._buffer:
            with self._error_deferred():
                return await super().readuntil(separator)
        return await super().readuntil(separator)

    @contextlib.contextmanager
    def _error_deferred(self) -> Iterator[None]:
        # With enough bytes buffered asyncio's read returns them without waiting, so
        # hiding the stored error for that one call cannot lose it.
        error, self._exception = self._exception, None
        try:
            yield
        finally:
            if error is not None:
                self._exception = error

    async def _wait_for_data(self, func_name: str) -> None:
        # A read that needs more bytes after the connection was lost would otherwise
        # wait forever: the error was stored while no read was waiting.
        if self._exception is not None:
            raise self._exception
        await super()._wait_for_data(func_name)  # type: ignore[misc]


class CoalescingWriter(WriteCoalescer):
    """The write side of an asyncio ``StreamWriter``: one loop turn's writes, one send.

    ``write()`` queues (it is a :class:`~echo20.coalescing.WriteCoalescer`); the queue
    goes to the transport when the loop turn ends, or at once when it grows large. ``drain()``
    keeps asyncio's meaning (wait while the transport is above its high-water mark),
    ``close()`` sends what is queued,
    then the end of stream. A write or drain on a closed stream raises
    :class:`StreamClosedError`, where asyncio drops the bytes.
    """

    __slots__ = ("_low_water", "_transport", "bytes_written", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        # uvloop's transports do not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, writer.transport)
        super().__init__(self._to_transport)
        self.bytes_written = 0
        try:
            self._low_water = self._transport.get_write_buffer_limits()[0]
        except NotImplementedError:
            # veloxloop 0.2's transports do not say: skip drain() only when nothing waits.
            self._low_water = 0

    @property
    def transport(self) -> asyncio.Transport:
        return self._transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.writer.get_extra_info(name, default)

    def write(self, data: WriteBuffer) -> None:
        """Queue ``data``; it leaves with the rest of this loop turn's writes."""
        # Once per 20-byte chunk on the streams server: kept to a few operations.
        if self._transport.is_closing():
            raise StreamClosedError(real_error=self._lost_error())
        size = len(data)
        self.bytes_written += size
        # WriteCoalescer.add, written out: the call alone cost 5 % of a 200-byte round
        # trip, ten writes of 20-byte chunks (callgrind, tools/roundtrips.py).
        self._queue.append(data)
        self.queued_size += size
        if self.queued_size >= WRITE_FLUSH_THRESHOLD:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_at_turn_end)

    def _to_transport(self, data: WriteBuffer) -> None:
        # The coalesced writes of one loop turn; dropped if the connection went meanwhile.
        if data and not self._transport.is_closing():
            self._transport.write(data)

    @property
    def buffered_size(self) -> int:
        """Bytes written but not yet sent: queued here or in the transport."""
        return self.queued_size + self._transport.get_write_buffer_size()

    async def drain(self) -> None:
        """Wait while the transport holds more unsent bytes than its high-water mark."""
        transport = self._transport
        if not transport.is_closing() and transport.get_write_buffer_size() <= self._low_water:
            # At or below the low-water mark the transport cannot be paused, so asyncio's
            # drain() would return at once; skipping its three coroutine calls matters
            # when it runs once per 20-byte chunk (callgrind: ~2k instructions a chunk).
            return
        try:
            await self.writer.drain()
        except OSError as error:  # once per chunk: no context manager (see read_partial)
            raise stream_closed_error(error) from error

    def _lost_error(self) -> BaseException | None:
        # What closed the stream, for real_error: the reader holds it, and asyncio's
        # StreamWriter keeps its reader only privately (its drain() reads it the same way).
        reader: asyncio.StreamReader | None = getattr(self.writer, "_reader", None)
        return reader.exception() if reader is not None else None

    def close(self) -> None:
        """Send what is queued and the end of stream (FIN), then close."""
        self.flush()
        close_gracefully(self.transport)

    def close_lingering(self) -> bool:
        """Send what is queued and the FIN, but keep reading (see
        :func:`~echo20.netutil.start_lingering_close`); False when that cannot be done."""
        self.flush()
        return start_lingering_close(self.transport)

    def abort(self) -> None:
        """Close at once with a reset, dropping what is queued."""
        self.clear()
        abort_with_reset(self.transport)

    async def wait_closed(self) -> None:
        """Wait until the connection is gone; how it ended is not this call's business."""
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def __repr__(self) -> str:
        peer = format_address(self.get_extra_info("peername"))
        return f"<CoalescingWriter {peer} queued={self.queued_size}>"


async def open_connection(
    host: str,
    port: int,
    *,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    limit: int = MAX_BATCH_SIZE,
) -> tuple[StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection``, with :class:`StreamReader` as the reader.

    The body is asyncio's own (``Lib/asyncio/streams.py``) with one class swapped:
    asyncio offers no way to choose the reader's class.
    """
    loop = asyncio.get_running_loop()
    reader = StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(
        lambda: protocol,
        host,
        port,
        ssl=ssl,
        server_hostname=(server_hostname or host) if ssl else None,
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def open_unix_connection(
    path: str,
    *,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    limit: int = MAX_BATCH_SIZE,
) -> tuple[StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_unix_connection`` with :class:`StreamReader`, as :func:`open_connection`."""
    loop = asyncio.get_running_loop()
    reader = StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_unix_connection(
        lambda: protocol,
        path,
        ssl=ssl,
        server_hostname=(server_hostname or "localhost") if ssl else None,
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer
