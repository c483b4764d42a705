"""One-shot GPU check of flow_similarity's Triton and CUDA backends: tests, correctness at scale
against the float64 reference, and timings against a torch eager composite and against the
device-to-device copy bandwidth (target: >= 75% of it).

Run from the repository root on a CUDA machine (no install needed: ``--build`` compiles the
CUDA module with cmake into /tmp, and the source tree is put on the path)::

    python3 benchmarks/gpu_check_flow.py --build --pytest --json $OUT/flow.json
    python3 benchmarks/gpu_check_flow.py --small          # quick smoke run

(``TRITON_INTERPRET=1 python benchmarks/gpu_check_flow.py --tiny`` runs the Triton part of
the same logic on the CPU.) Prints one JSON object per line and a table last; a failed check
raises at the end with the list. Timings: median of CUDA-event-timed runs after a warm-up.
Bandwidth = bytes that must move (cands + gen read once, float64 outputs written) / time; the
copy moves 2 x cands bytes (read + write).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from memlens.bench.timing import timed as _timed

ROOT = Path(__file__).resolve().parents[1]
FAILURES: list[str] = []
RESULTS: list[dict[str, Any]] = []


def timed(fn: Callable[[], object], dev: str, reps: int) -> float:
    return _timed(fn, dev, reps, warmups=2)  # compile, then the allocator's first use


def emit(**kw: Any) -> None:
    RESULTS.append(kw)
    print(json.dumps(kw), flush=True)


def check(ok: bool, what: str, **info: Any) -> None:
    emit(check=what, ok=bool(ok), **info)
    if not ok:
        FAILURES.append(what)


# ------------------------------------------------------------------------------ setup


def setup_imports(build: bool, build_dir: Path) -> None:
    """memlens from the source tree (python/), kernels/ as memlens.kernels, and the CUDA module
    from ``build_dir`` (built there first with ``--build``) as memlens._cuda."""
    try:
        import memlens

        installed = getattr(memlens, "__file__", None) is not None  # not a namespace package
    except ImportError:
        installed = False
    if not installed:
        sys.path.insert(0, str(ROOT / "python"))
        for name in [m for m in sys.modules if m == "memlens" or m.startswith("memlens.")]:
            del sys.modules[name]
    try:
        importlib.import_module("memlens.kernels.flow_sim")
    except ImportError:
        sys.path.insert(0, str(ROOT))
        kernels = importlib.import_module("kernels")
        sys.modules["memlens.kernels"] = kernels
        sys.modules["memlens.kernels.flow_sim"] = importlib.import_module("kernels.flow_sim")
    try:
        importlib.import_module("memlens._cuda")
        return
    except ImportError:
        pass
    if build:
        t0 = time.time()
        py = sys.executable
        pyb = subprocess.run(
            [py, "-m", "pybind11", "--cmakedir"], check=False, capture_output=True, text=True
        )
        cmd = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja", "-DMEMLENS_CUDA=ON",
            "-DMEMLENS_CUDA_ARCHS=90", f"-Dpybind11_DIR={pyb.stdout.strip()}",
            f"-DPython_EXECUTABLE={py}",
        ]  # fmt: skip
        for c in (cmd, ["cmake", "--build", str(build_dir), "--target", "_cuda", "-j16"]):
            r = subprocess.run(c, check=False, capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stdout[-4000:], r.stderr[-4000:], flush=True)
                check(False, "build the CUDA module")
                return
        emit(built_cuda_module=str(build_dir), seconds=round(time.time() - t0, 1))
    if build_dir.is_dir():
        sys.path.insert(0, str(build_dir))
        try:
            mod = importlib.import_module("_cuda")
        except ImportError as e:
            emit(cuda_module=f"not importable: {e}")
            return
        sys.modules["memlens._cuda"] = mod
        import memlens

        memlens._cuda = mod


def run_pytest(small: bool) -> None:
    import pytest

    files = ["tests/test_flow_sim_cuda.py", "tests/test_flow_sim_triton.py"]
    args = ["-q", "-x", "-p", "no:cacheprovider", "-rs", *[str(ROOT / f) for f in files]]
    if small:
        args += ["-k", "not awkward"]
    t0 = time.time()
    rc = int(pytest.main(args))
    check(rc == 0, "pytest flow_sim cuda + triton", rc=rc, seconds=round(time.time() - t0, 1))


# --------------------------------------------------------------------------- helpers


def flows(n: int, t: int, h: int, w: int, dev: str, seed: int) -> tuple[torch.Tensor, ...]:
    """Generated field (smooth motion + noise, a static quarter) and candidates: some copies of
    it with noise, the rest unrelated."""
    g = torch.Generator(device=dev).manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, h, device=dev), torch.linspace(-1, 1, w, device=dev), indexing="ij"
    )
    base = torch.stack([torch.sin(3 * xx + yy), torch.cos(2 * yy - xx)], -1) * 3
    gen = base[None] * torch.rand(t, 1, 1, 1, device=dev, generator=g) * 2
    gen = gen + 0.3 * torch.randn(t, h, w, 2, device=dev, generator=g)
    gen[:, : h // 2, : w // 2] *= 0.05  # static region: below mu_min
    cands = torch.randn(n, t, h, w, 2, device=dev, generator=g) * 1.5
    cands[: n // 4] = gen[None] + 0.5 * torch.randn(n // 4, t, h, w, 2, device=dev, generator=g)
    return gen.contiguous(), cands.contiguous()


def compare(name: str, got: Any, gen: torch.Tensor, cands: torch.Tensor, **kw: Any) -> None:
    from memlens.reference.flow import flow_similarity as reference

    want = reference(gen, cands, **kw)
    cnt = bool(torch.equal(got.pair[..., 0], want.pair[..., 0]))
    tol = 1e-5 * want.pair[..., :1].clamp_min(1.0) + 1e-9
    d_pair = float(((got.pair[..., 1:] - want.pair[..., 1:]).abs() / tol).max())
    worst = [d_pair]
    for fname, u in (("gen_field", gen), ("cand_field", cands)):
        a, b = getattr(got, fname), getattr(want, fname)
        ua = u.double().abs()
        s = lambda v: v.sum(dim=(-2, -1))
        sx, sy = s(ua[..., 0]), s(ua[..., 1])
        scale = torch.stack([s(ua.norm(dim=-1)), s((ua * ua).sum(-1)), sx, sx, sx, sy, sy, sy], -1)
        worst.append(float(((a - b).abs() / (1e-5 * scale + 1e-9)).max()))
    rel = float(
        (got.pair[..., 1] - want.pair[..., 1]).norm() / want.pair[..., 1].norm().clamp_min(1e-30)
    )
    check(
        cnt and max(worst) <= 1.0, name, count_exact=cnt, worst_over_tol=round(max(worst), 4),
        cos_sum_rel_l2=rel,
    )  # fmt: skip


def torch_composite(gen: torch.Tensor, cands: torch.Tensor, mu: float) -> tuple[torch.Tensor, ...]:
    """The same statistics with torch eager ops in float32 (float64 sums): the baseline."""
    h, w = gen.shape[-3], gen.shape[-2]
    y = ((2 * torch.arange(h, device=gen.device) + 1) / h - 1).float()[:, None]
    x = ((2 * torch.arange(w, device=gen.device) + 1) / w - 1).float()[None, :]

    def fields(u: torch.Tensor) -> torch.Tensor:
        u = u.float()
        ux, uy = u[..., 0], u[..., 1]
        sq = ux * ux + uy * uy
        s = lambda v: v.sum(dim=(-2, -1), dtype=torch.float64)
        return torch.stack(
            [s(sq.sqrt()), s(sq), s(ux), s(x * ux), s(y * ux), s(uy), s(x * uy), s(y * uy)], -1
        )

    g = gen.float()[None]
    r = cands.float()
    gm, rm = g.norm(dim=-1), r.norm(dim=-1)
    m = (gm > mu) & (rm > mu)
    c = (g * r).sum(-1) / (gm * rm + 1e-8)
    ratio = torch.minimum(gm, rm) / torch.maximum(gm, rm).clamp_min(1e-30)
    mf = m.float()
    s = lambda v: v.sum(dim=(-2, -1), dtype=torch.float64)
    pair = torch.stack([s(mf), s(mf * c), s(mf * ratio), s(mf * c * ratio)], -1)
    return pair, fields(gen), fields(cands)


def bench_dtype(
    g: torch.Tensor,
    r: torch.Tensor,
    dev: str,
    reps: int,
    configs: dict[str, Any],
    backends: dict[str, Callable[..., Any]],
) -> list[tuple[str, str, float, float, float]]:
    """Copy bandwidth, torch composite and every backend / Triton config on one input pair."""
    from memlens.backends import flow_triton

    n, t = r.shape[0], r.shape[1]
    dt = str(r.dtype).replace("torch.", "")
    nbytes = r.numel() * r.element_size() + g.numel() * g.element_size() + (n * t * 12 + t * 8) * 8
    dst = torch.empty_like(r)
    t_copy = timed(partial(dst.copy_, r), dev, reps)
    copy_bw = 2 * r.numel() * r.element_size() / t_copy
    del dst
    emit(bench="d2d copy", dtype=dt, seconds=t_copy, gbps=copy_bw / 1e9)
    t_torch = timed(partial(torch_composite, g, r, 0.5), dev, max(3, reps // 4))
    emit(bench="torch eager composite", dtype=dt, seconds=t_torch, gbps=nbytes / t_torch / 1e9)
    if dev == "cuda":
        torch.cuda.empty_cache()
    runs = [
        (f"triton {cname}", partial(flow_triton.flow_similarity, g, r, 0.5, None, None, config=cfg))
        for cname, cfg in configs.items()
    ]
    if "cuda" in backends:
        runs.append(("cuda", partial(backends["cuda"], g, r, 0.5, None, None)))
    rows = []
    for bname, fn in runs:
        try:
            sec = timed(fn, dev, reps)
        except Exception as e:  # noqa: BLE001 (a config that fails to compile here: report it)
            emit(bench=bname, dtype=dt, error=f"{type(e).__name__}: {e}"[:300])
            continue
        bw = nbytes / sec
        emit(
            bench=bname, dtype=dt, n=n, t=t, h=r.shape[2], w=r.shape[3], seconds=sec,
            gbps=bw / 1e9, of_copy_bw=bw / copy_bw, vs_torch=t_torch / sec,
        )  # fmt: skip
        rows.append((bname, dt, sec * 1e3, bw / copy_bw, t_torch / sec))
    return rows


# ------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="smaller sizes, fewer variants")
    ap.add_argument("--tiny", action="store_true", help="interpreter-sized (CPU)")
    ap.add_argument("--build", action="store_true", help="build memlens._cuda with cmake first")
    ap.add_argument("--build-dir", default="/tmp/memlens-cuda-build")
    ap.add_argument("--pytest", action="store_true", help="run the flow_sim test files first")
    ap.add_argument("--json", help="also write all results to this file")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    dev = "cuda" if torch.cuda.is_available() and not interp else "cpu"
    setup_imports(args.build and dev == "cuda", Path(args.build_dir))

    from memlens.kernels import flow_sim as fs

    from memlens import _dispatch
    from memlens.backends import flow_triton

    has_cuda = dev == "cuda" and _dispatch.compiled_cuda_reason("cuda") is None
    import triton

    info: dict[str, Any] = {"torch": torch.__version__, "triton": triton.__version__}
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, sms=p.multi_processor_count, cuda_backend=has_cuda)
    emit(**info)
    if args.pytest and dev == "cuda":
        run_pytest(args.small)

    backends: dict[str, Callable[..., Any]] = {"triton": flow_triton.flow_similarity}
    if has_cuda:
        from memlens.backends import flow_cuda

        backends["cuda"] = flow_cuda.flow_similarity

    # 1. correctness at scale against the float64 reference (counts exact)
    if args.tiny:
        n, t, h, w = 5, 2, 24, 31
    elif args.small:
        n, t, h, w = 16, 5, 256, 256
    else:
        n, t, h, w = 64, 15, 256, 256
    gen, cands = flows(n, t, h, w, dev, seed=0)
    na = max(1, n // 4)
    ga = torch.randn(t, 6, dtype=torch.float64, device=dev) * 0.3
    ca = torch.randn(na, t, 6, dtype=torch.float64, device=dev) * 0.3
    for name, fn in backends.items():
        for dt in (torch.float32, torch.float16):
            g, r = gen.to(dt), cands.to(dt)
            compare(f"{name} {dt} N={n} T={t} {h}x{w}", fn(g, r, 0.5, None, None), g, r, mu_min=0.5)
        g, r = gen, cands[:na]
        compare(
            f"{name} affine N={na}", fn(g, r, 0.5, ga, ca), g, r, mu_min=0.5, gen_affine=ga,
            cand_affine=ca,
        )  # fmt: skip
        rs = cands[:, :, ::2].transpose(2, 3)  # strided view, no copy
        gs = gen[:, ::2].transpose(1, 2)
        compare(f"{name} strided views", fn(gs, rs, 0.5, None, None), gs, rs, mu_min=0.5)
        compare(f"{name} mu_min=0", fn(gen, cands, 0.0, None, None), gen, cands, mu_min=0.0)
    if dev == "cuda":
        torch.cuda.empty_cache()

    # 2. timings: kernel vs torch composite vs device-to-device copy (same run, same device)
    reps = 1 if args.tiny else args.reps
    table: list[tuple[str, str, float, float, float]] = []
    configs: dict[str, fs.FlowConfig | None] = {"default": None}
    if dev == "cuda" and not args.small:
        configs.update(
            nopf=fs.FlowConfig(prefetch=False),
            nb2_w4=fs.FlowConfig(nb=2, block=256, num_warps=4, maxnreg=None),
            b512_w8=fs.FlowConfig(nb=4, block=512, group=8, num_warps=8, maxnreg=None),
            nb8=fs.FlowConfig(nb=8, block=256, num_warps=8, prefetch=False, maxnreg=None),
            g32=fs.FlowConfig(group=32),
            reg96=fs.FlowConfig(maxnreg=96),
        )
    for dt in (torch.float32, torch.float16):
        table += bench_dtype(gen.to(dt), cands.to(dt), dev, reps, configs, backends)
        if dev == "cuda":
            torch.cuda.empty_cache()
    if "cuda" in backends:
        from memlens import _cuda

        emit(cuda_plan=_cuda.flow_sim_plan(n, t, h, w))

    print(
        "\nbackend              dtype     ms    of-copy-bw  vs-torch  (target of-copy-bw >= 0.75)"
    )
    for bname, d, ms, frac, sp in table:
        flag = "ok" if frac >= 0.75 else "below"
        print(f"{bname:20s} {d:8s} {ms:7.3f}   {frac:6.2f}    {sp:6.1f}x   {flag}")
    if args.json:
        Path(args.json).write_text(json.dumps(RESULTS, indent=1))
    if FAILURES:
        raise SystemExit(f"FAILED: {FAILURES}")
    print("all checks ok")


if __name__ == "__main__":
    main()
