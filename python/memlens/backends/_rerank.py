"""fp32 re-ranking of candidate rows with torch, for the GPU backends (triton, cuda)."""

from __future__ import annotations

import torch

from memlens._arrays import Matrix

_GATHER_BYTES = 64 << 20


def rerank(q: torch.Tensor, refs: Matrix, idx: torch.Tensor, normalize: bool) -> torch.Tensor:
    """scores[i, j] = <q[i], normalize(refs[idx[i, j]])> in fp32, gathered in bounded blocks."""
    assert isinstance(refs.data, torch.Tensor)
    nq, kc = idx.shape
    d = q.shape[1]
    out = torch.empty((nq, kc), dtype=torch.float32, device=q.device)
    step = max(1, _GATHER_BYTES // max(1, kc * d * 4))
    for s in range(0, nq, step):
        e = min(nq, s + step)
        rows = refs.data[idx[s:e].reshape(-1)].to(torch.float32).reshape(e - s, kc, d)
        if normalize:
            rows = rows / rows.norm(dim=2, keepdim=True).clamp_min(1e-12)
        out[s:e] = torch.bmm(rows, q[s:e].unsqueeze(2)).squeeze(2)
    return out
