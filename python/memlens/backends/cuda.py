"""The ``cuda`` backend of cosine_topk: CUDA C++ kernels in memlens._cuda.

The compiled module is torch-free; this adapter passes device pointers and the current
stream, and allocates the kernel's workspace through torch's caching allocator.
"""

from __future__ import annotations

import torch

from memlens import _cuda
from memlens._arrays import Matrix
from memlens.backends._rerank import rerank

__all__ = ["candidates", "exact", "native_precision", "rerank"]
_PRECISION_CODES = {"fp32": 0, "bf16": 1, "int8": 2}


def _workspace(q: torch.Tensor, refs: Matrix, k: int, precision: str) -> torch.Tensor:
    nbytes = int(
        _cuda.workspace_bytes(q.shape[0], refs.rows, q.shape[1], k, _PRECISION_CODES[precision])
    )
    return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=q.device)


def exact(
    q: torch.Tensor, refs: Matrix, k: int, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    nq = q.shape[0]
    scores = torch.empty((nq, k), dtype=torch.float32, device=q.device)
    idx = torch.empty((nq, k), dtype=torch.int64, device=q.device)
    ws = _workspace(q, refs, k, "fp32")
    with torch.cuda.device(q.device):
        stream = torch.cuda.current_stream().cuda_stream
        _cuda.topk_fp32(
            *refs.kernel_args(q), normalize, k, scores.data_ptr(), idx.data_ptr(),
            ws.data_ptr(), ws.numel(), stream,
        )  # fmt: skip
    return scores, idx


def candidates(
    q: torch.Tensor, refs: Matrix, kc: int, normalize: bool, precision: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    nq = q.shape[0]
    approx = torch.empty((nq, kc), dtype=torch.float32, device=q.device)
    idx = torch.empty((nq, kc), dtype=torch.int64, device=q.device)
    err = torch.empty((nq,), dtype=torch.float32, device=q.device)
    ws = _workspace(q, refs, kc, precision)
    with torch.cuda.device(q.device):
        stream = torch.cuda.current_stream().cuda_stream
        _cuda.topk_candidates(
            *refs.kernel_args(q), normalize, _PRECISION_CODES[precision], kc,
            approx.data_ptr(), idx.data_ptr(), err.data_ptr(), ws.data_ptr(), ws.numel(), stream,
        )  # fmt: skip
    return approx, idx, err


def native_precision(precision: str) -> bool:
    """bf16 and int8 run on tensor cores (or their emulation under the interpreter)."""
    return precision in ("bf16", "int8")
