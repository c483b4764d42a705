"""The ``memlens`` command line. User errors print one line and exit with status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from memlens._dispatch import BackendUnavailableError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"memlens: error: {message}\n")


def _positive(text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1 or value != float(text):
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="memlens", description="Measure memorization in diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="microbenchmarks against the best baselines, same run")
    bsub = bench.add_subparsers(dest="family", required=True)
    search = bsub.add_parser("search", help="exact cosine top-k vs faiss, numpy and torch")
    search.add_argument("--smoke", action="store_true", help="a small, quick configuration")
    search.add_argument("--json", metavar="PATH", help="write results and machine metadata here")
    search.add_argument("--d", type=_positive, help="embedding dimension (default 512)")
    search.add_argument("--nq", type=_positive, help="number of queries")
    search.add_argument("--nr", type=_positive, nargs="+", help="reference set sizes")
    search.add_argument("--k", type=_positive, nargs="+", help="k values")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "bench" and args.family == "search":
            from memlens.bench import search

            sizes = {"d": args.d, "nq": args.nq, "nr": args.nr, "k": args.k}
            search.run(smoke=args.smoke, json_path=args.json, overrides=sizes)
            return 0
    except (ValueError, TypeError, OSError, BackendUnavailableError) as e:
        print(f"memlens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memlens: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
