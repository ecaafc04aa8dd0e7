"""The seed's Tornado echo/reverse client, ported to Python 3 and current Tornado.

The reference for ``echo20-client``: the same flags, input and output, on Tornado's own
``TCPClient`` and ``IOStream``. Run it against a server::

    python tornado_client.py --port 8888                 # interactive, the seed's prompt
    python tornado_client.py -m hello -m over            # scripted
    printf 'hello\\nover\\n' | python tornado_client.py   # one message per line

It keeps the seed's flow (connect; prompt, send, show the reply; stop after ``over``) but
not its two bugs: the seed reads the reply with two ``read_bytes(20, partial=True)``
calls, which hangs when the echo and its reversal arrive together and falls out of step
on messages over 20 bytes. This client reads the whole double reply, ``2 * len(message)``
bytes, and prints the echo and the reversed text as two lines, as ``echo20-client`` does.

It needs the ``tornado`` extra (``pip install 'echo20[tornado]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable

from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

from echo20 import cli
from echo20.errors import ClientError
from echo20.netutil import format_address
from echo20.protocol import (
    ProtocolError,
    Reply,
    describe_error,
    format_bytes,
    reply_size,
    split_reply,
)

__all__ = ["exchange", "main"]

PROGRAM = "tornado-client"
# The seed's ``raw_input("Enter your input: ")``.

# Exit status for Ctrl-C, as shells report a process ended by SIGINT.
EXIT_INTERRUPTED = 130

# The loops Tornado 6 runs on here, the seed's own (asyncio's default loop) first.
LOOP_CHOICES = ("asyncio", "uvloop", "auto")


async def exchange(stream: IOStream, message: bytes, timeout: float | None) -> Reply:
    """Send one message and read its whole double reply, taken apart into chunks.

    Raises :class:`ClientError` when the server does not answer in time, closes early,
    or answers with bytes that are not the message's double reply.
    """
    await stream.write(message)
    expected = reply_size(message)
    try:
        async with asyncio.timeout(timeout):
            # Where the seed reads twice with read_bytes(20, partial=True).
            reply = await stream.read_bytes(expected)
    except TimeoutError:
        raise ClientError(f"no complete reply within {timeout:g} s") from None
    except StreamClosedError as error:
        cause = f": {describe_error(error.real_error)}" if error.real_error else ""
        raise ClientError(
            f"server closed the connection before the whole reply arrived "
            f"(expected {expected} bytes){cause}"
        ) from None
    try:
        return split_reply(message, reply)
    except ProtocolError as error:
        raise ClientError(f"invalid reply from the server: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=PROGRAM,
        description=(
            "The seed's Tornado client: send messages to an echo20 server and show each\n"
            "double reply as two lines, the echo then the reversed text. Messages come from\n"
            "-m, else from standard input (the seed's prompt when it is a terminal, one\n"
            "message per line otherwise)."
        ),
        formatter_class=cli.HelpFormatter,
    )
    cli.add_connection_arguments(parser, loop_choices=LOOP_CHOICES)
    cli.add_client_arguments(parser)
    return parser


def run_session(
    args: argparse.Namespace, runner: asyncio.Runner, messages: Iterable[bytes]
) -> None:
    """The seed's ``Trans()``: connect, then send each message and print its reply.

    The event loop runs only while a message is in flight (``runner.run`` per step, where
    the seed blocks its loop in ``raw_input``), so Ctrl-C at the prompt is a plain
    ``KeyboardInterrupt``.
    """
    where = format_address((args.host, args.port))
    try:
        stream = runner.run(TCPClient().connect(args.host, args.port, timeout=args.timeout))
    except StreamClosedError as error:
        detail = describe_error(error.real_error) if error.real_error else "connection closed"
        raise ClientError(f"cannot connect to {where}: {detail}") from None
    except TimeoutError:
        raise ClientError(
            f"cannot connect to {where}: no answer within {args.timeout:g} s"
        ) from None
    try:
        for message in messages:
            if not message:
                # The server answers nothing to nothing: the seed would wait forever.
                continue
            reply = runner.run(exchange(stream, message, args.timeout))
            print(format_bytes(reply.echo))
            print(format_bytes(reply.reversed), flush=True)
            if reply.closes:
                break
    finally:
        stream.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _, factory = cli.resolve_loop(parser, args.loop)
    messages, _ = cli.client_messages(args)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            run_session(args, runner, messages)
    except ClientError as error:
        cli.error_line(PROGRAM, str(error))
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
