"""What the three echo servers share: the options, the ``--verbose`` log, memory release.

Each server is a :class:`~echo20.tcpserver.ConnectionServer` (listening, limits,
shutdown) that says what a connection is; none carries another's way of serving.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from echo20 import runtime
from echo20.protocol import EchoSession
from echo20.tcpserver import Connection, ConnectionServer

__all__ = ["MEMORY_RELEASE_DELAY", "EchoServer", "log_chunks"]

log = logging.getLogger("echo20.server")

# Seconds a server stays without connections before it hands freed memory back.
MEMORY_RELEASE_DELAY = 0.5


class EchoServer(ConnectionServer):
    """An echo20 server: for every chunk of up to 20 bytes, the chunk, then the chunk
    reversed; ``over`` closes. Subclasses say how a connection is served.

    ``verbose`` logs every chunk as the seed prints it; ``text`` answers in text mode
    (whole UTF-8 characters, reversed by character). The other keyword arguments are
    :class:`~echo20.tcpserver.ConnectionServer`'s limits.
    """

    def __init__(self, *, verbose: bool = False, text: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.verbose = verbose
        self.text = text
        self._memory_release: asyncio.TimerHandle | None = None

    def forget_connection(self, connection: Connection) -> None:
        super().forget_connection(connection)
        if not self.connections and self._memory_release is None:
            # Idle: give the memory of the last burst back to the system, once things
            # settle (a trim walks the heap: not on every disconnect of a busy server).
            self._memory_release = asyncio.get_running_loop().call_later(
                MEMORY_RELEASE_DELAY, self._release_memory_if_idle
            )

    def _release_memory_if_idle(self) -> None:
        self._memory_release = None
        if not self.connections:
            runtime.release_free_memory()


def log_chunks(session: EchoSession, batch: bytes, address: Any) -> None:
    """``--verbose``: each chunk and its peer, as the seed prints them."""
    for chunk in session.chunks(batch):
        log.info("%r from %s", chunk, address)
