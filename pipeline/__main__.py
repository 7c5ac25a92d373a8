"""`python -m pipeline` is the same as the `vqgen` console script."""

import sys

from pipeline.cli import main

sys.exit(main())
