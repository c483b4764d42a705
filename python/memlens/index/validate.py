"""Argument checks of the index API: errors name the argument and show expected vs actual."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value}")
    return int(value)


def copies(value: Sequence[str], allowed: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    out = tuple(value)
    if not set(out) <= set(allowed) or len(set(out)) != len(out):
        raise ValueError(f"copies must be distinct names from {allowed}; got {out}")
    return tuple(c for c in allowed if c in out)  # canonical order


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array or a torch tensor; got {type(x).__name__}")


def _float_matrix(x: Any, name: str, dim: int) -> np.ndarray:
    a = _as_numpy(x, name)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array; got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}); got {tuple(a.shape)}")
    return a


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.argwhere(mask)[0])


def embeddings(x: Any, dim: int) -> np.ndarray:
    """(n >= 1, dim) finite, non-zero rows -> C-contiguous unit float32 rows.

    Normalized in float64 and rounded once, so re-adding the same rows gives the same bytes.
    """
    a = _float_matrix(x, "embeddings", dim)
    if a.shape[0] == 0:
        raise ValueError(f"embeddings must have at least one row; got shape {tuple(a.shape)}")
    a64 = a.astype(np.float64)
    finite = np.isfinite(a64)
    if not finite.all():
        r, c = _first_bad(~finite)
        raise ValueError(f"embeddings must be finite; found {a64[r, c]} at row {r}, column {c}")
    norms = np.linalg.norm(a64, axis=1)
    if not (norms > 0).all():
        raise ValueError(f"embeddings rows must be non-zero; row {_first_bad(norms <= 0)[0]} is 0")
    return np.ascontiguousarray((a64 / norms[:, None]).astype(np.float32))


def queries(x: Any, dim: int) -> np.ndarray:
    """(nq, dim) finite floats -> C-contiguous float32 (exact for float16/bfloat16 inputs)."""
    a = _float_matrix(x, "queries", dim)
    q = np.ascontiguousarray(a, dtype=np.float32)
    finite = np.isfinite(q)
    if not finite.all():
        r, c = _first_bad(~finite)
        raise ValueError(f"queries must be finite; found {q[r, c]} at row {r}, column {c}")
    return q


def frame_indices(x: Any, n: int) -> np.ndarray:
    if x is None:
        return np.arange(n, dtype=np.int64)
    a = np.asarray(x)
    if a.shape != (n,):
        raise ValueError(f"frame_indices must have shape ({n},) like embeddings; got {a.shape}")
    if n and a.dtype.kind not in "iu":
        raise TypeError(f"frame_indices must be integers; got dtype {a.dtype}")
    if n and (a.min() < 0 or (a.dtype.kind == "u" and a.max() > np.iinfo(np.int64).max)):
        raise ValueError(f"frame_indices must be in [0, 2**63); got min {a.min()}, max {a.max()}")
    return a.astype(np.int64)


def timestamps(x: Any, n: int) -> np.ndarray:
    if x is None:
        return np.full(n, np.nan)
    a = np.asarray(x)
    if a.shape != (n,):
        raise ValueError(f"timestamps must have shape ({n},) like embeddings; got {a.shape}")
    if n and a.dtype.kind not in "iuf":
        raise TypeError(f"timestamps must be numbers (seconds); got dtype {a.dtype}")
    t = a.astype(np.float64)
    if np.isinf(t).any():
        raise ValueError("timestamps must be finite or NaN (unknown); found Inf")
    return t
