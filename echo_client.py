"""The echo/reverse client of the Tornado seed, on native asyncio, without its two bugs.

Run it against a server::

    python echo_client.py --port 8888                 # interactive, as the seed
    python echo_client.py -m hello -m over            # scripted
    printf 'hello\\nover\\n' | python echo_client.py   # one message per line

For each message it prints two lines, the echo and the reversed text. Unlike the seed's
client, it reads exactly the ``2 * len(message)`` bytes the message earns, so it neither
hangs when both replies arrive in one segment nor falls out of step on messages over 20
bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import ssl
import sys
from collections.abc import Iterable

from echoverse import cli
from echoverse.errors import ClientError
from echoverse.iostream import IOStream
from echoverse.netutil import format_address
from echoverse.tcpclient import TCPClient
from protocol import (
    ProtocolError,
    Reply,
    StreamClosedError,
    describe_error,
    format_bytes,
    reply_size,
    split_reply,
)

__all__ = ["exchange", "main"]

PROGRAM = "echoverse-client"

# Exit statuses as shells report a process ended by SIGINT (Ctrl-C) and by SIGPIPE.
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


async def exchange(stream: IOStream, message: bytes, timeout: float | None) -> Reply:
    """Send one message and read its whole double reply, taken apart into chunks.

    Raises :class:`ClientError` when the server does not answer in time, closes early,
    or answers with bytes that are not the message's double reply.
    """
    if stream.buffered_size:
        raise ClientError(
            f"the server sent {stream.buffered_size} bytes more than the last reply was owed"
        )
    expected = reply_size(message)
    try:
        async with asyncio.timeout(timeout):
            # The write belongs in here too: it raises StreamClosedError when the server
            # hung up while we waited for input, and it waits while a server that does
            # not read leaves the send buffer full.
            await stream.write(message)
            reply = await stream.read_bytes(expected)
    except TimeoutError:
        raise ClientError(
            f"no complete reply within {timeout:g} s "
            f"({stream.buffered_size} of {expected} bytes arrived)"
        ) from None
    except StreamClosedError as error:
        cause = f": {describe_error(error.real_error)}" if error.real_error else ""
        raise ClientError(
            f"server closed the connection before the whole reply arrived "
            f"({stream.buffered_size} of {expected} bytes){cause}"
        ) from None
    try:
        return split_reply(message, reply)
    except ProtocolError as error:
        raise ClientError(f"invalid reply from the server: {error}") from None


async def close_stream(stream: IOStream, timeout: float | None) -> None:
    """Close, giving queued bytes ``timeout`` seconds to leave before a reset."""
    stream.close()
    try:
        async with asyncio.timeout(timeout):
            await stream.wait_closed()
    except TimeoutError:
        stream.abort()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=(
            "Send messages to an echo20 server and show each double reply as two lines:\n"
            "the echo, then the reversed text. Messages come from -m, else from standard\n"
            "input (a prompt when it is a terminal, one message per line otherwise)."
        ),
        formatter_class=cli.HelpFormatter,
    )
    cli.add_connection_arguments(parser)
    parser.add_argument(
        "--unix", metavar="PATH", help="connect to this Unix socket instead of --host/--port"
    )
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true", help="connect over TLS, verifying the server")
    tls.add_argument("--cafile", help="trust the CA certificates in this PEM file (implies --tls)")
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="TLS without checking the server's certificate (implies --tls; tests only)",
    )
    cli.add_client_arguments(parser)
    return parser


def client_tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context for --tls/--cafile/--insecure (either of the last two implies --tls)."""
    if not (args.tls or args.cafile or args.insecure):
        return None
    try:
        context = ssl.create_default_context(cafile=args.cafile)
    except (OSError, ssl.SSLError) as error:
        raise ClientError(f"cannot load --cafile {args.cafile}: {describe_error(error)}") from None
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def run_session(
    args: argparse.Namespace,
    runner: asyncio.Runner,
    messages: Iterable[bytes],
    *,
    interactive: bool,
) -> None:
    """Connect, then for each message send it and print its reply; stop after ``over``.

    At the prompt the event loop runs only while a message is in flight (``runner.run``
    per step), so reading the keyboard never blocks it and Ctrl-C at the prompt is a
    plain ``KeyboardInterrupt``. Messages from ``-m`` or a pipe run in one
    ``runner.run``: starting the loop per message would cost more than the exchange.
    """
    where = format_address(args.unix or (args.host, args.port))
    tls = client_tls_context(args)
    client = TCPClient()
    if args.unix:
        connecting = client.connect_unix(args.unix, timeout=args.timeout, ssl=tls)
    else:
        connecting = client.connect(args.host, args.port, timeout=args.timeout, ssl=tls)
    try:
        stream = runner.run(connecting)
    except StreamClosedError as error:
        detail = describe_error(error.real_error) if error.real_error else "connection closed"
        raise ClientError(f"cannot connect to {where}: {detail}") from None
    try:
        if interactive:
            for message in messages:
                if message and show(runner.run(exchange(stream, message, args.timeout))):
                    break
        else:
            runner.run(exchange_all(stream, messages, args.timeout))
    finally:
        runner.run(close_stream(stream, args.timeout))


async def exchange_all(stream: IOStream, messages: Iterable[bytes], timeout: float) -> None:
    """Every message in turn, each reply shown before the next message goes out."""
    for message in messages:
        if message and show(await exchange(stream, message, timeout)):
            return


def show(reply: Reply) -> bool:
    """Print a reply as two lines; True when it was the last (the server closes).

    Python line-buffers a terminal and block-buffers a pipe, so a person sees each
    reply at once and a program reading a pipe gets them without a write per message.
    """
    print(format_bytes(reply.echo))
    print(format_bytes(reply.reversed))
    return reply.closes


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _, factory = cli.resolve_loop(parser, args.loop)
    # Replies are only shown: a character the terminal's encoding lacks is shown as an
    # escape, as undecodable bytes are, instead of ending in a UnicodeEncodeError.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    messages, interactive = cli.client_messages(args)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            run_session(args, runner, messages, interactive=interactive)
    except ClientError as error:
        cli.error_line(PROGRAM, str(error))
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output stopped (``| head``): end quietly, as a process killed
        # by SIGPIPE would, and keep Python from reporting the failed final flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return 0


if __name__ == "__main__":
    sys.exit(main())
