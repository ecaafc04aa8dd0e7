"""``python -m echoverse.conformance``: the same as ``echoverse-conformance``."""

import sys

from echoverse.conformance.runner import main

sys.exit(main())
