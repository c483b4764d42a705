"""The ``cuda`` backend of flow_similarity: CUDA C++ kernels in memlens._cuda.

The compiled module is torch-free; this adapter passes device pointers, element strides and the
current stream, and allocates the output and the kernel's workspace through torch's caching
allocator (stream-ordered, so freeing the workspace on return is safe).
"""

from __future__ import annotations

import torch

from memlens import _cuda
from memlens._arrays import DTYPE_CODES
from memlens.reference.flow import FlowStats

__all__ = ["flow_similarity"]


def _params(a: torch.Tensor | None, dev: torch.device) -> torch.Tensor | None:
    """Affine parameter tables: float64, contiguous (tiny: a copy costs nothing)."""
    return None if a is None else a.to(device=dev, dtype=torch.float64).contiguous()


def _ptr(a: torch.Tensor | None) -> int:
    return 0 if a is None else int(a.data_ptr())


def flow_similarity(
    gen: torch.Tensor,
    cands: torch.Tensor,
    mu_min: float,
    gen_affine: torch.Tensor | None,
    cand_affine: torch.Tensor | None,
) -> FlowStats:
    """Inputs as validated by memlens.ops.flow (CUDA tensors, float32/float16, any strides):
    read in place, no copy."""
    n, t, h, w = (int(v) for v in cands.shape[:4])
    dev = gen.device
    empty = n == 0 or t == 0 or h == 0 or w == 0
    alloc = torch.zeros if empty else torch.empty  # the kernel writes every entry
    pair = alloc((n, t, 4), dtype=torch.float64, device=dev)
    gen_field = alloc((t, 8), dtype=torch.float64, device=dev)
    cand_field = alloc((n, t, 8), dtype=torch.float64, device=dev)
    if not empty:
        ga = _params(gen_affine, dev)
        ca = _params(cand_affine, dev)
        nbytes = int(_cuda.flow_sim_workspace_bytes(n, t, h, w, ga is not None or ca is not None))
        ws = torch.empty(nbytes, dtype=torch.uint8, device=dev) if nbytes else None
        gs, cs = gen.stride(), cands.stride()  # in elements
        with torch.cuda.device(dev):
            stream = torch.cuda.current_stream().cuda_stream
            _cuda.flow_similarity(
                gen.data_ptr(), gs[0], gs[1], gs[2], gs[3], DTYPE_CODES[gen.dtype],
                cands.data_ptr(), cs[0], cs[1], cs[2], cs[3], cs[4], DTYPE_CODES[cands.dtype],
                n, t, h, w, float(mu_min), _ptr(ga), _ptr(ca),
                pair.data_ptr(), gen_field.data_ptr(), cand_field.data_ptr(),
                _ptr(ws), nbytes, stream,
            )  # fmt: skip
    return FlowStats(pair=pair, gen_field=gen_field, cand_field=cand_field, height=h, width=w)
