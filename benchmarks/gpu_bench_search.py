"""GPU table of ``memlens.cosine_topk`` (issue 3 §5 on a GPU; targets G1, G3, G4 of
performance.md): every GPU backend and precision against torch ``mm`` + ``topk`` at the same
precision, and the card's measured dense bf16 GEMM rate (same run, same card).

    python3 benchmarks/gpu_bench_search.py --json $OUT/search-gpu.json
    TRITON_INTERPRET=1 python benchmarks/gpu_bench_search.py --tiny   # the logic, on the CPU

Each row: median of event-timed calls after a warm-up (the first call compiles), pairs/s =
nq * nr / seconds, and the fraction of the measured bf16 GEMM rate, counting 2 * d flops per
pair. Recall against the float32 exact answer of the same call is checked on a query subset.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

import memlens
from memlens.bench.machine import metadata
from memlens.bench.timing import timed

ROWS: list[dict[str, Any]] = []
FAILURES: list[str] = []


def emit(**kw: Any) -> None:
    ROWS.append(kw)
    print(json.dumps(kw), flush=True)


def torch_mm_topk(q: torch.Tensor, r: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline users write: chunked ``q @ r.T`` in r's dtype, ``topk`` per chunk, merge."""
    step = max(k, (256 << 20) // (4 * q.shape[0]))  # 256 MB of fp32 scores per chunk
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    qc = q.to(r.dtype)
    for s in range(0, r.shape[0], step):
        sc = (qc @ r[s : s + step].T).float()
        v, ix = torch.topk(sc, min(k, sc.shape[1]), dim=1)
        ix += s
        if best is not None:
            v, j = torch.topk(torch.cat([best[0], v], 1), k, dim=1)
            ix = torch.cat([best[1], ix], 1).gather(1, j)
        best = (v, ix)
    assert best is not None
    return best


def gemm_rate(dev: str, n: int, reps: int) -> float:
    """Dense bf16 GEMM flop/s on random data (the card's practical peak)."""
    a = torch.randn(n, n, device=dev).to(torch.bfloat16)
    b = torch.randn(n, n, device=dev).to(torch.bfloat16)
    return 2.0 * n**3 / timed(lambda: a @ b, dev, reps, warmups=3)


def recall(s_got: torch.Tensor, s_ref: torch.Tensor, tie: float = 1e-6) -> float:
    """Fraction of returned scores at or above the exact k-th score (ties within ``tie``: fp32
    sums in another order may swap near-equal neighbours)."""
    return float((s_got >= s_ref[:, -1:] - tie).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="interpreter-sized (CPU)")
    ap.add_argument("--json")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--big", type=int, default=10_000_000, help="nr of the G1 rows (0: skip)")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 10, 100, 1000, 4096])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    ap.add_argument("--backends", nargs="+", default=["cuda", "triton"])
    ap.add_argument("--no-torch", action="store_true", help="skip the torch baselines")
    args = ap.parse_args()
    gpu = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
    dev = "cuda" if gpu else "cpu"
    meta = metadata()
    if gpu:
        p = torch.cuda.get_device_properties(0)
        meta["gpu"] = {"name": p.name, "sms": p.multi_processor_count, "mem": p.total_memory}
    emit(meta=meta)
    d, nq = (512, 4096) if not args.tiny else (32, 8)
    peak = gemm_rate(dev, 8192 if not args.tiny else 256, args.reps)
    emit(bench="torch bf16 gemm", flops=peak)
    backends = args.backends if gpu else ["triton"]
    g = torch.Generator(device=dev).manual_seed(0)
    sizes = [(1_000_000, tuple(args.ks))] if not args.tiny else [(3000, (1, 10, 100))]
    if args.big and not args.tiny:
        sizes.append((args.big, (10, 100, 1024)))
    q = torch.nn.functional.normalize(torch.randn(nq, d, device=dev, generator=g), dim=1)
    for nr, ks in sizes:
        r32 = torch.nn.functional.normalize(torch.randn(nr, d, device=dev, generator=g), dim=1)
        rb = r32.to(torch.bfloat16)
        if nr > 1_000_000:
            del r32  # the G1 rows use bf16 refs only (fp32 would not add information)
        for k in ks:
            for prec in args.precisions:
                if nr > 1_000_000 and prec == "fp32":
                    continue
                refs = r32 if prec == "fp32" else rb
                ref_s = None
                for be in backends:
                    fn: Callable[[], Any] = partial(
                        memlens.cosine_topk, q, refs, k, precision=prec, backend=be
                    )
                    try:
                        t = timed(fn, dev, args.reps)
                    except Exception as e:  # noqa: BLE001 - record and go on: one table, one run
                        emit(bench=f"{be} {prec}", nr=nr, k=k, error=repr(e)[:300])
                        FAILURES.append(f"{be} {prec} nr={nr} k={k}")
                        continue
                    got = fn()[0]
                    if ref_s is None:  # exact fp32 answer on the same refs, a query subset
                        ref_s = memlens.cosine_topk(q[:64], refs, k, backend=be)[0]
                    rc = recall(got[:64], ref_s)
                    if rc < 1.0:
                        FAILURES.append(f"recall {be} {prec} nr={nr} k={k}: {rc}")
                    emit(bench=f"{be} {prec}", nr=nr, d=d, nq=nq, k=k, seconds=t,
                         pairs_per_s=nq * nr / t, frac_gemm=2 * d * nq * nr / t / peak,
                         recall=rc)  # fmt: skip
            for dt in () if args.no_torch else (torch.float32, torch.bfloat16):
                if nr > 1_000_000 and dt == torch.float32:
                    continue
                refs = r32 if dt == torch.float32 else rb
                t = timed(partial(torch_mm_topk, q, refs, k), dev, args.reps)
                emit(bench=f"torch mm+topk {str(dt)[6:]}", nr=nr, d=d, nq=nq, k=k, seconds=t,
                     pairs_per_s=nq * nr / t, frac_gemm=2 * d * nq * nr / t / peak)  # fmt: skip
        del rb
        if dev == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(ROWS, f, indent=1)
    table = [r for r in ROWS if "pairs_per_s" in r]
    print(f"{'bench':<22}{'nr':>10}{'k':>6}{'pairs/s':>11}{'%gemm':>7}")
    for r in table:
        print(f"{r['bench']:<22}{r['nr']:>10}{r['k']:>6}{r['pairs_per_s']:>11.3g}"
              f"{100 * r['frac_gemm']:>6.1f}%")  # fmt: skip
    if FAILURES:
        raise SystemExit(f"FAILED: {FAILURES}")
    print("all ok")


if __name__ == "__main__":
    main()
