"""`python -m vqgen` is the same as the `vqgen` console script."""

import sys

from vqgen.pipeline.cli import main

sys.exit(main())
