"""Exact top-k from a reduced-precision candidate stage (bf16 or int8).

The candidate kernel returns, per query, the kc + 1 best references by approximate score
and a bound ``err`` with |approx - exact| <= err for every reference. After re-ranking the
first kc candidates in fp32, a query's top-k is certified exact when its k-th exact score
beats the best score any excluded reference could have:

    exact_k - slack > approx_{kc+1} + err

(``slack`` bounds the fp32 rounding of the re-rank itself). Uncertified queries are searched
again with a larger candidate margin, extrapolated from how densely their candidates' scores
sit near the boundary (every pass over the references costs as much as the search, so one
well-sized retry beats several doublings); once the margin covers every reference the fp32
exact path answers them. The result is therefore always the exact top-k.
"""

from __future__ import annotations

from types import ModuleType

import torch

from memlens._arrays import Matrix
from memlens.reference.topk import sort_topk

FIRST_MARGIN = 32
MIN_GROWTH = 2
SAFETY = 1.5


def rerank_slack(d: int, q: torch.Tensor, max_ref_norm: float) -> torch.Tensor:
    """Bound on the rounding error of an fp32 dot product of length d (plus normalization)."""
    eps = 2.0**-24
    gamma = (d + 8) * eps / (1 - (d + 8) * eps)
    return gamma * q.norm(dim=1) * max_ref_norm


def certified_topk(
    impl: ModuleType,
    q: torch.Tensor,
    refs: Matrix,
    k: int,
    normalize: bool,
    precision: str,
    max_ref_norm: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    nq = q.shape[0]
    scores = torch.empty((nq, k), dtype=torch.float32, device=q.device)
    indices = torch.empty((nq, k), dtype=torch.int64, device=q.device)
    pending = torch.arange(nq, device=q.device)
    margin = max(FIRST_MARGIN, k // 4)
    while pending.numel():
        kc = k + margin
        qp = q[pending]
        if kc + 1 > refs.rows:
            s, i = impl.exact(qp, refs, k, normalize)
            scores[pending], indices[pending] = s, i
            break
        approx, cand, err = impl.candidates(qp, refs, kc + 1, normalize, precision)
        exact = impl.rerank(qp, refs, cand[:, :kc], normalize)
        s, i = sort_topk(exact, cand[:, :kc], k)
        bound = approx[:, kc] + err + rerank_slack(q.shape[1], qp, max_ref_norm)
        ok = s[:, k - 1] > bound
        scores[pending[ok]], indices[pending[ok]] = s[ok], i[ok]
        if not bool(ok.all()):
            margin = _next_margin(approx[~ok], (s[:, k - 1] - (bound - approx[:, kc]))[~ok], k, kc, margin)
        pending = pending[~ok]
    return scores, indices


def _next_margin(approx: torch.Tensor, needed: torch.Tensor, k: int, kc: int, margin: int) -> int:
    """Candidate margin for the retry of queries that failed certification.

    Every reference whose approximate score reaches ``needed`` may belong to the top-k. The
    candidate list shows how densely approximate scores are packed near its end; extrapolating
    that density down to ``needed`` estimates how many more candidates are required.
    """
    span = (approx[:, k - 1] - approx[:, kc]).clamp_min(1e-12)
    per_item = span / max(1, kc - k + 1)
    missing = ((approx[:, kc] - needed).clamp_min(0) / per_item).max().item()
    return int(max(margin * MIN_GROWTH, (kc - k + missing) * SAFETY + 16))
