"""Exact cosine top-k search benchmark (same as ``memlens bench search``).

python benchmarks/bench_search.py [--smoke] [--json bench-results/search.json]
"""

from __future__ import annotations

import sys

from memlens.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "search", *sys.argv[1:]]))
