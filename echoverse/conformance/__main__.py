"""``python -m echoverse.conformance``: the same as ``echoverse-conformance``."""

import sys

from echoverse.conformance import main

sys.exit(main())
