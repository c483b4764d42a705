"""The ``torch`` backend of flow_similarity: the float64 reference itself."""

from __future__ import annotations

import torch

from memlens.reference.flow import FlowStats
from memlens.reference.flow import flow_similarity as _reference


def flow_similarity(
    gen: torch.Tensor,
    cands: torch.Tensor,
    mu_min: float,
    gen_affine: torch.Tensor | None,
    cand_affine: torch.Tensor | None,
) -> FlowStats:
    return _reference(gen, cands, mu_min=mu_min, gen_affine=gen_affine, cand_affine=cand_affine)
