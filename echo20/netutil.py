"""Sockets as a server needs them: binding, inherited sockets, closing transports, naming peers.

Tornado keeps ``bind_sockets`` and its backlog in its ``netutil`` module too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from typing import Any

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_KEEPALIVE",
    "KEEPALIVE_PROBES",
    "abort_with_reset",
    "bind_sockets",
    "close_gracefully",
    "enable_keepalive",
    "format_address",
    "inherited_sockets",
    "is_connection_reset",
    "reserve_port",
    "start_lingering_close",
]

log = logging.getLogger("echo20.netutil")

# SO_LINGER on, timeout 0: close() sends a reset and drops unsent bytes.
_LINGER_ZERO = struct.pack("ii", 1, 0)

# Seconds a connection may be silent before the kernel probes it (--keepalive): a client
# whose reset was lost answers the first probe with a new one (docs/hardening.md).
DEFAULT_KEEPALIVE = 1
# Probes left unanswered before the kernel gives a connection up: a host that is still
# there answers at once, so only one that stays silent this many intervals is dropped.
KEEPALIVE_PROBES = 60

# Tornado's listen backlog (tornado.netutil._DEFAULT_BACKLOG): the length of the queue of
# connections the kernel completes before the server accepts them.
DEFAULT_BACKLOG = 128


def is_connection_reset(error: BaseException | None) -> bool:
    """Errors that mean "the peer went away", which Tornado treats as a normal close."""
    return isinstance(error, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError))


def bind_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address of ``host`` (Tornado's ``bind_sockets``).

    As ``TCPServer.listen`` does: a name with several addresses (``localhost``) gets a
    socket for each, and with port 0 they all get the port chosen for the first.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, str(address[0])) in seen:
                continue
            seen.add((family, str(address[0])))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # Each address family gets its own socket, as asyncio's create_server does.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            sock.listen(backlog)
            port = port or sock.getsockname()[1]
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def enable_keepalive(sock: Any, idle: int) -> None:
    """TCP keepalive on ``sock``: a probe once a connection has been silent ``idle``
    seconds, then every ``idle`` seconds, given up after :data:`KEEPALIVE_PROBES`.

    Set on a listening socket, every connection it accepts inherits it (Linux copies
    the options to the accepted socket): no system call per connection. The point is the
    client that is gone without the server hearing of it. A reset is sent once and
    never again; when the kernel drops it (the loopback queue overflows when CPUs are
    saturated, ``net.core.netdev_max_backlog``), the server's socket stays established
    and its handler waits for bytes that will not come. The first probe draws a new
    reset from the client's host, and the connection closes as after any reset.
    ``sock`` is a socket or an event loop's stand-in for one; not TCP: nothing to do.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    # TCP_KEEPIDLE is Linux's name; macOS calls it TCP_KEEPALIVE.
    keepidle = getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if keepidle is not None:
            sock.setsockopt(socket.IPPROTO_TCP, keepidle, idle)
        if hasattr(socket, "TCP_KEEPINTVL"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    except OSError as error:
        # Keepalive is a safety net, not a reason to refuse to serve.
        log.warning("cannot enable TCP keepalive: %s", error)


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) a SO_REUSEPORT socket, so ``--port 0`` names one port.

    For ``reuse_port``: the socket stays open while the workers run, so the port stays
    ours between worker restarts; a socket that does not listen is never handed
    connections.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def inherited_sockets(fds: list[int]) -> list[socket.socket]:
    """Socket objects for listening sockets inherited as file descriptors (``--fd``).

    Raises ValueError, with one line saying which and why, for a descriptor that is not
    an open, listening stream socket; descriptors that were not sockets stay untouched.
    """
    sockets: list[socket.socket] = []
    try:
        for fd in fds:
            try:
                sock = socket.socket(fileno=fd)
            except OSError as error:
                reason = os.strerror(error.errno) if error.errno else str(error)
                raise ValueError(f"file descriptor {fd}: {reason.lower()}") from None
            sockets.append(sock)
            if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN
            ):
                raise ValueError(f"file descriptor {fd} is not a listening stream socket")
    except ValueError:
        for sock in sockets:
            sock.detach()
        raise
    return sockets


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
