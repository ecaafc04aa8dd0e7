"""echo20 clients that each break the protocol in one way: the client scenarios must fail them.

Apart from its ``--defect``, each is a correct client: it sends each non-empty line of
its standard input without the line ending, reads the ``2 * len(message)`` bytes the
message earns, checks them and prints the echo and the reversed halves; it stops after
``over``'s reply, says on stderr what went wrong and exits 1 when the server fails it::

    printf 'hello\\nover\\n' | python tests/conformance/broken_clients.py \\
        --defect sends-after-over --port 8888

* ``sends-after-over``: after ``over``'s reply, sends the rest of its input anyway
  (expecting no answer), then closes and exits 0;
* ``says-over-at-end``: when its input ends without ``over``, sends ``over`` to take
  its leave, and closes without waiting for the reply;
* ``trusts-the-reply``: takes a reply apart as if cut 20, 20, ..., the rest, checking
  nothing, so it prints garbage as a reply and misreads a server that cut elsewhere;
* ``swallows-errors``: whatever goes wrong, exits 0 without a word;
* ``goes-on-after-fault``: reports a reply that is no double reply and goes on with the
  next message (a timeout or a closed connection still ends it);
* ``stops-at-empty-line``: takes an empty line for the end of its input;
* ``fails-after-over``: reads on after ``over``'s reply and takes the server's close
  for an error (exit 1);
* ``connection-per-message``: opens a new connection for every message;
* ``drops-undecodable-bytes``: reads its input as UTF-8 text, dropping the bytes that
  do not decode, so it sends fewer bytes than the line has.
"""

from __future__ import annotations

import argparse
import socket
import sys

from echo20.protocol import ProtocolError, format_bytes, split_reply

CHUNK_SIZE = 20
CLOSE_CHUNK = b"over"

DEFECTS = (
    "sends-after-over",
    "says-over-at-end",
    "trusts-the-reply",
    "swallows-errors",
    "goes-on-after-fault",
    "stops-at-empty-line",
    "fails-after-over",
    "connection-per-message",
    "drops-undecodable-bytes",
)


class Failure(Exception):
    """What went wrong, for the one line on stderr."""


class SkippedReply(Failure):
    """A reply that is no double reply (goes-on-after-fault reports it and goes on)."""


def messages_of(lines: list[bytes], defect: str) -> list[bytes]:
    """The messages to send, in order: every non-empty line without its line ending."""
    messages = []
    for line in lines:
        message = line.rstrip(b"\r\n")
        if defect == "drops-undecodable-bytes":
            message = message.decode("utf-8", "ignore").encode()
        if not message:
            if defect == "stops-at-empty-line":
                break
            continue
        messages.append(message)
    return messages


def connect(port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as error:
        raise Failure(f"cannot connect to 127.0.0.1:{port}: {error}") from None


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    try:
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise Failure(f"the server closed after {len(data)} of {size} reply bytes")
            data += chunk
    except TimeoutError:
        raise Failure(f"no whole reply in time ({len(data)} of {size} bytes)") from None
    except OSError as error:
        raise Failure(f"the connection broke: {error}") from None
    return bytes(data)


def take_apart(message: bytes, reply: bytes, defect: str) -> tuple[bytes, bytes, bool]:
    """(echo, reversed halves, whether the last chunk was ``over``)."""
    if defect == "trusts-the-reply":
        # Assumes the cut 20, 20, ..., the rest, and checks nothing.
        echo, reversed_, start, last = bytearray(), bytearray(), 0, b""
        for offset in range(0, len(message), CHUNK_SIZE):
            size = min(CHUNK_SIZE, len(message) - offset)
            last = reply[start : start + size]
            echo += last
            reversed_ += reply[start + size : start + 2 * size]
            start += 2 * size
        return bytes(echo), bytes(reversed_), last == CLOSE_CHUNK
    try:
        taken = split_reply(message, reply)
    except ProtocolError as error:
        raise SkippedReply(f"invalid reply: {error}") from None
    return taken.echo, taken.reversed, taken.closes


def session(port: int, timeout: float, messages: list[bytes], defect: str) -> list[str]:
    """Talk to the server; the problems reported on the way (goes-on-after-fault)."""
    reported = []
    sock = connect(port, timeout)
    try:
        for index, message in enumerate(messages):
            if defect == "connection-per-message" and index:
                sock.close()
                sock = connect(port, timeout)
            try:
                sock.sendall(message)
            except OSError as error:
                raise Failure(f"the connection broke: {error}") from None
            try:
                echo, reversed_, closes = take_apart(
                    message, receive_exactly(sock, 2 * len(message)), defect
                )
            except SkippedReply as problem:
                if defect != "goes-on-after-fault":
                    raise
                reported.append(str(problem))
                continue
            print(format_bytes(echo), flush=True)
            print(format_bytes(reversed_), flush=True)
            if closes:
                after_over(sock, messages[index + 1 :], defect)
                break
        else:
            if defect == "says-over-at-end":
                sock.sendall(CLOSE_CHUNK)
    finally:
        sock.close()
    return reported


def after_over(sock: socket.socket, rest: list[bytes], defect: str) -> None:
    """What the defects do once ``over`` has been answered (a correct client: nothing)."""
    if defect == "sends-after-over":
        sock.sendall(b"".join(rest))
    elif defect == "fails-after-over":
        receive_exactly(sock, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defect", choices=DEFECTS, required=True)
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for a reply")
    args = parser.parse_args(argv)
    messages = messages_of(sys.stdin.buffer.readlines(), args.defect)
    try:
        reported = session(args.port, args.timeout, messages, args.defect)
    except Failure as error:
        if args.defect == "swallows-errors":
            return 0
        print(f"broken-client: {error}", file=sys.stderr)
        return 1
    for problem in reported:
        print(f"broken-client: {problem}", file=sys.stderr)
    return 1 if reported else 0


if __name__ == "__main__":
    sys.exit(main())
