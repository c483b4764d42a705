"""Content memorization: frame-level copy-detection similarity (methods.md §1.2-1.3).

Notation: a generated video G has unit descriptors g_1..g_F; a training item R (a video, or an
image as a 1-frame item) has r_1..r_M; ``S_ij = g_i . r_j``.

- ``GSSCD_max(G, R)  = max_i max_j S_ij``      one replicated frame is a leak (the default);
- ``GSSCD_mean(G, R) = mean_i max_j S_ij``     how much of G is replicated;
- ``VSSCD(G, R)``   the prior-work baseline (Rahman et al.): temporally aligned, frame-ordered
  mean cosine ``mean_t g_t . r_t`` after uniform resampling to a common length;
- ``CM(G) = max_R GSSCD(G, R)`` over a :class:`~memlens.index.ReferenceIndex`.

GSSCD is [RECON] in methods.md (the paper's exact aggregation is unverified), which is why the
aggregation is an option (``agg``) and both variants are always reported.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

Aggregation = Literal["max", "mean"]
TAU_DEFAULT = 0.5  # Somepalli et al.: a generation replicates if its max SSCD > 0.5
TAU_STRICT = 0.7  # the threshold Wen et al.'s memorized-prompt benchmark was built with
_K_START = 64
_K_CAP = 4096  # cosine_topk's largest k; beyond it the exact mean uses a full pass
NEIGHBOURS = 64


def _unit(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "double"):  # a torch tensor: any dtype or device
        x = x.detach().cpu().double().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric array; got {type(x).__name__} ({e})") from e
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (frames, dim); got {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} must have at least one frame; got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _pair(gen: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    g, r = _unit(gen, "gen"), _unit(ref, "ref")
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"gen and ref must have the same dim; got {g.shape[1]} and {r.shape[1]}")
    return g, r


def frame_similarity(gen: Any, ref: Any) -> np.ndarray:
    """``S`` with ``S[i, j] = cos(gen_i, ref_j)``, float64 ``(F, M)``."""
    g, r = _pair(gen, ref)
    return g @ r.T


def gsscd(gen: Any, ref: Any, *, agg: Aggregation = "max") -> float:
    """GSSCD between one generated video and one training item (both ``(frames, dim)``)."""
    s = frame_similarity(gen, ref)
    if agg == "max":
        return float(s.max())
    if agg == "mean":
        return float(s.max(axis=1).mean())
    raise ValueError(f"agg must be 'max' or 'mean'; got {agg!r}")


def aligned_indices(length: int, target: int) -> np.ndarray:
    """Uniform nearest-frame resampling of ``length`` frames onto ``target`` slots."""
    return np.minimum((np.arange(target) * length) // target, length - 1)


def vsscd(gen: Any, ref: Any) -> float:
    """VSSCD (Rahman et al., the frame-aligned baseline): the cosine of the concatenated frame
    descriptors, i.e. ``mean_t cos(g_t, r_t)``. Videos of different lengths are resampled
    uniformly to the longer length (so an image item is compared as a frozen video), which
    keeps the baseline's sensitivity to frame order and temporal offset."""
    g, r = _pair(gen, ref)
    n = max(len(g), len(r))
    g, r = g[aligned_indices(len(g), n)], r[aligned_indices(len(r), n)]
    return float(np.einsum("td,td->t", g, r).mean())


class SearchableIndex(Protocol):
    """What content scoring needs from a reference index (memlens.index.ReferenceIndex)."""

    @property
    def num_rows(self) -> int: ...

    def search(self, queries: np.ndarray, k: int, *, precision: str = ...) -> Any: ...

    def embeddings_of(self, item: int | str) -> np.ndarray: ...

    def item_bounds(self) -> np.ndarray: ...

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray]]: ...


@dataclass(frozen=True)
class ContentMatch:
    """Dataset-level content scores of one generated video against an index."""

    content_max: float  # CM with GSSCD_max: the best frame-to-frame similarity
    content_mean: float  # CM with GSSCD_mean (exact, see content_scores)
    best_item: int  # item number achieving content_max
    best_row: int  # index row achieving content_max (-> training frame)
    best_gen_frame: int  # generated frame achieving content_max
    mean_item: int  # item number achieving content_mean
    vsscd: float  # VSSCD(G, best_item)
    # up to NEIGHBOURS items seen in the frames' top-k hits, ranked by their best score among
    # those hits (= GSSCD_max for the first one; a lower bound of it for the others), best
    # first: the candidates of the motion metric (methods.md §1.4: the content top-K)
    neighbours: tuple[int, ...] = ()

    def memorized(self, tau: float = TAU_DEFAULT, *, agg: Aggregation = "max") -> bool:
        """The decision ``CM(G) > tau`` (default 0.5; strict 0.7)."""
        score = self.content_max if agg == "max" else self.content_mean
        return bool(score > tau)


def content_scores(
    index: SearchableIndex,
    videos: Sequence[Any],
    *,
    precision: str = "fp32",
    k_start: int = _K_START,
) -> list[ContentMatch]:
    """CM(G) for each generated video (``(F_v, dim)`` unit descriptors) in one batched search.

    ``content_max`` is the top-1 hit over all frames. ``content_mean = max_R mean_i max_j S_ij``
    is computed exactly from top-k frame hits grouped by item, with k chosen per batch:

    1. for an item R seen in frame i's top-k, ``max_j S_ij`` is known exactly (its best row is
       in the list); for an unseen frame it is at most that frame's k-th score s_i(k), so
       ``UB(R) = mean_i (known_i or s_i(k))`` and every item never seen at all has
       ``UB = mean_i s_i(k)``;
    2. candidates are re-scored exactly from their own rows in decreasing UB order until the
       best exact score beats every remaining UB;
    3. if the best exact score is below ``mean_i s_i(k)`` some unseen item might still win, so
       k doubles (64, 128, ..., 4096) and the search repeats for those videos only; past 4096
       one streaming pass over the index computes ``mean_i max_j S_ij`` for every item.

    So the result is exact for every k; k only decides how much work it takes.
    """
    if index.num_rows == 0:
        raise ValueError("the index is empty; add training items before scoring")
    frames = [_unit(v, f"videos[{n}]").astype(np.float32) for n, v in enumerate(videos)]
    out: list[ContentMatch | None] = [None] * len(frames)
    pending = list(range(len(frames)))
    k = min(max(1, k_start), index.num_rows)
    while pending:
        queries = np.concatenate([frames[v] for v in pending])
        hits = index.search(queries, k, precision=precision)
        starts = np.cumsum([0] + [len(frames[v]) for v in pending])
        retry = []
        for n, v in enumerate(pending):
            sl = slice(starts[n], starts[n + 1])
            match = _from_hits(
                index,
                frames[v],
                hits.scores[sl],
                hits.rows[sl],
                hits.item_numbers[sl],
                exhaustive=k >= index.num_rows,
            )
            if match is None:
                retry.append(v)
            else:
                out[v] = match
        pending = retry
        if pending and k >= min(_K_CAP, index.num_rows):
            for v, match in zip(
                pending, _full_pass(index, [frames[v] for v in pending]), strict=True
            ):
                out[v] = match
            break
        k = min(2 * k, _K_CAP, index.num_rows)
    return [m for m in out if m is not None]


def _from_hits(
    index: SearchableIndex,
    g: np.ndarray,
    scores: np.ndarray,
    rows: np.ndarray,
    items: np.ndarray,
    *,
    exhaustive: bool,
) -> ContentMatch | None:
    """Scores of one video from its frames' top-k hits, or None if k is too small to certify
    the mean variant (see content_scores)."""
    f = int(np.argmax(scores[:, 0]))
    best_item, best_row = int(items[f, 0]), int(rows[f, 0])
    kth = scores[:, -1].astype(np.float64)
    unseen_ub = -np.inf if exhaustive else float(kth.mean())
    # per (frame, item) best known score; lists are sorted, so the first hit is the best
    ub: dict[int, np.ndarray] = {}
    seen_max: dict[int, float] = {}
    for i in range(len(g)):
        seen: set[int] = set()
        for s, it in zip(scores[i].tolist(), items[i].tolist(), strict=True):
            if it in seen:
                continue
            seen.add(it)
            ub.setdefault(it, kth.copy() if not exhaustive else np.full(len(g), -np.inf))[i] = s
            seen_max[it] = max(seen_max.get(it, -np.inf), s)
    neighbours = tuple(sorted(seen_max, key=lambda it: -seen_max[it])[:NEIGHBOURS])
    bounds = sorted(((float(v.mean()), it) for it, v in ub.items()), reverse=True)
    best_mean, mean_item = -np.inf, -1
    for bound, it in bounds:
        if bound <= best_mean:
            break
        exact = gsscd(g, index.embeddings_of(it), agg="mean")
        if exact > best_mean:
            best_mean, mean_item = exact, it
    if best_mean < unseen_ub:
        return None
    return ContentMatch(
        content_max=float(scores[f, 0]),
        content_mean=float(best_mean),
        best_item=best_item,
        best_row=best_row,
        best_gen_frame=f,
        mean_item=mean_item,
        vsscd=vsscd(g, index.embeddings_of(best_item)),
        neighbours=neighbours,
    )


def _full_pass(index: SearchableIndex, videos: list[np.ndarray]) -> list[ContentMatch]:
    """Exact CM (both variants) for each video by one streaming pass over every index row.

    Items occupy contiguous rows (``index.item_bounds()`` gives their start rows plus the
    total), so per-item frame maxima are a ``np.maximum.reduceat`` over each shard's columns.
    """
    bounds = index.item_bounds()
    n_items = len(bounds) - 1
    q = np.concatenate(videos).astype(np.float32)
    starts = np.cumsum([0] + [len(v) for v in videos])
    item_max = np.full((len(q), n_items), -np.inf, dtype=np.float32)
    best = np.full(len(q), -np.inf, dtype=np.float32)
    best_row = np.zeros(len(q), dtype=np.int64)
    for offset, shard in index.iter_shards():
        r = np.asarray(shard, dtype=np.float32)
        s = (q @ r.T) / np.maximum(np.linalg.norm(r, axis=1), 1e-12)
        arg = s.argmax(axis=1)
        top = s[np.arange(len(q)), arg]
        better = top > best
        best[better], best_row[better] = top[better], arg[better] + offset
        # item segments overlapping this shard
        first = int(np.searchsorted(bounds, offset, side="right")) - 1
        last = int(np.searchsorted(bounds, offset + shard.shape[0], side="left"))
        cuts = np.clip(bounds[first:last], offset, None) - offset
        seg = np.maximum.reduceat(s, cuts, axis=1)
        item_max[:, first : first + len(cuts)] = np.maximum(
            item_max[:, first : first + len(cuts)], seg
        )
    out = []
    for n, g in enumerate(videos):
        sl = slice(starts[n], starts[n + 1])
        f = int(np.argmax(best[sl]))
        row = int(best_row[sl][f])
        item = int(np.searchsorted(bounds, row, side="right")) - 1
        means = item_max[sl].astype(np.float64).mean(axis=0)
        mean_item = int(np.argmax(means))
        maxes = item_max[sl].max(axis=0)
        order = np.argsort(-maxes, kind="stable")[:NEIGHBOURS]
        out.append(
            ContentMatch(
                content_max=float(best[sl][f]),
                content_mean=gsscd(g, index.embeddings_of(mean_item), agg="mean"),
                best_item=item,
                best_row=row,
                best_gen_frame=f,
                mean_item=mean_item,
                vsscd=vsscd(g, index.embeddings_of(item)),
                neighbours=tuple(int(i) for i in order),
            )
        )
    return out


def replication_rate(scores: Any, tau: float = TAU_DEFAULT) -> float:
    """Fraction of generations with ``CM(G) > tau`` (methods.md §1.3)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array; got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores must not contain NaN")
    return float(np.mean(s > tau))
