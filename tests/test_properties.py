"""Property-based tests (hypothesis) of every public op and array metric (issue 9, first bullet).

The property, for each op: an input either gives the float64 reference's answer (the
``memlens.reference`` modules, or a plain float64 definition for the metrics) within float32
tolerances, with the right shape, dtype and array kind, or raises ValueError/TypeError whose
message names the offending argument: never another exception, a crash, a wrong shape or a NaN
made from finite inputs. Inputs: random small shapes (0 and 1 sizes included), every accepted
dtype and wrong ones, NaN/Inf, empty inputs, k = 0 / nr / > nr / huge, non-contiguous and
negative-stride views, numpy and torch. Backends: the compiled ``cpu`` core and the ``torch``
reference backend (and the automatic choice).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import memlens
from memlens.metrics import content, motion, roc
from memlens.ops import inversion as inv
from memlens.reference import flow as ref_flow
from memlens.reference import inversion as ref_inv
from memlens.reference import topk as ref_topk

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings(SETTINGS, max_examples=160)
BACKENDS = st.sampled_from(["cpu", "torch", None])
ERRORS = (ValueError, TypeError)


# ------------------------------------------------------------------------------- helpers


def outcome(fn: Callable[[], Any], names: tuple[str, ...], *, must_raise: bool) -> Any:
    """Run ``fn``: a ValueError/TypeError must name one of ``names``; any other exception
    fails the test. Returns the result, or None when a (well-named) error was raised."""
    error: Exception | None = None
    try:
        result = fn()
    except ERRORS as e:
        error = e
    if error is not None:
        msg = str(error)
        assert any(n in msg for n in names), f"{type(error).__name__} names none of {names}: {msg}"
        return None
    assert not must_raise, f"expected a ValueError/TypeError naming {names}; got a result"
    return result


def to_np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


KINDS = ("np32", "np16", "t32", "t16", "tbf16")
LAYOUTS = ("contig", "transposed", "strided", "negative", "bytes")


def make(x: np.ndarray, kind: str, layout: str = "contig") -> Any:
    """``x`` (float64 values) as the array kind ``kind``, laid out as ``layout`` (the same
    logical values; numpy only: ``negative`` has a negative row stride, ``bytes`` a row
    stride that is not a multiple of the item size, as in a field of a packed record)."""
    is_np = kind.startswith("np")
    if is_np:
        dt: Any = np.float32 if kind == "np32" else np.float16
        base = np.asarray(x, dtype=dt)
        if layout == "transposed" and base.ndim >= 2:
            return np.ascontiguousarray(np.swapaxes(base, 0, -1)).swapaxes(0, -1)
        if layout == "strided":
            return np.repeat(base, 2, axis=0)[::2]
        if layout == "negative":
            return np.ascontiguousarray(base[::-1])[::-1]
        if layout == "bytes":
            rec = np.zeros(base.shape[0], dtype=[("pad", "u1"), ("v", dt, base.shape[1:])])
            rec["v"] = base
            return rec["v"]
        return base
    tdt = {"t32": torch.float32, "t16": torch.float16, "tbf16": torch.bfloat16}[kind]
    t = torch.from_numpy(np.asarray(x, dtype=np.float64)).to(tdt)
    if layout == "transposed" and t.ndim >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if layout in ("strided", "negative", "bytes"):
        return t.repeat_interleave(2, dim=0)[::2]
    return t


def values(shape: tuple[int, ...], lo: float = -8.0, hi: float = 8.0) -> st.SearchStrategy:
    """float64 arrays of values exactly representable in float16."""
    return hnp.arrays(np.float64, shape, elements=st.floats(lo, hi, width=16))


# ---------------------------------------------------------------------- cosine_topk / merge


def check_topk(s: Any, i: Any, q: Any, r: Any, k: int, normalize: bool, numpy_out: bool) -> None:
    """``(s, i)`` is an exact top-k of ``q`` against ``r`` (the values actually passed)."""
    assert isinstance(s, np.ndarray) == numpy_out
    assert isinstance(i, np.ndarray) == numpy_out
    s_np = s.numpy() if isinstance(s, torch.Tensor) else s
    i_np = i.numpy() if isinstance(i, torch.Tensor) else i
    q64, r64 = torch.from_numpy(to_np(q)), torch.from_numpy(to_np(r))
    nq = q64.shape[0]
    assert s_np.shape == (nq, k)
    assert i_np.shape == (nq, k)
    assert s_np.dtype == np.float32
    assert i_np.dtype == np.int64
    if nq == 0:
        return
    ref_s, _ = ref_topk.cosine_topk(q64, r64, k, normalize=normalize)
    qn, rn = q64, r64
    if normalize:
        qn = q64 / q64.norm(dim=1, keepdim=True).clamp_min(1e-12)
        rn = r64 / r64.norm(dim=1, keepdim=True).clamp_min(1e-12)
    full = (qn @ rn.T).numpy()
    scale = 1.0 if normalize else max(1.0, float(qn.norm(dim=1).max() * rn.norm(dim=1).max()))
    tol = 2e-5 * scale
    assert np.isfinite(s_np).all()
    np.testing.assert_allclose(s_np, ref_s.numpy(), atol=tol, rtol=0)
    for row in range(nq):
        idx = i_np[row]
        assert ((idx >= 0) & (idx < r64.shape[0])).all()
        assert len(set(idx.tolist())) == k, "duplicate indices"
        assert (np.diff(s_np[row]) <= 0).all(), "scores not sorted"
        np.testing.assert_allclose(s_np[row], full[row, idx], atol=tol, rtol=0)


@st.composite
def topk_case(draw: st.DrawFn) -> dict[str, Any]:
    nq = draw(st.integers(0, 5))
    nr = draw(st.integers(1, 9))
    d = draw(st.integers(1, 9))
    kind_q = draw(st.sampled_from(KINDS))
    # refs of the same container kind (numpy or torch), any accepted dtype
    kind_r = draw(st.sampled_from([k for k in KINDS if k[:2] == kind_q[:2]]))
    # tiny and huge rows too (norms that underflow or overflow if squared in float32)
    wide = not {kind_q, kind_r} & {"np16", "t16"}
    scales = st.sampled_from([1.0, 1e-20, 1e15] if wide else [1.0, 1e-3, 100.0])
    return {
        "q": make(draw(values((nq, d))) * draw(scales), kind_q, draw(st.sampled_from(LAYOUTS))),
        "r": make(draw(values((nr, d))) * draw(scales), kind_r, draw(st.sampled_from(LAYOUTS))),
        "k": draw(st.integers(1, nr)),
        "normalize": draw(st.booleans()),
        "precision": draw(st.sampled_from(["fp32", "bf16", "int8"])),
        "backend": draw(BACKENDS),
    }


@SETTINGS
@given(case=topk_case())
def test_cosine_topk_matches_reference(case: dict[str, Any]) -> None:
    q, r, k = case["q"], case["r"], case["k"]
    s, i = memlens.cosine_topk(
        q, r, k, normalize=case["normalize"], precision=case["precision"], backend=case["backend"]
    )
    check_topk(s, i, q, r, k, case["normalize"], isinstance(q, np.ndarray))


# corruption -> (argument names the error may use, must it raise?)
TOPK_BAD: dict[str, tuple[tuple[str, ...], bool]] = {
    "nan_queries": (("queries",), True),
    "inf_refs": (("refs",), True),
    "k_zero": (("k",), True),
    "k_negative": (("k",), True),
    "k_above_nr": (("k",), True),
    "k_huge": (("k",), True),
    "k_float": (("k",), True),
    "k_bool": (("k",), True),
    "k_numpy_int": (("k",), False),
    "k_nr": (("k",), False),
    "queries_dtype": (("queries",), True),
    "refs_dtype": (("refs",), True),
    "queries_ndim": (("queries",), True),
    "refs_ndim": (("refs",), True),
    "queries_list": (("queries",), True),
    "d_mismatch": (("refs",), True),
    "d_zero": (("queries", "refs"), True),
    "refs_empty": (("k", "refs"), True),
    "queries_empty": (("queries",), False),
    "precision": (("precision",), True),
    "normalize": (("normalize",), True),
    "backend": (("backend",), True),
    "mixed_kinds": (("queries", "refs"), False),
}


@FUZZ
@given(case=topk_case(), bad=st.sampled_from(sorted(TOPK_BAD)), data=st.data())
def test_cosine_topk_bad_inputs(case: dict[str, Any], bad: str, data: st.DataObject) -> None:
    q, r, k = case["q"], case["r"], case["k"]
    nr, d = int(r.shape[0]), int(r.shape[1])
    normalize: Any = case["normalize"]
    precision, backend = case["precision"], case["backend"]
    wrong_dtypes = [np.int64, np.float64, np.bool_, np.complex64]
    wrong_torch = [torch.int64, torch.float64, torch.bool, torch.uint8]
    is_np = isinstance(q, np.ndarray)
    if bad == "nan_queries":
        q = make(data.draw(values((max(1, q.shape[0]), d))), "np32")
        q[data.draw(st.integers(0, q.shape[0] - 1)), data.draw(st.integers(0, d - 1))] = np.nan
    elif bad == "inf_refs":
        r = np.array(to_np(r), dtype=np.float32)
        r[data.draw(st.integers(0, nr - 1)), data.draw(st.integers(0, d - 1))] = -np.inf
        q = np.asarray(to_np(q), dtype=np.float32)
    elif bad == "k_zero":
        k = 0
    elif bad == "k_negative":
        k = data.draw(st.integers(-(2**70), -1))
    elif bad == "k_above_nr":
        k = nr + data.draw(st.integers(1, 5))
    elif bad == "k_huge":
        k = data.draw(st.sampled_from([2**31, 2**32 + 1, 2**63, 2**64, 2**80, 4097]))
    elif bad == "k_float":
        k = float(k)
    elif bad == "k_bool":
        k = True
    elif bad == "k_numpy_int":
        k = np.int64(k)
    elif bad == "k_nr":
        k = nr
    elif bad in ("queries_dtype", "refs_dtype"):
        x = to_np(q if bad == "queries_dtype" else r)
        y: Any = (
            x.astype(data.draw(st.sampled_from(wrong_dtypes)))
            if is_np
            else torch.from_numpy(x).to(data.draw(st.sampled_from(wrong_torch)))
        )
        q, r = (y, r) if bad == "queries_dtype" else (q, y)
    elif bad == "queries_ndim":
        q = q[None] if data.draw(st.booleans()) else q.reshape(-1)
    elif bad == "refs_ndim":
        r = r[None] if data.draw(st.booleans()) else r.reshape(-1)
    elif bad == "queries_list":
        q = to_np(q).tolist()
    elif bad == "d_mismatch":
        r = make(data.draw(values((nr, d + 1))), "np32" if is_np else "t32")
    elif bad == "d_zero":
        q, r = make(np.zeros((q.shape[0], 0)), "np32"), make(np.zeros((nr, 0)), "np32")
    elif bad == "refs_empty":
        r = make(np.zeros((0, d)), "np32" if is_np else "t32")
    elif bad == "queries_empty":
        q = make(np.zeros((0, d)), "np32" if is_np else "t32")
    elif bad == "precision":
        precision = data.draw(st.sampled_from(["fp64", "FP32", "", "int4"]))
    elif bad == "normalize":
        normalize = data.draw(st.sampled_from([1, 0, "yes", None]))
    elif bad == "backend":
        backend = data.draw(st.sampled_from(["gpu", "CPU", ""]))
    elif bad == "mixed_kinds":
        r = torch.from_numpy(np.asarray(to_np(r), dtype=np.float32)) if is_np else to_np(r)
        r = r.astype(np.float32) if isinstance(r, np.ndarray) else r
    names, must_raise = TOPK_BAD[bad]
    res = outcome(
        lambda: memlens.cosine_topk(
            q, r, k, normalize=normalize, precision=precision, backend=backend
        ),
        names,
        must_raise=must_raise,
    )
    if res is not None:
        check_topk(res[0], res[1], q, r, int(k), bool(normalize), isinstance(q, np.ndarray))


@st.composite
def merge_case(draw: st.DrawFn) -> dict[str, Any]:
    nq = draw(st.integers(0, 4))
    d = draw(st.integers(1, 6))
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    kind = draw(st.sampled_from(["np32", "t32"]))
    q = make(draw(values((nq, d))), kind)
    shards = [make(draw(values((n, d))), kind) for n in sizes]
    ks = [draw(st.integers(1, n)) for n in sizes]
    return {"q": q, "shards": shards, "ks": ks, "k": draw(st.integers(1, sum(ks)))}


def shard_parts(case: dict[str, Any]) -> list[tuple[Any, Any]]:
    parts, offset = [], 0
    for shard, ks in zip(case["shards"], case["ks"], strict=True):
        s, i = memlens.cosine_topk(case["q"], shard, ks, backend="cpu")
        parts.append((s, i + offset))
        offset += int(shard.shape[0])
    return parts


@SETTINGS
@given(case=merge_case())
def test_merge_topk_matches_reference(case: dict[str, Any]) -> None:
    parts = shard_parts(case)
    k = case["k"]
    s, i = memlens.merge_topk(parts, k)
    as_t = [(torch.as_tensor(a), torch.as_tensor(b)) for a, b in parts]
    rs, ri = ref_topk.merge_topk(as_t, k)
    numpy_in = isinstance(case["q"], np.ndarray)
    assert isinstance(s, np.ndarray) == numpy_in
    assert isinstance(i, np.ndarray) == numpy_in
    assert tuple(s.shape) == tuple(i.shape) == (case["q"].shape[0], k)
    np.testing.assert_array_equal(to_np(s), rs.numpy())
    np.testing.assert_array_equal(np.asarray(i), ri.numpy())
    if all(ks == sh.shape[0] for ks, sh in zip(case["ks"], case["shards"], strict=True)):
        # every shard fully listed: the merge is one search over the concatenation
        refs = np.concatenate([to_np(x) for x in case["shards"]]).astype(np.float32)
        check_topk(s, i, case["q"], refs, k, True, numpy_in)


MERGE_BAD = (
    "empty_list", "not_a_list", "not_a_pair", "nan_scores", "k_zero", "k_above_total",
    "k_float", "float_indices", "bool_indices", "int_scores", "row_mismatch", "mixed_kinds",
    "one_dim", "shape_mismatch", "k_huge",
)  # fmt: skip


@FUZZ
@given(case=merge_case(), bad=st.sampled_from(MERGE_BAD), data=st.data())
def test_merge_topk_bad_inputs(case: dict[str, Any], bad: str, data: st.DataObject) -> None:
    parts: Any = shard_parts(case)
    k: Any = case["k"]
    total = sum(case["ks"])
    n = data.draw(st.integers(0, len(parts) - 1))
    s, i = parts[n]
    if bad == "empty_list":
        parts = []
    elif bad == "not_a_list":
        parts = data.draw(st.sampled_from([None, 3, "parts", parts[0][0]]))
    elif bad == "not_a_pair":
        parts[n] = (s,)
    elif bad == "nan_scores":
        if s.shape[0] == 0:
            s = s[:0, :0]  # nothing to poison: make it a shape error instead
        else:
            s = s.copy() if isinstance(s, np.ndarray) else s.clone()
            s[data.draw(st.integers(0, s.shape[0] - 1)), 0] = float("nan")
        parts[n] = (s, i)
    elif bad == "k_zero":
        k = 0
    elif bad == "k_above_total":
        k = total + data.draw(st.integers(1, 3))
    elif bad == "k_huge":
        k = 2**64
    elif bad == "k_float":
        k = float(k)
    elif bad == "float_indices":
        parts[n] = (s, i.astype(np.float32) if isinstance(i, np.ndarray) else i.float())
    elif bad == "bool_indices":
        parts[n] = (s, i.astype(bool) if isinstance(i, np.ndarray) else i.bool())
    elif bad == "int_scores":
        parts[n] = (s.astype(np.int64) if isinstance(s, np.ndarray) else s.long(), i)
    elif bad == "row_mismatch":
        rows = 1 if s.shape[0] == 0 else 0  # any other row count
        extra = (np.zeros((rows, 1), np.float32), np.zeros((rows, 1), np.int64))
        parts.append(extra if isinstance(s, np.ndarray) else tuple(map(torch.from_numpy, extra)))
    elif bad == "mixed_kinds":
        parts.append(
            (torch.from_numpy(s), torch.from_numpy(i))
            if isinstance(s, np.ndarray)
            else (s.numpy(), i.numpy())
        )
    elif bad == "one_dim":
        parts[n] = (s.reshape(-1), i.reshape(-1))
    elif bad == "shape_mismatch":
        parts[n] = (s, i[:, :-1])
    names = ("parts", "k")
    outcome(lambda: memlens.merge_topk(parts, k), names, must_raise=True)


# -------------------------------------------------------------------------- flow_similarity

MU_MIN = (0.0, 0.3, 0.5, 1.0, 2.5)  # thresholds never hit exactly by quarter-pixel flows


@st.composite
def flow_case(draw: st.DrawFn) -> dict[str, Any]:
    n, t = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    h, w = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    kind = draw(st.sampled_from(["np32", "np16", "t32", "t16"]))
    # quarter-pixel flows: exact in float16, and |flow| never sits on a MU_MIN threshold
    q = st.integers(-12, 12).map(lambda v: v / 4)
    g = draw(hnp.arrays(np.float64, (t, h, w, 2), elements=q))
    c = draw(hnp.arrays(np.float64, (n, t, h, w, 2), elements=q))
    kind_c = draw(st.sampled_from([k for k in ("np32", "np16", "t32", "t16") if k[:2] == kind[:2]]))
    affine = draw(st.booleans())
    coef = st.integers(-8, 8).map(lambda v: v / 8)
    return {
        "gen": make(g, kind, draw(st.sampled_from(LAYOUTS))),
        "cands": make(c, kind_c, draw(st.sampled_from(LAYOUTS))),
        "mu_min": draw(st.sampled_from(MU_MIN)),
        "gen_affine": draw(hnp.arrays(np.float64, (t, 6), elements=coef)) if affine else None,
        "cand_affine": draw(hnp.arrays(np.float64, (n, t, 6), elements=coef)) if affine else None,
        "backend": draw(BACKENDS),
    }


def check_flow(out: ref_flow.FlowStats, case: dict[str, Any]) -> None:
    gen, cands = case["gen"], case["cands"]
    is_np = isinstance(gen, np.ndarray)
    n, t, h, w = (int(v) for v in cands.shape[:4])
    for name, shape in (("pair", (n, t, 4)), ("gen_field", (t, 8)), ("cand_field", (n, t, 8))):
        x = getattr(out, name)
        assert isinstance(x, np.ndarray) == is_np, name
        assert tuple(x.shape) == shape, name
        assert x.dtype in (np.float64, torch.float64), name
        assert np.isfinite(to_np(x)).all(), f"{name} has NaN/Inf from finite flows"
    assert (out.height, out.width) == (h, w)
    ga, ca = case["gen_affine"], case["cand_affine"]
    want = ref_flow.flow_similarity(
        torch.from_numpy(to_np(gen)), torch.from_numpy(to_np(cands)), mu_min=case["mu_min"],
        gen_affine=None if ga is None else torch.from_numpy(ga),
        cand_affine=None if ca is None else torch.from_numpy(ca),
    )  # fmt: skip
    tol = 1e-5 * max(1.0, h * w * 12.0)
    np.testing.assert_allclose(to_np(out.gen_field), want.gen_field.numpy(), atol=tol, rtol=1e-6)
    np.testing.assert_allclose(to_np(out.cand_field), want.cand_field.numpy(), atol=tol, rtol=1e-6)
    if ga is not None and h and w:
        # residual flows are not on the quarter-pixel lattice: skip the rare inputs where a
        # residual magnitude sits within float32 rounding of the motion threshold
        def mags(x: Any, a: np.ndarray) -> np.ndarray:
            u = to_np(x) - ref_flow.affine_field(torch.from_numpy(a), h, w).numpy()
            return np.linalg.norm(u, axis=-1)

        near = [np.abs(mags(gen, ga) - case["mu_min"]), np.abs(mags(cands, ca) - case["mu_min"])]
        if any(m.size and m.min() < 1e-4 for m in near):
            return
    np.testing.assert_allclose(to_np(out.pair), want.pair.numpy(), atol=tol, rtol=1e-6)


@SETTINGS
@given(case=flow_case())
def test_flow_similarity_matches_reference(case: dict[str, Any]) -> None:
    out = memlens.flow_similarity(
        case["gen"], case["cands"], mu_min=case["mu_min"], gen_affine=case["gen_affine"],
        cand_affine=case["cand_affine"], backend=case["backend"],
    )  # fmt: skip
    check_flow(out, case)


FLOW_BAD: dict[str, tuple[tuple[str, ...], bool]] = {
    "nan_gen": (("gen",), True),
    "inf_cands": (("cands",), True),
    "gen_dtype": (("gen",), True),
    "cands_dtype": (("cands",), True),
    "gen_ndim": (("gen",), True),
    "cands_ndim": (("cands",), True),
    "gen_last_axis": (("gen",), True),
    "cands_mismatch": (("cands",), True),
    "mixed_kinds": (("gen", "cands"), True),
    "mu_min": (("mu_min",), True),
    "gen_affine_shape": (("gen_affine",), True),
    "cand_affine_nan": (("cand_affine",), True),
    "gen_affine_type": (("gen_affine",), True),
    "gen_list": (("gen",), True),
    "backend": (("backend",), True),
    "check_finite_off": (("gen", "cands"), False),
}


@FUZZ
@given(case=flow_case(), bad=st.sampled_from(sorted(FLOW_BAD)), data=st.data())
def test_flow_similarity_bad_inputs(case: dict[str, Any], bad: str, data: st.DataObject) -> None:
    gen, cands = case["gen"], case["cands"]
    t, h, w = (int(v) for v in gen.shape[:3])
    is_np = isinstance(gen, np.ndarray)
    kw: dict[str, Any] = {
        "mu_min": case["mu_min"], "gen_affine": case["gen_affine"],
        "cand_affine": case["cand_affine"], "backend": case["backend"],
    }  # fmt: skip

    def poison(x: Any, v: float) -> Any:
        x = to_np(x).copy()
        if x.size == 0:
            x = np.zeros((1,) * (x.ndim - 1) + (2,))
        x.reshape(-1)[data.draw(st.integers(0, x.size - 1))] = v
        return make(x, "np32" if is_np else "t32")

    if bad == "nan_gen":
        gen = poison(gen, math.nan)
        cands = make(np.zeros((1, *gen.shape)), "np32" if is_np else "t32")
        kw["gen_affine"] = kw["cand_affine"] = None
    elif bad == "inf_cands":
        cands = poison(cands, -math.inf)
        gen = make(np.zeros(cands.shape[1:]), "np32" if is_np else "t32")
        kw["gen_affine"] = kw["cand_affine"] = None
    elif bad in ("gen_dtype", "cands_dtype"):
        x = to_np(gen if bad == "gen_dtype" else cands)
        y: Any = (
            x.astype(data.draw(st.sampled_from([np.float64, np.int32, np.bool_])))
            if is_np
            else torch.from_numpy(x).to(
                data.draw(st.sampled_from([torch.float64, torch.bfloat16, torch.int64]))
            )
        )
        gen, cands = (y, cands) if bad == "gen_dtype" else (gen, y)
    elif bad == "gen_ndim":
        gen = gen[None]
    elif bad == "cands_ndim":
        cands = cands[0] if cands.shape[0] else cands.reshape(-1)
    elif bad == "gen_last_axis":
        gen = make(np.zeros((t, h, w, 3)), "np32" if is_np else "t32")
    elif bad == "cands_mismatch":
        cands = make(np.zeros((1, t + 1, h, w, 2)), "np32" if is_np else "t32")
    elif bad == "mixed_kinds":
        cands = torch.zeros(tuple(cands.shape)) if is_np else np.zeros(cands.shape, np.float32)
    elif bad == "mu_min":
        kw["mu_min"] = data.draw(st.sampled_from([-0.5, math.nan, math.inf, "1", None]))
    elif bad == "gen_affine_shape":
        kw["gen_affine"] = np.zeros((t + 1, 6))
    elif bad == "cand_affine_nan":
        n = int(cands.shape[0])
        if n * t == 0:
            kw["cand_affine"] = np.zeros((n, t + 1, 6))  # a shape error instead
        else:
            a = np.zeros((n, t, 6))
            a[data.draw(st.integers(0, n - 1)), 0, 0] = math.nan
            kw["cand_affine"] = a
    elif bad == "gen_affine_type":
        kw["gen_affine"] = data.draw(st.sampled_from(["affine", object(), {"a": 1}]))
    elif bad == "gen_list":
        gen = to_np(gen).tolist()
    elif bad == "backend":
        kw["backend"] = "gpu"
    elif bad == "check_finite_off":
        kw["check_finite"] = False
    names, must_raise = FLOW_BAD[bad]
    res = outcome(lambda: memlens.flow_similarity(gen, cands, **kw), names, must_raise=must_raise)
    if res is not None:
        check_flow(res, {**case, "gen": gen, "cands": cands, **kw})


# ------------------------------------------------------------------------- inversion ops


def assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float, name: str) -> None:
    g, w = got.detach().to(torch.float64).cpu(), want.detach().to(torch.float64).cpu()
    assert g.shape == w.shape, f"{name}: shape {tuple(g.shape)} != {tuple(w.shape)}"
    assert bool(torch.isfinite(g).all()), f"{name}: NaN/Inf from finite inputs"
    scale = max(1.0, float(w.abs().max())) if w.numel() else 1.0
    torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * scale, msg=name)


DTYPE_RTOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@st.composite
def inversion_case(draw: st.DrawFn) -> dict[str, Any]:
    n, b = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    d = math.prod(shape)
    seed = draw(st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**64 - 1]) | st.integers(0, 2**64 - 1))
    st_ = inv.InversionState.create(n, shape, seed=seed)
    small = st.floats(-2, 2, width=32)
    st_.mu.copy_(torch.from_numpy(draw(hnp.arrays(np.float32, (n, d), elements=small))))
    st_.logvar.copy_(torch.from_numpy(draw(hnp.arrays(np.float32, (n, d), elements=small))))
    st_.noise_step = draw(st.integers(0, 2**32 - 2))
    coef = st.floats(0.0625, 1.0, width=32)
    a = torch.from_numpy(draw(hnp.arrays(np.float32, (n, b), elements=coef)))
    x0 = torch.from_numpy(draw(hnp.arrays(np.float32, (n, *shape), elements=small)))
    return {
        "state": st_, "a": a, "s": (1 - a * a).clamp_min(1e-3).sqrt(), "x0": x0,
        "n": n, "b": b, "d": d, "shape": shape,
        "dtype": draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])),
        "backend": draw(st.sampled_from(["cpu", "torch"])),
        "g": torch.from_numpy(draw(hnp.arrays(np.float32, (n, b, d), elements=small))),
        "g2": torch.from_numpy(draw(hnp.arrays(np.float32, (n, b, d), elements=small))),
        "w": torch.from_numpy(draw(hnp.arrays(np.float32, (n,), elements=st.floats(0, 2)))),
    }  # fmt: skip


@SETTINGS
@given(c=inversion_case())
def test_sample_xt_and_x0_loss_match_reference(c: dict[str, Any]) -> None:
    stt, a, s, x0, dt = c["state"], c["a"], c["s"], c["x0"], c["dtype"]
    n, b, d = c["n"], c["b"], c["d"]
    xt = inv.sample_xt(stt, x0, a, s, dtype=dt, backend=c["backend"])
    assert xt.dtype == dt
    assert tuple(xt.shape) == (n, b, *c["shape"])
    want = ref_inv.sample_xt(stt.mu, stt.logvar, x0.reshape(n, d), a, s, stt.seed, stt.noise_step)
    assert_close(xt.reshape(n, b, d), want, DTYPE_RTOL[dt], "sample_xt")

    eps_hat = c["g"].to(dt).reshape(xt.shape)
    sse, g_eps = inv.x0_loss(xt, eps_hat, x0, a, s, backend=c["backend"])
    assert sse.dtype == torch.float64
    assert tuple(sse.shape) == (n, b)
    assert g_eps.dtype == torch.float32
    assert g_eps.shape == xt.shape
    w_sse, w_g = ref_inv.x0_loss(
        xt.reshape(n, b, d), eps_hat.reshape(n, b, d), x0.reshape(n, d), a, s
    )
    assert_close(sse, w_sse, 1e-4, "sse")
    assert_close(g_eps.reshape(n, b, d), w_g, 1e-4, "g_eps")


@SETTINGS
@given(
    c=inversion_case(),
    lr=st.floats(0.0, 0.5),
    adam_eps=st.sampled_from([1e-3, 0.1, 1.0]),
    t0=st.integers(0, 5),
    draw_next=st.booleans(),
)
def test_update_matches_reference(
    c: dict[str, Any], lr: float, adam_eps: float, t0: int, draw_next: bool
) -> None:
    stt, a, s, x0 = c["state"], c["a"], c["s"], c["x0"]
    n, b, d = c["n"], c["b"], c["d"]
    dt = c["dtype"]
    stt.adam_t = t0
    if t0:  # moments an Adam run could have (zero before the first step), |m| <= sqrt(v)
        for m, v in ((stt.m_mu, stt.v_mu), (stt.m_lv, stt.v_lv)):
            m.copy_(0.1 * stt.mu)
            v.copy_(m * m + 0.01 * stt.logvar.abs())
    before = [x.clone() for x in (stt.mu, stt.logvar, stt.m_mu, stt.v_mu, stt.m_lv, stt.v_lv)]
    g_eps, g_model = c["g"], c["g2"].to(dt)
    adam = inv.AdamSettings(lr=lr, eps=adam_eps)
    step0 = stt.noise_step
    nxt = inv.update(
        stt, g_eps.reshape(n, b, *c["shape"]), g_model.reshape(n, b, *c["shape"]), s, c["w"],
        x0=x0 if draw_next else None, next_coefs=(a, s) if draw_next else None, adam=adam,
        backend=c["backend"],
    )  # fmt: skip
    assert stt.adam_t == t0 + 1
    want = ref_inv.update(
        before[0], before[1], (before[2], before[3], before[4], before[5]), d, g_eps,
        g_model, s, c["w"], stt.seed, step0, t0 + 1, adam,
    )  # fmt: skip
    # |d(Adam step)/dg| <= lr / eps: float32 gradient error, scaled by that, bounds the error
    terms = (s.double()[..., None] * g_model.double()).abs() + g_eps.double().abs()
    gscale = float(terms.sum(1).max()) + 1.0 if terms.numel() else 1.0
    p_tol = 1e-5 + 4e-5 * lr * gscale / adam_eps
    got = (stt.mu, stt.logvar, stt.m_mu, stt.v_mu, stt.m_lv, stt.v_lv)
    names = ("mu", "logvar", "m_mu", "v_mu", "m_lv", "v_lv")
    for gv, wv, name in zip(got, want[:6], names, strict=True):
        tol = p_tol if name in ("mu", "logvar") else 1e-5 * gscale * gscale
        assert bool(torch.isfinite(gv).all()), name
        torch.testing.assert_close(gv.double(), wv, rtol=1e-5, atol=tol, msg=name)
    if not draw_next:
        assert nxt is None
        assert stt.noise_step == step0
        return
    assert nxt is not None
    assert nxt.dtype == dt
    assert tuple(nxt.shape) == (n, b, *c["shape"])
    assert stt.noise_step == step0 + 1
    w_x = ref_inv.sample_xt(stt.mu, stt.logvar, x0.reshape(n, d), a, s, stt.seed, step0 + 1)
    assert_close(nxt.reshape(n, b, d), w_x, DTYPE_RTOL[dt], "next x_t")


@SETTINGS
@given(c=inversion_case())
def test_reparam_sample_matches_reference(c: dict[str, Any]) -> None:
    stt, a, s, x0 = c["state"], c["a"], c["s"], c["x0"]
    n, b, d = c["n"], c["b"], c["d"]
    mu = stt.mu.clone().requires_grad_(True)
    lv = stt.logvar.clone().requires_grad_(True)
    x = inv.reparam_sample(
        mu, lv, x0, a, s, seed=stt.seed, step=stt.noise_step, backend=c["backend"]
    )
    assert x.dtype == torch.float32
    assert tuple(x.shape) == (n, b, d)
    mu64 = stt.mu.double().requires_grad_(True)
    lv64 = stt.logvar.double().requires_grad_(True)
    want = ref_inv.sample_xt(mu64, lv64, x0.reshape(n, d), a, s, stt.seed, stt.noise_step)
    assert_close(x, want, 2e-5, "reparam_sample")
    grad = c["g"]
    gmu, glv = torch.autograd.grad(x, (mu, lv), grad, allow_unused=True)
    wmu, wlv = torch.autograd.grad(want, (mu64, lv64), grad.double(), allow_unused=True)
    for got_g, want_g, name in ((gmu, wmu, "dmu"), (glv, wlv, "dlogvar")):
        want_g = torch.zeros((n, d), dtype=torch.float64) if want_g is None else want_g
        got_g = torch.zeros((n, d)) if got_g is None else got_g
        assert_close(got_g, want_g, 1e-4, name)


INV_BAD: dict[str, tuple[str, ...]] = {
    "a_nan": ("a",), "a_zero": ("a",), "s_negative": ("s",), "a_shape": ("a",),
    "s_shape": ("a and s", "s"), "a_str": ("a",), "x0_numpy": ("x0",), "x0_int": ("x0",),
    "x0_size": ("x0",), "dtype": ("dtype",), "xt_float64": ("xt",), "xt_ndim": ("xt",),
    "eps_hat_dtype": ("eps_hat",), "eps_hat_shape": ("eps_hat",), "w_negative": ("w",),
    "w_nan": ("w",), "w_count": ("w",), "adam_lr": ("adam.lr",), "adam_beta": ("adam.beta",),
    "adam_eps": ("adam.eps",), "next_without_x0": ("x0",), "g_eps_shape": ("g_eps",),
    "g_model_int": ("g_model",), "mu_float64": ("mu",), "mu_shape": ("mu",),
    "seed_range": ("seed",), "step_range": ("step",), "backend": ("backend",),
}  # fmt: skip


@FUZZ
@given(c=inversion_case(), bad=st.sampled_from(sorted(INV_BAD)), data=st.data())
def test_inversion_bad_inputs(c: dict[str, Any], bad: str, data: st.DataObject) -> None:
    stt, x0, dt, be = c["state"], c["x0"], c["dtype"], c["backend"]
    n, d, shape = c["n"], c["d"], c["shape"]
    b = max(1, c["b"])  # at least one sample, so a poisoned coefficient exists
    nn = max(1, n)
    if n == 0:
        stt = inv.InversionState.create(1, shape, seed=stt.seed)
        x0 = torch.zeros((1, *shape))
    a: Any = torch.full((nn, b), 0.6)
    s = torch.full((nn, b), 0.8)
    xt = torch.zeros((nn, b, *shape), dtype=dt)
    g = torch.zeros((nn, b, *shape))
    kw: dict[str, Any] = {"backend": be}
    op = data.draw(st.sampled_from(["sample", "loss", "update", "reparam"]))
    w: Any = torch.ones(nn)
    i, j = data.draw(st.integers(0, nn - 1)), data.draw(st.integers(0, b - 1))
    adam = inv.AdamSettings()
    next_coefs: Any = None
    seed, step = stt.seed, stt.noise_step
    mu, lv = stt.mu.clone(), stt.logvar.clone()
    if bad == "a_nan":
        a[i, j] = math.nan
    elif bad == "a_zero":
        a[i, j] = 0.0
        op = "sample" if op in ("update", "reparam") else op
    elif bad == "s_negative":
        s[i, j] = -0.5
        op = "sample" if op == "reparam" else op
    elif bad == "a_shape":
        a = a[:, :, None] if data.draw(st.booleans()) else torch.full((nn + 1, b), 0.6)
    elif bad == "s_shape":
        s = torch.full((nn, b + 1), 0.8)
        op = "sample" if op in ("update", "reparam") else op
    elif bad == "a_str":
        a = "0.6"
        op = "sample" if op == "update" else op
    elif bad == "x0_numpy":
        x0 = x0.numpy()
        op = "loss"
    elif bad == "x0_int":
        x0 = x0.to(torch.int64)
        op = "sample"
    elif bad == "x0_size":
        x0 = torch.zeros((nn, d + 1))
        op = data.draw(st.sampled_from(["sample", "loss"]))
    elif bad == "dtype":
        kw["dtype"] = data.draw(st.sampled_from([torch.float64, torch.int32, torch.bool]))
        op = "sample"
    elif bad == "xt_float64":
        xt = xt.double()
        op = "loss"
    elif bad == "xt_ndim":
        xt = xt.reshape(nn, -1)[:, :1]
        op = "loss"
    elif bad == "eps_hat_dtype" or bad == "eps_hat_shape":
        op = "loss"
    elif bad in ("w_negative", "w_nan", "w_count"):
        w = {"w_negative": -1.0, "w_nan": math.nan, "w_count": torch.ones(nn + 1)}[bad]
        op = "update"
    elif bad in ("adam_lr", "adam_beta", "adam_eps"):
        adam = {
            "adam_lr": inv.AdamSettings(lr=math.nan),
            "adam_beta": inv.AdamSettings(beta1=1.0),
            "adam_eps": inv.AdamSettings(eps=0.0),
        }[bad]
        op = "update"
    elif bad == "next_without_x0":
        next_coefs = (a, s)
        x0 = None
        op = "update"
    elif bad == "g_eps_shape":
        g = torch.zeros((nn, b, d + 1))
        op = "update"
    elif bad == "g_model_int":
        xt = xt.to(torch.int32)
        op = "update"
    elif bad == "mu_float64":
        mu = mu.double()
        op = "reparam"
    elif bad == "mu_shape":
        lv = lv[:, :-1] if d > 1 else lv[None]
        op = "reparam"
    elif bad == "seed_range":
        seed = data.draw(st.sampled_from([-1, 2**64, 2**70]))
        op = "reparam"
    elif bad == "step_range":
        step = data.draw(st.sampled_from([-1, 2**32, 2**40]))
        op = "reparam"
    elif bad == "backend":
        kw["backend"] = "gpu"
    if op == "update" and bad.startswith("a_"):
        next_coefs = (a, s)  # update reads a only for the next x_t
    eps_hat = xt
    if bad == "eps_hat_dtype":
        eps_hat = xt.to(torch.float32 if dt != torch.float32 else torch.float16)
    elif bad == "eps_hat_shape":
        eps_hat = torch.zeros((nn, b + 1, d), dtype=dt)

    be = kw["backend"]

    def call() -> Any:
        if op == "sample":
            return inv.sample_xt(stt, x0, a, s, **kw)
        if op == "loss":
            return inv.x0_loss(xt, eps_hat, x0, a, s, backend=be)
        if op == "update":
            return inv.update(stt, g, xt, s, w, x0=x0, next_coefs=next_coefs, adam=adam, backend=be)
        return inv.reparam_sample(mu, lv, x0, a, s, seed=seed, step=step, backend=be)

    outcome(call, INV_BAD[bad] + ("backend",) * (bad == "backend"), must_raise=True)


# --------------------------------------------------------------------------------- metrics


def roc_reference(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ROC point per distinct threshold (plus +inf), classifying ``s >= thr`` positive."""
    distinct = np.unique(s)[::-1]
    tpr = np.r_[0.0, [(y & (s >= t)).sum() / y.sum() for t in distinct]]
    fpr = np.r_[0.0, [(~y & (s >= t)).sum() / (~y).sum() for t in distinct]]
    thr = np.r_[np.inf, distinct]
    return fpr, tpr, thr


label_score = st.integers(2, 30).flatmap(
    lambda n: st.tuples(
        hnp.arrays(np.int64, n, elements=st.integers(0, 1)).filter(lambda y: 0 < y.sum() < y.size),
        hnp.arrays(
            np.float64, n,
            elements=st.sampled_from([-np.inf, np.inf, 0.0, 0.5, 1.0])
            | st.floats(-1e6, 1e6, allow_subnormal=False),
        ),
    )
)  # fmt: skip


@SETTINGS
@given(ys=label_score, as_kind=st.sampled_from(["numpy", "list", "torch", "bool_labels"]))
def test_roc_metrics_match_definitions(ys: tuple[np.ndarray, np.ndarray], as_kind: str) -> None:
    y, s = ys
    yb = y.astype(bool)
    labels: Any = y
    scores: Any = s
    if as_kind == "list":
        labels, scores = y.tolist(), s.tolist()
    elif as_kind == "torch":
        labels, scores = torch.from_numpy(y), torch.from_numpy(s)
    elif as_kind == "bool_labels":
        labels = yb
    fpr, tpr, thr = roc.roc_curve(labels, scores)
    w_fpr, w_tpr, w_thr = roc_reference(yb, s)
    np.testing.assert_array_equal(thr, w_thr)
    np.testing.assert_allclose(fpr, w_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, w_tpr, rtol=0, atol=1e-12)
    pos, neg = s[yb], s[~yb]
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    assert roc.auc(labels, scores) == pytest.approx(gt + 0.5 * eq, abs=1e-12)
    assert roc.accuracy(labels, scores) == pytest.approx(
        max(1 - (f + 1 - t) / 2 for f, t in zip(w_fpr, w_tpr, strict=True)), abs=1e-12
    )
    for target in (0.01, 0.1, 0.5, 0.99):
        strict = roc.tpr_at_fpr(labels, scores, target, convention="strict")
        assert strict == pytest.approx(w_tpr[np.nonzero(w_fpr < target)[0][-1]], abs=1e-12)
        closest = roc.tpr_at_fpr(labels, scores, target, convention="closest")
        assert closest == pytest.approx(w_tpr[np.argmin(np.abs(w_fpr - target))], abs=1e-12)
    rep = roc.detection_report(labels, scores)
    assert all(
        0.0 <= v <= 1.0 for v in (rep.auc, rep.acc, rep.tpr_at_1fpr, rep.tpr_at_1fpr_closest)
    )


ROC_BAD = ("nan_score", "label_two", "one_class", "length", "two_dim", "empty", "target",
           "convention", "score_text", "label_half")  # fmt: skip


@FUZZ
@given(
    ys=label_score,
    bad=st.sampled_from(ROC_BAD),
    fn=st.sampled_from(["roc_curve", "auc", "accuracy", "tpr_at_fpr", "detection_report"]),
    data=st.data(),
)
def test_roc_bad_inputs(
    ys: tuple[np.ndarray, np.ndarray], bad: str, fn: str, data: st.DataObject
) -> None:
    y: Any
    s: Any
    y, s = ys[0].copy(), ys[1].copy()
    kw: dict[str, Any] = {}
    names: tuple[str, ...] = ("labels", "scores")
    if bad == "nan_score":
        s[data.draw(st.integers(0, s.size - 1))] = np.nan
        names = ("scores",)
    elif bad == "label_two":
        y[data.draw(st.integers(0, y.size - 1))] = data.draw(st.sampled_from([2, -1]))
        names = ("labels",)
    elif bad == "label_half":
        y = y.astype(np.float64)
        y[0] = 0.5
        names = ("labels",)
    elif bad == "one_class":
        y[:] = data.draw(st.integers(0, 1))
        names = ("labels",)
    elif bad == "length":
        s = s[:-1]
    elif bad == "two_dim":
        y, s = y[None], s[None]
    elif bad == "empty":
        y, s = y[:0], s[:0]
    elif bad == "score_text":
        s = np.full(s.shape, "high")
        names = ("scores",)
    elif bad == "target":
        fn = "tpr_at_fpr"
        kw["fpr_target"] = data.draw(st.sampled_from([0.0, 1.0, -0.1, 2.0, math.nan]))
        names = ("fpr_target",)
    elif bad == "convention":
        fn = "tpr_at_fpr"
        kw["convention"] = "nearest"
        names = ("convention",)
    outcome(lambda: getattr(roc, fn)(y, s, **kw), names, must_raise=True)


@st.composite
def content_case(draw: st.DrawFn) -> tuple[Any, Any]:
    f, m, d = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 6))
    kinds = st.sampled_from(["np32", "np16", "t32", "t16", "tbf16", "f64", "list"])

    def one(x: np.ndarray, kind: str) -> Any:
        if kind == "f64":
            return x
        if kind == "list":
            return x.tolist()
        return make(x, kind, draw(st.sampled_from(LAYOUTS)))

    return one(draw(values((f, d))), draw(kinds)), one(draw(values((m, d))), draw(kinds))


@SETTINGS
@given(case=content_case())
def test_content_metrics_match_definitions(case: tuple[Any, Any]) -> None:
    gen, ref = case
    g, r = to_np(gen), to_np(ref)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    sim = g @ r.T
    assert content.gsscd(gen, ref) == pytest.approx(sim.max(), abs=1e-9)
    assert content.gsscd(gen, ref, agg="mean") == pytest.approx(sim.max(1).mean(), abs=1e-9)
    n = max(len(g), len(r))
    gi = [min(t * len(g) // n, len(g) - 1) for t in range(n)]
    ri = [min(t * len(r) // n, len(r) - 1) for t in range(n)]
    want = float(np.mean([g[a] @ r[b] for a, b in zip(gi, ri, strict=True)]))
    assert content.vsscd(gen, ref) == pytest.approx(want, abs=1e-9)


CONTENT_BAD = ("nan_gen", "inf_ref", "empty_gen", "one_dim_ref", "dim_mismatch", "agg",
               "text_gen")  # fmt: skip


@FUZZ
@given(
    case=content_case(),
    bad=st.sampled_from(CONTENT_BAD),
    metric=st.sampled_from(["gsscd", "vsscd"]),
)
def test_content_bad_inputs(case: tuple[Any, Any], bad: str, metric: str) -> None:
    g, r = to_np(case[0]), to_np(case[1])
    gen: Any = g
    ref: Any = r
    kw: dict[str, Any] = {}
    names: tuple[str, ...] = ("gen",)
    if bad == "nan_gen":
        gen = g.copy()
        gen[0, 0] = np.nan
    elif bad == "inf_ref":
        ref = r.copy()
        ref[-1, -1] = -np.inf
        names = ("ref",)
    elif bad == "empty_gen":
        gen = g[:0]
    elif bad == "one_dim_ref":
        ref = r[0]
        names = ("ref",)
    elif bad == "dim_mismatch":
        ref = np.ones((2, g.shape[1] + 1))
    elif bad == "agg":
        metric = "gsscd"
        kw["agg"] = "median"
        names = ("agg",)
    elif bad == "text_gen":
        gen = np.full(g.shape, "frame")
    outcome(lambda: getattr(content, metric)(gen, ref, **kw), names, must_raise=True)


@st.composite
def motion_case(draw: st.DrawFn) -> dict[str, Any]:
    n, t = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    q = st.integers(-12, 12).map(lambda v: v / 4)
    kind = draw(st.sampled_from(["np32", "np16", "t32", "t16"]))
    return {
        "gen": make(draw(hnp.arrays(np.float64, (t, h, w, 2), elements=q)), kind),
        "refs": make(draw(hnp.arrays(np.float64, (n, t, h, w, 2), elements=q)), kind),
        "settings": motion.MotionSettings(
            camera_filter=draw(st.sampled_from(["exclude", "residual", "off"])),
            max_offset=draw(st.integers(0, 3)),
            # scaled by min(H, W) / 256 inside. Thresholds must not equal a magnitude the
            # quarter-pixel fields or their affine residuals (rationals of small denominators:
            # 1/6 on a 3-pixel axis) take exactly, or float32 rounding decides the mask: 41.3
            # and 100 scale to 0.161, 0.323, ... and 0.391, 0.781, ...
            mu_min=draw(st.sampled_from([0.0, 41.3, 100.0])),
        ),
    }


@SETTINGS
@given(case=motion_case())
def test_motion_scores_cpu_match_torch_reference(case: dict[str, Any]) -> None:
    gen, refs, cfg = case["gen"], case["refs"], case["settings"]
    got = motion.motion_scores(gen, refs, cfg, backend="cpu")
    want = motion.motion_scores(gen, refs, cfg, backend="torch")
    assert len(got) == len(want) == refs.shape[0]
    for a, b in zip(got, want, strict=True):
        for f in ("ofs", "ofs_mag", "rho_gen", "rho_ref", "valid_fraction"):
            va, vb = getattr(a, f), getattr(b, f)
            assert math.isfinite(va), f"{f} is not finite"
            assert va == pytest.approx(vb, abs=1e-5), f
        assert (a.static, a.camera_motion, a.offset) == (b.static, b.camera_motion, b.offset)
        assert -1 - 1e-6 <= a.ofs <= 1 + 1e-6
        assert 0 <= a.valid_fraction <= 1
    if cfg.max_offset == 0 and cfg.camera_filter != "residual":
        # OFS from its definition, in float64
        g, r = to_np(gen), to_np(refs)
        mu = cfg.mu_min * min(g.shape[1], g.shape[2]) / 256
        gm, rm = np.linalg.norm(g, axis=-1), np.linalg.norm(r, axis=-1)
        m = (gm > mu) & (rm > mu)
        c = (g * r).sum(-1) / (gm * rm + 1e-8)
        for k, sc in enumerate(got):
            if not sc.static:
                assert sc.ofs == pytest.approx((m[k] * c[k]).sum() / m[k].sum(), abs=1e-5)
    decision = motion.decide(got, cfg)
    assert decision.best < len(got)


MOTION_BAD = ("no_frames", "empty_image", "gen_ndim", "refs_ndim", "nan", "mismatch")


@FUZZ
@given(case=motion_case(), bad=st.sampled_from(MOTION_BAD))
def test_motion_bad_inputs(case: dict[str, Any], bad: str) -> None:
    gen, refs = case["gen"], case["refs"]
    is_np = isinstance(gen, np.ndarray)
    kind = "np32" if is_np else "t32"
    t, h, w = (int(v) for v in gen.shape[:3])
    names: tuple[str, ...] = ("gen",)
    if bad == "no_frames":
        gen, refs = make(np.zeros((0, h, w, 2)), kind), make(np.zeros((1, 0, h, w, 2)), kind)
    elif bad == "empty_image":
        gen, refs = make(np.zeros((t, 0, w, 2)), kind), make(np.zeros((1, t, 0, w, 2)), kind)
    elif bad == "gen_ndim":
        gen = gen[None]
    elif bad == "refs_ndim":
        refs = make(np.zeros((t, h, w, 2)), kind)
        names = ("ref", "cands")
    elif bad == "nan":
        x = to_np(gen).copy()
        x[0, 0, 0, 0] = np.nan
        gen = make(x, kind)
        refs = make(np.zeros((1, t, h, w, 2)), kind)
    elif bad == "mismatch":
        refs = make(np.zeros((1, t, h + 1, w, 2)), kind)
        names = ("ref", "cands")
    outcome(lambda: motion.motion_scores(gen, refs, case["settings"]), names, must_raise=True)


@SETTINGS
@given(
    scores=hnp.arrays(
        np.float64,
        st.integers(0, 12),
        elements=st.floats(-1e6, 1e6) | st.sampled_from([math.nan, math.inf, -math.inf]),
    ),
    score=st.floats(-1e6, 1e6) | st.sampled_from([math.nan, math.inf, -math.inf]),
    tau=st.floats(-1, 1),
)
def test_score_summaries(scores: np.ndarray, score: float, tau: float) -> None:
    """replication_rate and population_z: the definition's value, or an error naming the
    argument for NaN (and, for the z-score, Inf) input; never a NaN result."""
    rate = outcome(
        lambda: content.replication_rate(scores, tau),
        ("scores",),
        must_raise=scores.size == 0 or bool(np.isnan(scores).any()),
    )
    if rate is not None:
        assert rate == pytest.approx(float(np.mean(scores > tau)), abs=0)
    finite = bool(np.isfinite(scores).all()) and math.isfinite(score)
    z = outcome(
        lambda: motion.population_z(score, scores), ("score", "population"), must_raise=not finite
    )
    if finite and z is not None:
        sd = float(np.std(scores, ddof=1))
        assert math.isfinite(z)
        assert z == pytest.approx((score - scores.mean()) / sd, rel=1e-9, abs=1e-9)
    if finite and scores.size < 2:
        assert z is None
