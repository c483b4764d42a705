"""The fused InvMM inversion step vs eager and compiled torch, and a memory probe (same run).

One optimisation step of N images x B samples x D elements, with a trivial stand-in for the
diffusion model (eps_hat = c x_t, elementwise) so that the step itself is what is timed:

- ``memlens``: loss pass, the model's vector-Jacobian product, update pass (Adam in place and
  the next x_t drawn from the new parameters): two passes over memory outside the model.
- ``eager``: what a user writes: torch.randn noise, the reparameterised sample, the x0 loss
  and KL in torch ops, ``loss.backward()`` and ``torch.optim.Adam(foreach=True)``.
- ``eager_fused_adam``: the same with ``Adam(fused=True)``.
- ``compiled``: the loss (sample, model, x0 loss, KL) under ``torch.compile`` with its backward,
  then ``Adam(foreach=True)``.

``passes_gbps`` = the bytes the two memlens passes must move (24 B per sample element + 56 B per
parameter element, float32) over their best time alone. ``passes_vs_probe`` is the median,
over the timed calls, of each call's bandwidth over the read bandwidth (torch.sum of 1 GiB) of
a probe run right after it: like with like, at the same moments, on a machine whose memory
bandwidth other tenants share (the probe read 24 to 60 GB/s on the 2-core test machine within
minutes).
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from memlens.bench.flow import memory_probe
from memlens.bench.machine import metadata
from memlens.bench.timing import median_ratio, timed, times_with_probe
from memlens.ops import inversion as inv

C_MODEL = 0.5  # the stand-in model: eps_hat = C_MODEL * x_t


@dataclass
class Case:
    name: str
    n: int
    b: int
    d: int


FULL = [Case("16x4x64x64", 1, 16, 4 * 64 * 64), Case("1e7", 1, 1, 10_000_000)]
SMOKE = [Case("4x4x32x32", 1, 4, 4 * 32 * 32), Case("1e6", 1, 1, 1_000_000)]


def _timed(fn: Callable[[], object], dev: str, repeat: int, warmup: int = 2) -> float:
    return timed(fn, dev, repeat, warmups=warmup)


def gpu_probe(mb: int, repeat: int) -> dict[str, float]:
    """Device-to-device copy bandwidth (read + write) in GB/s: the GPU's practical ceiling."""
    t = torch.ones(mb * 2**20 // 4, device="cuda")
    out = torch.empty_like(t)
    bw = 2 * t.numel() * 4 / timed(lambda: out.copy_(t), "cuda", repeat, warmups=2) / 1e9
    return {"copy": bw, "read": bw}


def _problem(c: Case, dev: str) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    ab = torch.rand((c.n, c.b), generator=g) * 0.9 + 0.05
    return {
        "x0": torch.randn((c.n, c.d), generator=g).to(dev),
        "a": ab.sqrt().to(dev),
        "s": (1 - ab).sqrt().to(dev),
        "w": torch.ones(c.n, device=dev),
    }


def memlens_step(
    c: Case, p: dict[str, Any], backend: str | None
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(whole step with the model's VJP, the two passes alone)."""
    st = inv.InversionState.create(c.n, (c.d,), seed=1, device=p["x0"].device)
    # the buffers a loop reuses (metrics.invmm does): g_eps, and the x_t the last model call
    # consumed, which receives the next one
    box = {"xt": inv.sample_xt(st, p["x0"], p["a"], p["s"], backend=backend)}
    box["g"] = torch.empty_like(box["xt"])
    box["spare"] = torch.empty_like(box["xt"])

    def step() -> None:
        xt = box["xt"]
        _, g_eps = inv.x0_loss(xt, xt * C_MODEL, p["x0"], p["a"], p["s"], reduce=False,
                               out=box["g"], check=False, backend=backend)  # fmt: skip
        g_model = g_eps * C_MODEL  # the stand-in model's VJP
        nxt = inv.update(st, g_eps, g_model, p["s"], p["w"], x0=p["x0"],
                         next_coefs=(p["a"], p["s"]), out=box["spare"], check=False,
                         backend=backend)  # fmt: skip
        assert nxt is not None
        box["spare"], box["xt"] = xt, nxt

    xt0 = box["xt"].clone()
    eh = xt0 * C_MODEL
    g_out, x_out = torch.empty_like(xt0), torch.empty_like(xt0)

    def passes() -> None:
        _, g_eps = inv.x0_loss(xt0, eh, p["x0"], p["a"], p["s"], reduce=False, out=g_out,
                               check=False, backend=backend)  # fmt: skip
        inv.update(st, g_eps, g_eps, p["s"], p["w"], x0=p["x0"], next_coefs=(p["a"], p["s"]),
                   out=x_out, check=False, backend=backend)  # fmt: skip

    return step, passes


def _objective(mu: torch.Tensor, lv: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor,
               a: torch.Tensor, s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # fmt: skip
    n = mu[:, None] + eps * torch.exp(0.5 * lv)[:, None]
    xt = a[..., None] * x0[:, None] + s[..., None] * n
    eh = C_MODEL * xt
    x0h = (xt - s[..., None] * eh) / a[..., None]
    p = ((x0h - x0[:, None]) ** 2).mean(dim=(1, 2))
    r = 0.5 * (mu * mu + lv.exp() - lv - 1).mean(1)
    return (p + w * r).sum()


def torch_step(c: Case, p: dict[str, Any], *, fused: bool, compiled: bool) -> Callable[[], None]:
    dev = p["x0"].device
    mu = torch.zeros((c.n, c.d), device=dev, requires_grad=True)
    lv = torch.zeros((c.n, c.d), device=dev, requires_grad=True)
    opt = torch.optim.Adam([mu, lv], lr=0.1, fused=fused, foreach=None if fused else True)
    f = torch.compile(_objective, dynamic=False) if compiled else _objective

    def step() -> None:
        eps = torch.randn((c.n, c.b, c.d), device=dev)
        loss = f(mu, lv, eps, p["x0"], p["a"], p["s"], p["w"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def end_to_end(steps: int, backend: str | None, dev: str) -> dict[str, Any]:
    """One InvMM inversion (pixel preset, ``steps`` steps, no early exit: an untrained model)
    of one 32 x 32 image on a tiny randomly initialised UNet2DModel: seconds per section."""
    from diffusers import DDPMScheduler, UNet2DModel

    from memlens.metrics import invmm

    torch.manual_seed(0)
    unet: Any = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                            block_out_channels=(32, 64), norm_num_groups=8,
                            down_block_types=("DownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "UpBlock2D"))  # fmt: skip
    unet = unet.to(dev).requires_grad_(False)
    sched: Any = DDPMScheduler(num_train_timesteps=1000)
    ab = sched.alphas_cumprod
    target = torch.rand(1, 3, 32, 32, device=dev) * 2 - 1
    sim = lambda x, i: -((x - target[i]) ** 2).flatten(1).mean(1)  # < 0: never succeeds
    s = invmm.with_overrides(invmm.PRESETS["pixel"], steps=steps, ddim_steps=20)
    timings: dict[str, float] = {}
    invmm.invert(invmm.unet_denoiser(unet), ab, target, sim, settings=s, backend=backend,
                 timings=timings)  # fmt: skip
    total = timings["total"]
    return {"steps": steps, "samples": s.samples, "seconds": timings,
            "share_outside_model": 1 - timings.get("model", 0.0) / total,
            "share_passes": timings.get("passes", 0.0) / total}  # fmt: skip


def run(smoke: bool = False, json_path: str | None = None, repeat: int | None = None,
        backend: str | None = None, compiled: bool | None = None,
        cases: list[Case] | None = None) -> dict[str, Any]:  # fmt: skip
    cases = cases or (SMOKE if smoke else FULL)
    repeat = repeat or (3 if smoke else 7)
    compiled = (not smoke) if compiled is None else compiled
    dev = "cuda" if backend in ("cuda", "triton") and torch.cuda.is_available() else "cpu"
    probe = gpu_probe(1024, 10) if dev == "cuda" else memory_probe(128 if smoke else 1024, 3)
    rows: list[dict[str, Any]] = []
    for c in cases:
        p = _problem(c, dev)
        step, passes = memlens_step(c, p, backend)
        t_mem = _timed(step, dev, repeat)
        t_all, p_all = times_with_probe(passes, dev, repeat, 128 if smoke else 1024)
        t_pass, t_best = statistics.median(t_all), min(t_all)
        nbytes = 4 * (6 * c.n * c.b * c.d + 14 * c.n * c.d)
        # each call against the probe read right after it; the median of those ratios
        p_all = p_all or [probe["read"]] * len(t_all)
        row: dict[str, Any] = {**asdict(c), "memlens_s": t_mem, "passes_s": t_pass,
                               "passes_best_s": t_best, "passes_gbps": nbytes / t_best / 1e9,
                               "passes_median_gbps": nbytes / t_pass / 1e9,
                               "probe_read_gbps": p_all,
                               "passes_vs_probe": median_ratio(nbytes, t_all, p_all)}  # fmt: skip
        t_eager = _timed(torch_step(c, p, fused=False, compiled=False), dev, repeat)
        row["eager_s"] = t_eager
        row["vs_eager"] = t_eager / t_mem
        try:
            t_fused = _timed(torch_step(c, p, fused=True, compiled=False), dev, repeat)
            row["eager_fused_adam_s"] = t_fused
            row["vs_eager_fused_adam"] = t_fused / t_mem
        except RuntimeError as e:  # fused Adam not available on this device/build
            row["eager_fused_adam_error"] = str(e)[:200]
        if compiled:
            t_comp = _timed(torch_step(c, p, fused=False, compiled=True), dev, repeat, warmup=3)
            row["compiled_s"] = t_comp
            row["vs_compiled"] = t_comp / t_mem
        rows.append(row)
        print(json.dumps(row), flush=True)
    e2e = end_to_end(5 if smoke else 50, backend, dev)
    print(json.dumps({"end_to_end": e2e}), flush=True)
    result = {"meta": metadata(), "device": dev, "backend": backend, "probe_gbps": probe,
              "end_to_end": e2e, "threads": torch.get_num_threads(),
              "omp_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}  # fmt: skip
    print(f"{'case':<12}{'memlens ms':>11}{'passes GB/s':>12}{'% probe':>8}{'x eager':>8}"
          f"{'x fusedAdam':>12}{'x compiled':>11}")  # fmt: skip
    for r in rows:
        print(f"{r['name']:<12}{1e3 * r['memlens_s']:>11.3f}{r['passes_gbps']:>12.1f}"
              f"{100 * r['passes_vs_probe']:>7.0f}%{r['vs_eager']:>8.2f}"
              f"{r.get('vs_eager_fused_adam', float('nan')):>12.2f}"
              f"{r.get('vs_compiled', float('nan')):>11.2f}")  # fmt: skip
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=1))
    return result
