"""Reference exact top-k search (float64, ties broken by the lower index)."""

from __future__ import annotations

from collections.abc import Callable

import torch

# Score block of the reference search: about this many float64 values at a time.
_BLOCK_ELEMS = 1 << 23


def sort_topk(
    scores: torch.Tensor, indices: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row by (score descending, index ascending), for any column order."""
    by_index = torch.argsort(indices, dim=1, stable=True)
    scores = torch.gather(scores, 1, by_index)
    indices = torch.gather(indices, 1, by_index)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return torch.gather(scores, 1, order), torch.gather(indices, 1, order)


def _normalize64(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    x = x.to(torch.float64)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) if normalize else x


def block_rows(nq: int, k: int) -> int:
    """Reference rows per block so that one block of scores stays near _BLOCK_ELEMS."""
    return max(k, _BLOCK_ELEMS // max(1, nq))


def topk_over_blocks(
    queries: torch.Tensor,
    n_refs: int,
    read_block: Callable[[int, int], torch.Tensor],
    k: int,
    normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k against references read block by block with ``read_block(start, stop)``.

    Scores are computed in float64 and rounded to float32, the precision of the public API:
    a matrix product may round one pair's float64 score differently depending on where the
    pair sits in the product, and rounding makes exact duplicates of a reference row tie
    exactly, whatever the blocking. Returns float64 (nq, k) scores and int64 indices.
    """
    q = _normalize64(queries, normalize)
    nq = q.shape[0]
    best_s = torch.empty((nq, 0), dtype=torch.float64, device=q.device)
    best_i = torch.empty((nq, 0), dtype=torch.int64, device=q.device)
    step = block_rows(nq, k)
    for start in range(0, n_refs, step):
        r = _normalize64(read_block(start, min(n_refs, start + step)).to(q.device), normalize)
        s = (q @ r.T).to(torch.float32).to(torch.float64)
        idx = torch.arange(start, start + r.shape[0], device=q.device).expand(nq, -1)
        best_s, best_i = sort_topk(torch.cat([best_s, s], 1), torch.cat([best_i, idx], 1), k)
    return best_s, best_i


def cosine_topk(
    queries: torch.Tensor, refs: torch.Tensor, k: int, *, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of ``normalize(queries) @ normalize(refs).T``.

    Returns scores (nq, k) sorted descending (float64 dtype, values rounded to float32) and
    int64 indices (nq, k); equal scores are ordered by the lower reference index.
    ``normalize`` divides each row by ``max(||row||, 1e-12)`` (torch's F.normalize).
    """
    nr = refs.shape[0]
    if not 1 <= k <= nr:
        raise ValueError(f"k must be in [1, {nr}]; got {k}")
    return topk_over_blocks(queries, nr, lambda a, b: refs[a:b], k, normalize)


def merge_topk(
    parts: list[tuple[torch.Tensor, torch.Tensor]], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact merge of per-shard top-k lists holding global indices."""
    scores = torch.cat([s for s, _ in parts], dim=1)
    indices = torch.cat([i for _, i in parts], dim=1)
    return sort_topk(scores, indices, k)
