"""Closing transports as a server must, and naming peers in logs and messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from typing import Any

__all__ = ["abort_with_reset", "close_gracefully", "format_address", "start_lingering_close"]

log = logging.getLogger("echoverse.netutil")

# SO_LINGER on, timeout 0: close() sends a reset and drops unsent bytes.
_LINGER_ZERO = struct.pack("ii", 1, 0)


def _is_connection_reset(error: BaseException | None) -> bool:
    """Errors that mean "the peer went away", which Tornado treats as a normal close."""
    return isinstance(error, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError))


def close_gracefully(transport: asyncio.Transport) -> None:
    """Close after the queued bytes are sent, and send the end of stream (FIN) too.

    ``close()`` alone does both on asyncio and uvloop; rloop 0.5 needs ``write_eof()``
    first, or it sends neither what is queued nor the FIN. On the wire it is the same.
    """
    if not transport.is_closing() and transport.can_write_eof():
        # A peer that has reset the connection, before the loop has told the transport,
        # makes asyncio's shutdown() fail with ENOTCONN: there is no end of stream left to
        # send, and close() must still close (and never raise a raw OSError).
        with contextlib.suppress(OSError):
            transport.write_eof()
    transport.close()


def start_lingering_close(transport: asyncio.Transport) -> bool:
    """Send the queued bytes and the FIN, but keep reading: the caller discards the input
    and closes when the peer's end of stream arrives. Returns False when that cannot be
    done (a transport that cannot half-close, such as asyncio's own TLS one, or one
    already closing): the caller just closes. The port's TLSTransport can.

    Closing a socket while the peer's bytes wait unread makes the kernel reset the
    connection, and a reset throws away replies still queued for the peer. A server
    that stops (SIGTERM) while a client is still sending must linger instead.
    """
    if transport.is_closing() or not transport.can_write_eof():
        return False
    try:
        transport.write_eof()
    except OSError:
        return False
    # Reading may be paused by backpressure; the peer's input must drain now.
    transport.resume_reading()
    return True


def abort_with_reset(transport: asyncio.Transport) -> None:
    """Close at once, dropping queued bytes, so that the peer sees a reset.

    asyncio's and uvloop's ``abort()`` drop the queued bytes but then close the socket
    normally: the peer would read a truncated reply followed by a clean end of stream.
    Linger 0 makes the close a reset (RST), which says "cut off".
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


def format_address(address: Any) -> str:
    """``host:port`` for IPv4, ``[host]:port`` for IPv6, ``unix:PATH`` for a Unix socket."""
    if isinstance(address, (tuple, list)) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(address, (str, bytes)) and address:
        return f"unix:{os.fsdecode(address)}"
    # A Unix socket's clients have no name of their own.
    return "unix client" if address in ("", b"") else "unknown"
