"""``python -m echo20.bench``: the same as ``echo20-bench``."""

import sys

from echo20.bench.cli import main

sys.exit(main())
