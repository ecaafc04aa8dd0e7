"""What a server does where the protocol leaves it free: measured, never judged alone.

The scenarios say whether a server keeps the rules; these probes record how it keeps
them, so that ``echo20-conformance compare`` can show two correct servers that still
behave differently (and a broken one, how):

* the round trip of 8 bytes, the median of 20 exchanges on one connection;
* the time from the last byte of ``over``'s reply to the end of stream;
* how many bytes the server answered to bytes sent after ``over``'s reply (0 for a
  correct server);
* how the server cut the reply to 1 MiB: the batches it answered (runs of 20-byte
  chunks, each ended by a shorter one).

Each probe takes a fresh connection; :func:`observe` runs them all, ``repeats`` times
in turn, so that run-to-run noise shows as the spread of each one's samples. The
scenarios use the same probes for the properties they record.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from echo20.conformance.wire import CLOSE_CHUNK, Peer, batch_sizes, sample

__all__ = [
    "ANSWERED_AFTER_OVER",
    "CLOSE_AFTER_OVER",
    "CUTS_1_MIB",
    "LATE_BYTES",
    "OVER_REPLY",
    "ROUND_TRIP",
    "Samples",
    "answer_to_bytes_after_over",
    "batches_of",
    "close_after_over",
    "observe",
    "round_trip",
]

OVER_REPLY = CLOSE_CHUNK + CLOSE_CHUNK[::-1]

T = TypeVar("T")

# The round trip: this many exchanges of 8 bytes, their median.
RTT_EXCHANGES = 20

# Sent once over's reply has arrived: a correct server answers none of it.
LATE_BYTES = b"anyone still there?"

# The reply whose cut is recorded on every repeat: big enough that a server reading
# 64 KiB at a time cuts it 16 times, small enough that Tornado answers it in a second.
CUT_SIZE = 1024 * 1024

# The probes' names, as reports and the JSON file spell them.
ROUND_TRIP = "round_trip_ms"
CLOSE_AFTER_OVER = "close_after_over_ms"
ANSWERED_AFTER_OVER = "answered_after_over"
CUTS_1_MIB = "cuts_1_mib"


async def round_trip(peer: Peer) -> float:
    """The median of RTT_EXCHANGES exchanges of 8 bytes, in milliseconds."""
    times: list[float] = []
    for index in range(RTT_EXCHANGES):
        message = f"rtt {index:04d}".encode()
        started = time.perf_counter()
        await peer.exchange(message)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def receive_over_reply(peer: Peer) -> None:
    reply = await peer.receive(len(OVER_REPLY))
    assert reply == OVER_REPLY, f"over's reply was {reply!r}, not {OVER_REPLY!r}"


async def close_after_over(peer: Peer) -> float:
    """Send ``over``; milliseconds from the last byte of its reply to the end of stream.

    AssertionError when the reply is wrong or more bytes come (``assert_eof``).
    """
    await peer.send(CLOSE_CHUNK)
    await receive_over_reply(peer)
    replied = time.perf_counter()
    await peer.assert_eof()
    return (time.perf_counter() - replied) * 1000


async def answer_to_bytes_after_over(peer: Peer) -> bytes:
    """What the server sends to LATE_BYTES, written once over's reply has arrived.

    The server has closed by then, or is about to: a correct one answers nothing, and
    our bytes may meet a reset, which ends the wait as the end of stream does.
    """
    await peer.send(CLOSE_CHUNK)
    await receive_over_reply(peer)
    peer.write(LATE_BYTES)
    try:
        async with asyncio.timeout(peer.timeout):
            await peer.writer.drain()
    except ConnectionError:
        pass  # the server had closed: our bytes met a reset, as they may
    return await peer.receive_until_eof(reset_ok=True)


async def batches_of(peer: Peer, size: int) -> list[int]:
    """Exchange ``size`` bytes; the batches the reply shows (``wire.batch_sizes``)."""
    await peer.exchange(sample(size, seed=size))
    return batch_sizes(peer.last_sizes)


@dataclass
class Samples:
    """One probe's results on one server: a value per repeat, or why a repeat failed.

    ``batches`` keeps, for the cut probes, each repeat's batch sizes (``values`` then
    holds how many batches each repeat showed).
    """

    values: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    batches: list[list[int]] = field(default_factory=list)


async def _probe_answered(peer: Peer) -> float:
    await peer.exchange(b"hello")
    return float(len(await answer_to_bytes_after_over(peer)))


async def _probe_close(peer: Peer) -> float:
    await peer.exchange(b"hello")
    return await close_after_over(peer)


Probe = Callable[[Peer], Awaitable[float]]


async def observe(address: tuple[str, int], timeout: float, repeats: int) -> dict[str, Samples]:
    """Every probe ``repeats`` times, one repeat of each in turn, each on a new connection.

    Taking them in turn spreads a passing disturbance (another process, a slow second)
    over all of them instead of one probe's samples. A probe that fails (the server
    stalls, closes early, answers wrongly) records why, and the next one goes on.
    """
    found = {name: Samples() for name in (ROUND_TRIP, CLOSE_AFTER_OVER, ANSWERED_AFTER_OVER)}
    found[CUTS_1_MIB] = Samples()
    probes: dict[str, Probe] = {
        ROUND_TRIP: round_trip,
        CLOSE_AFTER_OVER: _probe_close,
        ANSWERED_AFTER_OVER: _probe_answered,
    }
    for _ in range(repeats):
        for name, probe in probes.items():
            try:
                value = await _on_connection(address, timeout, probe)
            except AssertionError as error:
                found[name].failures.append(str(error))
            else:
                found[name].values.append(value)
        cuts = found[CUTS_1_MIB]
        try:
            batches = await _on_connection(
                address, timeout, lambda peer: batches_of(peer, CUT_SIZE)
            )
        except AssertionError as error:
            cuts.failures.append(str(error))
        else:
            cuts.batches.append(batches)
            cuts.values.append(float(len(batches)))
    return found


async def _on_connection(
    address: tuple[str, int], timeout: float, probe: Callable[[Peer], Awaitable[T]]
) -> T:
    peer = await Peer.connect(address, timeout)
    try:
        return await probe(peer)
    except (OSError, TimeoutError) as error:
        raise AssertionError(f"the connection failed: {error!r}") from None
    finally:
        await peer.close()
