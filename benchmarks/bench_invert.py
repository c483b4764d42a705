"""The fused InvMM inversion step benchmark (same as ``memlens bench invert``).

python benchmarks/bench_invert.py [--smoke] [--backend cpu|cuda|triton] [--json PATH]
"""

from __future__ import annotations

import sys

from memlens.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "invert", *sys.argv[1:]]))
