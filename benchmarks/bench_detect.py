"""First-step detection throughput vs the full pipeline on the same tiny model, same run.

python benchmarks/bench_detect.py [--kinds sd t2v] [--prompts 32] [--generations 4]
                                  [--batch 8] [--threads 1] [--repeats 3] [--json PATH]

For each tiny in-process pipeline (memlens.diffusion.tiny_pipeline, TINY_CALL_KWARGS sizes):

- ``detect first``: ``detect_magnitude(steps="first")`` (one batched cond+uncond denoiser call
  at x_T, no loop, no VAE decode) — what ``memlens detect`` runs by default;
- ``detect all``: ``detect_magnitude(steps="all")`` (the whole sampling loop observed, latent
  output, no decode);
- ``pipeline``: the pipeline's own call for the same prompts x generations, with its default
  step count and the decode to pixels (``output_type="np"``): what generating costs;
- ``pipeline+observe``: the same call inside ``memlens.diffusion.observe`` (hook overhead).

All at the pipeline's default step count (50). Prompts/s is prompts (each with ``generations``
samples) per second of wall time, the best of ``--repeats``; ratios are against ``pipeline``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch

from memlens.diffusion import TINY_CALL_KWARGS, observe, tiny_pipeline
from memlens.metrics.magnitude import detect_magnitude


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_kind(
    kind: str, prompts: list[str], generations: int, batch: int, repeats: int
) -> dict[str, Any]:
    pipe = tiny_pipeline(kind)
    kw = TINY_CALL_KWARGS[kind]

    def detect(steps: str) -> Callable[[], object]:
        return lambda: detect_magnitude(pipe, prompts, steps=steps, generations=generations,  # type: ignore[arg-type]
                                        batch_size=batch, call_kwargs=kw)  # fmt: skip

    def pipeline(observed: bool) -> Callable[[], object]:
        def run() -> None:
            for s in range(0, len(prompts), batch):
                rows = [p for p in prompts[s : s + batch] for _ in range(generations)]
                gens = [torch.Generator().manual_seed(i) for i in range(len(rows))]
                if observed:
                    with observe(pipe):
                        pipe(prompt=rows, generator=gens, output_type="np", **kw)
                else:
                    pipe(prompt=rows, generator=gens, output_type="np", **kw)

        return run

    cases = {
        "detect first": detect("first"),
        "detect all": detect("all"),
        "pipeline": pipeline(False),
        "pipeline+observe": pipeline(True),
    }
    detect("first")()  # warm-up (first-call allocations, lazy imports)
    seconds = {name: _best(fn, repeats) for name, fn in cases.items()}
    base = seconds["pipeline"]
    return {
        name: {"seconds": s, "prompts_per_s": len(prompts) / s, "x_pipeline": base / s}
        for name, s in seconds.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", default=["sd", "t2v"])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prompts = [f"prompt number {i}: a photo of thing {i * 7 % 13}" for i in range(args.prompts)]
    results: dict[str, Any] = {}
    for kind in args.kinds:
        results[kind] = bench_kind(kind, prompts, args.generations, args.batch, args.repeats)
        for name, r in results[kind].items():
            print(f"{kind:>10}  {name:<17} {r['prompts_per_s']:>9.2f} prompts/s  "
                  f"x{r['x_pipeline']:.2f} vs pipeline  ({r['seconds']:.3f} s)")  # fmt: skip
    if args.json:
        from memlens.bench.machine import metadata

        settings = {k: getattr(args, k) for k in ("prompts", "generations", "batch", "threads")}
        with open(args.json, "w") as f:
            json.dump({"machine": metadata(), "settings": settings, "results": results}, f,
                      indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
