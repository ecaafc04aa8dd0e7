"""The three echo20 servers, one class each, named after its ``--impl`` id.

* ``streams`` (the default): :class:`StreamsServer`, the seed's handler on
  ``asyncio.start_server``'s StreamReader and StreamWriter.
* ``iostream``: :class:`IOStreamServer`, the seed's ``handle_stream`` on the port of
  Tornado's IOStream, for people moving Tornado code.
* ``protocol``: :class:`ProtocolServer`, the fast path: an asyncio protocol per
  connection, one write per received batch.

All three drive the one core (``echo20.protocol.EchoSession``), put the same bytes on
the wire, and share listening, limits and shutdown (``echo20.tcpserver.ConnectionServer``).
"""

from __future__ import annotations

from echo20.servers.base import EchoServer
from echo20.servers.iostream import IOStreamServer
from echo20.servers.protocol import ProtocolServer
from echo20.servers.streams import StreamsServer

__all__ = [
    "DEFAULT_IMPLEMENTATION",
    "IMPLEMENTATIONS",
    "EchoServer",
    "IOStreamServer",
    "ProtocolServer",
    "StreamsServer",
]

# ``--impl`` choices: the same words label the conformance targets and the benchmark.
IMPLEMENTATIONS: dict[str, type[EchoServer]] = {
    "streams": StreamsServer,
    "iostream": IOStreamServer,
    "protocol": ProtocolServer,
}

DEFAULT_IMPLEMENTATION = "streams"
