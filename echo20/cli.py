"""Command-line pieces shared by every echo20 script: flags, logging, messages.

The servers (``echo20-server``, the Tornado reference's ``tornado_server``) and clients
(``echo20-client``, ``tornado_client``) take the same ``--host``/``--port``/``--loop``/
``--log-level`` flags, print the same ready line and stop the same way, so users can swap
one for the other in a command line.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import logging
import os
import re
import socket
import ssl
import sys
from collections.abc import Iterable, Iterator
from typing import NamedTuple, NoReturn

from echo20 import loops
from echo20.errors import describe_error
from echo20.netutil import format_address

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ArgumentParser",
    "ReadyLine",
    "add_connection_arguments",
    "add_logging_arguments",
    "configure_logging",
    "error_line",
    "parse_ready_line",
    "ready_line",
]

# The seed listens on 8888, on every interface; echo20 listens on loopback unless
# told otherwise (uvicorn's convention), because an echo server is an open relay.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8888

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with a bad command line reported in one line.

    argparse prints its whole usage block before the error, ten lines for the server,
    which buries the one that matters; every other failure of these commands is one
    line on stderr, so this one is too. ``--help`` still shows the usage.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help that shows defaults and keeps the description's line breaks.

    Defaults that say nothing (None, a switch's own value when it is not given, such as
    True for ``--no-pin``) are left out; such flags say what happens without them in
    their own words.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def port_number(text: str) -> int:
    """argparse type for a TCP port: 0 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {port}")
    return port


def positive_float(text: str) -> float:
    """argparse type for a duration in seconds, greater than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type for seconds that may be 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type for a count of at least 1."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type for a count of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def add_connection_arguments(
    parser: argparse.ArgumentParser, *, loop_choices: tuple[str, ...] | None = None
) -> None:
    """``--host``, ``--port`` and ``--loop``, as every script spells them."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on or connect to")
    parser.add_argument(
        "--port", type=port_number, default=DEFAULT_PORT, help="TCP port (0: pick a free one)"
    )
    choices = loop_choices or (loops.AUTO, *loops.LOOP_NAMES)
    parser.add_argument(
        "--loop",
        choices=choices,
        default=choices[0],
        help="event loop (auto: uvloop when installed, else asyncio)",
    )


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``-v/--verbose``."""
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="log level on stderr"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log every chunk and its peer, as the seed prints them",
    )


def configure_logging(level: str) -> None:
    """Log to stderr, one line per record; stdout stays for the ready line and replies."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def resolve_loop(parser: argparse.ArgumentParser, name: str) -> tuple[str, loops.LoopFactory]:
    """The concrete loop name and its factory, or exit 2 with argparse's one-line error."""
    try:
        concrete = loops.resolve(name)
        return concrete, loops.loop_factory(concrete)
    except loops.LoopUnavailableError as error:
        parser.error(str(error))


def server_tls_context(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> ssl.SSLContext | None:
    """The TLS context for --certfile/--keyfile, or exit 2 with one line if they are bad."""
    if args.certfile is None:
        if args.keyfile is not None:
            parser.error("--keyfile needs --certfile")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.certfile, args.keyfile)
    except (OSError, ssl.SSLError) as error:
        parser.error(f"cannot load the certificate: {describe_error(error)}")
    return context


def ready_line(address: object, loop_name: str) -> str:
    """``echo20 listening on HOST:PORT (loop: NAME)``: what scripts and tests wait for."""
    return f"echo20 listening on {format_address(address)} (loop: {loop_name})"


# What ready_line writes: HOST:PORT, [IPv6]:PORT, or unix:PATH, then the loop's name.
_READY_LINE = re.compile(
    r"^echo20 listening on (?:unix:(?P<path>.+)|"
    r"(?:\[(?P<host6>[^\]]+)\]|(?P<host>[^:\s]+)):(?P<port>\d+))"
    r" \(loop: (?P<loop>[\w-]+)\)$"
)


class ReadyLine(NamedTuple):
    """A ready line taken apart. For a Unix socket ``host`` is its path and ``port`` 0."""

    host: str
    port: int
    loop: str


def parse_ready_line(line: str) -> ReadyLine | None:
    """The parts of a line :func:`ready_line` wrote, or None for any other line."""
    match = _READY_LINE.match(line.strip())
    if match is None:
        return None
    if match["path"] is not None:
        return ReadyLine(match["path"], 0, match["loop"])
    return ReadyLine(match["host6"] or match["host"], int(match["port"]), match["loop"])


def listen_error_line(program: str, where: str, error: OSError) -> None:
    """``program: cannot listen on WHERE: address already in use``, and nothing more.

    asyncio words a failed bind as "error while attempting to bind on address (...)",
    repeating the address; the system's own short text for the error number says it.
    """
    reason = os.strerror(error.errno) if error.errno else str(error)
    if isinstance(error, socket.gaierror):
        reason = error.strerror or str(error)
    error_line(program, f"cannot listen on {where}: {reason.lower()}")


# The exit status shells report for a process ended by SIGPIPE.
EXIT_BROKEN_PIPE = 141


def reader_went_away() -> int:
    """After a BrokenPipeError on stdout (``| head``): end quietly, as a process killed by
    SIGPIPE would, and keep Python from reporting the failed final flush."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def error_line(program: str, message: str) -> None:
    """One line on stderr, ``program: message``: the only output of a failure."""
    print(f"{program}: {message}", file=sys.stderr, flush=True)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # in sys.modules as None: imports of it fail
        return False


def missing_extra(program: str, extra: str, modules: Iterable[str]) -> bool:
    """True, after one line on stderr, when a module that ``extra`` installs is missing.

    For commands whose packages are an optional extra: without it the user gets
    ``pip install 'echo20[extra]'``, not an ImportError's traceback.
    """
    missing = [name for name in modules if not _importable(name)]
    if missing:
        error_line(
            program,
            f"needs {', '.join(missing)}: pip install 'echo20[{extra}]'",
        )
    return bool(missing)


# --- the clients' messages ------------------------------------------------------------

# The seed's prompt (``raw_input("Enter your input: ")``).
PROMPT = "Enter your input: "


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """``--timeout`` and ``-m/--message``, as both clients spell them."""
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        help="seconds to wait for the connection and for each whole reply",
    )
    parser.add_argument(
        "-m",
        "--message",
        action="append",
        dest="messages",
        metavar="TEXT",
        help="a message to send (repeatable); 'over' asks the server to close",
    )


def client_messages(args: argparse.Namespace) -> tuple[Iterable[bytes], bool]:
    """The messages to send and whether a person types them at the prompt.

    From ``-m``; else from standard input: the seed's prompt when it is a terminal, one
    message per line otherwise.
    """
    if args.messages is not None:
        return (os.fsencode(text) for text in args.messages), False
    if sys.stdin.isatty():
        return interactive_messages(), True
    return piped_messages(sys.stdin.buffer), False


def interactive_messages() -> Iterator[bytes]:
    """Lines typed at the seed's prompt, until Ctrl-D; the bytes as typed.

    Python decodes a terminal strictly (outside the C locale), so typed bytes that are
    not valid in its encoding would end the session with a UnicodeDecodeError. They are
    decoded with ``surrogateescape`` and encoded back the same way: the server gets them
    unchanged, as it does from a pipe.
    """
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="surrogateescape")
    encoding = sys.stdin.encoding or "utf-8"
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            print()
            return
        yield line.encode(encoding, "surrogateescape")


def piped_messages(lines: Iterable[bytes]) -> Iterator[bytes]:
    """One message per input line, without its line ending; read lazily, line by line."""
    for line in lines:
        yield line.rstrip(b"\r\n")
