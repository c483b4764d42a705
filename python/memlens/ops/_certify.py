"""Exact top-k from a reduced-precision candidate stage (bf16 or int8).

The candidate kernel returns, per query, the kc + 1 best references by approximate score
and a bound ``err`` with |approx - exact| <= err for every reference. After re-ranking the
first kc candidates in fp32, a query's top-k is certified exact when its k-th exact score
beats the best score any excluded reference could have:

    exact_k - slack > approx_{kc+1} + err

(``slack`` bounds the fp32 rounding of the re-rank itself). Every pass over the references
costs as much as the search, so the candidate margin is sized up front by a cheap pilot on a
sample of the references, and uncertified queries are searched again with a margin
extrapolated from how densely their candidates' scores sit near the boundary; once the
margin covers every reference, or grows past what a reduced-precision pass can profit from
(``max_candidates``), the fp32 exact path answers them. The result is therefore always the
exact top-k.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch

from memlens._arrays import Matrix
from memlens.reference.topk import sort_topk

FIRST_MARGIN = 32
PILOT_ROWS = 8192
PILOT_QUERIES = 256
# Queries re-ranked together: bounds the re-rank's temporaries while each reference row
# gathered is still shared by many queries.
RERANK_QUERIES = 1024
MIN_GROWTH = 2
SAFETY = 1.5


def max_candidates(k: int) -> int:
    """Largest kc worth a reduced-precision pass.

    Candidate selection, re-rank and sort cost about 0.4 µs per candidate per query on the CPU
    (measured: d = 512, 2 cores), so a few thousand candidates per query cost as much as the
    cheaper arithmetic saves; past this cap the fp32 kernel answers instead. It is reached
    when very many references score within the quantization error of the k-th neighbour,
    e.g. int8 on unstructured high-dimensional data at k >= 100.
    """
    return max(2 * k, k + 512)


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
    margin = _first_margin(impl, q, refs, k, normalize, precision, max_ref_norm)
    while pending.numel():
        kc = k + margin
        qp = q[pending]
        if kc + 1 > refs.rows or kc > max_candidates(k):
            s, i = impl.exact(qp, refs, k, normalize)
            scores[pending], indices[pending] = s, i
            break
        approx, cand, err = impl.candidates(qp, refs, kc + 1, normalize, precision)
        s, i, needed = _rerank(impl, qp, refs, approx, cand, err, k, normalize, max_ref_norm)
        ok = approx[:, kc] < needed
        scores[pending[ok]], indices[pending[ok]] = s[ok], i[ok]
        if not bool(ok.all()):
            margin = _next_margin(approx[~ok], needed[~ok], k, kc, margin)
        pending = pending[~ok]
    return scores, indices


def _rerank(
    impl: ModuleType,
    q: torch.Tensor,
    refs: Matrix,
    approx: torch.Tensor,
    cand: torch.Tensor,
    err: torch.Tensor,
    k: int,
    normalize: bool,
    max_ref_norm: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-k among the first kc candidates, and the approximate score an excluded
    reference would need to displace it (blocks of queries bound the temporaries)."""
    kc = cand.shape[1] - 1
    nq = q.shape[0]
    s = torch.empty((nq, k), dtype=torch.float32, device=q.device)
    i = torch.empty((nq, k), dtype=torch.int64, device=q.device)
    for a in range(0, nq, RERANK_QUERIES):
        b = min(nq, a + RERANK_QUERIES)
        exact = impl.rerank(q[a:b], refs, cand[a:b, :kc], normalize)
        s[a:b], i[a:b] = sort_topk(exact, cand[a:b, :kc], k)
    # an excluded reference could score up to approx[:, kc] + err, and the re-rank is off by
    # at most slack: the k-th exact score must beat both
    needed = s[:, k - 1] - err - rerank_slack(q.shape[1], q, max_ref_norm)
    return s, i, needed


def _first_margin(
    impl: ModuleType,
    q: torch.Tensor,
    refs: Matrix,
    k: int,
    normalize: bool,
    precision: str,
    max_ref_norm: float,
) -> int:
    """Candidate margin from a pilot search of a few queries on a strided sample of the refs.

    Certification needs every reference whose approximate score lies within
    band = err + slack below the k-th neighbour's, a property of the data. Near the top the
    number of references scoring above s falls off about exponentially, N(s) ∝ exp(-β s); the
    pilot (~1/step of a pass, against a whole extra pass for a retry) measures β per query from
    the sample's top scores, and N(s_k - band) ≈ k·exp(β·band) follows without knowing s_k.
    """
    default = max(FIRST_MARGIN, k // 4)
    step = refs.rows // PILOT_ROWS
    if step < 4:  # a small reference set: a retry is cheap anyway
        return default
    sample = refs.every(step)
    qs = q[:: max(1, q.shape[0] // PILOT_QUERIES)]
    rank = k * sample.rows / refs.rows  # where the k-th neighbour falls within the sample
    kc = int(min(sample.rows, max(64, 4 * math.ceil(rank))))
    approx, _, err = impl.candidates(qs, sample, kc, normalize, precision)
    # the log-density slope between two ranks bracketing the k-th neighbour's
    j1 = int(rank // 2)
    j2 = min(kc - 1, max(j1 + 16, 2 * math.ceil(rank)))
    gap = (approx[:, j1] - approx[:, j2]).to(torch.float64).clamp_min(1e-9)
    beta = math.log((j2 + 1) / (j1 + 1)) / gap
    # certification keeps every reference whose approximate score reaches s_k - err - slack,
    # and the k-th approximate score sits close to s_k (typical errors are far below err)
    band = err.to(torch.float64) + rerank_slack(q.shape[1], qs, max_ref_norm)
    needed = k * torch.exp((beta * band).clamp_max(30.0))
    return int(max(default, SAFETY * float(needed.quantile(0.9)) - k + 16))


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
