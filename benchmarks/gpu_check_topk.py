"""One-shot GPU check of the Triton top-k kernels: correctness at scale, error bound, timings.

Run from the repository root on a CUDA machine (a few minutes on an H100; try --small first)::

    python benchmarks/gpu_check_topk.py            # full
    python benchmarks/gpu_check_topk.py --small    # quick smoke run

(``TRITON_INTERPRET=1 python benchmarks/gpu_check_topk.py --tiny`` runs the same logic on the
CPU.) Prints one JSON object per line; a failed check raises at the end with the list.
Timings: median of CUDA-event-timed runs after a warm-up, pairs/s = nq * nr / seconds, and
the same-run torch baseline (``torch.mm`` + ``torch.topk`` over bounded chunks).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from memlens.bench.timing import timed

try:
    from memlens.kernels import topk as tk
except ImportError:  # running from a source checkout
    from kernels import topk as tk

FAILURES: list[str] = []


def emit(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


def check(ok: bool, what: str) -> None:
    emit(check=what, ok=bool(ok))
    if not ok:
        FAILURES.append(what)


def exact64(q: torch.Tensor, r: torch.Tensor, normalize: bool) -> torch.Tensor:
    """float64 scores, in row chunks (nq x nr fp64 must fit: callers keep it small)."""
    out = torch.empty(q.shape[0], r.shape[0], dtype=torch.float64, device=q.device)
    step = 1 << 16
    for s in range(0, r.shape[0], step):
        rc = r[s : s + step].double()
        if normalize:
            rc = rc / rc.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out[:, s : s + step] = q.double() @ rc.T
    return out


def check_topk(name: str, s: torch.Tensor, i: torch.Tensor, s64: torch.Tensor, k: int) -> None:
    d_tol = 1e-5
    got = s64.gather(1, i)
    kth = torch.topk(s64, k, dim=1).values[:, -1:]
    uniq = bool((torch.sort(i, dim=1).values.diff(dim=1) != 0).all()) if k > 1 else True
    ties = (s[:, :-1] == s[:, 1:]) & (i[:, 1:] < i[:, :-1])
    check(
        bool((s.double() - got).abs().max() <= d_tol)
        and bool((s[:, :-1] >= s[:, 1:]).all())
        and not bool(ties.any())
        and uniq
        and bool((got >= kth - 2 * d_tol).all()),
        name,
    )


def torch_baseline(q: torch.Tensor, r: torch.Tensor, k: int) -> None:
    step = max(k, (128 << 20) // (4 * q.shape[0]))
    best = None
    for s in range(0, r.shape[0], step):
        sc = (q.to(r.dtype) @ r[s : s + step].T).float()
        v, ix = torch.topk(sc, min(k, sc.shape[1]), dim=1)
        ix += s
        if best is not None:
            v = torch.cat([best[0], v], 1)
            ix = torch.cat([best[1], ix], 1)
            v, j = torch.topk(v, k, dim=1)
            ix = ix.gather(1, j)
        best = (v, ix)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    dev = (
        "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
    )
    g = torch.Generator(device=dev).manual_seed(0)
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        emit(device=p.name, sms=p.multi_processor_count, torch=torch.__version__)
    d = 512 if not args.tiny else 40
    nq_c, nr_c = (256, 100_003) if not (args.small or args.tiny) else (64, 20_011)
    if args.tiny:
        nq_c, nr_c = 3, 700

    # 1. exact top-k at scale vs float64 (fused k <= 256 and streaming k > 256)
    q = torch.nn.functional.normalize(torch.randn(nq_c, d, device=dev, generator=g), dim=1)
    base = torch.randn(nr_c, d + 8, device=dev, generator=g)
    for rdtype, view in ((torch.float32, "strided"), (torch.bfloat16, "contiguous")):
        r = base[:, 4 : 4 + d] if view == "strided" else base[:, :d].to(rdtype).contiguous()
        r = r.to(rdtype)
        s64 = exact64(q, r, True)
        for k in (1, 10, 100, 256, 300, 1000):
            if k > nr_c:
                continue
            s, i = tk.topk_exact(q, r, k, True)
            check_topk(f"exact k={k} {rdtype} {view}", s, i, s64, k)
        # 2. candidates: the bound over every ref (kc = nr: streaming) and the fused path
        for prec in ("bf16", "int8"):
            nr_all = min(nr_c, 20_011)
            a, ci, err = tk.topk_candidates(q, r[:nr_all], nr_all, True, prec)
            dev_all = (a.double() - s64[:, :nr_all].gather(1, ci)).abs().max(dim=1).values
            check(bool((dev_all <= err.double()).all()), f"bound {prec} {rdtype} all refs")
            emit(bound=prec, err_max=float(err.max()), observed_max=float(dev_all.max()))
            a, ci, err = tk.topk_candidates(q, r, 128, True, prec)
            dv = (a.double() - s64.gather(1, ci)).abs().max(dim=1).values
            check(bool((dv <= err.double()).all()), f"bound {prec} {rdtype} fused kc=128")
        del s64

    # 3. timings (same run, same device)
    if args.tiny:
        nq, nr = 16, 2048
    elif args.small:
        nq, nr = 1024, 100_000
    else:
        nq, nr = 4096, 200_000
    reps = 2 if not args.tiny else 1
    q = torch.nn.functional.normalize(torch.randn(nq, d, device=dev, generator=g), dim=1)
    rb = torch.nn.functional.normalize(torch.randn(nr, d, device=dev, generator=g), dim=1)
    rb = rb.to(torch.bfloat16)
    flop = 2.0 * nq * nr * d
    for k in (10, 100, 1000):
        benches: list[tuple[str, Callable[[], object]]] = [
            ("triton bf16 candidates", partial(tk.topk_candidates, q, rb, k, False, "bf16")),
            ("triton int8 candidates", partial(tk.topk_candidates, q, rb, k, False, "int8")),
            ("torch bf16 mm+topk", partial(torch_baseline, q, rb, k)),
        ]
        for name, fn in benches:
            t = timed(fn, dev, reps)
            emit(
                bench=name, nq=nq, nr=nr, d=d, k=k, seconds=t, pairs_per_s=nq * nr / t,
                tflops=flop / t / 1e12,
            )  # fmt: skip
    nq_e = nq // 4
    for k in (10, 100):
        t = timed(partial(tk.topk_exact, q[:nq_e], rb, k, False), dev, reps)
        emit(bench="triton fp32 exact", nq=nq_e, nr=nr, d=d, k=k, seconds=t,
             pairs_per_s=nq_e * nr / t)  # fmt: skip
    if FAILURES:
        raise SystemExit(f"FAILED: {FAILURES}")
    emit(all_checks="ok")


if __name__ == "__main__":
    main()
