"""The ``triton`` backend of cosine_topk (memlens.kernels.topk); imports triton when loaded."""

from __future__ import annotations

import torch

from memlens._arrays import Matrix
from memlens.backends._rerank import rerank
from memlens.kernels import topk as _kernels

__all__ = ["candidates", "exact", "native_precision", "rerank"]


def _refs(refs: Matrix) -> torch.Tensor:
    assert isinstance(refs.data, torch.Tensor)
    return refs.data


def exact(
    q: torch.Tensor, refs: Matrix, k: int, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels.topk_exact(q, _refs(refs), k, normalize)


def candidates(
    q: torch.Tensor, refs: Matrix, kc: int, normalize: bool, precision: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _kernels.topk_candidates(q, _refs(refs), kc, normalize, precision)


def native_precision(precision: str) -> bool:
    """bf16 and int8 run on tensor cores (or their emulation under the interpreter)."""
    return precision in ("bf16", "int8")
