"""Flow-field similarity benchmark: memlens vs a torch eager composite and a memory probe.

flow_similarity streams N candidate flow fields (N, T, H, W, 2) past one generated field and
reduces them to a few sums: it reads each input byte once and does ~40 flops per pixel, so the
ceiling is the machine's memory bandwidth. Every number below is measured in this process on the
same data, in the same run:

- a memory-bandwidth probe: torch.sum (all threads) and numpy.sum (one thread) over a float32
  array larger than the caches, and a torch copy, once per run (printed, and the denominator of
  the torch baseline's ``vs_probe``). A memlens CPU row's ``vs_probe`` is the median over its
  calls of the call's read rate over a torch.sum probe run right after it (this kernel only
  reads its input): the machine's bandwidth moves with other tenants' load within minutes, so
  only rates measured at the same moments compare;
- a torch eager composite of the same statistics (float32 math, vectorized over candidates in
  chunks; the best of a few chunk sizes, tried in the same run): the baseline of ``vs_torch``;
- memlens backends, each where available here (cpu; cuda and triton on a GPU).

Absolute numbers move with the machine's load; the ratios are the result.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import memlens
from memlens import _dispatch
from memlens.bench.machine import metadata
from memlens.bench.timing import median_ratio, samples, times_with_probe
from memlens.reference.flow import COS_EPS, FIELD_STATS, PAIR_STATS, FlowStats, grid
from memlens.reference.flow import flow_similarity as reference

OP = "flow_similarity"


@dataclass
class Config:
    n: int  # candidates
    t: int  # frame pairs
    h: int
    w: int
    dtypes: list[str]
    mu_min: float = 0.5
    repeat: int = 5
    probe_mb: int = 1024  # size of the bandwidth probe's array (>> last-level cache)
    torch_chunks: list[int] = field(default_factory=lambda: [1, 2, 4])


FULL = Config(n=64, t=15, h=256, w=256, dtypes=["float32", "float16"])
SMOKE = Config(
    n=8, t=3, h=64, w=64, dtypes=["float32", "float16"], repeat=3, probe_mb=128, torch_chunks=[8]
)


@dataclass
class Row:
    method: str
    dtype: str
    device: str
    seconds: float  # median of `repeat` runs
    best_seconds: float
    gb_per_s: float  # input bytes read (gen + cands) per second, at the median
    vs_probe: float | None = None  # gb_per_s / same-run memory read bandwidth (CPU methods)
    vs_torch: float | None = None  # speed-up over the torch eager composite
    max_err: float | None = None  # vs the float64 reference on a subset (see max_rel_err)
    extra: dict[str, Any] = field(default_factory=dict)


def memory_probe(mb: int, repeat: int) -> dict[str, float]:
    """Read (sum) and copy bandwidth in GB/s over a float32 array of `mb` MiB."""
    a = np.ones(mb * 2**20 // 4, dtype=np.float32)
    t = torch.from_numpy(a)
    out = torch.empty_like(t)
    nbytes = a.nbytes
    res = {
        "torch_sum": nbytes / min(samples(lambda: t.sum(), "cpu", repeat)) / 1e9,
        "numpy_sum": nbytes / min(samples(lambda: a.sum(), "cpu", repeat)) / 1e9,
        # read + write of the array
        "torch_copy": 2 * nbytes / min(samples(lambda: out.copy_(t), "cpu", repeat)) / 1e9,
    }
    res["read"] = max(res["torch_sum"], res["numpy_sum"])
    return res


def torch_eager(gen: torch.Tensor, cands: torch.Tensor, mu_min: float, chunk: int) -> FlowStats:
    """The PAIR and FIELD statistics as a competent torch eager composite: float32 math,
    vectorized over a chunk of candidates (bounding the temporaries), planar copies of the
    interleaved (x, y) fields so that every elementwise op runs on contiguous memory, in-place
    ops where a temporary can be reused, x/y-weighted sums as matrix-vector products. No
    affine residuals (the benchmark scores raw fields)."""
    n, t, h, w = cands.shape[:4]
    y, x = grid(h, w, torch.float32, gen.device)
    xv, yv = x[0], y[:, 0]
    gx, gy = gen.float().permute(3, 0, 1, 2).contiguous()
    gm = torch.sqrt(gx * gx + gy * gy)
    g_in = gm > mu_min

    def sums(v: torch.Tensor) -> torch.Tensor:
        return v.sum(dim=(-2, -1))

    def field_stats(
        ux: torch.Tensor, uy: torch.Tensor, sq: torch.Tensor, mag: torch.Tensor
    ) -> torch.Tensor:
        rows_x, rows_y = ux.sum(-1), uy.sum(-1)
        return torch.stack(
            [sums(mag), sums(sq), rows_x.sum(-1), (ux @ xv).sum(-1), rows_x @ yv,
             rows_y.sum(-1), (uy @ xv).sum(-1), rows_y @ yv],
            dim=-1,
        )  # fmt: skip

    pair = torch.empty((n, t, len(PAIR_STATS)), dtype=torch.float64, device=gen.device)
    cand_field = torch.empty((n, t, len(FIELD_STATS)), dtype=torch.float64, device=gen.device)
    for s0 in range(0, n, chunk):
        rx, ry = cands[s0 : s0 + chunk].float().permute(4, 0, 1, 2, 3).contiguous()
        sq = (rx * rx).addcmul_(ry, ry)
        rm = sq.sqrt()
        m = (rm > mu_min).logical_and_(g_in).float()
        c = (rx * gx).addcmul_(ry, gy).div_((rm * gm).add_(COS_EPS))
        ratio = torch.minimum(rm, gm).div_(torch.maximum(rm, gm).clamp_min_(1e-30))
        mc, mr = c.mul_(m), ratio.mul_(m)  # m * m == m: mc * mr is the masked c * ratio
        pair[s0 : s0 + chunk] = torch.stack([sums(v) for v in (m, mc, mr, mc * mr)], -1).double()
        cand_field[s0 : s0 + chunk] = field_stats(rx, ry, sq, rm).double()
    gen_field = field_stats(gx, gy, gm * gm, gm).double()
    return FlowStats(pair=pair, gen_field=gen_field, cand_field=cand_field, height=h, width=w)


def max_rel_err(got: FlowStats, ref: FlowStats) -> float:
    """Largest error of `got` on the (candidates, frames) of `ref` (the float64 reference on a
    leading subset), per statistic scale: count for PAIR, the sum itself for mag/sq, mag_sum for
    the linear FIELD sums (as in tests/test_flow_sim.py)."""
    n, t = ref.pair.shape[:2]
    pa, pb = got.pair[:n, :t].cpu(), ref.pair
    per_pixel = pb[..., :1].clamp_min(1)
    d = ((pa - pb).abs() / per_pixel).max().item()
    for fa, fb in (
        (got.cand_field[:n, :t].cpu(), ref.cand_field),
        (got.gen_field[:t].cpu(), ref.gen_field),
    ):
        own = fb[..., :2].clamp_min(1e-30)
        d = max(d, ((fa[..., :2] - fb[..., :2]).abs() / own).max().item())
        d = max(d, ((fa[..., 2:] - fb[..., 2:]).abs() / own[..., :1]).max().item())
    return float(d)


@dataclass
class Method:
    name: str
    device: str
    backend: str | None  # memlens backend, or None for the torch eager composite


def methods() -> list[Method]:
    """The contenders; GPU rows (another engineer's cuda/triton backends) join where available."""
    return [
        Method("memlens cpu", "cpu", "cpu"),
        Method("memlens cuda", "cuda", "cuda"),
        Method("memlens triton", "cuda", "triton"),
    ]


def unavailable(m: Method) -> str | None:
    if m.device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    if m.backend is not None and m.backend not in _dispatch.available(OP, m.device):
        spec = _dispatch.registered(OP).get(m.backend)
        return spec.why_unavailable(m.device) if spec is not None else "not registered"
    return None


def run(
    smoke: bool,
    json_path: str | None,
    log: Callable[[str], None] = print,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cfg = Config(**asdict(SMOKE if smoke else FULL))
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(cfg, key, value)
    meta = metadata()
    simd = meta["memlens"]["cpu"].get("simd", "n/a")
    log(
        f"memlens bench flow  N={cfg.n} T={cfg.t} {cfg.h}x{cfg.w} mu_min={cfg.mu_min}"
        f"  cpu={meta['cpu']}  cores={meta['cores']}  simd={simd}  torch threads={torch.get_num_threads()}"
    )
    probe = memory_probe(cfg.probe_mb, cfg.repeat)
    log(
        f"memory probe ({cfg.probe_mb} MiB): read {probe['read']:.1f} GB/s (torch.sum "
        f"{probe['torch_sum']:.1f}, numpy.sum {probe['numpy_sum']:.1f}), torch copy "
        f"{probe['torch_copy']:.1f} GB/s read+write"
    )
    g = torch.Generator().manual_seed(0)
    gen32 = torch.randn(cfg.t, cfg.h, cfg.w, 2, generator=g)
    cands32 = torch.randn(cfg.n, cfg.t, cfg.h, cfg.w, 2, generator=g)
    cands32[: max(1, cfg.n // 8)] += gen32  # a few correlated candidates, as after a content top-K

    rows: list[Row] = []
    for dname in cfg.dtypes:
        dtype = getattr(torch, dname)
        gen, cands = gen32.to(dtype), cands32.to(dtype)
        nbytes = (gen.numel() + cands.numel()) * gen.element_size()
        log(f"\n{dname}: {nbytes / 1e6:.0f} MB of input")

        # Baseline: the best candidate chunk of the torch eager composite, measured here.
        eager = {
            chunk: samples(
                functools.partial(torch_eager, gen, cands, cfg.mu_min, chunk), "cpu", cfg.repeat
            )
            for chunk in cfg.torch_chunks
        }
        best_chunk = min(eager, key=lambda c: statistics.median(eager[c]))
        t_eager = statistics.median(eager[best_chunk])
        # Accuracy: the float64 reference on a leading subset (the full input would need GBs).
        ref = reference(gen[:2], cands[:4, :2], mu_min=cfg.mu_min)
        base = Row(
            "torch eager (f32 composite)", dname, "cpu", t_eager, min(eager[best_chunk]),
            nbytes / t_eager / 1e9,
            extra={"chunk": best_chunk, "chunks_tried": {str(c): statistics.median(v) for c, v in eager.items()}},
        )  # fmt: skip
        base.vs_probe = base.gb_per_s / probe["read"]
        base.vs_torch = 1.0
        base.max_err = max_rel_err(torch_eager(gen, cands[:4], cfg.mu_min, best_chunk), ref)
        rows.append(base)
        log(
            f"  {base.method:<30} {t_eager * 1e3:8.2f} ms  {base.gb_per_s:6.1f} GB/s  "
            f"{base.vs_probe:5.0%} of probe  (chunk {best_chunk}, max err {base.max_err:.1e})"
        )
        for m in methods():
            why = unavailable(m)
            if why is not None:
                log(f"  {m.name:<30} skipped: {why}")
                continue
            g_dev, c_dev = gen.to(m.device), cands.to(m.device)

            call = functools.partial(
                memlens.flow_similarity, g_dev, c_dev, mu_min=cfg.mu_min, backend=m.backend,
                check_finite=False,
            )  # fmt: skip

            if m.device == "cpu":  # each call against a probe read right after it
                times, reads = times_with_probe(call, "cpu", cfg.repeat, cfg.probe_mb)
            else:
                times, reads = samples(call, m.device, cfg.repeat), []
            secs = statistics.median(times)
            row = Row(m.name, dname, m.device, secs, min(times), nbytes / secs / 1e9)
            row.vs_torch = t_eager / secs
            if reads:
                row.vs_probe = median_ratio(nbytes, times, reads)
                row.extra["probe_read_gbps"] = reads
                row.extra["seconds_each"] = times
            row.max_err = max_rel_err(call(), ref)
            rows.append(row)
            log(
                f"  {m.name:<30} {secs * 1e3:8.2f} ms  {row.gb_per_s:6.1f} GB/s  "
                + (f"{row.vs_probe:5.0%} of probe  " if row.vs_probe is not None else "")
                + f"x{row.vs_torch:5.1f} torch eager  (max err {row.max_err:.1e})"
            )
    result = {
        "machine": meta,
        "config": asdict(cfg),
        "probe_gb_per_s": probe,
        "rows": [asdict(r) for r in rows],
    }
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(path)
        log(f"\nwrote {path}")
    return result
