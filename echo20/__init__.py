"""echo20: the Tornado TCP echo/reverse example on native asyncio.

Everything lives in this package: the I/O-free core (``echo20.protocol``), the three
servers (``echo20.servers``), the client, the Tornado port, the benchmark and the
conformance suite. A checkout also has ``echo_server.py``, ``echo_client.py`` and
``protocol.py`` at its top, which only present the package. Importing the package
imports nothing else, so ``import echo20.protocol`` stays free of asyncio.
"""

__version__ = "0.2.0"
