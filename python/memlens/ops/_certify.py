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
from memlens._config import workspace_bytes
from memlens.reference.topk import sort_topk

FIRST_MARGIN = 32
PILOT_ROWS = 8192
PILOT_QUERIES = 256
MIN_GROWTH = 2
SAFETY = 1.5
MAX_CANDIDATES = 8192
# Transient bytes per candidate while a block is re-ranked and sorted: the contiguous copy of
# its indices (8), the C++ re-rank's reference order (16), the scores (4), and sort_topk's
# argsorts and gathers (28, after the re-rank's are freed); the larger phase, rounded up.
RERANK_BYTES = 32


def max_candidates(k: int, n_refs: int) -> int:
    """Largest kc worth a reduced-precision pass over ``n_refs`` references.

    The cheaper arithmetic saves time in proportion to n_refs (about 2 ns per reference and
    query for bf16 or int8 against fp32 on the CPU, d = 512), while candidate selection,
    re-rank and sort cost about 0.4 µs per candidate and query: past kc ≈ n_refs / 200 the
    fp32 kernel is faster and answers instead. This happens when many references score
    within the quantization error of the k-th neighbour, e.g. int8 on unstructured
    high-dimensional data at large k. MAX_CANDIDATES bounds the candidate lists' memory.
    """
    return min(MAX_CANDIDATES, max(k + 64, n_refs // 200))


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
        if kc + 1 > refs.rows or kc > max_candidates(k, refs.rows):
            scores[pending], indices[pending] = impl.exact(q[pending], refs, k, normalize)
            break
        # each group of queries is one pass; its candidate lists take at most half the workspace
        group = max(1, workspace_bytes() // 2 // ((kc + 1) * 12))
        still, failed_approx, failed_needed = [], [], []
        for a in range(0, pending.numel(), group):
            sel = pending[a : a + group]
            s, i, approx, needed = _certified_pass(
                impl, q[sel], refs, k, kc, normalize, precision, max_ref_norm
            )
            ok = approx[:, kc] < needed
            scores[sel[ok]], indices[sel[ok]] = s[ok], i[ok]
            still.append(sel[~ok])
            failed_approx.append(approx[~ok])
            failed_needed.append(needed[~ok])
        pending = torch.cat(still)
        if pending.numel():
            margin = _next_margin(torch.cat(failed_approx), torch.cat(failed_needed), k, kc, margin)
    return scores, indices


def _certified_pass(
    impl: ModuleType,
    q: torch.Tensor,
    refs: Matrix,
    k: int,
    kc: int,
    normalize: bool,
    precision: str,
    max_ref_norm: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One candidate pass: the exact top-k among the kc best candidates, the kc + 1
    approximate scores, and the approximate score an excluded reference would need to
    displace the k-th (so the query is certified iff approx[:, kc] < needed)."""
    approx, cand, err = impl.candidates(q, refs, kc + 1, normalize, precision)
    # Re-rank and sort as few blocks of queries as the workspace allows: a block reads every
    # reference row its queries list once (more blocks, more re-reads: 4 blocks cost 2x the
    # re-rank time), but its transients (RERANK_BYTES a candidate) come on top of the group's
    # candidate lists; unbounded, they took a bf16 search at nr = 1e6, k = 1000 to 451 MB
    # over its inputs (on a 256 MB workspace).
    nq = q.shape[0]
    block = max(1, workspace_bytes() // 4 // (kc * RERANK_BYTES))
    s = torch.empty((nq, k), dtype=torch.float32, device=q.device)
    i = torch.empty((nq, k), dtype=torch.int64, device=q.device)
    for a in range(0, nq, block):
        b = min(nq, a + block)
        exact = impl.rerank(q[a:b], refs, cand[a:b, :kc], normalize)
        s[a:b], i[a:b] = sort_topk(exact, cand[a:b, :kc], k)
        del exact
    # an excluded reference could score up to approx[:, kc] + err, and the re-rank is off by
    # at most slack: the k-th exact score must beat both
    needed = s[:, k - 1] - err - rerank_slack(q.shape[1], q, max_ref_norm)
    return s, i, approx, needed


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
