"""``--impl iostream``: the seed's ``handle_stream`` on the port of Tornado's IOStream."""

from __future__ import annotations

from typing import Any

from echo20.iostream import IOStream
from echo20.protocol import EchoSession
from echo20.servers.base import EchoServer, log_chunks
from echo20.tcpserver import TCPServer

__all__ = ["IOStreamServer"]


class IOStreamServer(EchoServer, TCPServer):
    """The seed's server as Tornado code: one ``handle_stream`` task per connection.

    Example::

        server = IOStreamServer()
        await server.listen(0, "127.0.0.1")
        port = server.sockets[0].getsockname()[1]
    """

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        # The seed's loop. It writes the chunk and its reversal separately; here the
        # session's reply is both, in one write, which leaves in the same send as the
        # seed's two would with writes coalesced per loop turn. The session says how much
        # to read (20 bytes; a whole batch in text mode). StreamClosedError ends the loop
        # in ConnectionServer.run_handler.
        session = EchoSession(text=self.text)
        read, write, verbose = stream.read_bytes, stream.write, self.verbose
        size = session.read_size
        while not session.closing:
            batch = await read(size, partial=True)
            if verbose:
                log_chunks(session, batch, address)
            await write(session.answer(batch))
        stream.close()
