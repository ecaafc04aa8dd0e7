"""The echo/reverse server of the Tornado seed, on native asyncio: ``echo20-server``.

Run it from a checkout::

    python echo_server.py --port 8888
    python echo_client.py -m hello -m over --port 8888

The default handler (``--impl streams``) lives in ``echo20/servers/streams.py``,
``StreamsServer.handle_connection``: the seed's loop on ``asyncio.start_server``'s
streams, read up to 20 bytes, write the chunk and its reversal, ``drain()``, and
``over`` closes. ``echo20/server.py`` holds the command line this script runs.
"""

import sys

from echo20.server import main

if __name__ == "__main__":
    sys.exit(main())
