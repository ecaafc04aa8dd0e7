"""Every echo20 server scenario, over raw TCP, against the server under test.

The assertions are the invariants of the protocol (``docs/protocol.md``), checked by
``wire.check_reply``: N bytes earn exactly 2N; chunks of 1 to 20 bytes, each followed
by its reversal, whose echo parts join to what was sent; the connection closes after an
exact ``over`` chunk and never otherwise, and nothing sent after it is answered. A
message of a few kilobytes sent at once reaches the server in one batch on loopback, so
for those the exact cut (20, 20, ..., rest) is asserted too. No assertion is about
timing or about how the reply is cut into segments; the one measurement (round-trip
time) is only recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from echo20.conformance.observe import (
    LATE_BYTES,
    OVER_REPLY,
    answer_to_bytes_after_over,
    batches_of,
    close_after_over,
    receive_over_reply,
    round_trip,
)
from echo20.conformance.plugin import ServerUnderTest
from echo20.conformance.wire import (
    CLOSE_CHUNK,
    Peer,
    SlowPeer,
    batch_sizes,
    check_reply,
    double_reply,
    one_batch_chunks,
    run_async,
    sample,
)

MIB = 1024 * 1024

# A reply to 1 MiB takes Tornado's seed loop some 50,000 turns of two writes each (over
# a second): only the scenarios that need that size use it.
ONE_MIB = MIB

# Beyond every kernel buffer on the way: on Linux a server's send buffer grows to
# 4 MiB, so an 8 MiB message (a 16 MiB reply) leaves megabytes of replies queued in
# the server itself when the end of stream (or ``over``) arrives.
BEYOND_BUFFERS = 8 * MIB

RecordProperty = Callable[[str, object], None]


@asynccontextmanager
async def connected(server: ServerUnderTest) -> AsyncIterator[Peer]:
    """A fresh connection to the server under test, closed afterwards."""
    peer = await Peer.connect(server.address, server.timeout)
    try:
        yield peer
    finally:
        await peer.close()


async def assert_still_open(peer: Peer) -> None:
    """The connection still answers; then ``over`` closes it, seen as end of stream."""
    await peer.exchange(b"still open?")
    await peer.send(CLOSE_CHUNK)
    await receive_over_reply(peer)
    await peer.assert_eof()


def record_batches(batches: list[int], record_property: RecordProperty) -> None:
    """Record how many batches the reply shows, and the largest (for reports only).

    A batch is a run of full chunks up to a shorter one: an upper bound, since a batch
    whose size is a multiple of 20 cannot be told from the next one. How much is
    waiting when a server reads is timing, so nothing is asserted.
    """
    record_property("batches", len(batches))
    record_property("largest_batch", max(batches))


# --- sizes and byte values ----------------------------------------------------------


@pytest.mark.parametrize("size", [1, 19, 20, 21, 45], ids=lambda size: f"{size}B")
@run_async
async def test_message_of_size(server_under_test: ServerUnderTest, size: int) -> None:
    async with connected(server_under_test) as peer:
        message = sample(size, seed=size)
        reply = await peer.exchange(message)
        assert reply == double_reply(one_batch_chunks(message))
        await assert_still_open(peer)


@run_async
async def test_message_of_1_mib(
    server_under_test: ServerUnderTest, record_property: RecordProperty
) -> None:
    async with connected(server_under_test) as peer:
        # Arrives in batches the server cannot predict: the invariants, not an exact cut.
        record_batches(await batches_of(peer, ONE_MIB), record_property)
        await assert_still_open(peer)


@run_async
async def test_all_256_byte_values(server_under_test: ServerUnderTest) -> None:
    async with connected(server_under_test) as peer:
        for message in (bytes(range(256)), bytes(range(255, -1, -1))):
            assert await peer.exchange(message) == double_reply(one_batch_chunks(message))
        await assert_still_open(peer)


@pytest.mark.parametrize(
    "message",
    [b"\0", b"\0" * 20, b"\0" * 45, b"a\0b\0\0c", b"\0over"],
    ids=["one", "twenty", "forty-five", "mixed", "before-over"],
)
@run_async
async def test_nul_bytes(server_under_test: ServerUnderTest, message: bytes) -> None:
    async with connected(server_under_test) as peer:
        assert await peer.exchange(message) == double_reply(one_batch_chunks(message))
        await assert_still_open(peer)


@run_async
async def test_invalid_utf8(server_under_test: ServerUnderTest) -> None:
    messages = [
        b"\xff",
        b"\xfe\xff\xfe\xff",
        b"\xc3\x28 a broken two-byte sequence",
        b"\xed\xa0\x80 a surrogate half",
        b"\x80\x80 continuation bytes with no lead",
        b"\xf4\x90\x80\x80 beyond U+10FFFF",
    ]
    async with connected(server_under_test) as peer:
        for message in messages:
            assert await peer.exchange(message) == double_reply(one_batch_chunks(message))
        await assert_still_open(peer)


@run_async
async def test_utf8_split_across_chunk_border(server_under_test: ServerUnderTest) -> None:
    # One ASCII byte, then 3-byte characters: the seventh straddles bytes 19 to 21, so
    # the 20-byte border cuts it. The server is byte-wise: both halves come back
    # exactly, the first chunk no longer decodes, the reversal is garbled.
    message = "a你好世界再见朋友".encode()
    chunks = one_batch_chunks(message)
    async with connected(server_under_test) as peer:
        assert await peer.exchange(message) == double_reply(chunks)
        with pytest.raises(UnicodeDecodeError):
            chunks[0].decode("utf-8")
        await assert_still_open(peer)


# --- the over rule ------------------------------------------------------------------


@run_async
async def test_over_closes(
    server_under_test: ServerUnderTest, record_property: RecordProperty
) -> None:
    async with connected(server_under_test) as peer:
        closed_after = await close_after_over(peer)
    # How long the end of stream took after over's reply: recorded, never asserted.
    record_property("close_after_over_ms", round(closed_after, 3))


@run_async
async def test_over_after_other_messages_closes(server_under_test: ServerUnderTest) -> None:
    async with connected(server_under_test) as peer:
        for message in (b"hello", sample(45, seed=45), b"over!"):
            await peer.exchange(message)
        await peer.send(b"over")
        await receive_over_reply(peer)
        await peer.assert_eof()


@pytest.mark.parametrize(
    "message",
    [b"OVER", b"over\n", b"overtime", b"game over", b"over and out", b"Over", b" over"],
    ids=["OVER", "over-newline", "overtime", "game-over", "over-then-more", "Over", "space-over"],
)
@run_async
async def test_over_lookalike_does_not_close(
    server_under_test: ServerUnderTest, message: bytes
) -> None:
    # ``over and out`` is ``over`` followed by more bytes in the same send: one chunk.
    async with connected(server_under_test) as peer:
        assert await peer.exchange(message) == double_reply([message])
        await assert_still_open(peer)


@run_async
async def test_24_bytes_ending_in_over_closes(server_under_test: ServerUnderTest) -> None:
    # 20 + 4: the last chunk is exactly ``over``, so the server closes after it.
    message = b"twenty bytes of text" + b"over"
    async with connected(server_under_test) as peer:
        await peer.send(message)
        reply = await peer.receive(2 * len(message))
        assert check_reply(message, reply, closes=True) == [20, 4]
        await peer.assert_eof()


@run_async
async def test_over_trickled_byte_by_byte_does_not_close(
    server_under_test: ServerUnderTest,
) -> None:
    # Four chunks of one byte, none of them ``over``.
    async with connected(server_under_test) as peer:
        for byte in b"over":
            await peer.send(bytes([byte]))
            assert await peer.receive(2) == bytes([byte, byte])
        await assert_still_open(peer)


@run_async
async def test_bytes_after_over_get_no_answer(server_under_test: ServerUnderTest) -> None:
    # Once over's reply has arrived the server has closed, or is about to: bytes sent
    # now must earn nothing, only the end of stream (or a reset, when they reach a
    # socket already closed). A server that goes on answering for a while after
    # ``overrevo`` answers these at once, so this fails it whatever its delay.
    async with connected(server_under_test) as peer:
        await peer.exchange(b"hello")
        rest = await answer_to_bytes_after_over(peer)
        assert rest == b"", (
            f"the server answered {rest[:48]!r} to {LATE_BYTES!r}, sent after over's reply"
        )


# --- one connection, many messages; many connections --------------------------------


@run_async
async def test_many_sequential_messages(server_under_test: ServerUnderTest) -> None:
    # Every size from 1 to 60, in an order that mixes short and long. (Against a server
    # that leaves Nagle on, as Tornado's does, each exchange waits for a delayed ACK,
    # about 40 ms: more messages would only slow the suite down.)
    async with connected(server_under_test) as peer:
        for index in range(60):
            message = sample(1 + index * 37 % 60, seed=index)
            assert await peer.exchange(message) == double_reply(one_batch_chunks(message))
        await assert_still_open(peer)


@run_async
async def test_pipelined_messages(server_under_test: ServerUnderTest) -> None:
    # 50 messages sent back to back before any reply is read: the server may take
    # several as one batch and cut it anew, so only the invariants hold, over the
    # whole conversation (no byte lost, doubled or out of order).
    messages = [sample(1 + index * 7 % 45, seed=index) for index in range(50)]
    sent = b"".join(messages)
    assert CLOSE_CHUNK not in sent, "no batch may cut an over chunk out of the joins"
    async with connected(server_under_test) as peer:
        for message in messages:
            await peer.send(message)
        check_reply(sent, await peer.receive(2 * len(sent)))
        await assert_still_open(peer)


@run_async
async def test_trickled_bytes_each_their_own_chunk(server_under_test: ServerUnderTest) -> None:
    # Each byte goes only after the previous reply arrived, so each is a chunk; 25
    # bytes, more than one chunk's worth, still come back as 25 chunks.
    async with connected(server_under_test) as peer:
        for byte in sample(25, seed=25):
            await peer.send(bytes([byte]))
            assert await peer.receive(2) == bytes([byte, byte])
        assert check_reply(bytes(peer.sent), bytes(peer.received)) == [1] * 25
        await assert_still_open(peer)


CONNECTIONS = 200
# Connections opened at once before each proves it was accepted: below the listen
# backlog (128 for asyncio and Tornado), so no SYN is dropped and retried a second later.
OPEN_WAVE = 50


@run_async
async def test_200_concurrent_connections(server_under_test: ServerUnderTest) -> None:
    async def open_one(index: int) -> Peer:
        peer = await Peer.connect(server_under_test.address, server_under_test.timeout)
        await peer.exchange(f"hello from {index}".encode())
        return peer

    peers: list[Peer] = []
    try:
        for start in range(0, CONNECTIONS, OPEN_WAVE):
            peers += await asyncio.gather(*(open_one(i) for i in range(start, start + OPEN_WAVE)))

        async def converse(index: int, peer: Peer) -> None:
            # Each connection its own data: a cross-talk or a loss fails check_reply.
            for turn in range(3):
                message = f"[{index}:{turn}]".encode() + sample(17 * turn + index % 50, index)
                assert await peer.exchange(message) == double_reply(one_batch_chunks(message))

        # All 200 are open now; every one talks at the same time.
        await asyncio.gather(*(converse(i, peer) for i, peer in enumerate(peers)))
    finally:
        await asyncio.gather(*(peer.close() for peer in peers))
    for peer in peers:
        check_reply(bytes(peer.sent), bytes(peer.received))


@run_async
async def test_client_reset_does_not_disturb_others(server_under_test: ServerUnderTest) -> None:
    address, timeout = server_under_test.address, server_under_test.timeout
    bystanders = [await Peer.connect(address, timeout) for _ in range(3)]
    try:
        for peer in bystanders:
            await peer.exchange(b"before the reset")
        idle = await Peer.connect(address, timeout)
        await idle.exchange(b"about to vanish")
        # One resets while idle, one in the middle of a 1 MiB reply it never reads.
        busy = await Peer.connect(address, timeout)
        await busy.send(sample(ONE_MIB, seed=2))
        idle.reset()
        busy.reset()
        for index, peer in enumerate(bystanders):
            await peer.exchange(sample(45, seed=index))
        newcomer = await Peer.connect(address, timeout)
        await newcomer.exchange(b"after the reset")
        await assert_still_open(newcomer)
        for peer in bystanders:
            await assert_still_open(peer)
    finally:
        for peer in bystanders:
            await peer.close()


# --- flow and closing ---------------------------------------------------------------


@run_async
async def test_client_sends_1_mib_before_reading(
    server_under_test: ServerUnderTest, record_property: RecordProperty
) -> None:
    # High-water mark 0: drain() returns only once every byte is in the kernel. The
    # reply (2 MiB) meanwhile piles up unread in the socket buffers, which on Linux
    # loopback hold it; the server must neither lose nor reorder any of it.
    async with connected(server_under_test) as peer:
        peer.writer.transport.set_write_buffer_limits(high=0)
        message = sample(ONE_MIB, seed=3)
        await peer.send(message)
        reply = await peer.receive(2 * len(message))
        record_batches(batch_sizes(check_reply(message, reply)), record_property)
        await assert_still_open(peer)


# 100 kB is more than the socket buffers take in one go, but the kernel still holds
# the whole reply: half_close_beyond_kernel_buffers is the one that reaches further.
@pytest.mark.parametrize("size", [0, 45, 100_000], ids=["0B", "45B", "100kB"])
@run_async
async def test_half_close_gets_every_reply(server_under_test: ServerUnderTest, size: int) -> None:
    # A client that shuts down its sending side still gets every reply, then the end
    # of stream (Tornado reads the end of stream only once its buffer is used up).
    message = sample(size, seed=size)
    async with connected(server_under_test) as peer:
        peer.write(message)
        await peer.shutdown_write()
        reply = await peer.receive_until_eof()
        check_reply(message, reply)


async def send_slowly_read(server: ServerUnderTest, message: bytes, slow_until: int) -> SlowPeer:
    """Connect a SlowPeer and send ``message``; it reads late, and slower until ``slow_until``."""
    peer = await SlowPeer.connect(server.address, server.timeout, slow_until=slow_until)
    try:
        await peer.send_all(message)
    except BaseException:
        await peer.close()
        raise
    return peer


def assert_whole(peer: SlowPeer, expected: int) -> None:
    if len(peer.received) != expected:
        how = "a reset" if peer.reset else "the end of stream"
        raise AssertionError(
            f"{how} after {len(peer.received):,} of {expected:,} reply bytes: the server "
            "dropped replies it still had queued"
        )


@run_async
async def test_half_close_beyond_kernel_buffers(
    server_under_test: ServerUnderTest, record_property: RecordProperty
) -> None:
    # 8 MiB out while a second task reads slowly through a small receive buffer, then
    # the end of stream: the server still has megabytes of replies queued in its own
    # memory when it sees the end, and must send every one of them before it closes.
    message = sample(BEYOND_BUFFERS, seed=8)
    # Slower over the first half of the reply: a server that reads as fast as bytes come
    # sees the end of stream in that stretch.
    peer = await send_slowly_read(server_under_test, message, slow_until=len(message))
    try:
        peer.shutdown_write()
        await peer.wait_eof()
    finally:
        await peer.close()
    assert_whole(peer, 2 * len(message))
    assert not peer.reset, "a reset after the whole reply, where the end of stream belongs"
    record_batches(batch_sizes(check_reply(message, bytes(peer.received))), record_property)


# ``over`` follows once this much reply is still owed: more than a server's kernel
# send buffer holds (4 MiB on Linux), so part of it still waits in the server itself.
# By then a server that reads all it can has long taken in the message's tail, and
# ``over`` arrives as a batch of its own.
OVER_OWED = 6 * MIB


@run_async
async def test_over_ends_input_beyond_kernel_buffers(
    server_under_test: ServerUnderTest, record_property: RecordProperty
) -> None:
    # The same 8 MiB, ended by ``over`` instead of a half-close: the server must send
    # every queued reply, ``overrevo`` last, and only then close.
    message = sample(BEYOND_BUFFERS, seed=9)
    sent = message + CLOSE_CHUNK
    peer = await send_slowly_read(
        server_under_test, message, slow_until=2 * len(message) - OVER_OWED
    )
    try:
        await peer.wait_received(2 * len(message) - OVER_OWED)
        await peer.send_all(CLOSE_CHUNK)
        await peer.wait_received(2 * len(sent))
        assert_whole(peer, 2 * len(sent))
        reply = bytes(peer.received)
        try:
            sizes = check_reply(sent, reply, closes=True)
        except AssertionError:
            # A server that was not reading when the tail came took ``over`` in the
            # same batch: one longer chunk, no close. Valid; end it with a half-close.
            sizes = check_reply(sent, reply)
            record_property(
                "note",
                "over came in one batch with the message's tail, so it was no chunk of its "
                "own: the server rightly did not close, and a half-close ended the scenario",
            )
            peer.shutdown_write()
        await peer.wait_eof()
    finally:
        await peer.close()
    assert_whole(peer, 2 * len(sent))
    assert not peer.reset, "a reset after the whole reply, where the end of stream belongs"
    record_batches(batch_sizes(sizes), record_property)


@run_async
async def test_server_close_is_stream_closed_for_tornado_client(
    server_under_test: ServerUnderTest,
) -> None:
    # The seed's words: whoever closes, both sides get a StreamClosedError. Seen here
    # through Tornado's own IOStream client, the one the seed used.
    StreamClosedError = pytest.importorskip("tornado.iostream").StreamClosedError
    TCPClient = pytest.importorskip("tornado.tcpclient").TCPClient
    async with asyncio.timeout(server_under_test.timeout):
        stream = await TCPClient().connect(*server_under_test.address)
        try:
            await stream.write(b"over")
            reply = await stream.read_bytes(8)
            assert reply == OVER_REPLY, f"over's reply was {reply!r}, not {OVER_REPLY!r}"
            with pytest.raises(StreamClosedError) as closed:
                await stream.read_bytes(1, partial=True)
            assert closed.value.real_error is None, "a clean end of stream, not a reset"
        finally:
            stream.close()


# --- timing, recorded for the report, never asserted -------------------------------


@run_async
async def test_round_trip_of_8_bytes(
    server_under_test: ServerUnderTest, record_property: RecordProperty
) -> None:
    # The seed's server leaves Nagle on: its second small write waits for the client's
    # delayed ACK, about 40 ms. Recorded for reports; no assertion on it.
    async with connected(server_under_test) as peer:
        median = await round_trip(peer)
    record_property("rtt_median_ms", round(median, 3))
