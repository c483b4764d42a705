"""flow_similarity: one streaming pass from flow fields to the statistics of OFS-k and NMF.

The statistics and their exact definitions are in :mod:`memlens.reference.flow` (the float64
reference is the specification). This module validates the inputs, picks a backend from the
registry and converts the result back to the caller's array kind.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from memlens import _dispatch
from memlens.reference.flow import FlowStats, field_stats

OP = "flow_similarity"
DTYPES = (torch.float32, torch.float16)

for _name, _devices, _module, _probe in (
    ("cpu", {"cpu"}, "memlens.backends.flow_cpu", _dispatch.compiled_cpu_reason),
    ("cuda", {"cuda"}, "memlens.backends.flow_cuda", _dispatch.compiled_cuda_reason),
    ("triton", {"cuda", "cpu"}, "memlens.backends.flow_triton", _dispatch.triton_reason),
    ("torch", {"cuda", "cpu"}, "memlens.backends.flow_torch", _dispatch.always),
):
    _dispatch.register(OP, _dispatch.BackendSpec(_name, frozenset(_devices), _module, _probe))


def _tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    if isinstance(x, np.ndarray):
        if x.dtype not in (np.float32, np.float16):
            raise TypeError(f"{name} must be float32 or float16; got {x.dtype}")
        if any(s < 0 or s % x.itemsize for s in x.strides):
            # strides torch cannot view (negative, odd bytes); a copy, not ascontiguousarray,
            # which keeps an empty array's strides
            x = np.array(x, order="C", copy=True)
        return torch.from_numpy(x), True
    if isinstance(x, torch.Tensor):
        if x.dtype not in DTYPES:
            raise TypeError(f"{name} must be float32 or float16; got {x.dtype}")
        return x, False
    raise TypeError(f"{name} must be a numpy array or torch tensor; got {type(x).__name__}")


def _affine(x: Any, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
    if x is None:
        return None
    try:
        a = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be a numeric array; got {type(x).__name__} ({e})") from e
    if tuple(a.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}; got {tuple(a.shape)}")
    if not torch.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a.to(device=like.device, dtype=torch.float64)


def flow_similarity(
    gen: Any,
    cands: Any,
    *,
    mu_min: float = 0.5,
    gen_affine: Any = None,
    cand_affine: Any = None,
    backend: str | None = None,
    check_finite: bool = True,
) -> FlowStats:
    """PAIR and FIELD statistics (see memlens.reference.flow) of ``gen`` (T, H, W, 2) against
    each of ``cands`` (N, T, H, W, 2): numpy arrays or torch tensors, float32 or float16, any
    strides, on one device. Returns float64 statistics of the same array kind.

    ``mu_min``: the motion threshold in pixels (methods.md §1.4 default 0.5 px at 256²);
    ``gen_affine`` (T, 6) / ``cand_affine`` (N, T, 6): affine flows subtracted before the PAIR
    statistics (residual-flow scoring). ``backend``: "cpu", "cuda", "triton" or "torch".
    """
    g, g_np = _tensor(gen, "gen")
    r, r_np = _tensor(cands, "cands")
    if g_np != r_np:
        raise TypeError("gen and cands must both be numpy arrays or both torch tensors")
    if g.ndim != 4 or g.shape[-1] != 2:
        raise ValueError(f"gen must have shape (T, H, W, 2); got {tuple(g.shape)}")
    if r.ndim != 5 or r.shape[-1] != 2:
        raise ValueError(f"cands must have shape (N, T, H, W, 2); got {tuple(r.shape)}")
    if tuple(r.shape[1:]) != tuple(g.shape):
        raise ValueError(
            f"cands must have shape (N, {', '.join(map(str, g.shape))}) to match gen; "
            f"got {tuple(r.shape)}"
        )
    if g.device != r.device:
        raise ValueError(f"gen and cands must be on the same device; got {g.device} and {r.device}")
    if not (isinstance(mu_min, (int, float)) and math.isfinite(mu_min) and mu_min >= 0):
        raise ValueError(f"mu_min must be a finite number >= 0; got {mu_min!r}")
    t, h, w = g.shape[:3]
    n = r.shape[0]
    ga = _affine(gen_affine, "gen_affine", (t, 6), g)
    ca = _affine(cand_affine, "cand_affine", (n, t, 6), g)
    if check_finite and not (torch.isfinite(g).all() and torch.isfinite(r).all()):
        raise ValueError("gen and cands must be finite (no NaN/Inf flow vectors)")
    device = "cuda" if g.device.type == "cuda" else "cpu"
    impl = _dispatch.load(OP, _dispatch.select(OP, device, backend))
    if n == 0 or t == 0 or h == 0 or w == 0:
        empty = FlowStats(
            pair=torch.zeros((n, t, 4), dtype=torch.float64, device=g.device),
            # the generated field's own statistics exist even with no candidate to compare
            gen_field=field_stats(g)
            if t and h and w
            else torch.zeros((t, 8), dtype=torch.float64, device=g.device),
            cand_field=torch.zeros((n, t, 8), dtype=torch.float64, device=g.device),
            height=h,
            width=w,
        )
        return _out(empty, g_np)
    return _out(impl.flow_similarity(g, r, float(mu_min), ga, ca), g_np)


def _out(s: FlowStats, numpy: bool) -> FlowStats:
    if not numpy:
        return s
    return FlowStats(
        pair=s.pair.cpu().numpy(),
        gen_field=s.gen_field.cpu().numpy(),
        cand_field=s.cand_field.cpu().numpy(),
        height=s.height,
        width=s.width,
    )
