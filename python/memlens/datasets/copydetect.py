"""A real copy-detection evaluation set built from the bundled photographs (no downloads).

Originals are the :func:`~memlens.datasets.photos.real_photographs` plus the non-overlapping
tiles of a ``grid x grid`` split of the large ones. Each original gets ``copies_per_original``
transformed copies; the transforms are the ones a near-duplicate descriptor must survive
(DESIGN.md §5): resize 0.5-2x, crop of up to 15% of each side, JPEG quality 30,
brightness/contrast +-20% and rotation up to +-5 degrees. The first copy of every original
gets all five; the others a random subset of two to four.

Positive pairs are (original, one of its copies). Negative pairs are (original, copy of an
original cut from a *different* photograph): a photograph and its tiles overlap, and two tiles
of one texture photograph (grass, gravel) are near-duplicates in all but pixels, so they are
never used as negatives.

:func:`evaluate` embeds every image once and scores the pairs by cosine similarity.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from memlens.datasets.photos import real_photographs
from memlens.embed.base import Embedder
from memlens.metrics.roc import auc, tpr_at_fpr

TRANSFORMS = ("crop", "rotate", "resize", "color", "jpeg")
JPEG_QUALITY = 30


@dataclass(frozen=True)
class CopyDetectionSet:
    """Images and labelled pairs. ``positives``/``negatives`` are ``(P, 2)`` int64 arrays of
    ``(original index, copy index)``."""

    originals: list[np.ndarray]
    original_names: list[str]
    groups: np.ndarray  # (n_originals,) index of the source photograph of each original
    copies: list[np.ndarray]
    copy_source: np.ndarray  # (n_copies,) index of the original each copy was made from
    copy_transforms: list[dict[str, float]]  # the transforms and parameters of each copy
    positives: np.ndarray
    negatives: np.ndarray
    seed: int

    def summary(self) -> dict[str, int]:
        return {
            "originals": len(self.originals),
            "photographs": int(np.unique(self.groups).size),
            "copies": len(self.copies),
            "positives": int(self.positives.shape[0]),
            "negatives": int(self.negatives.shape[0]),
        }


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the long side is at most ``max_side`` (keeps the set small and fast)."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return np.ascontiguousarray(image)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _originals(
    grid: int, min_side_for_tiles: int, max_side: int
) -> tuple[list[np.ndarray], list[str], list[int]]:
    images: list[np.ndarray] = []
    names: list[str] = []
    groups: list[int] = []
    for group, (name, photo) in enumerate(real_photographs().items()):
        images.append(_fit(photo, max_side))
        names.append(name)
        groups.append(group)
        h, w = photo.shape[:2]
        if grid < 2 or min(h, w) < min_side_for_tiles:
            continue
        ys = np.linspace(0, h, grid + 1).astype(int)
        xs = np.linspace(0, w, grid + 1).astype(int)
        for i in range(grid):
            for j in range(grid):
                tile = photo[ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
                images.append(_fit(tile, max_side))
                names.append(f"{name}[{i},{j}]")
                groups.append(group)
    return images, names, groups


def _draw(rng: np.random.Generator, use: tuple[str, ...]) -> dict[str, float]:
    params: dict[str, float] = {}
    if "crop" in use:  # fraction cut from each side, independently
        for side in ("top", "bottom", "left", "right"):
            params[f"crop_{side}"] = float(rng.uniform(0, 0.15))
    if "rotate" in use:
        params["angle"] = float(rng.uniform(-5, 5))
    if "resize" in use:  # log-uniform so that shrinking and enlarging are equally likely
        params["scale"] = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    if "color" in use:
        params["brightness"] = float(rng.uniform(0.8, 1.2))
        params["contrast"] = float(rng.uniform(0.8, 1.2))
    if "jpeg" in use:
        params["jpeg_quality"] = JPEG_QUALITY
    return params


def apply_transforms(image: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """Apply the transforms in ``params`` in a fixed order: crop, rotate, resize, color, JPEG
    (re-encoding last, as a copy posted online would be)."""
    out = image
    h, w = out.shape[:2]
    if "crop_top" in params:
        top, bottom = round(h * params["crop_top"]), h - round(h * params["crop_bottom"])
        left, right = round(w * params["crop_left"]), w - round(w * params["crop_right"])
        out = out[top:bottom, left:right]
        h, w = out.shape[:2]
    if "angle" in params:
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), params["angle"], 1.0)
        # Reflected borders: the copy gets no artificial black corners to match on or against.
        out = cv2.warpAffine(
            out, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
    if "scale" in params:
        s = params["scale"]
        size = (max(1, round(w * s)), max(1, round(h * s)))
        out = cv2.resize(out, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    if "brightness" in params:
        x = out.astype(np.float32)
        mean = x.mean()
        x = ((x - mean) * params["contrast"] + mean) * params["brightness"]
        out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if "jpeg_quality" in params:
        # cv2 codecs work in BGR; convert so chroma subsampling hits the right channels.
        bgr = cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(params["jpeg_quality"])])
        if not ok:  # pragma: no cover - cv2 encodes any non-empty uint8 image
            raise RuntimeError("JPEG encoding failed")
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if decoded is None:  # pragma: no cover - cv2 decodes what it encoded
            raise RuntimeError("JPEG decoding failed")
        out = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(out, dtype=np.uint8)


def copy_detection_pairs(
    seed: int = 0,
    *,
    copies_per_original: int = 4,
    grid: int = 2,
    min_side_for_tiles: int = 500,
    max_side: int = 512,
) -> CopyDetectionSet:
    """Build the set; deterministic for a given ``seed`` and options.

    With the defaults: 62 originals from 18 photographs (11 of them are at least 500 px on the
    short side and add 2x2 tiles), 248 copies, 248 positive and ~14,000 negative pairs.
    """
    if copies_per_original < 1:
        raise ValueError(f"copies_per_original must be >= 1; got {copies_per_original}")
    if max_side < 32:
        raise ValueError(f"max_side must be >= 32; got {max_side}")
    originals, names, group_list = _originals(grid, min_side_for_tiles, max_side)
    groups = np.asarray(group_list, dtype=np.int64)
    rng = np.random.default_rng(seed)
    copies: list[np.ndarray] = []
    sources: list[int] = []
    params_list: list[dict[str, float]] = []
    for index, image in enumerate(originals):
        for k in range(copies_per_original):
            use: tuple[str, ...]
            if k == 0:
                use = TRANSFORMS
            else:
                count = int(rng.integers(2, len(TRANSFORMS)))  # 2..4 transforms
                chosen = rng.choice(len(TRANSFORMS), size=count, replace=False)
                use = tuple(TRANSFORMS[i] for i in sorted(chosen))
            params = _draw(rng, use)
            copies.append(apply_transforms(image, params))
            sources.append(index)
            params_list.append(params)
    copy_source = np.asarray(sources, dtype=np.int64)
    positives = np.stack([copy_source, np.arange(copy_source.size)], axis=1)
    o, c = np.meshgrid(np.arange(len(originals)), np.arange(copy_source.size), indexing="ij")
    different = groups[o] != groups[copy_source[c]]
    negatives = np.stack([o[different], c[different]], axis=1).astype(np.int64)
    for image in [*originals, *copies]:
        image.setflags(write=False)
    return CopyDetectionSet(
        originals=originals,
        original_names=names,
        groups=groups,
        copies=copies,
        copy_source=copy_source,
        copy_transforms=params_list,
        positives=positives.astype(np.int64),
        negatives=negatives,
        seed=seed,
    )


def embed_images(embedder: Embedder, images: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Embed images of mixed sizes (one ``embed`` call per distinct shape, since one call
    takes frames of one size). Returns ``(embeddings, seconds spent in embed)``."""
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        by_shape[image.shape].append(i)
    out = np.zeros((len(images), embedder.spec.dim), dtype=np.float32)
    seconds = 0.0
    for indices in by_shape.values():
        batch = np.stack([images[i] for i in indices])
        start = time.perf_counter()
        out[indices] = embedder.embed(batch)
        seconds += time.perf_counter() - start
    return out, seconds


def evaluate(embedder: Embedder, pairs: CopyDetectionSet) -> dict[str, Any]:
    """Copies vs unrelated pairs by cosine similarity: ROC AUC, TPR at 1% and 0.1% FPR (strict
    convention), mean similarities, and throughput over the set's mixed-size images (mostly
    one frame per call, so batched throughput is higher)."""
    originals, t_orig = embed_images(embedder, pairs.originals)
    copies, t_copy = embed_images(embedder, pairs.copies)

    def sims(p: np.ndarray) -> np.ndarray:
        a, b = originals[p[:, 0]].astype(np.float64), copies[p[:, 1]].astype(np.float64)
        return np.einsum("nd,nd->n", a, b)

    pos, neg = sims(pairs.positives), sims(pairs.negatives)
    labels = np.r_[np.ones(pos.size, dtype=np.int64), np.zeros(neg.size, dtype=np.int64)]
    scores = np.r_[pos, neg]
    n_frames = len(pairs.originals) + len(pairs.copies)
    return {
        "embedder": embedder.spec.name,
        "spec": embedder.spec.to_json(),
        **pairs.summary(),
        "auc": auc(labels, scores),
        "tpr_at_1fpr": tpr_at_fpr(labels, scores, 0.01, convention="strict"),
        # AUC saturates near 1 for good descriptors; 0.1% FPR (~14 negatives) still ranks them.
        "tpr_at_0_1fpr": tpr_at_fpr(labels, scores, 0.001, convention="strict"),
        "mean_pos": float(pos.mean()),
        "mean_neg": float(neg.mean()),
        "min_pos": float(pos.min()),
        "max_neg": float(neg.max()),
        "frames_per_s": n_frames / max(t_orig + t_copy, 1e-9),
    }
