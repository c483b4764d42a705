"""The ``triton`` backend of flow_similarity (memlens.kernels.flow_sim); imports triton when
loaded. Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import torch

from memlens.kernels import flow_sim as _kernels
from memlens.reference.flow import FlowStats

__all__ = ["flow_similarity"]


def flow_similarity(
    gen: torch.Tensor,
    cands: torch.Tensor,
    mu_min: float,
    gen_affine: torch.Tensor | None,
    cand_affine: torch.Tensor | None,
    *,
    config: _kernels.FlowConfig | None = None,
) -> FlowStats:
    """Inputs as validated by memlens.ops.flow; read in place with their strides (no copy).
    ``config`` overrides the launch heuristics (tests, tuning)."""
    pair, gen_field, cand_field = _kernels.flow_similarity(
        gen, cands, mu_min, gen_affine, cand_affine, config=config
    )
    h, w = int(gen.shape[1]), int(gen.shape[2])
    return FlowStats(pair=pair, gen_field=gen_field, cand_field=cand_field, height=h, width=w)
