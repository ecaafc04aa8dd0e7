"""echoverse: the Tornado TCP echo/reverse example on native asyncio.

The scripts ``echo_server.py`` and ``echo_client.py`` and the I/O-free core
``protocol.py`` sit beside this package; everything else lives in it. Importing the
package imports nothing else, so ``import protocol`` stays free of asyncio.
"""

__version__ = "0.2.0"
