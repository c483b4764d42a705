"""Flow-field similarity benchmark (same as ``memlens bench flow``).

python benchmarks/bench_flow.py [--smoke] [--json bench-results/flow.json] [--n 64] [--t 15]
                                [--h 256] [--w 256] [--dtypes float32 float16]
"""

from __future__ import annotations

import argparse
import sys

from memlens.bench.flow import run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="a small, quick configuration")
    p.add_argument("--json", metavar="PATH", help="write results and machine metadata here")
    for name in ("n", "t", "h", "w"):
        p.add_argument(f"--{name}", type=int, help=f"override the size {name.upper()}")
    p.add_argument("--dtypes", nargs="+", choices=["float32", "float16"])
    args = p.parse_args(argv)
    sizes = {k: getattr(args, k) for k in ("n", "t", "h", "w", "dtypes")}
    run(smoke=args.smoke, json_path=args.json, overrides=sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
