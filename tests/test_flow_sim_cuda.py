"""flow_similarity, CUDA C++ backend (memlens._cuda) against the float64 reference.

Needs a CUDA GPU and a build with MEMLENS_CUDA=ON; the plan checks need only the build.
"""

from __future__ import annotations

import pytest
import torch

import memlens
from memlens import _dispatch
from memlens.reference.flow import FlowStats, grid
from memlens.reference.flow import flow_similarity as reference

_NO_BUILD = _dispatch.compiled_cuda_reason("cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(_NO_BUILD is not None, reason="built without the CUDA backend"),
]
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RTOL = 1e-5  # relative to the sum of the absolute values of a statistic's terms


def field(*shape: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, 2, generator=g) * scale).cuda()


def affine(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, 6, generator=g, dtype=torch.float64) * 0.7).cuda()


def _scales(u: torch.Tensor) -> torch.Tensor:
    """(..., 8): the sum of |term| of each FIELD statistic (x, y in [-1, 1])."""
    u = u.double().abs()
    s = lambda v: v.sum(dim=(-2, -1))
    sx, sy = s(u[..., 0]), s(u[..., 1])
    return torch.stack([s(u.norm(dim=-1)), s((u * u).sum(-1)), sx, sx, sx, sy, sy, sy], dim=-1)


def assert_close(got: FlowStats, gen: torch.Tensor, cands: torch.Tensor, **kw: object) -> None:
    want = reference(gen, cands, **kw)
    for name in ("pair", "gen_field", "cand_field"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == torch.float64, name
        assert a.is_cuda, name
        assert tuple(a.shape) == tuple(b.shape), name
    # the motion mask is exact: COUNT equals the reference's
    torch.testing.assert_close(got.pair[..., 0], want.pair[..., 0], rtol=0, atol=0)
    tol = RTOL * want.pair[..., :1].clamp_min(1.0) + 1e-9
    assert bool(((got.pair[..., 1:] - want.pair[..., 1:]).abs() <= tol).all()), got.pair - want.pair
    for name, u in (("gen_field", gen), ("cand_field", cands)):
        a, b = getattr(got, name), getattr(want, name)
        assert bool(((a - b).abs() <= RTOL * _scales(u) + 1e-9).all()), (name, a - b)


def run(gen: torch.Tensor, cands: torch.Tensor, **kw: object) -> FlowStats:
    got = memlens.flow_similarity(gen, cands, backend="cuda", **kw)
    assert_close(got, gen, cands, **kw)
    return got


# ------------------------------------------------------------------------------------------


def test_plan_is_deterministic_and_bounded() -> None:
    from memlens import _cuda

    p = _cuda.flow_sim_plan(64, 15, 256, 256)
    assert p == _cuda.flow_sim_plan(64, 15, 256, 256)
    assert p["chunk_pixels"] % 256 == 0  # whole steps of the 256 threads
    assert p["chunk_pixels"] <= 8192  # <= 32 pixels per thread summed in float32
    assert p["chunks"] * p["chunk_pixels"] >= 256 * 256
    assert p["blocks"] == 16 * 15 * p["chunks"]
    assert _cuda.flow_sim_workspace_bytes(64, 15, 256, 256) == p["workspace"]
    assert _cuda.flow_sim_plan(64, 15, 256, 256, True)["cands_per_block"] == 2
    assert _cuda.flow_sim_workspace_bytes(3, 2, 7, 9) == 0  # one chunk: no workspace
    with pytest.raises(ValueError, match="sizes"):
        _cuda.flow_sim_plan(-1, 1, 1, 1)


@needs_gpu
@pytest.mark.parametrize(
    ("gdt", "cdt"),
    [
        (torch.float32, torch.float32),
        (torch.float16, torch.float16),
        (torch.float32, torch.float16),
        (torch.float16, torch.float32),
    ],
)
@pytest.mark.parametrize(
    ("n", "t", "h", "w"),
    [(1, 1, 1, 1), (2, 1, 5, 1), (3, 2, 7, 9), (1, 3, 1, 6), (5, 2, 4, 8), (9, 2, 33, 17)],
)
def test_awkward_shapes(n: int, t: int, h: int, w: int, gdt: torch.dtype, cdt: torch.dtype) -> None:
    run(field(t, h, w, seed=1).to(gdt), field(n, t, h, w, seed=2).to(cdt))


@needs_gpu
@pytest.mark.parametrize(
    ("n", "t", "h", "w"), [(1, 1, 300, 301), (6, 3, 128, 128), (64, 2, 64, 64)]
)
def test_many_chunks(n: int, t: int, h: int, w: int) -> None:
    """Frames split over several CTAs (float64 partials + the chunk-sum kernel)."""
    g = field(t, h, w, seed=3) + 1.0
    r = field(n, t, h, w, seed=4) - 0.5
    run(g, r)
    run(g.half(), r.half(), mu_min=0.25)
    run(g, r, gen_affine=affine(t, seed=5), cand_affine=affine(n, t, seed=6))


@needs_gpu
@pytest.mark.parametrize(("with_gen", "with_cand"), [(True, False), (False, True), (True, True)])
def test_affine_subtraction(with_gen: bool, with_cand: bool) -> None:
    g = field(3, 6, 5, seed=9)
    r = field(5, 3, 6, 5, seed=10)
    ga = affine(3, seed=11) if with_gen else None
    ca = affine(5, 3, seed=12) if with_cand else None
    run(g, r, gen_affine=ga, cand_affine=ca)
    run(g.half(), r.half(), gen_affine=ga, cand_affine=ca)


def near_threshold(shape: tuple[int, ...], mu: float, seed: int) -> torch.Tensor:
    """float32 vectors whose norms lie within a few float32 ulps of ``mu`` (both sides)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(shape, generator=g, dtype=torch.float64) * 2 * torch.pi
    k = torch.randint(-6, 7, shape, generator=g).double()
    rad = mu * (1 + k * 2.0**-24)
    return torch.stack([rad * theta.cos(), rad * theta.sin()], dim=-1).float().cuda()


@needs_gpu
@pytest.mark.parametrize("mu", [0.5, 0.3, 1.7])
def test_threshold_is_exact_near_the_boundary(mu: float) -> None:
    g = near_threshold((2, 40, 37), mu, seed=32)
    r = near_threshold((5, 2, 40, 37), mu, seed=33)
    run(g, r, mu_min=mu)
    ga, ca = affine(2, seed=34), affine(5, 2, seed=35)
    y, x = grid(40, 37, device="cuda")

    def plus_affine(u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        a = a[..., None, None, :]
        ax = a[..., 0] + a[..., 1] * x + a[..., 2] * y
        ay = a[..., 3] + a[..., 4] * x + a[..., 5] * y
        return (u.double() + torch.stack([ax, ay], dim=-1)).float()

    run(plus_affine(g, ga), plus_affine(r, ca), mu_min=mu, gen_affine=ga, cand_affine=ca)


@needs_gpu
def test_zero_flow_and_exact_values() -> None:
    z, zc = torch.zeros(2, 4, 5, 2, device="cuda"), torch.zeros(3, 2, 4, 5, 2, device="cuda")
    for mu in (0.0, 0.5):
        got = run(z, zc, mu_min=mu)
        assert float(got.pair.abs().sum() + got.gen_field.abs().sum()) == 0.0
    g, r = field(2, 4, 5, seed=15), field(3, 2, 4, 5, seed=16)
    g[:, 1] = 0.0
    r[:, :, :, 2] = 0.0
    run(g, r, mu_min=0.0)
    e = torch.tensor([0.5, 0.0, 0.0, -0.5, 0.3, 0.4, 1.0, 1.0, 0.25, 0.0], device="cuda")
    e = e.reshape(1, 1, 5, 2)
    for mu in (0.5, 0.25, 0.0, 1e-30, 1e16):
        run(e, e.flip(2)[None].clone(), mu_min=mu)
        run(e.half(), e.flip(2)[None].half(), mu_min=mu)


@needs_gpu
def test_non_contiguous_and_unaligned_inputs() -> None:
    t, h, w, n = 2, 5, 6, 3
    g = field(t, h, w, seed=17).permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    r = field(n, t, w, 2 * h, seed=18)[:, :, :, ::2].transpose(2, 3)
    assert not g.is_contiguous()
    assert not r.is_contiguous()
    run(g, r)
    run(g, r, gen_affine=affine(t, seed=19), cand_affine=affine(n, t, seed=20))
    run(g, field(2 * n, 2 * t, h, w, seed=21)[1::2, ::2])  # packed pairs, strided N and T
    run(g.half(), field(1, t, h, w, seed=22).half().expand(n, t, h, w, 2))  # stride 0
    # packed layout at an odd element offset: not float2-aligned -> the strided path
    flat = field(n * t * h * w + 1, seed=23).reshape(-1)[1 : 1 + n * t * h * w * 2]
    run(g, flat.view(n, t, h, w, 2))


@needs_gpu
def test_side_stream_and_deterministic() -> None:
    g, r = field(3, 64, 48, seed=24), field(7, 3, 64, 48, seed=25)
    base = memlens.flow_similarity(g, r, backend="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        got = memlens.flow_similarity(g, r, backend="cuda")
    side.synchronize()
    for name in ("pair", "gen_field", "cand_field"):
        assert torch.equal(getattr(base, name), getattr(got, name))
    assert_close(got, g, r)


@needs_gpu
def test_empty_inputs() -> None:
    g = field(2, 4, 3, seed=26)
    out = memlens.flow_similarity(g, field(0, 2, 4, 3, seed=27), backend="cuda")
    assert tuple(out.pair.shape) == (0, 2, 4)
    assert tuple(out.gen_field.shape) == (2, 8)
