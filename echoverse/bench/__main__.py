"""``python -m echoverse.bench``: the same as ``echoverse-bench``."""

import sys

from echoverse.bench.cli import main

sys.exit(main())
