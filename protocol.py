"""The echo20 protocol core, as ``import protocol`` from a checkout.

The core lives in the package, ``echo20/protocol.py``: the 20-byte chunk, the double
reply, the ``over`` rule and how a client takes a reply apart, with no I/O. This module
presents it under the card's name; an installed package is imported as
``echo20.protocol``.
"""

from echo20.protocol import *  # noqa: F403
from echo20.protocol import __all__ as __all__
