# mypy: disable-error-code="no-untyped-def"
"""Triton top-k kernels (``memlens.kernels.topk``) against a float64 torch reference.

Runs on a GPU, or on the CPU under the Triton interpreter (``TRITON_INTERPRET=1`` set before
triton is imported). Shapes are kept tiny: the interpreter is slow.
"""

from __future__ import annotations

import os

import pytest
import torch

if not (os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()):
    pytest.skip("needs TRITON_INTERPRET=1 or a CUDA GPU", allow_module_level=True)

triton = pytest.importorskip("triton")
import triton.language as tl

from conftest import compile_for_sm90

try:
    from memlens.kernels import topk as tk
except ImportError:
    from kernels import topk as tk

pytestmark = pytest.mark.triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PRECISIONS = ["bf16", "int8"]


# ------------------------------------------------------------------------------------------
# float64 reference and checks
# ------------------------------------------------------------------------------------------


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def gen(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)


def queries(nq: int, d: int, seed: int) -> torch.Tensor:
    return unit(gen(nq, d, seed=seed)).contiguous()


def exact_scores(q: torch.Tensor, r: torch.Tensor, normalize: bool) -> torch.Tensor:
    """float64 (nq, nr): <q, r / max(||r||, 1e-12)> (or <q, r>)."""
    r64 = r.double().cpu()
    if normalize:
        r64 = r64 / r64.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return q.double().cpu() @ r64.T


def ref_topk(s64: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Descending, ties by the lower index (stable sort)."""
    o = torch.sort(s64, dim=1, descending=True, stable=True)
    return o.values[:, :k], o.indices[:, :k]


def fp32_tol(q: torch.Tensor, r: torch.Tensor, normalize: bool) -> float:
    d = q.shape[1]
    rn = 1.0 if normalize else float(r.double().norm(dim=1).max())
    return (d + 8) * 2.0**-23 * rn + 1e-7


def assert_topk(
    scores: torch.Tensor,
    idx: torch.Tensor,
    s64: torch.Tensor,
    k: int,
    tol: float,
    *,
    strict: bool = False,
) -> None:
    """Checks a top-k answer against the float64 score matrix ``s64``.

    Away from near-ties (gaps > 2 tol) the indices must equal the reference's; among equal
    fp32 scores indices must increase. ``strict``: indices equal the reference everywhere.
    """
    nq, nr = s64.shape
    assert scores.shape == (nq, k)
    assert idx.shape == (nq, k)
    assert scores.dtype == torch.float32
    assert idx.dtype == torch.int64
    assert scores.device.type == torch.device(DEVICE).type
    scores, idx = scores.cpu(), idx.cpu()
    assert int(idx.min()) >= 0
    assert int(idx.max()) < nr
    assert all(len(set(row.tolist())) == k for row in idx), "duplicate indices"
    got64 = s64.gather(1, idx)
    assert (scores.double() - got64).abs().max().item() <= tol
    assert bool((scores[:, :-1] >= scores[:, 1:]).all()), "scores not sorted descending"
    same = scores[:, :-1] == scores[:, 1:]
    assert bool((idx[:, 1:] > idx[:, :-1])[same].all()), "ties not broken by the lower index"
    ref_s, ref_i = ref_topk(s64, min(nr, k + 1))
    kth = ref_s[:, k - 1 : k]
    assert bool((got64 >= kth - 2 * tol).all()), "missed a true top-k reference"
    if strict:
        assert torch.equal(idx, ref_i[:, :k])
        return
    full = torch.cat([ref_s[:, :1] + 1, ref_s, ref_s[:, -1:] - 1], dim=1)  # sentinels
    if full.shape[1] < k + 3:  # k == nr: pad the right side
        full = torch.cat([full, full[:, -1:] - 1], dim=1)
    gap = torch.minimum(full[:, :k] - full[:, 1 : k + 1], full[:, 1 : k + 1] - full[:, 2 : k + 2])
    sep = gap > 2 * tol
    assert torch.equal(idx[sep], ref_i[:, :k][sep]), "order differs away from near-ties"


# ------------------------------------------------------------------------------------------
# exact top-k
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nq", "nr", "d", "k", "normalize"),
    [
        (1, 1, 1, 1, True),
        (1, 1, 5, 1, False),
        (3, 50, 1, 7, True),  # d = 1: every normalized score is +-1 (ties)
        (4, 300, 129, 10, True),  # odd d, several ref tiles and splits
        (5, 200, 16, 64, False),
        (2, 130, 32, 128, True),  # kp = 128
        (3, 100, 20, 100, True),  # k = nr < kp
        (17, 70, 8, 33, True),  # two query tiles, kp = 64
    ],
)
def test_exact_matches_reference(nq: int, nr: int, d: int, k: int, normalize: bool) -> None:
    q = queries(nq, d, seed=nq * 1000 + nr)
    r = gen(nr, d, seed=d * 7 + k)
    s, i = tk.topk_exact(q, r, k, normalize)
    assert_topk(s, i, exact_scores(q, r, normalize), k, fp32_tol(q, r, normalize))


@pytest.mark.parametrize("k", [300, 320])
def test_exact_large_k_streaming(k: int) -> None:
    """k above the register limit (fused kp <= 256) takes the streaming path; k = nr too."""
    nq, nr, d = 3, 320, 24
    q = queries(nq, d, seed=1)
    r = gen(nr, d, seed=2)
    s, i = tk.topk_exact(q, r, k, True)
    assert_topk(s, i, exact_scores(q, r, True), k, fp32_tol(q, r, True))


def test_streaming_several_chunks_equals_fused() -> None:
    nq, nr, d, k = 3, 200, 24, 40
    q = queries(nq, d, seed=3)
    r = gen(nr, d, seed=4)
    p = tk._prepare(q, r, 0, True)
    s1, i1 = tk._streaming(p, r, k, config=None, ref_chunk=64)  # 4 chunks, last one ragged
    s2, i2 = tk.topk_exact(q, r, k, True)
    assert torch.equal(i1, i2)
    assert torch.equal(s1, s2)
    assert_topk(s1, i1, exact_scores(q, r, True), k, fp32_tol(q, r, True))


def test_exact_independent_of_splits() -> None:
    nq, nr, d, k = 3, 230, 20, 16
    q = queries(nq, d, seed=5)
    r = gen(nr, d, seed=6)
    outs = [tk.topk_exact(q, r, k, True, splits=sp) for sp in (1, 3, 100)]
    for s, i in outs[1:]:
        assert torch.equal(s, outs[0][0])
        assert torch.equal(i, outs[0][1])
    s0, i0 = outs[0]
    assert_topk(s0, i0, exact_scores(q, r, True), k, fp32_tol(q, r, True))


@pytest.mark.parametrize("mode", ["exact", "bf16", "int8"])
@pytest.mark.parametrize("order", ["random", "ascending", "descending"])
def test_merge_strategies_and_operand_order_agree(mode: str, order: str) -> None:
    """The bitonic-network merge, the one-at-a-time merge, the hybrid, and the refs-as-A
    operand order all give the same answer, also when every tile improves the list
    (refs sorted by ascending score) or none does (descending)."""
    nq, nr, d, k = 2, 200, 40, 20
    q = queries(nq, d, seed=60)
    r = gen(nr, d, seed=61)
    perm = torch.argsort(exact_scores(q, r, True)[0], descending=order == "descending")
    if order != "random":
        r = r[perm.to(r.device)].contiguous()
    configs = [
        # BLOCK_D = 32 < d: two steps over d; 32 is also the least K of an int8 tensor-core dot
        tk._Config(16, 32, 32, 1, 1, refs_as_a=False, sort_min_hits=0),
        tk._Config(16, 32, 32, 1, 1, refs_as_a=False, sort_min_hits=1 << 30),
        tk._Config(16, 64, 32, 1, 1, refs_as_a=True, sort_min_hits=4),
    ]
    outs = []
    s64 = exact_scores(q, r, True)
    for cfg in configs:
        if mode == "exact":
            s, i = tk.topk_exact(q, r, k, True, splits=2, config=cfg)
            assert_topk(s, i, s64, k, fp32_tol(q, r, True))
        else:
            s, i, err = tk.topk_candidates(q, r, k, True, mode, splits=2, config=cfg)
            check_candidates(s, i, err, s64, k)
        outs.append((s, i))
    if mode != "exact":  # the accumulation order may differ (bf16): same refs, close scores
        for s, i in outs[1:]:
            assert torch.equal(i, outs[0][1])
            assert torch.allclose(s, outs[0][0], rtol=0, atol=1e-6)
    if mode == "int8":  # bit-exact scores: the orders must agree exactly
        emu = emulate_int8(q, r, True)
        want = torch.sort(emu, dim=1, descending=True, stable=True).indices[:, :k]
        assert torch.equal(outs[0][1].cpu(), want)


@pytest.mark.parametrize("view", ["column_slice", "transposed", "row_step"])
def test_exact_non_contiguous_refs(view: str) -> None:
    nq, nr, d, k = 3, 90, 19, 12
    q = queries(nq, d, seed=7)
    if view == "column_slice":
        r = gen(nr, d + 9, seed=8)[:, 4 : 4 + d]
    elif view == "transposed":
        r = gen(d, nr, seed=8).t()
    else:
        r = gen(2 * nr, d, seed=8)[::2]
    assert not r.is_contiguous()
    s, i = tk.topk_exact(q, r, k, True)
    assert_topk(s, i, exact_scores(q, r, True), k, fp32_tol(q, r, True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("normalize", [True, False])
def test_exact_half_precision_refs(dtype: torch.dtype, normalize: bool) -> None:
    nq, nr, d, k = 2, 100, 40, 9
    q = queries(nq, d, seed=9)
    r = gen(nr, d, seed=10, dtype=dtype)
    s, i = tk.topk_exact(q, r, k, normalize)
    assert_topk(s, i, exact_scores(q, r, normalize), k, fp32_tol(q, r, normalize))


def test_exact_duplicate_rows_tie_to_lower_index() -> None:
    nq, d = 3, 12
    base = gen(20, d, seed=11)
    # copies land in other tiles and other splits
    r = torch.cat([base, base[5:15], base, base[:3]]).contiguous()
    q = queries(nq, d, seed=12)
    s64 = exact_scores(q, r, True)
    for k in (7, 32):
        s, i = tk.topk_exact(q, r, k, True, splits=2)
        assert_topk(s, i, s64, k, fp32_tol(q, r, True), strict=True)


def test_exact_zero_rows_normalized() -> None:
    nq, nr, d = 2, 40, 10
    r = gen(nr, d, seed=13)
    zero = torch.tensor([0, 3, 4, 17, 31, 39])
    r[zero.to(r.device)] = 0
    q = queries(nq, d, seed=14)
    s, i = tk.topk_exact(q, r, nr, True)  # k = nr: the zero rows sit in the middle
    s64 = exact_scores(q, r, True)
    assert_topk(s, i, s64, nr, fp32_tol(q, r, True))
    for row_s, row_i in zip(s.cpu(), i.cpu(), strict=False):
        zi = row_i[row_s == 0]
        assert torch.equal(zi, zero), "zero rows must score 0 and tie by index"


def test_exact_empty_queries_and_bad_input() -> None:
    r = gen(10, 4, seed=15)
    s, i = tk.topk_exact(torch.empty(0, 4, device=DEVICE), r, 3, True)
    assert s.shape == (0, 3)
    assert i.shape == (0, 3)
    q = queries(2, 4, seed=16)
    with pytest.raises(ValueError, match="k must be"):
        tk.topk_exact(q, r, 11, True)
    with pytest.raises(ValueError, match="k must be"):
        tk.topk_exact(q, r, 0, True)
    with pytest.raises(ValueError, match="same dimension"):
        tk.topk_exact(q, gen(10, 5, seed=0), 3, True)
    with pytest.raises(TypeError, match="refs must be"):
        tk.topk_exact(q, r.double(), 3, True)
    with pytest.raises(ValueError, match="precision"):
        tk.topk_candidates(q, r, 3, True, "fp8")


@triton.jit
def _topk_probe(X, OUT, N: tl.constexpr, K: tl.constexpr, NATIVE: tl.constexpr):
    rows = tl.arange(0, 4)
    x = tl.load(X + rows[:, None] * N + tl.arange(0, N)[None, :])
    y = tk._topk_last(x, K, NATIVE)
    tl.store(OUT + rows[:, None] * K + tl.arange(0, K)[None, :], y)


@pytest.mark.parametrize(("n", "k"), [(8, 1), (16, 4), (32, 32), (64, 16)])
def test_interpreter_topk_network_equals_tl_topk(n: int, k: int) -> None:
    """The min/max bitonic network used under the interpreter == tl.topk == torch.topk."""
    g = torch.Generator().manual_seed(n + k)
    x = torch.randint(-(2**62), 2**62, (4, n), generator=g, dtype=torch.int64)
    x[:, 1] = x[:, 0]  # equal keys are allowed too
    x = x.to(DEVICE)
    want = torch.topk(x.cpu(), k, dim=1).values
    for native in (False, True):
        out = torch.empty(4, k, dtype=torch.int64, device=DEVICE)
        _topk_probe[(1,)](x, out, N=n, K=k, NATIVE=native)
        assert torch.equal(out.cpu(), want), f"native={native}"


# ------------------------------------------------------------------------------------------
# candidates (bf16 / int8) and the error bound
# ------------------------------------------------------------------------------------------


def emulate_int8(q: torch.Tensor, r: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The int8 approximate scores, bit for bit as the kernel computes them (fp32 epilogue)."""
    q, r = q.cpu().float(), r.cpu().float()
    r64 = r.double()
    nrm = r64.norm(dim=1)
    inv = 1.0 / nrm.clamp_min(1e-12) if normalize else torch.ones_like(nrm)
    am = r.abs().amax(dim=1).double()
    c = torch.where(am > 0, 127.0 / am.clamp_min(1e-300), 0.0).clamp(max=3e38).float()
    s = (am * inv / 127.0).float()
    y = r * c[:, None]
    ri = torch.trunc(y)
    f = y - ri
    ri = (ri + (f > 0.5).float() - (f < -0.5).float()).clamp(-127, 127)
    qa = q.abs().amax(dim=1)
    cq = torch.where(qa > 0, 127.0 / qa.double().clamp_min(1e-300), 0.0).clamp(max=3e38).float()
    qi = torch.round(q * cq[:, None]).clamp(-127, 127)
    sq = (qa.double() / 127.0).float()
    acc = (qi.double() @ ri.double().T).float()  # exact integers
    return (acc * sq[:, None]) * s[None, :]


def check_candidates(
    approx: torch.Tensor,
    idx: torch.Tensor,
    err: torch.Tensor,
    s64: torch.Tensor,
    kc: int,
) -> torch.Tensor:
    """Shape, order and tie rules, and |approx - exact| <= err on the returned refs.
    Returns the per-query worst observed error."""
    nq, _nr = s64.shape
    assert approx.shape == (nq, kc)
    assert idx.shape == (nq, kc)
    assert err.shape == (nq,)
    assert approx.dtype == torch.float32
    assert idx.dtype == torch.int64
    assert err.dtype == torch.float32
    approx, idx, err = approx.cpu(), idx.cpu(), err.cpu()
    assert bool((err >= 0).all())
    assert bool(torch.isfinite(err).all())
    assert all(len(set(row.tolist())) == kc for row in idx)
    assert bool((approx[:, :-1] >= approx[:, 1:]).all())
    same = approx[:, :-1] == approx[:, 1:]
    assert bool((idx[:, 1:] > idx[:, :-1])[same].all())
    dev = (approx.double() - s64.gather(1, idx)).abs().max(dim=1).values
    assert bool((dev <= err.double()).all()), f"error bound violated: {dev} > {err}"
    return dev


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(
    ("normalize", "dtype"),
    [(True, torch.float32), (False, torch.float32), (True, torch.bfloat16), (True, torch.float16)],
)
def test_candidates_bound_holds_for_every_ref(
    precision: str, normalize: bool, dtype: torch.dtype
) -> None:
    """kc = nr returns the approximate score of every ref (streaming path, kc > 256)."""
    nq, nr, d = 3, 260, 48
    q = queries(nq, d, seed=20)
    r = gen(nr, d, seed=21, dtype=dtype)
    if not normalize:
        r = unit(r.float()).to(dtype) * 1.5  # unnormalized but bounded rows
    a, i, err = tk.topk_candidates(q, r, nr, normalize, precision)
    s64 = exact_scores(q, r, normalize)
    check_candidates(a, i, err, s64, nr)
    if precision == "int8":
        emu = emulate_int8(q, r, normalize)
        assert torch.equal(a.cpu(), emu.gather(1, i.cpu())), "int8 scores differ from emulation"
    # a plausible bound: quantization error, not a vacuous number
    assert float(err.max()) < (0.02 if precision == "bf16" else 0.06) * (1.0 if normalize else 1.5)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_candidates_fused_path_and_recall(precision: str) -> None:
    """kc = 64 (fused kernel): the true top-k lies inside the candidates and the
    candidate cutoff certifies it (approx_kc + err < exact k-th score)."""
    nq, nr, d, k, kc = 4, 256, 64, 5, 64
    q = queries(nq, d, seed=30)
    r = gen(nr, d, seed=31)
    a, i, err = tk.topk_candidates(q, r, kc, True, precision, splits=2)
    s64 = exact_scores(q, r, True)
    check_candidates(a, i, err, s64, kc)
    ref_s, ref_i = ref_topk(s64, k)
    for row in range(nq):
        assert set(ref_i[row].tolist()) <= set(i[row].cpu().tolist())
    cutoff = a[:, -1].cpu().double() + err.cpu().double()
    assert bool((cutoff < ref_s[:, -1]).all())
    # same candidates whatever the split count
    a1, i1, err1 = tk.topk_candidates(q, r, kc, True, precision, splits=1)
    assert torch.equal(i1, i)
    assert torch.equal(a1, a)
    assert torch.equal(err1, err)


def _aligned_query(r: torch.Tensor, rt: torch.Tensor, row: int) -> torch.Tensor:
    """A unit query along the quantization error of ``row``: the error adds up coherently."""
    e = rt[row].double() - unit(r.double().cpu())[row]
    return unit(e.float()[None, :]).to(DEVICE).contiguous()


def test_candidates_adversarial_bf16() -> None:
    """Every element sits exactly half-way between two bf16 values (RTNE ties) and the query
    is aligned with the rounding error of one row."""
    nr, d = 40, 64
    g = torch.Generator().manual_seed(40)
    base = torch.randn(nr, d, generator=g).to(torch.bfloat16).float()
    bits = base.view(torch.int32) | 0x8000  # half an ulp of bf16: an exact tie
    r = bits.view(torch.float32)
    rt = r.to(torch.bfloat16).float()  # what the kernel multiplies (normalize=False)
    r = r.to(DEVICE)
    worst = 0.0
    for row in (0, 17, 39):
        q = _aligned_query(r, rt / r.cpu().norm(dim=1, keepdim=True), row)
        a, i, err = tk.topk_candidates(q, r, nr, False, "bf16")
        dev = check_candidates(a, i, err, exact_scores(q, r, False), nr)
        worst = max(worst, float(dev.max() / err.cpu().max()))
    assert worst > 0.2, "adversarial case should approach the bound"


def test_candidates_adversarial_int8() -> None:
    """Rows whose scaled elements are half-integers (worst case of int8 rounding), query
    aligned with the quantization error; normalized and unnormalized refs."""
    nr, d = 40, 64
    g = torch.Generator().manual_seed(41)
    half = torch.randint(-126, 126, (nr, d), generator=g).float() + 0.5
    half[:, 0] = 127.0  # max |x| = 127 * scale
    scale = torch.exp2(torch.randint(-12, -4, (nr, 1), generator=g).float())
    r = half * scale  # x * 127 / max|x| lands exactly on the half-integers
    r_dev = r.to(DEVICE)
    worst = 0.0
    for normalize in (True, False):
        for row in (3, 22):
            # kernel rounding: ties toward zero
            y = half[row]
            qi = torch.trunc(y)
            rt = torch.zeros(nr, d)
            rt[row] = qi * scale[row]
            if normalize:
                rt[row] = rt[row] / r[row].double().norm().float()
                q = _aligned_query(r, rt, row)
            else:
                e = rt[row].double() - r[row].double()
                q = unit(e.float()[None, :]).to(DEVICE).contiguous()
            a, i, err = tk.topk_candidates(q, r_dev, nr, normalize, "int8")
            s64 = exact_scores(q, r_dev, normalize)
            dev = check_candidates(a, i, err, s64, nr)
            emu = emulate_int8(q, r_dev, normalize)
            assert torch.equal(a.cpu(), emu.gather(1, i.cpu()))
            worst = max(worst, float(dev.max() / err.cpu().max()))
    assert worst > 0.2, "adversarial case should approach the bound"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_candidates_zero_rows_and_tiny_shapes(precision: str) -> None:
    nq, nr, d = 2, 9, 3
    r = gen(nr, d, seed=50)
    r[2] = 0
    r[6] = 0
    q = queries(nq, d, seed=51)
    a, i, err = tk.topk_candidates(q, r, nr, True, precision)
    check_candidates(a, i, err, exact_scores(q, r, True), nr)
    a1, i1, err1 = tk.topk_candidates(q[:1], r[:1], 1, True, precision)
    check_candidates(a1, i1, err1, exact_scores(q[:1], r[:1], True), 1)


# ------------------------------------------------------------------------------------------
# GPU compilation without a GPU
# ------------------------------------------------------------------------------------------

_COMPILE_SCRIPT = r"""
import importlib, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

tk = importlib.import_module(sys.argv[1])
target = GPUTarget("cuda", 90, 32)


def build(fn, sig, constexprs, cfg):
    sig = dict(sig)
    for name in constexprs:
        sig[name] = "constexpr"
    src = ASTSource(
        fn=fn, signature=sig,
        constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()},
    )
    opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=False)
    triton.compile(src, target=target, options=opts)


QT = {0: "*fp32", 1: "*fp32", 2: "*i8"}
I32 = "i32"
for mode, rdt in ((0, "fp16"), (1, "bf16"), (2, "fp32")):
    flags = dict(MODE=mode, HAS_RC=mode != 0, HAS_RS=mode != 1, DOT_LOWP=True)
    for kp in (16, 256):
        cfg = tk._pick_config(mode, kp, 512, False, True)
        sig = dict(Q=QT[mode], R="*" + rdt, RC="*fp32", RS="*fp32", QS="*fp32", WS="*i64")
        sig.update({n: I32 for n in ("nq", "nr", "d", "stride_qm", "stride_qd", "stride_rn",
                                     "stride_rd", "rows_per_split", "n_splits")})
        # the GPU default (one-at-a-time merge) and, once, the hybrid with the bitonic network
        hybrid = 8 if (kp, mode) == (16, 1) and tk._HYBRID_COMPILES else cfg.sort_min_hits
        for smh in {cfg.sort_min_hits, hybrid}:
            build(tk._fused_topk_kernel, sig, dict(
                flags, REFS_AS_A=cfg.refs_as_a, BLOCK_Q=cfg.block_q,
                BLOCK_R=max(cfg.block_r, kp), BLOCK_D=cfg.block_d, KP=kp, NATIVE_TOPK=True,
                SORT_MIN_HITS=smh), cfg)
    cfg = tk._pick_config(mode, 1024, 512, False, False)
    sig = dict(Q=QT[mode], R="*" + rdt, RC="*fp32", RS="*fp32", QS="*fp32", OUT="*i64")
    sig.update({n: I32 for n in ("nq", "nr", "d", "stride_qm", "stride_qd", "stride_rn",
                                 "stride_rd", "stride_om")})
    build(tk._score_keys_kernel, sig, dict(
        flags, REFS_AS_A=cfg.refs_as_a, BLOCK_Q=cfg.block_q, BLOCK_R=cfg.block_r,
        BLOCK_D=cfg.block_d), cfg)
    sig = dict(R="*" + rdt, C="*fp32", S="*fp32", PMAX="*fp64")
    sig.update({n: I32 for n in ("nr", "d", "stride_rn", "stride_rd", "n_prog")})
    build(tk._ref_stats_kernel, sig, dict(MODE=mode, NORMALIZE=True, BLOCK_R=16,
                                          BLOCK_D=64), cfg)
print("compiled")
"""


def test_kernels_compile_for_sm90() -> None:
    """Every kernel and default GPU configuration compiles to an sm_90 cubin (ptxas), which
    the interpreter alone would not catch. Needs no GPU."""
    compile_for_sm90(_COMPILE_SCRIPT, tk.__name__)
