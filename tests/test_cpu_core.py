"""memlens._C (the compiled CPU top-k core) against a float64 numpy reference.

Every test runs at every SIMD level this machine and build can execute, so the scalar,
AVX2, AVX-512 and AVX512_BF16 kernels are all checked where the CPU allows it.
"""

from __future__ import annotations

import numpy as np
import pytest

try:
    from memlens import _C
except ImportError as exc:  # pragma: no cover - depends on the build
    pytest.skip(f"memlens._C is not built ({exc})", allow_module_level=True)

LEVELS = [lv for lv in range(5) if _C.simd_compiled(lv) and lv <= _C.detect_simd()]
LEVEL_IDS = [_C.simd_name(lv) for lv in LEVELS]
BF16, INT8 = 1, 2
DTYPE_CODE = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.uint16): 2}


@pytest.fixture(params=LEVELS, ids=LEVEL_IDS)
def level(request):
    return request.param


# ---------------------------------------------------------------- calling the core


def _ref_args(q, r):
    """q: float32 (nq, d) contiguous; r: any 2-D view of float32 / float16 / uint16 (bf16 bits)."""
    es = r.itemsize
    assert r.strides[0] % es == 0
    assert r.strides[1] % es == 0
    return (
        q.ctypes.data,
        q.shape[0],
        q.shape[1],
        r.ctypes.data,
        r.shape[0],
        r.strides[0] // es,
        r.strides[1] // es,
        DTYPE_CODE[r.dtype],
    )


def topk(q, r, k, level, normalize=True, threads=0):
    s = np.empty((q.shape[0], k), np.float32)
    i = np.empty((q.shape[0], k), np.int64)
    _C.topk_fp32(*_ref_args(q, r), normalize, k, s.ctypes.data, i.ctypes.data, threads, level)
    return s, i


def candidates(q, r, kc, level, precision, normalize=True, threads=0):
    s = np.empty((q.shape[0], kc), np.float32)
    i = np.empty((q.shape[0], kc), np.int64)
    e = np.empty(q.shape[0], np.float32)
    _C.topk_candidates(
        *_ref_args(q, r),
        normalize,
        precision,
        kc,
        s.ctypes.data,
        i.ctypes.data,
        e.ctypes.data,
        threads,
        level,
    )
    return s, i, e


def rerank(q, r, idx, level, normalize=True, threads=0):
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    s = np.empty(idx.shape, np.float32)
    _C.rerank_fp32(
        *_ref_args(q, r), normalize, idx.ctypes.data, idx.shape[1], s.ctypes.data, threads, level
    )
    return s


# ---------------------------------------------------------------- float64 reference


def bf16_bits(x):
    """float32 -> bf16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def as_f64(r):
    if r.dtype == np.uint16:
        return (r.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return r.astype(np.float64)


def exact_scores(q, r, normalize):
    r64 = as_f64(r)
    if normalize:
        r64 = r64 / np.maximum(np.linalg.norm(r64, axis=1, keepdims=True), 1e-12)
    return q.astype(np.float64) @ r64.T


def fp32_tol(q, d):
    """Rounding allowance of an fp32 dot product of length d (unit-norm refs)."""
    return (d + 8) * 2.0**-24 * np.linalg.norm(q.astype(np.float64), axis=1)[:, None] * 1.01 + 1e-30


def check_topk(q, r, k, level, normalize=True, threads=0):
    s, i = topk(q, r, k, level, normalize, threads)
    ex = exact_scores(q, r, normalize)
    nr = r.shape[0]
    tol = fp32_tol(q, q.shape[1]) * (
        1 if normalize else np.abs(as_f64(r)).max() * np.sqrt(q.shape[1]) + 1
    )
    assert ((i >= 0) & (i < nr)).all()
    assert all(len(set(row)) == k for row in i), "duplicate indices in a top-k row"
    assert (np.diff(s, axis=1) <= 0).all(), "scores not sorted descending"
    tie = np.diff(s, axis=1) == 0
    assert (np.diff(i, axis=1)[tie] > 0).all(), "equal scores must be ordered by lower index"
    got = np.take_along_axis(ex, i, 1)
    np.testing.assert_allclose(s, got, rtol=0, atol=float(tol.max()))
    # Correct set: nothing left out scores (exactly) above the k-th returned score.
    mask = np.ones_like(ex, dtype=bool)
    np.put_along_axis(mask, i, False, 1)
    if k < nr:
        best_out = np.where(mask, ex, -np.inf).max(axis=1)
        assert (best_out <= got[:, -1] + 2 * tol[:, 0]).all()
    return s, i


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------- build and dispatch


def test_simd_reporting():
    assert _C.simd_name(0) == "scalar"
    names = ["scalar", "avx2", "avx512", "avx512_bf16", "amx"]
    assert [_C.simd_name(lv) for lv in range(5)] == names
    assert _C.simd_compiled(0)
    assert _C.detect_simd() in LEVELS


# ---------------------------------------------------------------- exact fp32 top-k


SHAPES = [  # nq, nr, d, k
    (1, 1, 1, 1),
    (1, 5, 129, 5),
    (3, 97, 1, 4),
    (17, 300, 129, 300),
    (33, 1000, 64, 10),
    (5, 4500, 16, 4096),
    (600, 700, 8, 7),  # enough queries for the query-split threading path
]


@pytest.mark.parametrize(("nq", "nr", "d", "k"), SHAPES, ids=[f"{s}" for s in SHAPES])
def test_topk_shapes(level, nq, nr, d, k):
    rng = np.random.default_rng(nq * 7 + d)
    check_topk(unit(rng, nq, d), rng.standard_normal((nr, d)).astype(np.float32), k, level)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_topk_threads_agree(level, threads):
    rng = np.random.default_rng(1)
    q, r = unit(rng, 40, 48), rng.standard_normal((2000, 48)).astype(np.float32)
    s1, i1 = topk(q, r, 50, level, threads=1)
    s, i = check_topk(q, r, 50, level, threads=threads)
    np.testing.assert_array_equal(i, i1)
    np.testing.assert_array_equal(s, s1)


def test_topk_not_normalized(level):
    rng = np.random.default_rng(2)
    q, r = unit(rng, 9, 40), (3 * rng.standard_normal((500, 40))).astype(np.float32)
    check_topk(q, r, 20, level, normalize=False)


def test_topk_strided_and_half_inputs(level):
    rng = np.random.default_rng(3)
    q = unit(rng, 6, 37)
    big = rng.standard_normal((900, 3 * 37)).astype(np.float32)
    strided = big[::2, ::3]  # row and column strides
    assert not strided.flags.c_contiguous
    check_topk(q, strided, 25, level)
    check_topk(q, strided.astype(np.float16), 25, level)
    check_topk(q, np.ascontiguousarray(big[:, :37]).astype(np.float16), 25, level)
    bits = bf16_bits(big[:, :37])
    check_topk(q, bits, 25, level)
    check_topk(q, bf16_bits(big)[:, ::3], 25, level)  # strided bf16


def test_topk_duplicate_rows_tie_by_lower_index(level):
    rng = np.random.default_rng(4)
    r = rng.standard_normal((700, 24)).astype(np.float32)
    dup = [5, 40, 41, 399, 650]
    r[dup] = r[100]
    q = r[[100]] / np.linalg.norm(r[100])
    # Scaled copies score the same after normalization only up to rounding; exact copies tie.
    for normalize in (True, False):
        s, i = topk(q.astype(np.float32), r, 8, level, normalize)
        assert list(i[0, :6]) == sorted(dup + [100])
        assert (s[0, :6] == s[0, 0]).all()
    # Many equal scores across thread slices: a constant matrix ties everywhere.
    s, i = topk(q.astype(np.float32), np.ones((300, 24), np.float32), 40, level, threads=2)
    np.testing.assert_array_equal(i[0], np.arange(40))


def test_topk_reservoir_selection_with_ties_signs_and_zeros(level):
    """Thousands of references so that every reservoir is compacted many times: (a) scores a
    few ulps apart (q = e_0 picks column 0 exactly, shuffled so index order is not score
    order), where a threshold one value off keeps the wrong set; (b) rows from a small
    palette scoring positive, negative and zero, every compaction's k-th score on a tie.
    The answer must be the k best by (score, lower index)."""
    rng = np.random.default_rng(11)
    n, d = 6000, 16
    close = np.zeros((n, d), np.float32)
    close[:, 0] = (0.5 + 2.0**-24 * rng.permutation(n)).astype(np.float32)  # 1 ulp apart
    close[:, 1:] = rng.standard_normal((n, d - 1))
    e0 = np.zeros((1, d), np.float32)
    e0[0, 0] = 1
    q = unit(rng, 3, d)
    palette = np.concatenate([q, -q, np.zeros((1, d), np.float32), unit(rng, 4, d)])
    tied = palette[rng.integers(0, len(palette), n)]
    for qs, r in ((e0, close), (q, tied)):
        ex = exact_scores(qs, r, False)
        for k in (1, 37, 500):
            s, i = topk(qs, r, k, level, normalize=False, threads=1)
            by_index = np.broadcast_to(np.arange(n), ex.shape)
            order = np.lexsort((by_index, -ex), axis=1)[:, :k]
            np.testing.assert_array_equal(i, order)
            np.testing.assert_allclose(s, np.take_along_axis(ex, order, 1), rtol=0, atol=1e-6)


def test_topk_zero_rows_normalized(level):
    rng = np.random.default_rng(5)
    r = rng.standard_normal((64, 10)).astype(np.float32)
    r[::3] = 0
    q = unit(rng, 4, 10)
    s, _i = check_topk(q, r, 64, level)
    assert np.isfinite(s).all()


def test_topk_rejects_bad_k():
    q, r = np.ones((1, 4), np.float32), np.ones((3, 4), np.float32)
    for k in (0, 4):
        with pytest.raises(ValueError, match=r"k must be in \[1, refs.rows\]"):
            topk(q, r, k, 0)


# ---------------------------------------------------------------- bf16 / int8 candidates


def check_bound(q, r, level, precision, normalize=True, kc=None):
    """With kc = nr every reference is returned: |approx - exact| <= err must hold for all."""
    nr = r.shape[0]
    kc = nr if kc is None else kc
    s, i, e = candidates(q, r, kc, level, precision, normalize)
    ex = np.take_along_axis(exact_scores(q, r, normalize), i, 1)
    assert np.isfinite(e).all()
    assert (e >= 0).all()
    viol = np.abs(s.astype(np.float64) - ex) - e[:, None]
    assert viol.max() <= 0, f"error bound violated by {viol.max():.3e}"
    assert (np.diff(s, axis=1) <= 0).all()
    tie = np.diff(s, axis=1) == 0
    assert (np.diff(i, axis=1)[tie] > 0).all()
    if kc == nr:
        assert (np.sort(i, axis=1) == np.arange(nr)).all()
    return s, i, e


@pytest.mark.parametrize("precision", [BF16, INT8], ids=["bf16", "int8"])
@pytest.mark.parametrize(("nq", "nr", "d"), [(1, 1, 1), (7, 300, 129), (20, 500, 64), (3, 40, 3)])
def test_candidate_bound_random(level, precision, nq, nr, d):
    rng = np.random.default_rng(nq + nr + d)
    q, r = unit(rng, nq, d), rng.standard_normal((nr, d)).astype(np.float32)
    check_bound(q, r, level, precision)
    check_bound(q, r, level, precision, normalize=False)


@pytest.mark.parametrize("precision", [BF16, INT8], ids=["bf16", "int8"])
def test_candidate_bound_adversarial(level, precision):
    rng = np.random.default_rng(11)
    d = 96
    r = rng.standard_normal((400, d)).astype(np.float32)
    r[0] = 0  # zero row
    r[1] = 1e-3
    r[1, 0] = 1e3  # one spike: int8 loses every other element
    r[2] = 1e-30  # tiny (bf16 denormal-free but far below 1), survives normalization
    r[3, :] = 1 + 2.0**-8  # bf16 rounding midpoints (ties to even)
    r[4] = np.where(np.arange(d) % 2, 1, -1) * (1 + 2.0**-9)
    r[5:50] *= np.float32(1e4)  # large norms without normalization
    r[50:60] = r[60]  # duplicates
    q = unit(rng, 12, d)
    q[0] = 0
    q[0, 7] = 1  # one-hot query
    q[1] = np.abs(q[1])  # all-positive query aligned with the +128 offset of VNNI
    q[2] = (1 + 2.0**-8) / np.sqrt(d)
    for normalize in (True, False):
        check_bound(q, r, level, precision, normalize)
    check_bound(q, r.astype(np.float16), level, precision)
    check_bound(q, bf16_bits(r), level, precision)
    check_bound(np.ascontiguousarray(q[:, ::2]), r[::2, ::2], level, precision)


@pytest.mark.parametrize("precision", [BF16, INT8], ids=["bf16", "int8"])
def test_candidate_selection_certifies(level, precision):
    """Top-kc by approximate score + rerank recovers the exact top-k (the Python layer's rule)."""
    rng = np.random.default_rng(12)
    q, r = unit(rng, 30, 128), rng.standard_normal((3000, 128)).astype(np.float32)
    k, kc = 10, 200
    s, i, e = check_bound(q, r, level, precision, kc=kc + 1)
    ex = exact_scores(q, r, True)
    # Everything outside the candidates is bounded by the (kc+1)-th approx + err.
    mask = np.ones_like(ex, dtype=bool)
    np.put_along_axis(mask, i, False, 1)
    outside = np.where(mask, ex, -np.inf).max(axis=1)
    assert (outside <= s[:, kc] + e).all()
    exact_k = np.sort(np.take_along_axis(ex, i[:, :kc], 1), axis=1)[:, -k]
    certified = exact_k > s[:, kc] + e
    assert certified.mean() > 0.5  # a sanity check on how tight the bound is
    top = np.sort(ex, axis=1)[:, -k]
    np.testing.assert_array_equal(exact_k[certified], top[certified])


def test_candidates_match_a_numpy_int8_model(level):
    """int8 sums are exact integers, so the approximate ranking is reproducible in numpy."""
    rng = np.random.default_rng(13)
    q, r = unit(rng, 8, 50), unit(rng, 300, 50)

    def quant(x):
        amax = np.abs(x).max(axis=1, keepdims=True)
        sc = (amax / np.float32(127)).astype(np.float32)
        c = np.clip(x * (np.float32(127) / amax), -127, 127)
        return np.rint(c).astype(np.int64), sc[:, 0]

    qc, qs = quant(q)
    rc, rs = quant(r)
    approx = (((qc @ rc.T).astype(np.float32) * rs[None, :]) * qs[:, None]).astype(np.float32)
    s, i, _ = candidates(q, r, 20, level, INT8, normalize=False)
    np.testing.assert_array_equal(s, np.take_along_axis(approx, i, 1))
    order = np.lexsort((np.broadcast_to(np.arange(300), approx.shape), -approx), axis=1)[:, :20]
    np.testing.assert_array_equal(i, order)


def test_candidates_reject_bad_arguments():
    q, r = np.ones((1, 4), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"kc must be in \[1, refs.rows\]"):
        candidates(q, r, 0, 0, BF16)
    s = np.empty(1, np.float32)
    i = np.empty(1, np.int64)
    with pytest.raises(ValueError, match="int8 candidates support d <= 131072"):
        # d beyond the exact-int32 limit is refused before any data is read.
        _C.topk_candidates(
            q.ctypes.data,
            1,
            131073,
            r.ctypes.data,
            1,
            131073,
            1,
            0,
            True,
            INT8,
            1,
            s.ctypes.data,
            i.ctypes.data,
            s.ctypes.data,
            0,
            0,
        )


# ---------------------------------------------------------------- rerank


def test_rerank(level):
    rng = np.random.default_rng(14)
    q = unit(rng, 9, 129)
    big = rng.standard_normal((400, 2 * 129)).astype(np.float32)
    idx = rng.integers(0, 400, size=(9, 33))
    idx[:, 1] = idx[:, 0]  # repeated candidates
    # Dense candidates (each row shared by several queries) and sparse ones take different
    # sorting paths inside rerank_fp32.
    for r in (big[:, :129], big[:, ::2], big[:, :129].astype(np.float16), bf16_bits(big[:, :129])):
        for normalize, sel in ((True, idx), (False, idx), (True, idx[:2, :3])):
            qs = np.ascontiguousarray(q[: sel.shape[0]])
            s = rerank(qs, r, sel, level, normalize)
            ex = np.take_along_axis(exact_scores(qs, r, normalize), sel, 1)
            scale = 1 if normalize else np.linalg.norm(as_f64(r), axis=1).max()
            np.testing.assert_allclose(s, ex, rtol=0, atol=float(fp32_tol(q, 129).max() * scale))
            assert (s[:, 0] == s[:, 1]).all()
    with pytest.raises(ValueError, match="rerank index out of range"):
        rerank(q, big, np.full((9, 1), 400), level)
