"""Mine memorization-prone prompts from training captions (methods.md §1.5, seed 000).

The analogue of Webster's / Carlini's curation: captions duplicated many times in the
training set are the likeliest to be memorized. Each step is linear in the number of
captions (no comparison of all pairs):

1. **Exact duplicates.** Stream the captions (:mod:`memlens.prompts.captions`), normalize each
   (:func:`~memlens.prompts.normalize.normalize_caption`) and count equal normalized texts,
   keeping the first raw caption and a sample of ids of each.
2. **Near duplicates.** MinHash LSH over word shingles of the distinct texts, every candidate
   pair checked with the exact Jaccard (:mod:`memlens.prompts.neardup`). A caption's
   near-duplicate count is the number of training captions in its cluster (itself and its
   exact duplicates included).
3. **Ranking.** One row per cluster (its most frequent variant) by near-duplicate count, then
   exact count, then first appearance. With a ``score`` callable (e.g. the first-step
   text-guidance magnitude of a model; higher = more memorization-prone), the best
   ``score_pool`` rows by duplication are scored and re-ranked by score.

Defaults: word bigrams (``shingle_size=2``) and Jaccard ``threshold=0.7``. Captions are short,
so one changed word moves bigram Jaccard a lot: one word substituted in a 15-word caption
gives 12/16 = 0.75 (a near duplicate), one word appended to a 10-word caption 9/10 = 0.9,
while two captions sharing only a template ("a photo of a ...") stay well below 0.7.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memlens.prompts.captions import Caption, CaptionFormat, CaptionId, read_captions
from memlens.prompts.neardup import NearDuplicateClusters, cluster_near_duplicates
from memlens.prompts.normalize import normalize_caption

DEFAULT_TOP = 100
DEFAULT_THRESHOLD = 0.7
DEFAULT_SHINGLE_SIZE = 2
DEFAULT_NUM_PERM = 128
DEFAULT_MAX_MEMBERS = 20
DEFAULT_SCORE_POOL_FACTOR = 4  # score_pool = 4 * top unless given
MAX_VARIANT_SAMPLE = 5

ScoreFn = Callable[[list[str]], Sequence[float]]

__all__ = [
    "DEFAULT_NUM_PERM",
    "DEFAULT_SHINGLE_SIZE",
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOP",
    "MinedPrompt",
    "MiningResult",
    "MiningStats",
    "ScoreFn",
    "mine_prompts",
    "write_mined_prompts",
]


@dataclass(frozen=True)
class MinedPrompt:
    """One mined prompt and its evidence (one JSON Lines row, see :meth:`to_record`)."""

    rank: int  # 1-based
    caption: str  # the raw text of the first occurrence of this normalized caption
    normalized: str
    id: CaptionId  # id of that first occurrence
    exact_duplicates: int  # training captions with this exact normalized text
    near_duplicates: int  # training captions in its near-duplicate cluster (incl. exact ones)
    variants: int  # distinct normalized texts in the cluster
    member_ids: list[CaptionId]  # ids of cluster members, this caption's first (a sample)
    variant_captions: list[str]  # raw text of other variants, most frequent first (a sample)
    score: float | None  # the score callable's value; None when no score was given

    def to_record(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "caption": self.caption,
            "normalized": self.normalized,
            "id": self.id,
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "variants": self.variants,
            "member_ids": list(self.member_ids),
            "variant_captions": list(self.variant_captions),
            "score": self.score,
        }


@dataclass(frozen=True)
class MiningStats:
    captions: int  # records read
    empty: int  # records skipped because nothing was left after normalization
    unique: int  # distinct normalized texts
    clusters: int  # near-duplicate clusters (singletons included)
    candidate_pairs: int  # pairs the LSH proposed
    verified_pairs: int  # of which the exact Jaccard reached the threshold
    scored: int  # prompts passed to the score callable
    lsh_bands: int
    lsh_rows: int
    seconds: float


@dataclass(frozen=True)
class MiningResult:
    prompts: list[MinedPrompt]
    stats: MiningStats


@dataclass
class _Table:
    """Distinct normalized captions in order of first appearance, with their counts."""

    normalized: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    first_id: list[CaptionId] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    # ids after the first, only for duplicated texts (most texts occur once: no list for them)
    more_ids: dict[int, list[CaptionId]] = field(default_factory=dict)
    captions: int = 0
    empty: int = 0

    def ids_of(self, u: int) -> list[CaptionId]:
        return [self.first_id[u], *self.more_ids.get(u, ())]


def _count_exact(records: Iterable[Caption], max_members: int) -> _Table:
    table = _Table()
    index: dict[str, int] = {}
    for rec in records:
        table.captions += 1
        norm = normalize_caption(rec.text)
        if not norm:
            table.empty += 1
            continue
        u = index.get(norm)
        if u is None:
            index[norm] = len(table.counts)
            table.normalized.append(norm)
            table.raw.append(rec.text)
            table.first_id.append(rec.id)
            table.counts.append(1)
            continue
        table.counts[u] += 1
        if table.counts[u] <= max_members:
            table.more_ids.setdefault(u, []).append(rec.id)
    return table


def _records(
    captions: str | os.PathLike[str] | Iterable[str],
    fmt: CaptionFormat | None,
    column: str | None,
    id_column: str | None,
) -> Iterator[Caption]:
    if isinstance(captions, str | os.PathLike):
        yield from read_captions(captions, format=fmt, column=column, id_column=id_column)
        return
    if fmt is not None or column is not None or id_column is not None:
        raise ValueError("format, column and id_column apply to a captions file, not an iterable")
    for row, text in enumerate(captions):
        if not isinstance(text, str):
            raise TypeError(f"captions must yield str; item {row} is {type(text).__name__}")
        yield Caption(row, text)


def _score(fn: ScoreFn, prompts: list[str], batch_size: int) -> list[float]:
    out: list[float] = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        values = list(fn(batch))
        if len(values) != len(batch):
            raise ValueError(
                f"score must return one value per prompt; got {len(values)} for {len(batch)}"
            )
        for prompt, v in zip(batch, values, strict=True):
            value = float(v)
            if math.isnan(value):
                raise ValueError(f"score returned NaN for prompt {prompt!r:.80}")
            out.append(value)
    return out


@dataclass(frozen=True)
class _Ranking:
    """Cluster-level arrays over the distinct texts, and the evidence rows they give."""

    table: _Table
    clusters: NearDuplicateClusters
    counts: np.ndarray  # (n,) exact-duplicate count of each text
    near: np.ndarray  # (n,) captions in the text's cluster
    variants: np.ndarray  # (n,) distinct texts in the text's cluster
    by_cluster: np.ndarray  # text indices grouped by cluster, most frequent first
    cluster_start: np.ndarray  # (n,) where the text's cluster begins in by_cluster

    @classmethod
    def build(cls, table: _Table, clusters: NearDuplicateClusters) -> _Ranking:
        roots, n = clusters.roots, len(table.counts)
        counts = np.asarray(table.counts, dtype=np.int64)
        by_cluster = np.lexsort((np.arange(n), -counts, roots))
        return cls(
            table=table,
            clusters=clusters,
            counts=counts,
            near=np.bincount(roots, weights=counts, minlength=n).astype(np.int64)[roots],
            variants=np.bincount(roots, minlength=n)[roots],
            by_cluster=by_cluster,
            cluster_start=np.searchsorted(roots[by_cluster], roots, side="left"),
        )

    def ranked(self, one_per_cluster: bool) -> np.ndarray:
        """Candidate texts by near count, exact count, first appearance (all descending
        duplication); with ``one_per_cluster`` only each cluster's most frequent variant."""
        if one_per_cluster:
            heads = np.ones(len(self.by_cluster), dtype=bool)
            heads[1:] = np.diff(self.clusters.roots[self.by_cluster]) != 0
            candidates = self.by_cluster[heads]
        else:
            candidates = np.arange(len(self.counts))
        order = np.lexsort((candidates, -self.counts[candidates], -self.near[candidates]))
        return candidates[order]

    def evidence(self, u: int, rank: int, score: float | None, max_members: int) -> MinedPrompt:
        start = int(self.cluster_start[u])
        members = self.by_cluster[start : start + int(self.variants[u])].tolist()
        others = [m for m in members if m != u]
        ids = self.table.ids_of(u)
        for m in others:
            if len(ids) >= max_members:
                break
            ids.extend(self.table.ids_of(m)[: max_members - len(ids)])
        return MinedPrompt(
            rank=rank,
            caption=self.table.raw[u],
            normalized=self.table.normalized[u],
            id=self.table.first_id[u],
            exact_duplicates=int(self.counts[u]),
            near_duplicates=int(self.near[u]),
            variants=int(self.variants[u]),
            member_ids=ids[:max_members],
            variant_captions=[self.table.raw[m] for m in others[:MAX_VARIANT_SAMPLE]],
            score=score,
        )


def _check_count(name: str, value: object, low: int, low_name: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        bound = f"{low_name} ({low})" if low_name else str(low)
        raise ValueError(f"{name} must be an integer >= {bound}; got {value!r}")


def mine_prompts(
    captions: str | os.PathLike[str] | Iterable[str],
    *,
    top: int = DEFAULT_TOP,
    threshold: float = DEFAULT_THRESHOLD,
    shingle_size: int = DEFAULT_SHINGLE_SIZE,
    num_perm: int = DEFAULT_NUM_PERM,
    score: ScoreFn | None = None,
    score_pool: int | None = None,
    score_batch_size: int = 64,
    one_per_cluster: bool = True,
    max_members: int = DEFAULT_MAX_MEMBERS,
    seed: int = 1,
    format: CaptionFormat | None = None,
    column: str | None = None,
    id_column: str | None = None,
) -> MiningResult:
    """Rank training captions by duplication (and optionally a model score); return the top.

    ``captions`` is a file (a ``str`` is always a path; formats in
    :mod:`memlens.prompts.captions`, chosen with ``format``/``column``/``id_column``) or an
    iterable of caption strings (ids = positions). ``threshold`` is the Jaccard similarity of
    ``shingle_size``-word shingle sets at which two captions are near duplicates; ``num_perm``
    and ``seed`` set the MinHash. With ``one_per_cluster=False`` every distinct caption is a
    candidate row instead of one per near-duplicate cluster. ``score`` maps a batch of raw
    captions to one float each (higher = more memorization-prone); it is called on the
    ``score_pool`` (default ``4 * top``) best rows by duplication, ``score_batch_size`` at a
    time. ``max_members`` caps the ids kept per caption and written per row.
    """
    _check_count("top", top, 1)
    _check_count("shingle_size", shingle_size, 1)
    _check_count("num_perm", num_perm, 2)
    _check_count("max_members", max_members, 1)
    _check_count("score_batch_size", score_batch_size, 1)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise TypeError(f"threshold must be a float in (0, 1]; got {type(threshold).__name__}")
    if not 0.0 < threshold <= 1.0:  # also rejects NaN
        raise ValueError(f"threshold must be in (0, 1]; got {threshold!r}")
    if score is not None and not callable(score):
        raise TypeError(f"score must be a callable or None; got {type(score).__name__}")
    pool = DEFAULT_SCORE_POOL_FACTOR * top if score_pool is None else score_pool
    _check_count("score_pool", pool, top, "top")

    t0 = time.perf_counter()
    table = _count_exact(_records(captions, format, column, id_column), max_members)
    clusters = cluster_near_duplicates(
        table.normalized,
        threshold=threshold,
        shingle_size=shingle_size,
        num_perm=num_perm,
        seed=seed,
    )
    ranking = _Ranking.build(table, clusters)
    chosen = ranking.ranked(one_per_cluster)[: pool if score is not None else top].tolist()
    scores: dict[int, float] = {}
    if score is not None:
        values = _score(score, [table.raw[u] for u in chosen], score_batch_size)
        scores = dict(zip(chosen, values, strict=True))
        chosen = sorted(chosen, key=lambda u: -scores[u])  # stable: ties keep duplication order
    prompts = [
        ranking.evidence(u, rank, scores.get(u), max_members)
        for rank, u in enumerate(chosen[:top], start=1)
    ]
    stats = MiningStats(
        captions=table.captions,
        empty=table.empty,
        unique=len(table.counts),
        clusters=int(np.count_nonzero(clusters.roots == np.arange(len(table.counts)))),
        candidate_pairs=clusters.candidate_pairs,
        verified_pairs=clusters.verified_pairs,
        scored=len(scores),
        lsh_bands=clusters.bands,
        lsh_rows=clusters.rows,
        seconds=time.perf_counter() - t0,
    )
    return MiningResult(prompts=prompts, stats=stats)


def write_mined_prompts(
    path: str | os.PathLike[str], prompts: MiningResult | Sequence[MinedPrompt]
) -> Path:
    """Write one JSON object per prompt to ``path`` (JSON Lines, UTF-8), atomically: a reader
    sees the old file or the complete new one. +inf scores are written as ``Infinity``."""
    # on use: importing memlens.index loads the whole index package (~0.7 s)
    from memlens.index.atomic import atomic_writer

    rows = prompts.prompts if isinstance(prompts, MiningResult) else prompts
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"path's directory does not exist: {target.parent}")
    with atomic_writer(target) as w:
        for p in rows:
            line = json.dumps(p.to_record(), ensure_ascii=False, allow_nan=True)
            w.write((line + "\n").encode("utf-8"))
    return target
