"""``python -m echoverse.bench``: the same as ``echoverse-bench``."""

import sys

from echoverse.bench.main import main

sys.exit(main())
