"""cosine_topk and merge_topk: the exact search API."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from memlens import _dispatch
from memlens._arrays import Matrix, as_matrix, check_int, normalized_queries, scan_rows
from memlens._config import workspace_bytes
from memlens.ops._certify import certified_topk
from memlens.reference.topk import sort_topk

OP = "cosine_topk"
MAX_K = 4096
PRECISIONS = ("fp32", "bf16", "int8")

for _name, _devices, _module, _probe in (
    ("cpu", {"cpu"}, "memlens.backends.cpu", _dispatch.compiled_cpu_reason),
    ("cuda", {"cuda"}, "memlens.backends.cuda", _dispatch.compiled_cuda_reason),
    ("triton", {"cuda", "cpu"}, "memlens.backends.triton", _dispatch.triton_reason),
    ("torch", {"cuda", "cpu"}, "memlens.backends.torch_ref", _dispatch.always),
):
    _dispatch.register(OP, _dispatch.BackendSpec(_name, frozenset(_devices), _module, _probe))


def _query_block(k: int, d: int) -> int:
    """Queries per kernel call, so what this loop holds per block (the normalized query copy
    and the block's results) fits the workspace. The kernels bound their own selection state
    and ops._certify its candidate lists, so larger blocks only mean fewer passes over the
    references (which may be a file on disk).
    """
    per_query = k * 12 + d * 16
    return int(min(1 << 16, max(64, workspace_bytes() // per_query)))


def _device(q: Matrix, r: Matrix) -> str:
    if q.device != r.device:
        raise ValueError(
            f"queries and refs must be on the same device; got {q.device} and {r.device}"
        )
    if q.device == "cuda":
        assert isinstance(q.data, torch.Tensor)
        assert isinstance(r.data, torch.Tensor)
        if q.data.device != r.data.device:
            raise ValueError(
                f"queries and refs must be on the same device; got {q.data.device} and {r.data.device}"
            )
    return q.device


def _out(x: torch.Tensor, like_numpy: bool) -> Any:
    return x.numpy() if like_numpy else x


def cosine_topk(
    queries: Any,
    refs: Any,
    k: int,
    *,
    normalize: bool = True,
    precision: str = "fp32",
    backend: str | None = None,
    check_finite: bool = True,
) -> tuple[Any, Any]:
    """Exact top-k cosine (or inner-product) search of ``queries`` against ``refs``.

    Args:
        queries: (nq, d) numpy array (float32/float16) or torch tensor (float32/float16/bfloat16).
        refs: (nr, d) array of the same kind of device; may be an ``np.memmap`` larger than RAM.
        k: number of neighbours, 1 <= k <= min(nr, 4096).
        normalize: score cosine similarity (rows divided by max(||row||, 1e-12)); False scores
            raw inner products.
        precision: "fp32", or "bf16"/"int8" for a faster reduced-precision candidate stage that
            is re-ranked and certified in fp32, so the result is still exact.
        backend: "cpu", "cuda", "triton" or "torch"; default from MEMLENS_BACKEND, else automatic.
        check_finite: scan inputs for NaN/Inf first (one streaming pass; disable only for
            inputs already checked, such as an index built by memlens).

    Returns:
        (scores, indices): float32 (nq, k) sorted descending and int64 (nq, k); equal scores
        are ordered by the lower reference index. numpy in → numpy out, torch in → torch out
        on the queries' device.
    """
    q = as_matrix(queries, "queries")
    r = as_matrix(refs, "refs")
    device = _device(q, r)
    if r.cols != q.cols:
        raise ValueError(
            f"refs must have d={q.cols} columns like queries; got shape ({r.rows}, {r.cols})"
        )
    if q.cols == 0:
        raise ValueError("queries must have at least one column; got d=0")
    k = check_int(k, "k", 1, MAX_K)
    if k > r.rows:
        raise ValueError(f"k must be <= the number of refs ({r.rows}); got {k}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool; got {type(normalize).__name__}")
    name = _dispatch.select(OP, device, backend)
    impl = _dispatch.load(OP, name)
    scan_rows(q, check_finite=check_finite, want_norm=False)
    # a precision this backend cannot compute faster than fp32 is answered in fp32: the
    # result is the same exact top-k either way
    reduced = precision != "fp32" and impl.native_precision(precision)
    max_ref_norm = scan_rows(r, check_finite=check_finite, want_norm=reduced and not normalize)
    if normalize:
        max_ref_norm = 1.0

    out_device = torch.device("cpu") if q.is_numpy else q.data.device
    if q.rows == 0:
        empty_s = torch.empty((0, k), dtype=torch.float32, device=out_device)
        empty_i = torch.empty((0, k), dtype=torch.int64, device=out_device)
        return _out(empty_s, q.is_numpy), _out(empty_i, q.is_numpy)

    step = _query_block(k, q.cols)
    scores, indices = [], []
    for start in range(0, q.rows, step):
        block = normalized_queries(q.block(start, min(q.rows, start + step)), normalize)
        if reduced:
            s, i = certified_topk(impl, block, r, k, normalize, precision, max_ref_norm)
        else:
            s, i = impl.exact(block, r, k, normalize)
        scores.append(s)
        indices.append(i)
    s_all = torch.cat(scores) if len(scores) > 1 else scores[0]
    i_all = torch.cat(indices) if len(indices) > 1 else indices[0]
    return _out(s_all, q.is_numpy), _out(i_all, q.is_numpy)


def merge_topk(parts: Any, k: int) -> tuple[Any, Any]:
    """Exact merge of per-shard top-k results: ``[(scores, indices), ...]`` → top-k overall.

    Indices must already be global (shard offset added). Equal scores keep the lower index,
    so merging the searches of consecutive shards equals one search over their concatenation.
    All parts must be of one kind (numpy or torch on one device) with the same number of rows.
    """
    if not isinstance(parts, list | tuple) or not parts:
        raise ValueError("parts must be a non-empty list of (scores, indices) pairs")
    ss: list[torch.Tensor] = []
    ii: list[torch.Tensor] = []
    kinds = set()
    for n, part in enumerate(parts):
        if not isinstance(part, tuple | list) or len(part) != 2:
            raise ValueError(f"parts[{n}] must be a (scores, indices) pair")
        s, i = part
        kinds.add(type(s) is np.ndarray)
        if isinstance(s, np.ndarray) and isinstance(i, np.ndarray):
            s, i = (
                torch.from_numpy(np.ascontiguousarray(s)),
                torch.from_numpy(np.ascontiguousarray(i)),
            )
        if not isinstance(s, torch.Tensor) or not isinstance(i, torch.Tensor):
            raise TypeError(f"parts[{n}] must hold two numpy arrays or two torch tensors")
        if s.dim() != 2 or i.shape != s.shape:
            raise ValueError(
                f"parts[{n}] scores and indices must have the same 2-D shape; got "
                f"{tuple(s.shape)} and {tuple(i.shape)}"
            )
        if not s.is_floating_point() or i.is_floating_point() or i.dtype == torch.bool:
            raise TypeError(
                f"parts[{n}] must be (float scores, integer indices); got {s.dtype}, {i.dtype}"
            )
        if bool(torch.isnan(s).any()):
            raise ValueError(f"parts[{n}] scores must not contain NaN")
        if ss and (s.shape[0] != ss[0].shape[0] or s.device != ss[0].device):
            raise ValueError(
                f"parts[{n}] must have {ss[0].shape[0]} rows on {ss[0].device}; got "
                f"{s.shape[0]} rows on {s.device}"
            )
        ss.append(s.to(torch.float32))
        ii.append(i.to(torch.int64))
    if len(kinds) != 1:
        raise TypeError("parts must be all numpy arrays or all torch tensors")
    total = sum(s.shape[1] for s in ss)
    k = check_int(k, "k", 1, total if total else 1)
    if total == 0:
        raise ValueError("parts hold no candidates")
    s_out, i_out = sort_topk(torch.cat(ss, 1), torch.cat(ii, 1), k)
    numpy_out = kinds == {True}
    return _out(s_out, numpy_out), _out(i_out, numpy_out)
