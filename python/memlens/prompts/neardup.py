"""Near-duplicate clusters of short texts: MinHash LSH candidates, exact-Jaccard verification.

One MinHash (``datasketch``) of each text's word shingles; banded LSH with the band/row split
chosen by ``datasketch.MinHashLSH``'s optimizer for the Jaccard threshold. Texts that share a
band are candidate pairs; each candidate pair is *verified with the exact Jaccard* of the two
shingle sets, so the LSH only decides which pairs are compared. Verified pairs are joined
(union-find) into clusters, i.e. connected components: a chain A~B~C puts A and C together
even when they differ more than the threshold allows.

Why datasketch's ``MinHashLSH`` index itself is not used: it keeps a Python set per bucket per
band, about 5 kB per text (measured: 510 MB for 10^5 captions), which rules out 10^6. Here the
bands live in one ``(texts, bands)`` uint64 array (160 B per text at the defaults) and buckets
are found with a sort, so time and memory stay linear in the number of texts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from memlens.prompts.normalize import word_shingles

# Candidates are verified exactly, so a false positive only costs one set comparison while a
# false negative loses a duplicate: weight the LSH optimizer towards recall (at threshold 0.7
# and 128 permutations this gives 20 bands of 6 rows, P(candidate | J = 0.7) = 0.92).
_LSH_WEIGHTS = (0.1, 0.9)
_SIGNATURE_CHUNK = 4096  # MinHash signatures are banded in chunks of this many texts

__all__ = ["NearDuplicateClusters", "cluster_near_duplicates", "lsh_params"]


@dataclass(frozen=True)
class NearDuplicateClusters:
    roots: np.ndarray  # (n,) int64: the lowest text index of each text's cluster
    candidate_pairs: int  # pairs the LSH proposed
    verified_pairs: int  # of which the exact Jaccard reached the threshold
    bands: int
    rows: int


def _datasketch() -> Any:
    # imported on use: `import memlens` must not need (or pay for) datasketch
    try:
        import datasketch
    except ImportError as exc:
        raise ImportError("prompt mining needs datasketch: pip install 'memlens[prompts]'") from exc
    return datasketch


@functools.lru_cache(maxsize=32)  # the optimizer's grid search takes ~0.5 s
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) from datasketch's MinHashLSH optimizer."""
    lsh_cls = _datasketch().MinHashLSH
    try:
        lsh = lsh_cls(threshold=threshold, num_perm=num_perm, weights=_LSH_WEIGHTS)
    except ValueError:
        # near 1.0 the optimizer settles on one band, which MinHashLSH refuses; two halves of
        # the signature still make every pair at that similarity a candidate almost surely
        lsh = lsh_cls(num_perm=num_perm, params=(2, num_perm // 2))
    return int(lsh.b), int(lsh.r)


def _band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``(n, bands)`` uint64: one FNV-style hash of each band's ``rows`` MinHash values.

    A 64-bit collision between different bands only adds a candidate pair, which the exact
    Jaccard check then rejects.
    """
    out = np.empty((sig.shape[0], bands), dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    for j in range(bands):
        h = np.full(sig.shape[0], 0xCBF29CE484222325, dtype=np.uint64)
        for c in range(j * rows, (j + 1) * rows):
            h = (h ^ sig[:, c]) * prime  # uint64 arrays wrap silently: the intended modulo 2^64
        out[:, j] = h
    return out


def _signature_bands(
    texts: list[str], *, shingle_size: int, num_perm: int, seed: int, bands: int, rows: int
) -> np.ndarray:
    """Band hashes of every text's MinHash, computed a chunk of signatures at a time."""
    # one MinHash, cleared per text: MinHash.generator copies the permutation arrays for every
    # text, which was a third of the mining time
    mh = _datasketch().MinHash(num_perm=num_perm, seed=seed)
    out = np.empty((len(texts), bands), dtype=np.uint64)
    chunk = np.empty((_SIGNATURE_CHUNK, num_perm), dtype=np.uint64)
    for start in range(0, len(texts), _SIGNATURE_CHUNK):
        stop = min(start + _SIGNATURE_CHUNK, len(texts))
        for i in range(start, stop):
            mh.clear()
            mh.update_batch([s.encode("utf-8") for s in word_shingles(texts[i], shingle_size)])
            chunk[i - start] = mh.hashvalues
        out[start:stop] = _band_hashes(chunk[: stop - start], bands, rows)
    return out


def _candidate_pairs(band_keys: np.ndarray) -> np.ndarray:
    """Unique ``(leader, member)`` pairs, leader < member: in every band bucket, each member
    is paired with the bucket's first text only, so a bucket of k texts costs k pairs, not k²."""
    n = band_keys.shape[0]
    codes = []
    for j in range(band_keys.shape[1]):
        order = np.argsort(band_keys[:, j], kind="stable")  # stable: a bucket's first = lowest
        keys = band_keys[order, j]
        starts = np.ones(n, dtype=bool)
        starts[1:] = keys[1:] != keys[:-1]
        leader = order[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
        paired = leader != order
        codes.append(leader[paired].astype(np.int64) * n + order[paired])
    if not codes:
        return np.empty((0, 2), dtype=np.int64)
    unique = np.unique(np.concatenate(codes))
    return np.stack([unique // n, unique % n], axis=1)


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _verified_roots(
    texts: list[str], pairs: np.ndarray, *, threshold: float, shingle_size: int
) -> tuple[np.ndarray, int]:
    """Cluster root (lowest member index) of every text, and the number of verified pairs."""
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    verified = 0
    leader_set: set[str] = set()
    current = -1
    for a, m in pairs.tolist():  # sorted by leader: each leader's shingles are built once
        if a != current:
            current, leader_set = a, word_shingles(texts[a], shingle_size)
        if _jaccard(leader_set, word_shingles(texts[m], shingle_size)) >= threshold:
            verified += 1
            ra, rm = find(a), find(m)
            if ra != rm:  # the lower index becomes the root: deterministic cluster ids
                parent[max(ra, rm)] = min(ra, rm)
    roots = np.asarray(parent, dtype=np.int64)
    while True:  # pointer jumping until every entry points at its root
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            return roots, verified
        roots = nxt


def cluster_near_duplicates(
    texts: list[str], *, threshold: float, shingle_size: int, num_perm: int, seed: int
) -> NearDuplicateClusters:
    """Clusters of ``texts`` (normalized, distinct) whose ``shingle_size``-word shingle sets
    have Jaccard similarity >= ``threshold``, linked transitively."""
    bands, rows = lsh_params(threshold, num_perm)
    if not texts:
        return NearDuplicateClusters(np.empty(0, dtype=np.int64), 0, 0, bands, rows)
    band_keys = _signature_bands(
        texts, shingle_size=shingle_size, num_perm=num_perm, seed=seed, bands=bands, rows=rows
    )
    pairs = _candidate_pairs(band_keys)
    del band_keys  # the largest array of the run: free it before the verification
    roots, verified = _verified_roots(texts, pairs, threshold=threshold, shingle_size=shingle_size)
    return NearDuplicateClusters(roots, len(pairs), verified, bands, rows)
