"""The seed's own client, ported as is: a documented failure against every server.

The seed's ``tcp_client.py`` reads each double reply with two ``read_bytes(20,
partial=True)`` calls, as if the echo and its reversal always arrived as two separate
reads of at most 20 bytes. They need not:

* when both halves arrive in one segment (any server that sets ``TCP_NODELAY`` or writes
  them together, as the port does), the first read takes the whole reply and the second
  waits for bytes the server never sends: the client hangs on its first message;
* a message over 20 bytes earns more than two chunks' worth of reply, so the client
  shows only part of it and reads the rest as the reply to its next message.

Against Tornado's own server, whose second write waits for a delayed ACK (Nagle), the
first message usually gets through; the 26-byte one never does. So the scenario is
``xfail(strict=True)`` on every target: if it ever passes, the suite says so. Clients
migrating from the seed should read ``2 * len(message)`` bytes instead, as
``echo_client.py`` and ``tornado_client.py`` do.

The hang is detected, not waited out: the server speaks only in reply, so a read issued
when every byte the client is owed has been read can never complete. ``TIMEOUT`` still
bounds the whole run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

# The seed's client is a Tornado client: without Tornado there is nothing to run.
pytest.importorskip("tornado")

from conformance_targets import RunningServer
from support import TIMEOUT
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

SEED_CLIENT_FLAWS = (
    "the seed's client reads each reply with two read_bytes(20, partial=True): it hangs "
    "when the echo and its reversal arrive in one segment, and falls out of step on "
    "messages over 20 bytes"
)

# Short, then 26 bytes (more than a chunk), then the seed's way out.
SCRIPT = ["hello", "twenty-six bytes of input!", "over"]


class SeedClientFailure(AssertionError):
    """The seed's client did what SEED_CLIENT_FLAWS says (the expected failure)."""


class SeedClientStuck(SeedClientFailure):
    """A read that can never complete: the server owes the client nothing more."""


class OwedBytes:
    """The seed's stream, counting the reply bytes the server still owes.

    A pass-through for the two calls the seed makes; it changes no data and no order.
    """

    def __init__(self, stream: IOStream) -> None:
        self.stream = stream
        self.owed = 0
        self.last_read = b""

    async def write(self, data: bytes) -> None:
        self.owed += 2 * len(data)
        await self.stream.write(data)

    async def read_bytes(self, num_bytes: int, partial: bool = False) -> bytes:
        if self.owed == 0:
            raise SeedClientStuck("read_bytes() with nothing more owed: it would wait forever")
        data = await self.stream.read_bytes(num_bytes, partial=partial)
        self.owed -= len(data)
        self.last_read = data
        return data


async def seed_trans(stream: OwedBytes, raw_input: Callable[[str], str], show: list[bytes]) -> None:
    """The seed's ``Trans()``, ported as is to Python 3 (bytes on the wire).

    Left out: the connect (the caller's, to wrap the stream) and ``print TCPClient``, a
    leftover that printed the class on every loop. ``show`` collects what it prints.
    """
    try:
        while True:
            DATA = raw_input("Enter your input: ")
            await stream.write(DATA.encode())
            back = await stream.read_bytes(20, partial=True)
            msg = await stream.read_bytes(20, partial=True)
            show.append(msg)
            show.append(back)
            if DATA == "over":
                break
    except StreamClosedError:
        pass


def judge(script: list[str], shown: list[bytes], stuck_after: bytes | None) -> str | None:
    """What went wrong, message by message; None if the seed's client showed every reply.

    The seed prints the second read (meant to be the reversal) and then the first (the
    echo): for each message, its reversal and the message itself.
    """
    for index, text in enumerate(script):
        message = text.encode()
        pair = shown[2 * index : 2 * index + 2]
        if len(pair) < 2:
            if stuck_after is not None:
                return (
                    f"hangs on message {index + 1} ({text!r}): the first read took "
                    f"{stuck_after!r}, the second would wait forever"
                )
            return f"stopped before message {index + 1} ({text!r})"
        if pair != [message[::-1], message]:
            return (
                f"out of step on message {index + 1} ({len(message)} bytes): showed "
                f"{pair[0]!r} / {pair[1]!r}"
            )
    return None


@pytest.mark.xfail(strict=True, raises=SeedClientFailure, reason=SEED_CLIENT_FLAWS)
async def test_seed_client_as_is(
    server: RunningServer, record_property: Callable[[str, object], None]
) -> None:
    inputs = iter(SCRIPT)
    shown: list[bytes] = []
    stuck_after: bytes | None = None
    tornado_stream = await TCPClient().connect(*server.address)
    stream = OwedBytes(tornado_stream)
    try:
        async with asyncio.timeout(TIMEOUT):
            await seed_trans(stream, lambda _prompt: next(inputs), shown)
    except SeedClientStuck:
        stuck_after = stream.last_read
    except TimeoutError:
        raise SeedClientFailure(f"no progress within {TIMEOUT:g} s") from None
    finally:
        tornado_stream.close()
    failure = judge(SCRIPT, shown, stuck_after)
    record_property("seed_client", failure or "showed every reply")
    if failure is not None:
        raise SeedClientFailure(failure)
