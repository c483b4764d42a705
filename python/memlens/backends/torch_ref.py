"""The ``torch`` backend of cosine_topk: the float64 reference, always available.

It reads references through a ``Matrix``, so numpy memmaps stream block by block.
"""

from __future__ import annotations

import torch

from memlens._arrays import Matrix
from memlens.reference.topk import topk_over_blocks


def exact(
    q: torch.Tensor, refs: Matrix, k: int, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    s, i = topk_over_blocks(q, refs.rows, refs.block, k, normalize)
    return s.to(torch.float32), i


def native_precision(precision: str) -> bool:
    """The float64 reference is exact in every precision: reduced ones gain nothing."""
    return False
