"""The ``cpu`` backend of flow_similarity: the compiled C++/OpenMP core (memlens._C).

The fields are read in place with their strides (no copy, whatever the layout); only the small
affine tensors are made contiguous. memlens.ops.flow has validated shapes, dtypes and values.
"""

from __future__ import annotations

import torch

from memlens import _C
from memlens.backends.cpu import resolve_simd
from memlens.reference.flow import FIELD_STATS, PAIR_STATS, FlowStats

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1}

# Pixels of gen kept hot in L2 per block (0: the kernel's default); for tests and tuning.
block_pixels = 0


def _affine_ptr(a: torch.Tensor | None) -> tuple[int, torch.Tensor | None]:
    if a is None:
        return 0, None
    a = a.to(device="cpu", dtype=torch.float64).contiguous()  # keeps the buffer alive
    return a.data_ptr(), a


def flow_similarity(
    gen: torch.Tensor,
    cands: torch.Tensor,
    mu_min: float,
    gen_affine: torch.Tensor | None,
    cand_affine: torch.Tensor | None,
    *,
    num_threads: int = 0,
) -> FlowStats:
    n, t, h, w = (int(s) for s in cands.shape[:4])
    pair = torch.empty((n, t, len(PAIR_STATS)), dtype=torch.float64)
    gen_field = torch.empty((t, len(FIELD_STATS)), dtype=torch.float64)
    cand_field = torch.empty((n, t, len(FIELD_STATS)), dtype=torch.float64)
    ga_ptr, ga = _affine_ptr(gen_affine)
    ca_ptr, ca = _affine_ptr(cand_affine)
    _C.flow_similarity(
        gen.data_ptr(), _DTYPE_CODES[gen.dtype], list(gen.stride()),
        cands.data_ptr(), _DTYPE_CODES[cands.dtype], list(cands.stride()),
        n, t, h, w, float(mu_min), ga_ptr, ca_ptr,
        pair.data_ptr(), gen_field.data_ptr(), cand_field.data_ptr(),
        num_threads, resolve_simd(), block_pixels,
    )  # fmt: skip
    del ga, ca
    return FlowStats(pair=pair, gen_field=gen_field, cand_field=cand_field, height=h, width=w)
