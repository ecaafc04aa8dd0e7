"""The ``echo20-client`` command: the Tornado seed's client on native asyncio, without its two bugs.

Run it against a server (``python echo_client.py`` in a checkout is the same)::

    echo20-client --port 8888                   # interactive, as the seed
    echo20-client -m hello -m over              # scripted
    printf 'hello\\nover\\n' | echo20-client   # one message per line

For each message it prints two lines, the echo and the reversed text. Unlike the seed's
client, it reads exactly the ``2 * len(message)`` bytes the message earns, so it neither
hangs when both replies arrive in one segment nor falls out of step on messages over 20
bytes.

It connects with ``asyncio.open_connection``'s own lines (``echo20.streams``), with a
StreamReader that hands out a reply received before the server reset the connection,
and reads each reply with ``readexactly(2 * len(message))``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ssl
import sys
from collections.abc import Iterable

from echo20 import cli
from echo20.errors import ClientError
from echo20.netutil import format_address
from echo20.protocol import (
    ProtocolError,
    Reply,
    StreamClosedError,
    describe_error,
    format_bytes,
    reply_size,
    split_reply,
)
from echo20.streams import (
    StreamReader,
    closed_stream_errors,
    open_connection,
    open_unix_connection,
)

__all__ = ["exchange", "main"]

PROGRAM = "echo20-client"

# The exit status shells report for a process ended by SIGINT (Ctrl-C).
EXIT_INTERRUPTED = 130


async def exchange(
    reader: StreamReader, writer: asyncio.StreamWriter, message: bytes, timeout: float | None
) -> Reply:
    """Send one message and read its whole double reply, taken apart into chunks.

    The client knows the reply's size (``2 * len(message)``), so it reads exactly that:
    it never waits for a reply that is not coming and never falls out of step, which
    the seed's two ``read_bytes(20, partial=True)`` calls do. Raises
    :class:`ClientError` when the server does not answer in time, closes early, or
    answers with bytes that are not the message's double reply.
    """
    if reader.buffered_size:
        raise ClientError(
            f"the server sent {reader.buffered_size} bytes more than the last reply was owed"
        )
    expected = reply_size(message)
    try:
        async with asyncio.timeout(timeout):
            with closed_stream_errors():
                if writer.transport.is_closing():
                    raise StreamClosedError(real_error=reader.exception())
                # No drain(): the transport keeps what the socket cannot take yet while
                # readexactly() reads the replies, so a large message cannot deadlock
                # against a server whose replies fill our receive buffer.
                writer.write(message)
                reply = await reader.readexactly(expected)
    except TimeoutError:
        raise ClientError(
            f"no complete reply within {timeout:g} s "
            f"({reader.buffered_size} of {expected} bytes arrived)"
        ) from None
    except StreamClosedError as error:
        cause = f": {describe_error(error.real_error)}" if error.real_error else ""
        # At the end of stream readexactly() hands the bytes it took over in the error.
        incomplete = error.__cause__
        arrived = (
            len(incomplete.partial)
            if isinstance(incomplete, asyncio.IncompleteReadError)
            else reader.buffered_size
        )
        raise ClientError(
            f"server closed the connection before the whole reply arrived "
            f"({arrived} of {expected} bytes){cause}"
        ) from None
    try:
        return split_reply(message, reply)
    except ProtocolError as error:
        raise ClientError(f"invalid reply from the server: {error}") from None


async def close_connection(writer: asyncio.StreamWriter, timeout: float | None) -> None:
    """Close, giving queued bytes ``timeout`` seconds to leave before a reset."""
    writer.close()
    try:
        async with asyncio.timeout(timeout):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except OSError:
        pass  # the server had already reset the connection: nothing is left to close


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
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


async def connect(
    args: argparse.Namespace,
) -> tuple[StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` (or the Unix socket's), as a ClientError when it fails."""
    where = format_address(args.unix or (args.host, args.port))
    tls = client_tls_context(args)
    try:
        async with asyncio.timeout(args.timeout):
            if args.unix:
                return await open_unix_connection(args.unix, ssl=tls)
            return await open_connection(args.host, args.port, ssl=tls)
    except TimeoutError:
        raise ClientError(
            f"cannot connect to {where}: no answer within {args.timeout:g} s"
        ) from None
    except OSError as error:
        raise ClientError(f"cannot connect to {where}: {describe_error(error)}") from None


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
    reader, writer = runner.run(connect(args))
    try:
        if interactive:
            for message in messages:
                if message and show(runner.run(exchange(reader, writer, message, args.timeout))):
                    break
        else:
            runner.run(exchange_all(reader, writer, messages, args.timeout))
    finally:
        runner.run(close_connection(writer, args.timeout))


async def exchange_all(
    reader: StreamReader, writer: asyncio.StreamWriter, messages: Iterable[bytes], timeout: float
) -> None:
    """Every message in turn, each reply shown before the next message goes out."""
    for message in messages:
        if message and show(await exchange(reader, writer, message, timeout)):
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
        return cli.reader_went_away()
    return 0


if __name__ == "__main__":
    sys.exit(main())
