"""cosine_topk / merge_topk through the public API, every CPU-runnable backend and precision."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import memlens
from conftest import assert_exact_topk, true_scores, unit_rows
from memlens import _dispatch
from memlens.reference import cosine_topk as ref_topk

BACKENDS = ["torch"] + (["cpu"] if _dispatch.compiled_cpu_reason("cpu") is None else [])
PRECISIONS = ["fp32", "bf16", "int8"]

SHAPES = [  # (nq, nr, d, k)
    (1, 1, 8, 1),
    (5, 1, 16, 1),
    (1, 300, 129, 300),  # k == nr, odd d
    (7, 257, 129, 10),
    (33, 1000, 64, 100),
    (3, 50, 1, 7),  # d == 1: every cosine is +-1, massive ties
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64_reference(backend: str, precision: str, shape: tuple[int, ...]) -> None:
    nq, nr, d, k = shape
    q = unit_rows(nq, d, 1)
    r = unit_rows(nr, d, 2)
    s, i = memlens.cosine_topk(q, r, k, precision=precision, backend=backend)
    assert isinstance(s, np.ndarray)
    assert isinstance(i, np.ndarray)
    assert_exact_topk(s, i, q, r, k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_near_duplicates_are_found_exactly(backend: str, precision: str) -> None:
    """Many references within the reduced-precision error of each other: forces re-ranking."""
    base = unit_rows(1, 96, 3)[0]
    noise = unit_rows(2000, 96, 4) * 1e-3
    r = (base + noise).astype(np.float32)
    q = base[None, :] + unit_rows(4, 96, 5) * 1e-3
    s, i = memlens.cosine_topk(q.astype(np.float32), r, 50, precision=precision, backend=backend)
    assert_exact_topk(s, i, q, r, 50)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_ties_break_to_lower_index(backend: str, precision: str) -> None:
    row = unit_rows(1, 32, 6)
    other = unit_rows(40, 32, 7) * 0.1
    r = np.concatenate([other[:10], row, other[10:20], row, row, other[20:]]).astype(np.float32)
    dup = [10, 21, 22]
    s, i = memlens.cosine_topk(row, r, 3, precision=precision, backend=backend)
    assert i[0].tolist() == dup
    np.testing.assert_allclose(s[0], 1.0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ref_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_inputs_dtypes_and_views(backend: str, ref_dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(200, 2 * 65, generator=g)
    refs = big[:, ::2].to(ref_dtype)  # non-contiguous columns; for bf16/f16 a strided copy
    refs_t = big.to(ref_dtype).T.contiguous().T[:, 1:66]  # column-major-ish view
    q = torch.randn(6, 65, generator=g).to(ref_dtype)
    for r in (refs, refs_t):
        s, i = memlens.cosine_topk(q, r, 17, backend=backend)
        assert isinstance(s, torch.Tensor)
        assert s.dtype == torch.float32
        assert i.dtype == torch.int64
        assert_exact_topk(s, i, q.float(), r.float(), 17)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inner_product_without_normalize(backend: str) -> None:
    rng = np.random.default_rng(8)
    q = rng.standard_normal((9, 40)).astype(np.float32)
    r = (rng.standard_normal((500, 40)) * rng.uniform(0.1, 5, (500, 1))).astype(np.float32)
    for precision in PRECISIONS:
        s, i = memlens.cosine_topk(q, r, 12, normalize=False, precision=precision, backend=backend)
        assert_exact_topk(s, i, q, r, 12, normalize=False, tie=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_rows_score_zero(backend: str) -> None:
    r = unit_rows(20, 16, 9)
    r[[3, 7]] = 0.0
    q = -r[:2].copy()  # every nonzero ref anti-aligned with q[0] or unrelated
    s, i = memlens.cosine_topk(q, r, 20, backend=backend)
    full = true_scores(q, r)
    assert full[0, 3] == 0.0
    assert_exact_topk(s, i, q, r, 20)


@pytest.mark.parametrize("backend", BACKENDS)
def test_memmap_and_float16_numpy(backend: str, tmp_path) -> None:
    r = unit_rows(700, 48, 10)
    path = tmp_path / "refs.npy"
    np.save(path, r.astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    q = unit_rows(11, 48, 11)
    s, i = memlens.cosine_topk(q, mm, 25, backend=backend)
    assert_exact_topk(s, i, q, np.asarray(mm, np.float32), 25)


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_blocks_are_stitched(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMLENS_WORKSPACE_MB", "16")  # forces several query blocks
    q = unit_rows(2000, 64, 12)
    r = unit_rows(3000, 64, 13)
    s, i = memlens.cosine_topk(q, r, 1000, backend=backend)
    es, ei = ref_topk(torch.from_numpy(q), torch.from_numpy(r), 1000)
    assert s.shape == (2000, 1000)
    np.testing.assert_allclose(s, es.numpy(), atol=2e-5)
    agree = (i == ei.numpy()).mean()
    assert agree > 0.999


def test_empty_queries_give_empty_results() -> None:
    r = unit_rows(10, 8, 14)
    s, i = memlens.cosine_topk(np.zeros((0, 8), np.float32), r, 4)
    assert s.shape == (0, 4)
    assert i.shape == (0, 4)
    assert s.dtype == np.float32
    assert i.dtype == np.int64
    st, _it = memlens.cosine_topk(torch.zeros(0, 8), torch.from_numpy(r), 4)
    assert isinstance(st, torch.Tensor)
    assert st.shape == (0, 4)


# ------------------------------------------------------------------- errors at the boundary

ERRORS = [
    (
        lambda q, r: memlens.cosine_topk(q[0], r, 1),
        ValueError,
        r"queries must have shape \(N, D\); got \(8,\)",
    ),
    (lambda q, r: memlens.cosine_topk(q, r[:, :5], 1), ValueError, "refs must have d=8"),
    (lambda q, r: memlens.cosine_topk(q, r, 0), ValueError, r"k must be in \[1, 4096\]; got 0"),
    (lambda q, r: memlens.cosine_topk(q, r, 11), ValueError, "k must be <= the number of refs"),
    (lambda q, r: memlens.cosine_topk(q, r, 4097), ValueError, "k must be in"),
    (lambda q, r: memlens.cosine_topk(q, r, 2.0), TypeError, "k must be an int"),
    (lambda q, r: memlens.cosine_topk(q, r, True), TypeError, "k must be an int"),
    (
        lambda q, r: memlens.cosine_topk(q.astype(np.int32), r, 1),
        TypeError,
        "queries must be float32",
    ),
    (
        lambda q, r: memlens.cosine_topk(q, r.astype(np.float64), 1),
        TypeError,
        "refs must be float32",
    ),
    (
        lambda q, r: memlens.cosine_topk(q.tolist(), r, 1),
        TypeError,
        "queries must be a numpy array",
    ),
    (
        lambda q, r: memlens.cosine_topk(q, r, 1, precision="fp16"),
        ValueError,
        "precision must be one of",
    ),
    (lambda q, r: memlens.cosine_topk(q, r, 1, normalize=1), TypeError, "normalize must be a bool"),
    (
        lambda q, r: memlens.cosine_topk(q, torch.from_numpy(r).to(torch.int8), 1),
        TypeError,
        "refs must be float32",
    ),
]


@pytest.mark.parametrize(("call", "exc", "match"), ERRORS)
def test_bad_arguments_are_named(call, exc, match) -> None:
    q = unit_rows(3, 8, 15)
    r = unit_rows(10, 8, 16)
    with pytest.raises(exc, match=match):
        call(q, r)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["queries", "refs"])
def test_non_finite_inputs_are_rejected(bad: float, where: str) -> None:
    q = unit_rows(3, 8, 17)
    r = unit_rows(10, 8, 18)
    (q if where == "queries" else r)[1, 2] = bad
    with pytest.raises(
        ValueError, match=rf"{where} must be finite; found NaN/Inf at row 1, column 2"
    ):
        memlens.cosine_topk(q, r, 2)


def test_finite_scan_fast_path_and_its_fallback() -> None:
    """The validation pass proves a block finite from one float32 sum; a sum that overflows on
    huge finite values must fall back to the elementwise test, not reject the input, and
    +inf with -inf (a NaN sum) is still caught. The max row norm it returns for un-normalized
    search is an upper bound within its rounding allowance of the float64 value, also when squares overflow
    float32 or fall below its normal range."""
    from memlens._arrays import as_matrix, scan_rows

    huge = np.full((4, 8), 3e38, dtype=np.float32)  # its float32 sum overflows
    huge[1] *= -1
    assert scan_rows(as_matrix(huge, "refs"), check_finite=True, want_norm=False) == 0.0
    both = np.zeros((3, 4), dtype=np.float32)
    both[2, 1], both[2, 3] = np.inf, -np.inf
    with pytest.raises(ValueError, match="refs must be finite; found NaN/Inf at row 2, column 1"):
        scan_rows(as_matrix(both, "refs"), check_finite=True, want_norm=False)
    rng = np.random.default_rng(5)
    for scale in (1.0, 1e-21, 1e25):
        x = (rng.standard_normal((50, 129)) * scale).astype(np.float32)
        want = float(np.sqrt((x.astype(np.float64) ** 2).sum(1)).max())
        got = scan_rows(as_matrix(x, "refs"), check_finite=True, want_norm=True)
        assert want <= got <= want * (1 + 133 * 2.0**-24) + 1e-20, scale  # gamma_{d+3}
    ro = unit_rows(6, 8, 3)
    ro.setflags(write=False)  # read in place, never copied or written
    assert scan_rows(as_matrix(ro, "refs"), check_finite=True, want_norm=True) >= 1.0


def test_mixed_devices_are_rejected() -> None:
    q = unit_rows(3, 8, 19)
    r = torch.from_numpy(unit_rows(10, 8, 20))
    # numpy + cpu tensor is fine (both on the CPU); meta tensors are not a supported device
    memlens.cosine_topk(q, r, 2)
    with pytest.raises(ValueError, match="refs must be on cpu or cuda"):
        memlens.cosine_topk(q, r.to("meta"), 2)


# ------------------------------------------------------------------------------ merge_topk


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_equals_search_over_concatenation(backend: str) -> None:
    q = unit_rows(13, 32, 21)
    base = unit_rows(900, 32, 22)
    r = np.concatenate([base, base[:100]])  # cross-shard duplicates: ties must go to shard 0
    bounds = [0, 250, 251, 700, 1000]
    parts = []
    for a, b in itertools.pairwise(bounds):
        s, i = memlens.cosine_topk(q, r[a:b], min(40, b - a), backend=backend)
        parts.append((s, i + a))
    ms, mi = memlens.merge_topk(parts, 40)
    s, i = memlens.cosine_topk(q, r, 40, backend=backend)
    np.testing.assert_array_equal(mi, i)
    np.testing.assert_array_equal(ms, s)


def test_merge_errors() -> None:
    s = np.zeros((2, 3), np.float32)
    i = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="non-empty list"):
        memlens.merge_topk([], 1)
    with pytest.raises(ValueError, match=r"k must be in \[1, 6\]; got 7"):
        memlens.merge_topk([(s, i), (s, i)], 7)
    with pytest.raises(ValueError, match=r"parts\[1\] must have 2 rows"):
        memlens.merge_topk([(s, i), (s[:1], i[:1])], 2)
    with pytest.raises(TypeError, match="all numpy arrays or all torch tensors"):
        memlens.merge_topk([(s, i), (torch.from_numpy(s), torch.from_numpy(i))], 2)
    with pytest.raises(TypeError, match="float scores, integer indices"):
        memlens.merge_topk([(i, s)], 2)


# ------------------------------------------------------ certification of reduced precision


def _skip_unless_native(precision: str) -> None:
    from memlens.backends import cpu

    if not cpu.native_precision(precision):
        pytest.skip(f"{precision} is answered in fp32 at this CPU's SIMD level")


def _count_candidate_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from memlens.backends import cpu

    calls: list[int] = []
    original = cpu.candidates

    def counted(q, refs, kc, normalize, precision):
        calls.append(kc)
        return original(q, refs, kc, normalize, precision)

    monkeypatch.setattr(cpu, "candidates", counted)
    return calls


@pytest.mark.skipif("cpu" not in BACKENDS, reason="CPU core not built")
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_retries_until_certified(monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    from memlens.ops import _certify

    _skip_unless_native(precision)
    monkeypatch.setattr(_certify, "_first_margin", lambda *a: 1)  # far too few candidates
    monkeypatch.setattr(_certify, "max_candidates", lambda k, n: 10**6)
    calls = _count_candidate_passes(monkeypatch)
    q = unit_rows(20, 64, 23)
    r = unit_rows(6000, 64, 24)
    s, i = memlens.cosine_topk(q, r, 30, precision=precision, backend="cpu")
    assert len(calls) >= 2, "the first pass should have failed certification"
    assert_exact_topk(s, i, q, r, 30)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="CPU core not built")
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_pilot_sizes_the_margin(monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    from memlens.ops import _certify

    _skip_unless_native(precision)
    monkeypatch.setattr(_certify, "PILOT_ROWS", 500)
    monkeypatch.setattr(_certify, "max_candidates", lambda k, n: 10**6)
    calls = _count_candidate_passes(monkeypatch)
    q = unit_rows(40, 128, 25)
    r = unit_rows(20000, 128, 26)
    s, i = memlens.cosine_topk(q, r, 50, precision=precision, backend="cpu")
    assert len(calls) == 2, f"pilot + one certified pass expected; got kc={calls}"
    assert calls[1] > 50 + _certify.FIRST_MARGIN
    assert_exact_topk(s, i, q, r, 50)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="CPU core not built")
def test_hopeless_margin_falls_back_to_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    from memlens.ops import _certify

    monkeypatch.setattr(_certify, "_first_margin", lambda *a: 10**6)
    calls = _count_candidate_passes(monkeypatch)
    q = unit_rows(5, 32, 27)
    r = unit_rows(3000, 32, 28)
    s, i = memlens.cosine_topk(q, r, 20, precision="int8", backend="cpu")
    assert calls == []
    assert_exact_topk(s, i, q, r, 20)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="CPU core not built")
def test_candidate_lists_are_bounded_by_the_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    from memlens.ops import _certify

    _skip_unless_native("int8")
    monkeypatch.setenv("MEMLENS_WORKSPACE_MB", "16")
    monkeypatch.setattr(_certify, "_first_margin", lambda *a: 200)
    monkeypatch.setattr(_certify, "max_candidates", lambda k, n: 10**6)
    calls = _count_candidate_passes(monkeypatch)
    q = unit_rows(2000, 16, 29)
    r = unit_rows(5000, 16, 30)
    from memlens.backends import cpu

    reranked: list[int] = []
    rerank = cpu.rerank

    def counted_rerank(q, refs, idx, normalize):
        reranked.append(idx.numel())
        return rerank(q, refs, idx, normalize)

    monkeypatch.setattr(cpu, "rerank", counted_rerank)
    s, i = memlens.cosine_topk(q, r, 300, precision="int8", backend="cpu")
    assert calls[:2] == [501, 501], "2000 queries x 501 candidates must be split in two passes"
    # the re-rank's transients get a quarter of the workspace beside the lists' half
    assert len(reranked) > 2
    assert max(reranked) * _certify.RERANK_BYTES <= (16 << 20) // 4
    assert_exact_topk(s, i, q, r, 300)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="CPU core not built")
def test_bf16_without_native_support_runs_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMLENS_SIMD", "avx512" if "avx512" in _levels() else "scalar")
    calls = _count_candidate_passes(monkeypatch)
    q = unit_rows(4, 32, 31)
    r = unit_rows(500, 32, 32)
    s, i = memlens.cosine_topk(q, r, 5, precision="bf16", backend="cpu")
    assert calls == []
    assert_exact_topk(s, i, q, r, 5)


def _levels() -> list[str]:
    from memlens.backends.cpu import supported_simd

    return supported_simd()
