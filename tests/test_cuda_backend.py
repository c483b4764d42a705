"""The CUDA C++ core (memlens._cuda) against a float64 torch reference.

The module is called directly with raw device pointers, as the Python layer does. Tests that
need a GPU skip cleanly without one; the argument-validation and workspace-size tests only need
the compiled module (they never touch the device).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
_cuda = pytest.importorskip("memlens._cuda")

HAS_GPU = bool(torch.cuda.is_available()) and _cuda.device_count() > 0
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
FP32, BF16, INT8 = 0, 1, 2
MB256 = 256 * 2**20

# fp32 path: fp32 accumulation over d <= 512 of unit vectors.
ATOL_FP32 = 2e-5


# ----------------------------------------------------------------------------- helpers


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def _workspace(nq: int, nr: int, d: int, k: int, precision: int) -> torch.Tensor:
    nbytes = _cuda.workspace_bytes(nq, nr, d, k, precision)
    return torch.empty(max(nbytes, 1), dtype=torch.uint8, device="cuda")


def cuda_topk(q: torch.Tensor, r: torch.Tensor, k: int, normalize: bool = True):
    nq, d = q.shape
    nr = r.shape[0]
    ws = _workspace(nq, nr, d, k, FP32)
    scores = torch.empty(nq, k, dtype=torch.float32, device="cuda")
    idx = torch.empty(nq, k, dtype=torch.int64, device="cuda")
    _cuda.topk_fp32(
        q.data_ptr(),
        nq,
        d,
        r.data_ptr(),
        nr,
        r.stride(0),
        r.stride(1),
        DTYPE_CODE[r.dtype],
        normalize,
        k,
        scores.data_ptr(),
        idx.data_ptr(),
        ws.data_ptr(),
        ws.numel(),
        _stream(),
    )
    torch.cuda.synchronize()
    return scores, idx


def cuda_candidates(
    q: torch.Tensor, r: torch.Tensor, kc: int, precision: int, normalize: bool = True
):
    nq, d = q.shape
    nr = r.shape[0]
    ws = _workspace(nq, nr, d, kc, precision)
    approx = torch.empty(nq, kc, dtype=torch.float32, device="cuda")
    idx = torch.empty(nq, kc, dtype=torch.int64, device="cuda")
    err = torch.empty(nq, dtype=torch.float32, device="cuda")
    _cuda.topk_candidates(
        q.data_ptr(),
        nq,
        d,
        r.data_ptr(),
        nr,
        r.stride(0),
        r.stride(1),
        DTYPE_CODE[r.dtype],
        normalize,
        precision,
        kc,
        approx.data_ptr(),
        idx.data_ptr(),
        err.data_ptr(),
        ws.data_ptr(),
        ws.numel(),
        _stream(),
    )
    torch.cuda.synchronize()
    return approx, idx, err


def exact_scores(q: torch.Tensor, r: torch.Tensor, normalize: bool) -> torch.Tensor:
    """float64 (nq, nr) scores: the executable specification."""
    r64 = r.double()
    if normalize:
        r64 = r64 / r64.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return q.double() @ r64.T


def reference_topk(s64: torch.Tensor, k: int):
    vals, idx = torch.sort(s64, dim=1, descending=True, stable=True)  # ties: lower index first
    return vals[:, :k], idx[:, :k]


def unit_queries(nq: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(nq, d, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True)
    return q.float().cuda().contiguous()


def random_refs(nr: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(nr, d, generator=g) * 3.0).to(dtype).cuda()


def check_topk(scores, idx, s64, k, atol=ATOL_FP32):
    """Scores match the reference; every index carries its own score; order is canonical."""
    _nq, nr = s64.shape
    ref_vals, ref_idx = reference_topk(s64, k)
    scores64 = scores.double()
    assert torch.all(idx >= 0)
    assert torch.all(idx < nr)
    torch.testing.assert_close(scores64, ref_vals, atol=atol, rtol=0)
    # each returned index really has (about) the returned score
    torch.testing.assert_close(s64.gather(1, idx), scores64, atol=atol, rtol=0)
    # indices are distinct per row
    assert torch.all(idx.sort(dim=1).values.diff(dim=1) > 0) if k > 1 else True
    # descending, ties by lower index
    if k > 1:
        ds = scores[:, :-1] - scores[:, 1:]
        assert torch.all(ds >= 0)
        tie = ds == 0
        assert torch.all(idx[:, :-1][tie] < idx[:, 1:][tie])
    # where the reference has a clear gap, the index must be the reference one
    gap = torch.ones_like(ref_vals, dtype=torch.bool)
    if nr > k:
        nxt = s64.sort(dim=1, descending=True).values[:, : k + 1]
        clear_after = (nxt[:, :-1] - nxt[:, 1:]) > 4 * atol
    else:
        nxt = ref_vals
        clear_after = torch.ones_like(ref_vals, dtype=torch.bool)
        clear_after[:, :-1] = (nxt[:, :-1] - nxt[:, 1:]) > 4 * atol
    clear_before = torch.ones_like(gap)
    clear_before[:, 1:] = (ref_vals[:, :-1] - ref_vals[:, 1:]) > 4 * atol
    gap = clear_after & clear_before
    assert torch.equal(idx[gap], ref_idx[gap])


def check_candidates(approx, idx, err, s64, kc, bf16_or_int8):
    _nq, nr = s64.shape
    assert torch.all(idx >= 0)
    assert torch.all(idx < nr)
    assert torch.all(err >= 0)
    assert torch.all(torch.isfinite(err))
    ex = s64.gather(1, idx)
    # the bound holds on every returned candidate ...
    dev = (approx.double() - ex).abs()
    assert torch.all(dev <= err.double()[:, None]), float((dev - err.double()[:, None]).max())
    # ... and every non-candidate is below the kc-th approx + err (selection + bound)
    mask = torch.ones_like(s64, dtype=torch.bool)
    mask.scatter_(1, idx, False)
    limit = approx[:, -1].double() + err.double()
    assert torch.all(s64.masked_fill(~mask, -math.inf).max(dim=1).values <= limit)
    # sorted descending, ties by lower index
    if kc > 1:
        ds = approx[:, :-1] - approx[:, 1:]
        assert torch.all(ds >= 0)
        tie = ds == 0
        assert torch.all(idx[:, :-1][tie] < idx[:, 1:][tie])
    # the bound is useful, not only true
    assert float(err.max()) < (0.01 if bf16_or_int8 == BF16 else 0.06)


# ----------------------------------------------------------------------------- no GPU needed


def test_workspace_bounded_for_large_search():
    for precision in (FP32, BF16, INT8):
        for d in (256, 512, 1024):
            nbytes = _cuda.workspace_bytes(4096, 10**6, d, 1000, precision)
            assert 0 < nbytes <= MB256, (precision, d, nbytes)
            # never anything like the nq x nr score matrix
            assert nbytes < 4096 * 10**6 * 4 / 50
    # small searches get small workspaces
    assert _cuda.workspace_bytes(1, 1000, 64, 10, FP32) < 8 * 2**20
    assert _cuda.workspace_bytes(0, 1000, 64, 10, FP32) == 0


def test_workspace_independent_of_nr_beyond_a_chunk():
    a = _cuda.workspace_bytes(512, 10**6, 512, 100, BF16)
    b = _cuda.workspace_bytes(512, 10**8, 512, 100, BF16)
    assert a == b


def test_plan_info_matches_workspace():
    info = _cuda.plan_info(4096, 10**6, 512, 1000, BF16)
    assert info["workspace"] == _cuda.workspace_bytes(4096, 10**6, 512, 1000, BF16)
    assert info["splits"] >= 1
    assert info["list_capacity"] >= 1000 + info["ref_tile"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 11}, "k must be in"),
        ({"k": 0}, "k must be in"),
        ({"r_dtype": 5}, "r_dtype"),
        ({"d": 0}, "d must be"),
        ({"workspace_bytes": 10}, "workspace too small"),
        ({"nr": 20000, "k": _cuda.max_k + 1}, "k must be <="),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    args = {
        "q": 1,
        "nq": 4,
        "d": 16,
        "r": 1,
        "nr": 10,
        "r_row_stride": 16,
        "r_col_stride": 1,
        "r_dtype": 0,
        "normalize": True,
        "k": 3,
        "out_scores": 1,
        "out_idx": 1,
        "workspace": 256,
        "workspace_bytes": 1 << 30,
        "stream": 0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        _cuda.topk_fp32(**args)


def test_bad_precision_raises_value_error():
    with pytest.raises(ValueError, match="precision"):
        _cuda.topk_candidates(1, 4, 16, 1, 10, 16, 1, 0, True, 0, 3, 1, 1, 1, 256, 1 << 30, 0)
    with pytest.raises(ValueError, match="precision"):
        _cuda.workspace_bytes(4, 10, 16, 3, 7)


def test_empty_queries_is_a_no_op():
    assert _cuda.topk_fp32(1, 0, 16, 1, 10, 16, 1, 0, True, 3, 1, 1, 0, 0, 0) is None


# ----------------------------------------------------------------------------- fp32 exact


@needs_gpu
@pytest.mark.parametrize(
    ("nq", "nr", "d", "k"),
    [
        (1, 1, 16, 1),  # nr == 1
        (1, 1000, 129, 10),  # nq == 1, odd d
        (5, 777, 129, 777),  # k == nr
        (70, 3000, 64, 100),  # two query tiles, partial
        (130, 5000, 33, 1),  # k == 1, tiny odd d
        (3, 5000, 128, 4096),  # large k
        (257, 20000, 512, 64),
        (2, 100_000, 256, 50),  # several reference chunks
    ],
)
def test_fp32_matches_float64_reference(nq, nr, d, k):
    q = unit_queries(nq, d, seed=nq * 7 + d)
    r = random_refs(nr, d, seed=nr + k)
    scores, idx = cuda_topk(q, r, k)
    check_topk(scores, idx, exact_scores(q, r, True), k)


@needs_gpu
def test_fp32_max_k():
    nq, nr, d, k = 2, 9000, 64, _cuda.max_k
    q = unit_queries(nq, d, seed=1)
    r = random_refs(nr, d, seed=2)
    scores, idx = cuda_topk(q, r, k)
    check_topk(scores, idx, exact_scores(q, r, True), k)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp32_half_refs(dtype):
    q = unit_queries(9, 96, seed=3)
    r = random_refs(2500, 96, seed=4, dtype=dtype)
    scores, idx = cuda_topk(q, r, 20)
    check_topk(scores, idx, exact_scores(q, r, True), 20)


@needs_gpu
@pytest.mark.parametrize("layout", ["col_stride_2", "transposed", "padded_rows", "row_slice"])
def test_fp32_strided_refs(layout):
    nr, d = 1500, 65
    big = random_refs(2 * nr, 2 * d, seed=5)
    if layout == "col_stride_2":
        r = big[:nr, ::2]
    elif layout == "transposed":
        r = random_refs(d, nr, seed=6).T
    elif layout == "padded_rows":
        r = big[:nr, :d]
    else:
        r = big[nr // 2 : nr // 2 + nr, 3 : 3 + d]
    assert r.shape == (nr, d)
    q = unit_queries(4, d, seed=7)
    scores, idx = cuda_topk(q, r, 17)
    check_topk(scores, idx, exact_scores(q, r, True), 17)


@needs_gpu
def test_fp32_without_normalization():
    q = unit_queries(6, 40, seed=8)
    r = random_refs(3000, 40, seed=9) * torch.rand(3000, 1, device="cuda")
    scores, idx = cuda_topk(q, r, 30, normalize=False)
    check_topk(scores, idx, exact_scores(q, r, False), 30, atol=2e-4)


@needs_gpu
def test_fp32_ties_break_by_lower_index():
    d = 48
    base = random_refs(50, d, seed=10)
    # rows 3, 17, 40, 41, 99 ... are copies of base[3]; another group copies base[7] scaled
    r = random_refs(3000, d, seed=11)
    dup_a = [3, 17, 40, 41, 99, 1000, 2999]
    dup_b = [5, 6, 2000]
    r[dup_a] = base[3]
    r[dup_b] = base[7] * 2.5  # same direction: equal cosine after normalization? only ~equal
    q = (base[3] / base[3].norm()).reshape(1, d).contiguous()
    k = len(dup_a) + 3
    scores, idx = cuda_topk(q, r, k)
    assert idx[0, : len(dup_a)].tolist() == dup_a
    assert torch.all(scores[0, : len(dup_a)] == scores[0, 0])
    check_topk(scores, idx, exact_scores(q, r, True), k)
    # zero rows score exactly 0 and tie among themselves by index
    r0 = torch.zeros(40, d, device="cuda")
    qn = unit_queries(1, d, seed=12)
    scores, idx = cuda_topk(qn, r0, 40)
    assert torch.all(scores == 0)
    assert idx[0].tolist() == list(range(40))


@needs_gpu
def test_fp32_deterministic_and_stream_aware():
    q = unit_queries(33, 128, seed=13)
    r = random_refs(10_000, 128, seed=14)
    s1, i1 = cuda_topk(q, r, 100)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        s2, i2 = cuda_topk(q, r, 100)
    torch.cuda.synchronize()
    assert torch.equal(s1, s2)
    assert torch.equal(i1, i2)


# ----------------------------------------------------------------------------- candidates


@needs_gpu
@pytest.mark.parametrize("precision", [BF16, INT8])
@pytest.mark.parametrize(
    ("nq", "nr", "d", "kc"),
    [
        (1, 1, 16, 1),
        (3, 700, 129, 700),  # kc == nr: the bound checked on every row
        (65, 2000, 256, 2000),
        (4, 50_000, 64, 300),
        (2, 5000, 128, 4096),
    ],
)
def test_candidates_bound_holds(precision, nq, nr, d, kc):
    q = unit_queries(nq, d, seed=d + precision)
    r = random_refs(nr, d, seed=nr + precision)
    approx, idx, err = cuda_candidates(q, r, kc, precision)
    check_candidates(approx, idx, err, exact_scores(q, r, True), kc, precision)


@needs_gpu
@pytest.mark.parametrize("precision", [BF16, INT8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_candidates_half_and_strided_refs(precision, dtype):
    d = 72
    big = random_refs(3000, 2 * d, seed=15, dtype=dtype)
    r = big[:, ::2]
    q = unit_queries(5, d, seed=16)
    approx, idx, err = cuda_candidates(q, r, 3000, precision)
    check_candidates(approx, idx, err, exact_scores(q, r, True), 3000, precision)


@needs_gpu
@pytest.mark.parametrize("precision", [BF16, INT8])
def test_candidates_unnormalized_bound(precision):
    d = 100
    q = unit_queries(3, d, seed=17)
    r = random_refs(1200, d, seed=18) * 0.05
    approx, idx, err = cuda_candidates(q, r, 1200, precision, normalize=False)
    s64 = exact_scores(q, r, False)
    dev = (approx.double() - s64.gather(1, idx)).abs()
    assert torch.all(dev <= err.double()[:, None])


@needs_gpu
@pytest.mark.parametrize("precision", [BF16, INT8])
def test_candidates_ties_and_recall(precision):
    d = 64
    r = random_refs(4000, d, seed=19)
    r[[10, 11, 3000]] = r[500]
    q = (r[500] / r[500].norm()).reshape(1, d).float().contiguous()
    approx, idx, err = cuda_candidates(q, r, 50, precision)
    assert idx[0, :4].tolist() == [10, 11, 500, 3000]
    s64 = exact_scores(q, r, True)
    check_candidates(approx, idx, err, s64, 50, precision)
    # certification as the Python layer does it: the exact top-k is inside the candidates
    # whenever approx[k-1] - err > approx[kc-1] + err
    k = 10
    ref_idx = reference_topk(s64, k)[1]
    if float(approx[0, k - 1] - err[0]) > float(approx[0, -1] + err[0]):
        assert set(ref_idx[0].tolist()) <= set(idx[0].tolist())
