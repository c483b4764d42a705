"""The ``torch`` backend of cosine_topk: the float64 reference, always available.

It reads references through a ``Matrix``, so numpy memmaps stream block by block.
"""

from __future__ import annotations

import torch

from memlens._arrays import Matrix
from memlens.reference.topk import topk_over_blocks


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float64)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def exact(
    q: torch.Tensor, refs: Matrix, k: int, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    # ``normalize`` applies to the refs only, as in the other backends: ops.topk has already
    # normalized the queries, and normalizing them again would turn a row clamped at norm
    # 1e-12 (norm < 1 after the first pass) into a unit row
    read = (lambda a, b: _unit_rows(refs.block(a, b))) if normalize else refs.block
    s, i = topk_over_blocks(q, refs.rows, read, k, False)
    return s.to(torch.float32), i


def native_precision(precision: str) -> bool:
    """The float64 reference is exact in every precision: reduced ones gain nothing."""
    return False
