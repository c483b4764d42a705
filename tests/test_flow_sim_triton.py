"""flow_similarity, Triton backend (memlens.kernels.flow_sim) against the float64 reference.

Runs on a GPU, or on the CPU under the Triton interpreter (``TRITON_INTERPRET=1`` set before
triton is imported). Shapes are kept tiny: the interpreter is slow; the forced configurations
make tiles, candidate blocks, float32 groups and pixel chunks straddle every boundary.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

if not (os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()):
    pytest.skip("needs TRITON_INTERPRET=1 or a CUDA GPU", allow_module_level=True)

pytest.importorskip("triton")

import memlens
from memlens.backends import flow_triton as backend
from memlens.reference.flow import FlowStats, grid
from memlens.reference.flow import flow_similarity as reference

try:
    from memlens.kernels import flow_sim as fs
except ImportError:  # running from a source checkout
    from kernels import flow_sim as fs

pytestmark = pytest.mark.triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RTOL = 1e-5  # relative to the sum of the absolute values of a statistic's terms

#: multi-block / multi-group / multi-chunk configurations (interpreter-sized)
SPLIT = fs.FlowConfig(nb=4, block=16, group=2, num_warps=1, prefetch=False, maxnreg=None)
WIDE = fs.FlowConfig(nb=1, block=256, group=4, num_warps=4, maxnreg=None)


def field(*shape: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, 2, generator=g) * scale).to(DEVICE)


def affine(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, 6, generator=g, dtype=torch.float64) * 0.7).to(DEVICE)


def _scales(u: torch.Tensor) -> torch.Tensor:
    """(..., 8): the sum of |term| of each FIELD statistic (x, y in [-1, 1])."""
    u = u.double().abs()
    s = lambda v: v.sum(dim=(-2, -1))
    mag = s(u.norm(dim=-1))
    sx, sy = s(u[..., 0]), s(u[..., 1])
    return torch.stack([mag, s((u * u).sum(-1)), sx, sx, sx, sy, sy, sy], dim=-1)


def assert_close(got: FlowStats, gen: torch.Tensor, cands: torch.Tensor, **kw: object) -> None:
    want = reference(gen, cands, **kw)
    assert (got.height, got.width) == (want.height, want.width)
    for name in ("pair", "gen_field", "cand_field"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == torch.float64, name
        assert a.device.type == DEVICE, name
        assert tuple(a.shape) == tuple(b.shape), name
        assert a.is_contiguous(), name
    # COUNT is an integer: exact. Cosines and ratios are <= 1 in absolute value.
    torch.testing.assert_close(got.pair[..., 0], want.pair[..., 0], rtol=0, atol=0)
    tol = RTOL * want.pair[..., :1].clamp_min(1.0) + 1e-9
    assert bool(((got.pair[..., 1:] - want.pair[..., 1:]).abs() <= tol).all()), got.pair - want.pair
    for name, u in (("gen_field", gen), ("cand_field", cands)):
        a, b = getattr(got, name), getattr(want, name)
        tol = RTOL * _scales(u) + 1e-9
        assert bool(((a - b).abs() <= tol).all()), (name, a - b)


def run(gen: torch.Tensor, cands: torch.Tensor, *, config: fs.FlowConfig | None = None,
        mu_min: float = 0.5, gen_affine: torch.Tensor | None = None,
        cand_affine: torch.Tensor | None = None) -> None:  # fmt: skip
    got = backend.flow_similarity(gen, cands, mu_min, gen_affine, cand_affine, config=config)
    assert_close(got, gen, cands, mu_min=mu_min, gen_affine=gen_affine, cand_affine=cand_affine)


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("n", "t", "h", "w"),
    [(1, 1, 1, 1), (2, 1, 5, 1), (3, 2, 7, 9), (1, 3, 1, 6), (5, 2, 4, 8)],
)
def test_awkward_shapes(n: int, t: int, h: int, w: int, dtype: torch.dtype) -> None:
    g = field(t, h, w, seed=1).to(dtype)
    r = field(n, t, h, w, seed=2).to(dtype)
    run(g, r)


@pytest.mark.parametrize("config", [SPLIT, WIDE], ids=["split", "wide"])
def test_blocks_groups_and_chunks(config: fs.FlowConfig) -> None:
    g = field(2, 9, 11, seed=3)
    r = field(6, 2, 9, 11, seed=4)
    run(g, r, config=config)
    run(g, r, config=config, gen_affine=affine(2, seed=5), cand_affine=affine(6, 2, seed=6))


def test_many_tiles_accumulate_precisely() -> None:
    """4096 pixels of a biased field (sums far from zero): float32 partials stay <= 1e-5."""
    g = field(1, 64, 64, seed=7) + 3.0
    r = field(3, 1, 64, 64, seed=8) - 1.5
    run(g, r, config=WIDE)


@pytest.mark.parametrize(("with_gen", "with_cand"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_affine_subtraction(with_gen: bool, with_cand: bool, dtype: torch.dtype) -> None:
    g = field(3, 6, 5, seed=9).to(dtype)
    r = field(4, 3, 6, 5, seed=10).to(dtype)
    ga = affine(3, seed=11) if with_gen else None
    ca = affine(4, 3, seed=12) if with_cand else None
    run(g, r, gen_affine=ga, cand_affine=ca)
    run(g, r, gen_affine=ga, cand_affine=ca, config=SPLIT)


def test_affine_removes_camera_motion() -> None:
    """A pure affine flow minus its own parameters leaves no motion: no valid pixel."""
    h, w = 5, 7
    ga = affine(2, seed=13)
    y, x = grid(h, w, device=DEVICE)
    a = ga[:, None, None, :]
    ux = a[..., 0] + a[..., 1] * x + a[..., 2] * y
    uy = a[..., 3] + a[..., 4] * x + a[..., 5] * y
    g = torch.stack([ux, uy], dim=-1).float()
    r = field(2, 2, h, w, seed=14)
    got = backend.flow_similarity(g, r, 0.5, ga, None)
    assert float(got.pair.abs().sum()) == 0.0
    assert_close(got, g, r, mu_min=0.5, gen_affine=ga)


def test_all_zero_flow_and_mu_min_zero() -> None:
    z = torch.zeros(2, 4, 5, 2, device=DEVICE)
    zc = torch.zeros(3, 2, 4, 5, 2, device=DEVICE)
    for mu in (0.0, 0.5):
        got = backend.flow_similarity(z, zc, mu, None, None)
        assert float(got.pair.abs().sum() + got.gen_field.abs().sum()) == 0.0
        assert_close(got, z, zc, mu_min=mu)
    # mu_min = 0: every nonzero vector counts, exact zeros do not
    g = field(2, 4, 5, seed=15)
    r = field(3, 2, 4, 5, seed=16)
    g[:, 1] = 0.0
    r[:, :, :, 2] = 0.0
    run(g, r, mu_min=0.0)
    run(g, r, mu_min=0.0, config=SPLIT)


def test_threshold_is_strict_on_exact_values() -> None:
    """|v| == mu_min exactly is not motion (strict >), as in the reference."""
    g = torch.tensor([0.5, 0.0, 0.0, -0.5, 0.3, 0.4, 1.0, 1.0, 0.25, 0.0], device=DEVICE)
    g = g.reshape(1, 1, 5, 2)
    r = g.flip(2)[None].clone()
    for mu in (0.5, 0.25, 0.0):
        for dtype in (torch.float32, torch.float16):
            run(g.to(dtype), r.to(dtype), mu_min=mu)


def near_threshold(shape: tuple[int, ...], mu: float, seed: int) -> torch.Tensor:
    """float32 vectors whose norms lie within a few float32 ulps of ``mu`` (both sides)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(shape, generator=g, dtype=torch.float64) * 2 * torch.pi
    k = torch.randint(-6, 7, shape, generator=g).double()
    rad = mu * (1 + k * 2.0**-24)
    return torch.stack([rad * theta.cos(), rad * theta.sin()], dim=-1).float().to(DEVICE)


@pytest.mark.parametrize("mu", [0.5, 0.3, 1.7])
def test_threshold_is_exact_near_the_boundary(mu: float) -> None:
    """The float32 fast path is re-decided in float64 wherever it is not certain: the mask,
    hence COUNT, equals the reference's bit for bit."""
    g = near_threshold((2, 6, 7), mu, seed=32)
    r = near_threshold((3, 2, 6, 7), mu, seed=33)
    want = reference(g, r, mu_min=mu)
    assert 0 < float(want.pair[..., 0].sum()) < 2 * 3 * 42  # both sides of the boundary
    run(g, r, mu_min=mu)
    run(g, r, mu_min=mu, config=SPLIT)
    # residual flows near the threshold: a known affine motion plus a near-threshold vector
    ga, ca = affine(2, seed=34), affine(3, 2, seed=35)
    y, x = grid(6, 7, device=DEVICE)

    def plus_affine(u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        a = a[..., None, None, :]
        ax = a[..., 0] + a[..., 1] * x + a[..., 2] * y
        ay = a[..., 3] + a[..., 4] * x + a[..., 5] * y
        return (u.double() + torch.stack([ax, ay], dim=-1)).float()

    run(plus_affine(g, ga), plus_affine(r, ca), mu_min=mu, gen_affine=ga, cand_affine=ca)


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.3, 1.7, 1e-10, 3.0e5, 1e200])
def test_sq_threshold(mu: float) -> None:
    """sqrt(s) > mu  <=>  s > sq_threshold(mu), for IEEE doubles."""
    thr = fs.sq_threshold(mu)
    assert math.sqrt(thr) <= mu
    assert math.sqrt(math.nextafter(thr, math.inf)) > mu


def test_non_contiguous_inputs() -> None:
    t, h, w, n = 2, 5, 6, 3
    # gen stored channel-first (T, 2, H, W): stride_c = H*W, stride_w = 1
    g = field(t, h, w, seed=17).permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    assert not g.is_contiguous()
    # cands: every other column of a wider field, H and W swapped by a transpose
    wide = field(n, t, w, 2 * h, seed=18)
    r = wide[:, :, :, ::2].transpose(2, 3)
    assert tuple(r.shape) == (n, t, h, w, 2)
    assert not r.is_contiguous()
    run(g, r)
    run(g, r, config=SPLIT, gen_affine=affine(t, seed=19), cand_affine=affine(n, t, seed=20))
    # a contiguous field sliced along N and T keeps the packed (dx, dy) fast path
    big = field(2 * n, 2 * t, h, w, seed=21)
    run(g, big[1::2, ::2])
    # one candidate broadcast N times (stride 0), half precision
    rb = field(1, t, h, w, seed=22).to(torch.float16).expand(n, t, h, w, 2)
    run(g.half(), rb, config=SPLIT)
    # packed layout at an odd element offset (not float2-aligned)
    flat = field(n * t * h * w + 1, seed=36).reshape(-1)[1 : 1 + n * t * h * w * 2]
    run(g, flat.view(n, t, h, w, 2))


def test_int64_offsets_and_integer_division(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paths for frames of >= 2^31 elements / 2^22 pixels, forced on small inputs."""
    monkeypatch.setattr(fs, "_OFF64_LIMIT", 0)
    monkeypatch.setattr(fs, "_FAST_DIV_LIMIT", 0)
    g = field(2, 5, 7, seed=37)
    r = field(3, 2, 5, 7, seed=38)
    run(g, r)
    run(g, r.transpose(2, 3).contiguous().transpose(2, 3), gen_affine=affine(2, seed=39))


def test_mixed_dtypes() -> None:
    g = field(2, 3, 5, seed=23).half()
    r = field(3, 2, 3, 5, seed=24)
    run(g, r)
    run(g.float(), r.half(), config=SPLIT)


def test_deterministic_and_empty() -> None:
    g = field(2, 9, 11, seed=25)
    r = field(6, 2, 9, 11, seed=26)
    a = backend.flow_similarity(g, r, 0.5, None, None, config=SPLIT)
    b = backend.flow_similarity(g, r, 0.5, None, None, config=SPLIT)
    for name in ("pair", "gen_field", "cand_field"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    e = backend.flow_similarity(g, r[:0], 0.5, None, None)
    assert tuple(e.pair.shape) == (0, 2, 4)
    assert tuple(e.gen_field.shape) == (2, 8)
    assert float(e.gen_field.abs().sum()) == 0.0


def test_public_api_backend_triton() -> None:
    g = field(2, 4, 3, seed=27)
    r = field(3, 2, 4, 3, seed=28)
    ca = affine(3, 2, seed=29)
    got = memlens.flow_similarity(g, r, mu_min=0.25, cand_affine=ca, backend="triton")
    assert_close(got, g, r, mu_min=0.25, cand_affine=ca)
    if DEVICE == "cpu":  # numpy in, numpy out
        out = memlens.flow_similarity(
            g.numpy(), r.numpy(), mu_min=0.25, cand_affine=ca.numpy(), backend="triton"
        )
        assert isinstance(out.pair, np.ndarray)
        np.testing.assert_allclose(out.pair, got.pair.numpy(), rtol=0, atol=0)


def test_rejects_bad_arguments() -> None:
    g = field(2, 4, 3, seed=30)
    with pytest.raises(ValueError, match="cands"):
        backend.flow_similarity(g, field(3, 2, 4, 4, seed=31), 0.5, None, None)
    with pytest.raises(TypeError, match="float32 or float16"):
        backend.flow_similarity(g.double(), field(3, 2, 4, 3, seed=31).double(), 0.5, None, None)
