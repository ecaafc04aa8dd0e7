"""Round trips in one process, client and server together: a harness to count instructions.

Timing on a shared 2-core machine drifts by 10-20 %; instruction counts do not. Run the
harness twice under callgrind with different counts and divide the difference, which
cancels the start-up cost::

    for n in 500 1500; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            .venv/bin/python tools/roundtrips.py --impl protocol --loop uvloop --size 200 -n $n
    done
    # instructions per round trip = (second "Collected" - first) / 1000

The figure includes the client (asyncio's own streams, the same for every server), so
compare implementations or commits with it, not with the C server. ``--impl floor`` is
the benchmark's ``floor`` server: the least a Python server on that loop can do.
``--tls``: over TLS, with a certificate made for the run (the servers' TLS is the
port's ``TLSTransport``, the floor's the loop's own; the client's is asyncio's).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import tempfile
from pathlib import Path

# Run from a checkout: the card's modules sit one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from echo20 import cli
from echo20.bench.certs import SERVER_NAME
from echo20.bench.servers import floor_protocol
from echo20.servers import IMPLEMENTATIONS


def tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server and a client context for a certificate made now."""
    from echo20.bench.certs import make_tls_files

    files = make_tls_files(directory)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(files.certfile, files.keyfile)
    client = ssl.create_default_context(cafile=str(files.cafile))
    return server, client


async def round_trips(impl: str, size: int, count: int, tls: bool) -> None:
    """``count`` closed-loop round trips of ``size`` bytes against ``impl``."""
    server_tls: ssl.SSLContext | None = None
    client_tls: ssl.SSLContext | None = None
    if tls:
        with tempfile.TemporaryDirectory() as scratch:
            server_tls, client_tls = tls_contexts(Path(scratch))
    if impl == "floor":
        # The benchmark's floor: the least a Python server on this loop can do.
        loop = asyncio.get_running_loop()
        floor = await loop.create_server(floor_protocol(loop), "127.0.0.1", 0, ssl=server_tls)
        port = floor.sockets[0].getsockname()[1]
    else:
        server = IMPLEMENTATIONS[impl]()
        await server.listen(0, "127.0.0.1", ssl=server_tls)
        port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_tls, server_hostname=SERVER_NAME if tls else None
    )
    # Distinct letters, no "over" chunk: every round trip is answered in full.
    message = (bytes(range(97, 117)) * (size // 20 + 1))[:size]
    for _ in range(count):
        writer.write(message)
        await reader.readexactly(2 * size)
    writer.close()
    if impl == "floor":
        floor.close()
    else:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    implementations = (*IMPLEMENTATIONS, "floor")
    parser.add_argument("--impl", choices=implementations, default="protocol")
    parser.add_argument("--loop", default="uvloop", help="an installed loop of the table")
    parser.add_argument("--size", type=cli.positive_int, default=200, help="message bytes")
    parser.add_argument("-n", type=cli.positive_int, default=1000, help="round trips")
    parser.add_argument("--tls", action="store_true", help="over TLS")
    args = parser.parse_args(argv)
    _, factory = cli.resolve_loop(parser, args.loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(round_trips(args.impl, args.size, args.n, args.tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
