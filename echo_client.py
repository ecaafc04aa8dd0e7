"""The echo/reverse client of the Tornado seed, on native asyncio: ``echo20-client``.

Run it from a checkout against a server::

    python echo_client.py --port 8888          # interactive, as the seed
    python echo_client.py -m hello -m over     # scripted

It lives in ``echo20/client.py``: for each message it reads exactly the
``2 * len(message)`` bytes of the double reply, so it never hangs or falls out of step
as the seed's client does.
"""

import sys

from echo20.client import main

if __name__ == "__main__":
    sys.exit(main())
