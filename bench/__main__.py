"""`python -m bench [--quick]`: every benchmark, each in its own process (so peak memory is its own)."""

from __future__ import annotations

import subprocess
import sys

CASES = [
    ["bench.stage1", "--size", "28"],
    ["bench.stage1", "--size", "32"],
    ["bench.stage2", "--grid", "7"],
    ["bench.stage2", "--grid", "8"],
    ["bench.sampling"],
    ["bench.folders"],
]


def main() -> int:
    extra = sys.argv[1:]
    failed = 0
    for case in CASES:
        result = subprocess.run([sys.executable, "-m", *case, *extra])
        failed += result.returncode != 0
    return int(failed > 0)


if __name__ == "__main__":
    sys.exit(main())
