"""The fused inversion step (memlens.ops.inversion) against its float64 specification
(memlens.reference.inversion), on every backend that runs here: values, gradients, 50-step
trajectories against torch.optim.Adam, awkward shapes, dtypes and the error paths."""

from __future__ import annotations

import math
import os

import pytest
import torch

from conftest import compile_for_sm90
from memlens import _dispatch
from memlens.ops import inversion as inv
from memlens.reference import inversion as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERP = os.environ.get("TRITON_INTERPRET") == "1"


def _backends() -> list[pytest.param]:  # type: ignore[valid-type]
    out = []
    for name in ("cpu", "cuda", "triton", "torch"):
        marks = [pytest.mark.triton] if name == "triton" else []
        if name == "cuda":
            marks.append(pytest.mark.cuda)
        spec = _dispatch.registered(inv.OP)[name]
        dev = "cuda" if name == "cuda" else DEVICE
        reason = (
            spec.why_unavailable(dev) if dev in spec.devices else f"{name} does not run on {dev}"
        )
        if name == "triton" and DEVICE == "cpu" and not INTERP:
            reason = "Triton needs a GPU or TRITON_INTERPRET=1"
        if name == "cpu" and DEVICE == "cuda":
            reason = None
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


BACKENDS = _backends()


def _dev(backend: str) -> str:
    return "cpu" if backend == "cpu" else DEVICE


def _problem(n: int, b: int, shape: tuple[int, ...], dev: str, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    st = inv.InversionState.create(n, shape, seed=(seed + 1) * 2**33 + 12345, device=dev)
    st.mu.copy_(torch.randn(st.mu.shape, generator=g))
    st.logvar.copy_(0.3 * torch.randn(st.mu.shape, generator=g))
    x0 = torch.randn((n, *shape), generator=g).to(dev)
    a = (torch.rand((n, b), generator=g) * 0.9 + 0.05).to(dev)
    s = (1 - a * a).sqrt()
    return st, x0, a, s, g


# ------------------------------------------------------------------ the generator itself


def test_philox_known_answers() -> None:
    """Random123's known-answer vectors for Philox4x32-10."""
    cases = [
        ((0, 0, 0, 0), 0, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, 0xFFFFFFFFFFFFFFFF, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            0x299F31D0A4093822,
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for c, key, want in cases:
        got = ref.philox4x32(tuple(torch.tensor([x], dtype=torch.int64) for x in c), key)  # type: ignore[arg-type]
        assert tuple(int(v) for v in got) == want


def test_reference_normals_are_standard_and_independent() -> None:
    z = ref.normal(torch.tensor(5), torch.arange(200_000), seed=3, step=0)
    assert abs(float(z.mean())) < 0.01
    assert abs(float(z.std()) - 1) < 0.01
    assert abs(float(((z - z.mean()) ** 4).mean() / z.var() ** 2) - 3) < 0.1  # kurtosis
    z2 = ref.normal(torch.tensor(5), torch.arange(200_000), seed=3, step=1)
    assert abs(float(torch.corrcoef(torch.stack([z, z2]))[0, 1])) < 0.01
    assert torch.equal(z, ref.normal(torch.tensor(5), torch.arange(200_000), seed=3, step=0))
    # the four normals of one Philox block (two Box-Muller pairs) are uncorrelated, and so are
    # neighbouring rows
    lanes = z.view(-1, 4).T
    assert float(torch.corrcoef(lanes).triu(1).abs().max()) < 0.02  # 4.4 sigma at 50k pairs
    z6 = ref.normal(torch.tensor(6), torch.arange(200_000), seed=3, step=0)
    assert abs(float(torch.corrcoef(torch.stack([z, z6]))[0, 1])) < 0.01


# ---------------------------------------------------------------- backends vs reference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("n", "b", "shape"), [(1, 1, (1,)), (2, 3, (5, 7)), (3, 2, (4, 33, 17)), (1, 5, (2049,))]
)
def test_sample_loss_update_match_reference(
    backend: str, n: int, b: int, shape: tuple[int, ...]
) -> None:
    if backend == "triton" and INTERP and math.prod(shape) > 600:
        pytest.skip("kept small under the interpreter")
    dev = _dev(backend)
    st, x0, a, s, g = _problem(n, b, shape, dev)
    d = math.prod(shape)
    xt = inv.sample_xt(st, x0, a, s, backend=backend)
    want = ref.sample_xt(st.mu, st.logvar, x0.reshape(n, d), a, s, st.seed, 0)
    assert xt.shape == (n, b, *shape)
    assert xt.dtype == torch.float32
    torch.testing.assert_close(xt.reshape(n, b, d).double(), want, atol=2e-6, rtol=2e-6)

    eh = torch.randn((n, b, *shape), generator=g).to(dev)
    sse, g_eps = inv.x0_loss(xt, eh, x0, a, s, backend=backend)
    w_sse, w_g = ref.x0_loss(xt.reshape(n, b, d), eh.reshape(n, b, d), x0.reshape(n, d), a, s)
    torch.testing.assert_close(sse, w_sse, rtol=1e-5, atol=0)
    torch.testing.assert_close(
        g_eps.reshape(n, b, d).double(), w_g, rtol=1e-5, atol=1e-7 * float(w_g.abs().max())
    )

    gm = torch.randn((n, b, *shape), generator=g).to(dev)
    w = torch.rand(n, generator=g).to(dev) * 3
    before = [t.clone() for t in (st.mu, st.logvar)]
    for t in (st.m_mu, st.v_mu, st.m_lv, st.v_lv):  # a later step: non-zero moments
        t.copy_(torch.rand(t.shape, generator=g) * 0.1)
    moments = [t.clone() for t in (st.m_mu, st.v_mu, st.m_lv, st.v_lv)]
    st.adam_t = 4  # update() takes step 5
    xn = inv.update(st, g_eps, gm, s, w, x0=x0, next_coefs=(a, s), backend=backend)
    want_u = ref.update(
        *before, moments, d, w_g, gm.reshape(n, b, d), s, w, st.seed, 0, 5, ref.AdamSettings()
    )  # type: ignore[arg-type]
    for got, exp in zip(
        (st.mu, st.logvar, st.m_mu, st.v_mu, st.m_lv, st.v_lv), want_u[:6], strict=True
    ):
        torch.testing.assert_close(got.double(), exp, rtol=1e-5, atol=1e-6)
    assert st.adam_t == 5
    assert st.noise_step == 1
    assert xn is not None
    want_x = ref.sample_xt(st.mu, st.logvar, x0.reshape(n, d), a, s, st.seed, 1)
    torch.testing.assert_close(xn.reshape(n, b, d).double(), want_x, atol=3e-6, rtol=3e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_model_tensors(backend: str, dtype: torch.dtype) -> None:
    """x_t is written in the model's dtype (rounded to nearest even from float32), and eps_hat
    and g_model are read in it."""
    dev = _dev(backend)
    n, b, shape = 2, 3, (3, 11)
    d = math.prod(shape)
    st, x0, a, s, g = _problem(n, b, shape, dev, seed=4)
    xt = inv.sample_xt(st, x0, a, s, dtype=dtype, backend=backend)
    assert xt.dtype == dtype
    want = ref.sample_xt(st.mu, st.logvar, x0.reshape(n, d), a, s, st.seed, 0).float().to(dtype)
    ulp = 2e-3 if dtype == torch.float16 else 1.6e-2  # one unit in the last place, relative
    torch.testing.assert_close(xt.reshape(n, b, d).float(), want.float(), rtol=ulp, atol=1e-4)
    eh = torch.randn((n, b, *shape), generator=g).to(dev).to(dtype)
    sse, g_eps = inv.x0_loss(xt, eh, x0, a, s, backend=backend)
    w_sse, _w_g = ref.x0_loss(xt.reshape(n, b, d), eh.reshape(n, b, d), x0.reshape(n, d), a, s)
    torch.testing.assert_close(sse, w_sse, rtol=1e-5, atol=0)
    gm = torch.randn((n, b, *shape), generator=g).to(dev).to(dtype)
    xn = inv.update(st, g_eps, gm, s, 1.0, x0=x0, next_coefs=(a, s), backend=backend)
    assert xn is not None
    assert xn.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_is_deterministic_and_fresh_per_step(backend: str) -> None:
    dev = _dev(backend)
    st, x0, a, s, _ = _problem(2, 2, (8, 8), dev)
    x1 = inv.sample_xt(st, x0, a, s, backend=backend)
    assert torch.equal(x1, inv.sample_xt(st, x0, a, s, backend=backend))
    st.noise_step = 1
    x2 = inv.sample_xt(st, x0, a, s, backend=backend)
    assert float((x1 - x2).abs().mean()) > 0.1


def _cpu_levels() -> list[str]:
    if _dispatch.compiled_cpu_reason("cpu") is not None:
        return []
    from memlens.backends.cpu import supported_simd

    return supported_simd()


@pytest.mark.parametrize("level", _cpu_levels())
def test_cpu_simd_levels_draw_the_generators_normals(
    monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    """Each level's Philox path (AVX-512: 16 or 32 blocks at a time, AVX2: 8 or 16, then a
    scalar tail) draws the generator's normals, for lengths around every vector and batch
    boundary: with mu = logvar = x0 = 0 and s = 1, x_t is the noise itself. A wrong Philox word
    gives an unrelated number; the tolerance is only the polynomials' float32 rounding (FMA
    contraction differs between levels)."""
    monkeypatch.setenv("MEMLENS_SIMD", level)
    for d in (1, 3, 4, 5, 63, 64, 65, 127, 128, 129, 511, 512, 513, 2047, 2048, 2049, 4100):
        st = inv.InversionState.create(3, (d,), seed=0xDEADBEEF12345, device="cpu")
        st.noise_step = 7
        a = torch.full((3, 2), 0.5)
        x = inv.sample_xt(st, torch.zeros(3, d), a, torch.ones(3, 2), backend="cpu")
        z = ref.normal(torch.arange(6)[:, None], torch.arange(d)[None, :], seed=0xDEADBEEF12345,
                       step=7)  # fmt: skip
        torch.testing.assert_close(x.reshape(6, d).double(), z, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_buffers_are_filled_in_place(backend: str) -> None:
    """``out=`` gives the same numbers as a fresh tensor, in the caller's buffer, so a loop
    can reuse two buffers across steps; bad buffers are refused naming ``out``."""
    dev = _dev(backend)
    st, x0, a, s, g = _problem(2, 3, (5, 7), dev)
    st2 = inv.InversionState(*(t.clone() for t in (st.mu, st.logvar, st.m_mu, st.v_mu, st.m_lv,
                             st.v_lv)), seed=st.seed, shape=st.shape)  # fmt: skip
    buf = torch.full((2, 3, 5, 7), float("nan"), device=dev)
    xt = inv.sample_xt(st, x0, a, s, out=buf, backend=backend)
    assert xt.data_ptr() == buf.data_ptr()
    assert torch.equal(xt, inv.sample_xt(st, x0, a, s, backend=backend))
    eh = torch.randn((2, 3, 5, 7), generator=g).to(dev)
    gbuf = torch.full_like(buf, float("nan"))
    _, ge = inv.x0_loss(xt, eh, x0, a, s, out=gbuf, backend=backend)
    assert ge.data_ptr() == gbuf.data_ptr()
    _, ge2 = inv.x0_loss(xt, eh, x0, a, s, backend=backend)
    assert torch.equal(ge, ge2)
    nbuf = torch.full((2, 3, 35), float("nan"), device=dev)  # (N, B, D) is accepted too
    xn = inv.update(st, ge, eh, s, 0.5, x0=x0, next_coefs=(a, s), out=nbuf, backend=backend)
    xn2 = inv.update(st2, ge2, eh, s, 0.5, x0=x0, next_coefs=(a, s), backend=backend)
    assert xn is not None
    assert xn2 is not None
    assert xn.data_ptr() == nbuf.data_ptr()
    assert torch.equal(xn, xn2)
    assert torch.equal(st.mu, st2.mu)
    assert torch.equal(st.v_lv, st2.v_lv)
    with pytest.raises(ValueError, match="out must have shape"):
        inv.sample_xt(st, x0, a, s, out=buf[:, :2], backend=backend)
    with pytest.raises(TypeError, match="out must have dtype"):
        inv.x0_loss(xt, eh, x0, a, s, out=buf.double(), backend=backend)
    with pytest.raises(ValueError, match="out must be contiguous"):
        inv.sample_xt(st, x0, a, s, out=buf.transpose(2, 3).contiguous().transpose(2, 3),
                      backend=backend)  # fmt: skip
    with pytest.raises(ValueError, match="out must not overlap"):
        inv.x0_loss(xt, eh, x0, a, s, out=eh, backend=backend)
    with pytest.raises(ValueError, match="out must not overlap"):
        inv.update(st, ge, eh, s, 0.5, x0=x0, next_coefs=(a, s), out=ge, backend=backend)
    with pytest.raises(ValueError, match="out is only used with next_coefs"):
        inv.update(st, ge, eh, s, 0.5, out=nbuf, backend=backend)
    with pytest.raises(TypeError, match="out must be a torch tensor"):
        inv.sample_xt(st, x0, a, s, out=[1.0], backend=backend)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- gradients


def test_reference_gradient_formula_equals_autograd() -> None:
    """The analytic gradients of the spec (through g_eps and g_model) equal autograd of the
    whole objective p + w r in float64, with a linear mock model eps_hat = x_t M."""
    torch.manual_seed(0)
    n, b, d = 2, 3, 6
    mu = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    lv = (0.3 * torch.randn(n, d, dtype=torch.float64)).requires_grad_()
    x0 = torch.randn(n, d, dtype=torch.float64)
    a = torch.rand(n, b, dtype=torch.float64) * 0.9 + 0.05
    s = (1 - a * a).sqrt()
    m = torch.randn(d, d, dtype=torch.float64) * 0.3
    w = torch.tensor([0.7, 2.0], dtype=torch.float64)
    seed, step = 99, 3

    def objective(mu: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
        xt = ref.sample_xt(mu, lv, x0, a, s, seed, step)
        eh = xt @ m
        x0h = (xt - s[..., None] * eh) / a[..., None]
        p = ((x0h - x0[:, None]) ** 2).mean(dim=(1, 2))
        r = 0.5 * (mu * mu + lv.exp() - lv - 1).mean(1)
        return (p + w * r).sum()

    torch.autograd.gradcheck(objective, (mu, lv))
    gmu, glv = torch.autograd.grad(objective(mu, lv), (mu, lv))
    xt = ref.sample_xt(mu.detach(), lv.detach(), x0, a, s, seed, step)
    _, g_eps = ref.x0_loss(xt, xt @ m, x0, a, s)
    g_model = g_eps @ m.T  # J^T g_eps for eps_hat = x_t M
    z = torch.zeros_like(mu)
    out = ref.update(
        mu.detach(),
        lv.detach(),
        (z, z, z, z),
        d,
        g_eps,
        g_model,
        s,
        w,
        seed,
        step,
        1,
        ref.AdamSettings(),
    )
    torch.testing.assert_close(out[6], gmu)
    torch.testing.assert_close(out[7], glv)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autograd_functions_match_reference_autograd(backend: str) -> None:
    dev = _dev(backend)
    n, b, shape = 2, 4, (3, 5)
    d = math.prod(shape)
    st, x0, a, s, g = _problem(n, b, shape, dev, seed=7)
    mu = st.mu.clone().requires_grad_()
    lv = st.logvar.clone().requires_grad_()
    up = torch.randn((n, b, d), generator=g).to(dev)
    xt = inv.reparam_sample(mu, lv, x0.reshape(n, d), a, s, seed=11, step=2, backend=backend)
    (xt * up).sum().backward()
    mu64 = st.mu.double().requires_grad_()
    lv64 = st.logvar.double().requires_grad_()
    (ref.sample_xt(mu64, lv64, x0.reshape(n, d), a, s, 11, 2) * up.double()).sum().backward()
    assert mu.grad is not None
    assert lv.grad is not None
    assert mu64.grad is not None
    assert lv64.grad is not None
    torch.testing.assert_close(mu.grad.double(), mu64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lv.grad.double(), lv64.grad, rtol=1e-5, atol=1e-5)

    xt_l = xt.detach().view(n, b, *shape).requires_grad_()
    eh = torch.randn((n, b, *shape), generator=g).to(dev).requires_grad_()
    p = inv.x0_loss_value(xt_l, eh, x0, a, s, backend=backend)
    (p * torch.tensor([1.0, 2.0], device=dev)).sum().backward()
    xt64 = xt_l.detach().double().requires_grad_()
    eh64 = eh.detach().double().requires_grad_()
    x0h = (xt64 - s.double()[..., None, None] * eh64) / a.double()[..., None, None]
    p64 = ((x0h - x0.double()[:, None]) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(p.double(), p64.detach(), rtol=1e-5, atol=0)
    (p64 * torch.tensor([1.0, 2.0], dtype=torch.float64, device=dev)).sum().backward()
    assert xt_l.grad is not None
    assert eh.grad is not None
    torch.testing.assert_close(xt_l.grad.double(), xt64.grad, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(eh.grad.double(), eh64.grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_steps_follow_torch_adam_for_50_steps(backend: str) -> None:
    """The fused loop (loss pass, model VJP, update pass) against the same objective built
    from the differentiable functions and stepped by torch.optim.Adam(lr=0.1)."""
    dev = _dev(backend)
    n, b, shape = 2, 4, (6,)
    d = 6
    steps = 50 if not (backend == "triton" and INTERP) else 12
    st, x0, _, _, g = _problem(n, b, shape, dev, seed=5)
    st.mu.zero_()
    st.logvar.zero_()
    m = (torch.randn((d, d), generator=g) * 0.2).to(dev)
    w = torch.tensor([1.0, 0.3], device=dev)
    abar = torch.rand((steps + 1, n, b), generator=g).to(dev) * 0.9 + 0.05
    coefs = [(ab.sqrt(), (1 - ab).sqrt()) for ab in abar]

    mu = torch.zeros((n, d), device=dev, requires_grad=True)
    lv = torch.zeros((n, d), device=dev, requires_grad=True)
    opt = torch.optim.Adam([mu, lv], lr=0.1)
    for k in range(steps):
        a, s = coefs[k]
        xt = inv.reparam_sample(mu, lv, x0, a, s, seed=st.seed, step=k, backend=backend)
        p = inv.x0_loss_value(xt, xt @ m, x0[:, None], a, s, backend=backend)
        r = 0.5 * (mu * mu + lv.exp() - lv - 1).mean(1)
        opt.zero_grad()
        (p + w * r).sum().backward()
        opt.step()

    a, s = coefs[0]
    xt = inv.sample_xt(st, x0, a, s, backend=backend)
    for k in range(steps):
        xt = xt.detach().requires_grad_()
        eh = xt @ m
        _, g_eps = inv.x0_loss(xt, eh, x0, a, s, backend=backend)
        (g_model,) = torch.autograd.grad(eh, xt, g_eps)
        s_now = s
        a, s = coefs[k + 1]
        nxt = inv.update(st, g_eps, g_model, s_now, w, x0=x0, next_coefs=(a, s), backend=backend)
        assert nxt is not None
        xt = nxt
    torch.testing.assert_close(st.mu, mu.detach(), rtol=2e-3, atol=2e-4)
    torch.testing.assert_close(st.logvar, lv.detach(), rtol=2e-3, atol=2e-4)
    assert float(st.mu.abs().max()) > 0.05  # it moved


# ------------------------------------------------------------------------------ errors


def test_errors_name_the_argument() -> None:
    st, x0, a, s, _ = _problem(2, 3, (4,), "cpu")
    with pytest.raises(ValueError, match="a must have shape"):
        inv.sample_xt(st, x0, a[:1], s)
    with pytest.raises(ValueError, match="a and s"):
        inv.sample_xt(st, x0, a, s[:, :2])
    with pytest.raises(ValueError, match=r"a \(sqrt"):
        inv.sample_xt(st, x0, -a, s)
    with pytest.raises(ValueError, match="s contains NaN"):
        inv.sample_xt(st, x0, a, s * float("nan"))
    with pytest.raises(ValueError, match="x0 must have shape"):
        inv.sample_xt(st, x0[:, :3], a, s)
    with pytest.raises(TypeError, match="dtype"):
        inv.sample_xt(st, x0, a, s, dtype=torch.float64)
    xt = inv.sample_xt(st, x0, a, s)
    with pytest.raises(TypeError, match="eps_hat must have xt's dtype"):
        inv.x0_loss(xt, xt.half(), x0, a, s)
    with pytest.raises(ValueError, match="eps_hat must have shape"):
        inv.x0_loss(xt, xt[:, :2], x0, a, s)
    _sse, g = inv.x0_loss(xt, xt, x0, a, s)
    with pytest.raises(ValueError, match="w must"):
        inv.update(st, g, g, s, [1.0, float("nan")])
    with pytest.raises(ValueError, match="w must be a number or have N=2"):
        inv.update(st, g, g, s, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="x0 is required"):
        inv.update(st, g, g, s, 1.0, next_coefs=(a, s))
    with pytest.raises(ValueError, match=r"adam.beta1"):
        inv.update(st, g, g, s, 1.0, adam=ref.AdamSettings(beta1=1.0))
    with pytest.raises(ValueError, match="seed"):
        inv.InversionState.create(1, (2,), seed=-1)
    with pytest.raises(ValueError, match="shape"):
        inv.InversionState.create(1, (0, 2), seed=1)


def test_kl_oracles() -> None:
    """methods.md §2.10 item 1: per-dimension KL, independent of the number of dimensions."""
    for d in (1, 7, 100):
        z = torch.zeros(1, d)
        assert float(ref.kl_per_dim(z, z)) == 0.0
        assert float(ref.kl_per_dim(z + 1, z)) == pytest.approx(0.5)
        assert float(ref.kl_per_dim(z, z + math.log(4))) == pytest.approx(0.80685, abs=1e-5)
        assert float(ref.kl_per_dim(z, z + math.log(0.25))) == pytest.approx(0.31815, abs=1e-5)
    st = inv.InversionState.create(3, (2, 2), seed=0)
    assert torch.equal(st.score(), torch.zeros(3, dtype=torch.float64))


_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from memlens.kernels import inversion as ki

target = GPUTarget("cuda", 90, 32)


def build(fn, sig, cx):
    sig = dict(sig)
    for k in cx:
        sig[k] = "constexpr"
    cx = {(fn.arg_names.index(k),): v for k, v in cx.items()}
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx), target=target,
                   options=dict(num_warps=4))


for dt in ("fp32", "bf16", "fp16"):
    build(ki._sample_kernel, dict(MU="*fp32", LV="*fp32", X0="*fp32", A="*fp32", S="*fp32",
          OUT="*" + dt, B="i32", D="i32", k0="i32", k1="i32", step="i32"), dict(BLOCK=1024))
    build(ki._loss_kernel, dict(XT="*" + dt, EH="*" + dt, X0="*fp32", A="*fp32", S="*fp32",
          PART="*fp32", GE="*fp32", B="i32", D="i32", n_blocks="i32", inv_bd="fp32"),
          dict(BLOCK=1024))
    sig = {n: "*fp32" for n in "MU LV MM VM ML VL X0 GE S W A2 S2 GMU GLV".split()}
    sig.update(GM="*" + dt, XN="*" + dt)
    sig.update({n: "i32" for n in "B D k0 k1 step step2".split()})
    sig.update({n: "fp32" for n in "inv_d lr_bc1 b1 b2 inv_bc2s aeps".split()})
    for on in (True, False):
        build(ki._update_kernel, sig, dict(HAS_GE=on, HAS_W=on, GRAD_MODE=not on, HAS_NEXT=on,
                                           BLOCK=1024))
print("compiled")
"""


@pytest.mark.triton
def test_triton_kernels_compile_for_sm90() -> None:
    """Every Triton kernel and variant compiles to an sm_90 cubin (the interpreter alone would
    not catch a GPU-only compile error). Needs no GPU."""
    compile_for_sm90(_COMPILE_SCRIPT)
