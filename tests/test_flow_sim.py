"""flow_similarity through the public API: every backend against the float64 reference.

The reference (memlens.reference.flow) is the specification. Backends are compared with it on
awkward shapes (size 1, odd sizes, rows longer than a SIMD chunk), both dtypes, every eps regime
of mu_min, affine residuals, non-contiguous layouts, zero and tiny flows and pixels whose norm is
within float32 rounding of mu_min. Tolerances come from TOL alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

import memlens
from memlens import _dispatch
from memlens.reference.flow import FIELD_STATS, PAIR_STATS, FlowStats, affine_field
from memlens.reference.flow import flow_similarity as reference

OP = "flow_similarity"


@dataclass(frozen=True)
class Tol:
    """Allowed |backend - reference| per statistic, in units of a scale that bounds its terms.

    count: absolute difference of the valid-pixel count. pair: cos/ratio sums, per counted pixel
    (their terms lie in [-1, 1]). field: mag and sq sums relative to themselves; the linear sums
    (u, x u, y u) relative to the mag sum (|x|, |y| <= 1 and |u_x|, |u_y| <= |u|), which bounds
    their rounding even where they cancel to ~0. exact_mask: the backend decides the mask exactly
    as the float64 reference does, also for pixels within float32 rounding of mu_min.
    """

    count: float
    pair: float
    field: float
    exact_mask: bool


TOL = {
    "torch": Tol(count=0, pair=1e-12, field=1e-12, exact_mask=True),
    # float32 terms, float32 sums of <= 16 terms a lane, float64 beyond; exact float64 mask.
    "cpu": Tol(count=0, pair=1e-6, field=1e-6, exact_mask=True),
    # GPU backends (float32): the owners of those backends tighten these as they can.
    "triton": Tol(count=0, pair=1e-5, field=1e-5, exact_mask=False),
    "cuda": Tol(count=0, pair=1e-5, field=1e-5, exact_mask=False),
}

BACKENDS = [
    pytest.param("torch", id="torch"),
    pytest.param("cpu", id="cpu"),
    pytest.param("triton", id="triton", marks=pytest.mark.triton),
    pytest.param("cuda", id="cuda", marks=pytest.mark.cuda),
]
DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float16, id="f16")]
# Candidate pixels above which the Triton backend is only tested on a GPU (TRITON_INTERPRET=1
# runs kernels in Python, ~1e5 times slower).
INTERPRETER_MAX_PIXELS = 20_000


def _device(backend: str) -> str:
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


@pytest.fixture
def device(backend: str) -> str:
    """The device the backend runs on here; skips when the backend is unavailable."""
    dev = _device(backend)
    if backend not in _dispatch.available(OP, dev):
        spec = _dispatch.registered(OP).get(backend)
        why = spec.why_unavailable(dev) if spec is not None else f"no {backend} backend"
        pytest.skip(f"{backend} backend unavailable on {dev}: {why}")
    return dev


def flows(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    """Random flow with many vectors on either side of mu_min (|u| ~ scale)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, 2, generator=g) * scale


def run(backend: str, device: str, gen: Any, cands: Any, **kw: Any) -> FlowStats:
    def move(x: Any) -> Any:
        return x.to(device) if isinstance(x, torch.Tensor) else x

    kw = {k: move(v) for k, v in kw.items()}
    return memlens.flow_similarity(move(gen), move(cands), backend=backend, **kw)


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def check(got: FlowStats, want: FlowStats, backend: str, borderline: int = 0) -> None:
    """got vs the reference under TOL[backend]; `borderline`: pixels per (n, t) whose mask a
    float32 backend may decide differently (count differences allowed up to it)."""
    tol = TOL[backend]
    gp, wp = _np(got.pair), _np(want.pair)
    assert gp.shape == wp.shape
    assert gp.dtype == np.float64
    assert got.height == want.height
    assert got.width == want.width
    assert np.isfinite(gp).all()
    count_tol = tol.count + (0 if tol.exact_mask else borderline)
    np.testing.assert_allclose(gp[..., 0], wp[..., 0], rtol=0, atol=count_tol, err_msg="count")
    per_pixel = np.maximum(wp[..., :1], 1.0) + count_tol
    for k, name in enumerate(PAIR_STATS[1:], start=1):
        err = np.abs(gp[..., k] - wp[..., k]) / per_pixel[..., 0]
        assert err.max(initial=0) <= tol.pair, f"{name}: {err.max()}"
    for g_f, w_f, which in (
        (_np(got.gen_field), _np(want.gen_field), "gen_field"),
        (_np(got.cand_field), _np(want.cand_field), "cand_field"),
    ):
        assert g_f.shape == w_f.shape
        assert np.isfinite(g_f).all()
        mag = np.maximum(w_f[..., :1], np.finfo(np.float64).tiny)
        for k, name in enumerate(FIELD_STATS):
            scale = np.maximum(w_f[..., k], np.finfo(np.float64).tiny) if k < 2 else mag[..., 0]
            err = np.abs(g_f[..., k] - w_f[..., k]) / scale
            assert err.max(initial=0) <= tol.field, f"{which}.{name}: {err.max()}"


SHAPES = [  # (N, T, H, W)
    (1, 1, 1, 1),
    (2, 3, 1, 40),  # H == 1
    (3, 1, 31, 1),  # W == 1
    (3, 2, 17, 33),  # odd sizes, a partial SIMD step
    (2, 1, 5, 300),  # a row longer than one float32 chunk, not a multiple of 16
    (4, 2, 64, 48),
    (2, 2, 256, 256),  # the accuracy statement: ~1e-6 on 256 x 256 fields
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mu_min", [0.5, 0.1, 0.0])  # the three eps regimes of the CPU kernels
def test_matches_reference(
    backend: str, device: str, dtype: torch.dtype, shape: tuple[int, ...], mu_min: float
) -> None:
    n, t, h, w = shape
    if backend == "triton" and device == "cpu" and n * t * h * w > INTERPRETER_MAX_PIXELS:
        pytest.skip("too large for the Triton interpreter; runs on a GPU")
    gen = flows((t, h, w), 1).to(dtype)
    cands = flows((n, t, h, w), 2, scale=1.5).to(dtype)
    cands[0] = gen  # one identical candidate
    got = run(backend, device, gen, cands, mu_min=mu_min)
    check(got, reference(gen, cands, mu_min=mu_min), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_residuals(backend: str, device: str, dtype: torch.dtype) -> None:
    """Camera motion much larger than the residual: the residual must stay accurate."""
    n, t, h, w = 3, 2, 23, 37
    g = torch.Generator().manual_seed(3)
    ga = torch.randn(t, 6, generator=g, dtype=torch.float64) * 20
    ca = torch.randn(n, t, 6, generator=g, dtype=torch.float64) * 20
    gen = (affine_field(ga, h, w) + flows((t, h, w), 4) * 0.5).to(dtype)
    cands = (affine_field(ca, h, w) + flows((n, t, h, w), 5) * 0.5).to(dtype)
    for kw in ({"gen_affine": ga, "cand_affine": ca}, {"gen_affine": ga}, {"cand_affine": ca}):
        for mu_min in (0.5, 0.0):
            got = run(backend, device, gen, cands, mu_min=mu_min, **kw)
            check(got, reference(gen, cands, mu_min=mu_min, **kw), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts_and_array_kinds(backend: str, device: str) -> None:
    """Any strides: slices, transposes, broadcast candidates, storage offsets, numpy, mixed dtypes."""
    n, t, h, w = 3, 2, 19, 21
    base = flows((t, n, h, 2 * w + 1), 6)
    cands_tn = base[:, :, :, 1::2].permute(1, 0, 2, 3, 4)  # (N, T, H, W, 2) from a (T, N) layout
    planar = flows((t, h, w), 7).permute(0, 3, 1, 2).contiguous()  # channels-first storage
    gen = planar.permute(0, 2, 3, 1)  # (T, H, W, 2) view with element stride H*W
    assert not gen.is_contiguous()
    assert not cands_tn.is_contiguous()
    cases: list[tuple[Any, Any]] = [
        (gen, cands_tn),
        (gen, gen.unsqueeze(0).expand(n, t, h, w, 2)),  # stride 0 over candidates
        (gen.to(torch.float16), cands_tn),  # mixed dtypes
        (gen, cands_tn.to(torch.float16)),
        (gen.flip(1).contiguous()[:, 1:], cands_tn[:, :, 1:]),  # storage offsets
        (gen.transpose(1, 2), cands_tn.transpose(2, 3)),  # H and W swapped
    ]
    for g, c in cases:
        check(run(backend, device, g, c), reference(g, c), backend)
    if device == "cpu":  # numpy in, numpy out
        g_np, c_np = gen.numpy(), cands_tn.numpy()
        got = memlens.flow_similarity(g_np, c_np, backend=backend)
        assert isinstance(got.pair, np.ndarray)
        check(got, reference(gen, cands_tn), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mu_min", [0.5, 0.0])
def test_zero_flow(backend: str, device: str, dtype: torch.dtype, mu_min: float) -> None:
    """No motion: nothing is counted and nothing is NaN (cos of zero vectors is 0 by the 1e-8)."""
    gen = torch.zeros(2, 9, 18, 2, dtype=dtype)
    cands = torch.zeros(3, 2, 9, 18, 2, dtype=dtype)
    cands[1] = flows((2, 9, 18), 8).to(dtype)  # moving candidate, static gen
    got = run(backend, device, gen, cands, mu_min=mu_min)
    check(got, reference(gen, cands, mu_min=mu_min), backend)
    assert float(np.abs(_np(got.pair)).sum()) == 0.0
    assert float(np.abs(_np(got.gen_field)).sum()) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_at_float32_rounding_of_mu_min(backend: str, device: str, dtype: torch.dtype) -> None:
    """Norms within a few float32 ulps of mu_min: the mask follows the float64 reference."""
    mu_min = 0.5
    eps = float(torch.finfo(dtype).eps)
    k = torch.arange(-40, 41, dtype=torch.float64)
    norms = mu_min * (1 + k * eps / 8)  # rounds onto the few representable values around mu_min
    angle = torch.linspace(0, 2 * np.pi, len(k), dtype=torch.float64)
    ring = torch.stack([norms * torch.cos(angle), norms * torch.sin(angle)], -1)
    w = len(k)
    gen = ring.roll(3, 0).reshape(1, 1, w, 2).to(dtype)
    cands = torch.stack([ring, ring.flip(0), ring * (1 + eps)]).reshape(3, 1, 1, w, 2).to(dtype)
    exact = torch.tensor([[0.3, 0.4], [0.5, 0.0], [0.0, -0.5], [0.4, 0.3]], dtype=torch.float64)
    gen = torch.cat([gen, exact.reshape(1, 1, 4, 2).to(dtype)], 2)  # |u| == mu_min in float64?
    cands = torch.cat(
        [cands, exact.flip(0).reshape(1, 1, 1, 4, 2).expand(3, 1, 1, 4, 2).to(dtype)], 3
    )
    got = run(backend, device, gen, cands, mu_min=mu_min)
    check(got, reference(gen, cands, mu_min=mu_min), backend, borderline=w + 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_and_subnormal_flows(backend: str, device: str) -> None:
    """mu_min = 0: every nonzero vector counts, even where float32 squares underflow."""
    if backend in ("triton", "cuda"):
        # documented limit of the GPU kernels: magnitudes and ratios are float32, so flows
        # below ~1e-19 px (far below any estimator's resolution) underflow
        pytest.xfail("float32 magnitudes underflow for flows below ~1e-19 px")
    vals = torch.tensor([1e-30, -3e-39, 1e-44, 0.0, 2e-20, 5e-8, 1.0], dtype=torch.float32)
    g = vals[
        torch.randint(0, len(vals), (2, 1, 5, 7, 2), generator=torch.Generator().manual_seed(9))
    ]
    gen, cands = g[0], g[:1].expand(4, 1, 5, 7, 2).clone()
    cands[3] = g[1]
    cands[1] = -cands[1]
    cands[2] = cands[2].roll(1, -2)
    for mu_min in (0.0, 1e-25):
        got = run(backend, device, gen, cands, mu_min=mu_min)
        check(got, reference(gen, cands, mu_min=mu_min), backend, borderline=35)
    hv = torch.tensor([6e-8, -2e-7, 1e-6, 3e-5, 0.0, 1.0], dtype=torch.float16)  # subnormals
    h = hv[torch.randint(0, len(hv), (3, 1, 5, 7, 2), generator=torch.Generator().manual_seed(10))]
    got = run(backend, device, h[0], h, mu_min=0.0)
    check(got, reference(h[0], h, mu_min=0.0), backend, borderline=35)


@pytest.mark.parametrize("backend", BACKENDS)
def test_motion_oracles(backend: str, device: str) -> None:
    """methods.md §1.8: identity -> OFS 1, time reversal -> -1, 2x speed -> magnitude ratio 0.5."""
    t, h, w = 4, 32, 40
    gen = flows((t, h, w), 10) + torch.tensor([2.0, -1.0])
    cands = torch.stack([gen, -gen, 2 * gen])
    s = run(backend, device, gen, cands)
    pair = _np(s.pair).sum(axis=1)  # over frames
    ofs = pair[:, 1] / pair[:, 0]
    np.testing.assert_allclose(ofs, [1.0, -1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(pair[:, 2] / pair[:, 0], [1.0, 1.0, 0.5], atol=1e-6)


# ---------------------------------------------------------------- the compiled CPU core itself

needs_cpu = pytest.mark.skipif(
    _dispatch.compiled_cpu_reason("cpu") is not None, reason="CPU core not built"
)


def _levels() -> list[str]:
    if _dispatch.compiled_cpu_reason("cpu") is not None:
        return []
    from memlens.backends.cpu import supported_simd

    return supported_simd()


@needs_cpu
@pytest.mark.parametrize("level", _levels())
def test_each_simd_level(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    monkeypatch.setenv("MEMLENS_SIMD", level)
    assert memlens.build_info()["cpu"]["simd"] == level
    n, t, h, w = 3, 2, 9, 277
    base = flows((n, t, h, w + 3), 11)
    cands = base[..., 2:-1, :].to(torch.float16)  # storage offset, half, rows not contiguous
    gen = flows((t, h, w), 12)
    ga = torch.randn(t, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    for mu_min in (0.5, 0.1, 0.0):
        for kw in ({}, {"gen_affine": ga}):
            got = run("cpu", "cpu", gen, cands, mu_min=mu_min, **kw)
            check(got, reference(gen, cands, mu_min=mu_min, **kw), "cpu")
            got = run("cpu", "cpu", gen, cands.contiguous(), mu_min=mu_min, **kw)
            check(got, reference(gen, cands, mu_min=mu_min, **kw), "cpu")


@needs_cpu
@pytest.mark.parametrize("block_pixels", [0, 200])
def test_cpu_results_do_not_depend_on_threads_or_calls(
    monkeypatch: pytest.MonkeyPatch, block_pixels: int
) -> None:
    """Bit-identical sums whatever the team: with few (frame, block) units (whole frames here)
    every unit is split into candidate ranges; with many (200-pixel blocks: 3 x 18 units) only
    the units left over after whole waves are; neither may change a partial sum."""
    from memlens.backends import flow_cpu

    monkeypatch.setattr(flow_cpu, "block_pixels", block_pixels)
    gen = flows((3, 70, 50), 14)
    cands = flows((5, 3, 70, 50), 15)
    runs = [
        flow_cpu.flow_similarity(gen, cands, 0.5, None, None, num_threads=k)
        for k in (1, 2, 3, 4, 2)
    ]
    check(runs[0], reference(gen, cands), "cpu")
    for r in runs[1:]:
        for name in ("pair", "gen_field", "cand_field"):
            assert torch.equal(getattr(r, name), getattr(runs[0], name))


@needs_cpu
def test_cpu_blocking_and_empty_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any row blocking gives the reference; N = 0 still yields gen's FIELD statistics."""
    from memlens.backends import flow_cpu

    gen = flows((2, 13, 11), 16)
    cands = flows((2, 2, 13, 11), 17)
    for bp in (1, 30, 1 << 20):
        monkeypatch.setattr(flow_cpu, "block_pixels", bp)
        check(flow_cpu.flow_similarity(gen, cands, 0.5, None, None), reference(gen, cands), "cpu")
    empty = flow_cpu.flow_similarity(gen, cands[:0], 0.5, None, None)
    assert empty.pair.shape == (0, 2, 4)
    torch.testing.assert_close(empty.gen_field, reference(gen, cands).gen_field, rtol=1e-12, atol=0)


@needs_cpu
def test_cpu_core_rejects_bad_arguments() -> None:
    from memlens import _C

    g = torch.zeros(1, 2, 2, 2)
    c = torch.zeros(1, 1, 2, 2, 2)
    out = [torch.zeros(8, dtype=torch.float64) for _ in range(3)]

    def call(**over: Any) -> None:
        args: dict[str, Any] = {
            "gen": g.data_ptr(), "gen_dtype": 0, "gen_strides": list(g.stride()),
            "cands": c.data_ptr(), "cands_dtype": 0, "cands_strides": list(c.stride()),
            "n": 1, "t": 1, "h": 2, "w": 2, "mu_min": 0.5, "gen_affine": 0, "cand_affine": 0,
            "out_pair": out[0].data_ptr(), "out_gen_field": out[1].data_ptr(),
            "out_cand_field": out[2].data_ptr(), "num_threads": 0, "simd": 0,
        }  # fmt: skip
        args.update(over)
        _C.flow_similarity(**args)

    call()
    for over, match in (
        ({"gen_dtype": 2}, "gen_dtype"),
        ({"cands_dtype": -1}, "cands_dtype"),
        ({"gen_strides": [1, 2]}, "gen_strides"),
        ({"cands_strides": [1, 2, 3, 4]}, "cands_strides"),
        ({"mu_min": -1.0}, "mu_min"),
        ({"mu_min": float("nan")}, "mu_min"),
        ({"n": -1}, "shape"),
        ({"gen": 0}, "gen data pointer"),
        ({"out_pair": 0}, "output pointers"),
        ({"simd": 7}, "simd"),
    ):
        with pytest.raises(ValueError, match=match):
            call(**over)
