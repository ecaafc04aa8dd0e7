"""One send per event-loop turn: the writes a connection makes in one turn, sent together.

The seed writes each 20-byte chunk's echo and reversal as it goes; handed to the
transport one by one, that is one ``send()`` per chunk, the main cost of a naive port.
Both stream layers, the IOStream port (``iostream.py``) and the streams server's writer
(``streams.CoalescingWriter``), queue their writes here instead: the queue goes out at
the end of the loop turn, as one write, or at once when it grows large.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["WRITE_FLUSH_THRESHOLD", "WriteBuffer", "WriteCoalescer"]

# Queued writes are handed over at once when this many bytes wait: asyncio's own default
# high-water mark for transports, so a connection never holds more than that in user
# space before the transport's backpressure applies.
WRITE_FLUSH_THRESHOLD = 64 * 1024

WriteBuffer = bytes | bytearray | memoryview


class WriteCoalescer:
    """Queues writes and hands them to ``send`` as one, at the end of the loop turn.

    Example::

        writes = WriteCoalescer(transport.write)
        writes.add(b"hello")
        writes.add(b"olleh")     # both leave in one transport.write, after this turn

    Must be made while the event loop runs, or be given the loop that will run it.
    ``send`` gets each batch once; it decides what to do when the connection is already
    gone (or not there yet).
    """

    __slots__ = ("_loop", "_queue", "_scheduled", "_send", "queued_size")

    def __init__(
        self,
        send: Callable[[WriteBuffer], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._send = send
        self._loop = loop or asyncio.get_running_loop()
        self._queue: list[WriteBuffer] = []
        self._scheduled = False
        # Bytes added and not yet handed to ``send``.
        self.queued_size = 0

    def add(self, data: WriteBuffer) -> None:
        """Queue ``data``; it leaves with the rest of this loop turn's writes."""
        # Once per 20-byte chunk on the seed's loop: kept to a few operations.
        self._queue.append(data)
        self.queued_size += len(data)
        if self.queued_size >= WRITE_FLUSH_THRESHOLD:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_at_turn_end)

    def _flush_at_turn_end(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Hand everything queued to ``send`` now, as one write."""
        queue = self._queue
        if not queue:
            return
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        queue.clear()
        self.queued_size = 0
        self._send(data)

    def clear(self) -> None:
        """Drop everything queued (the connection was cut)."""
        self._queue.clear()
        self.queued_size = 0
