"""``python -m echo20.conformance``: the same as ``echo20-conformance``."""

import sys

from echo20.conformance import main

sys.exit(main())
