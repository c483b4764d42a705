"""Detection metrics: ROC curve, AUC, ACC and TPR at a fixed FPR (methods.md §0.2).

Two conventions for TPR@x%FPR exist in the literature and both are offered:

- ``"strict"`` (Wen et al.): the TPR of the last ROC point whose FPR is strictly below x;
- ``"closest"`` (Jeon et al., Ren et al.): the TPR of the ROC point whose FPR is closest to x
  (it may sit above x, so it can read higher).

Positives are label 1 (memorized); a higher score means "more likely positive". The ROC curve
matches ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``: one point per distinct
score threshold, starting at (0, 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Convention = Literal["strict", "closest"]


def _check(labels: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"scores must be numbers; got {type(scores).__name__} ({e})") from e
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D; got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores must have the same length; got {y.size} and {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("labels must contain both positives (1) and negatives (0)")
    if np.isnan(s).any():
        raise ValueError("scores must not contain NaN")
    return y, s


def roc_curve(labels: object, scores: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``; point ``i`` classifies ``score >= thresholds[i]`` positive.
    The first point is (0, 0) with threshold +inf. +-inf scores are allowed."""
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # s[1:] != s[:-1], not np.diff: inf - inf is NaN, which would split tied infinite scores
    last = np.r_[np.nonzero(s[1:] != s[:-1])[0], s.size - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (~y).sum()]
    return fpr, tpr, np.r_[np.inf, s[last]]


def auc(labels: object, scores: object) -> float:
    """Area under the ROC curve (trapezoids; ties count one half)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def accuracy(labels: object, scores: object) -> float:
    """Best balanced accuracy over thresholds: ``max(1 - (fpr + 1 - tpr) / 2)`` (Wen et al.)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.max(1 - (fpr + (1 - tpr)) / 2))


def tpr_at_fpr(
    labels: object, scores: object, fpr_target: float = 0.01, *, convention: Convention = "strict"
) -> float:
    """TPR at ``fpr_target`` under ``convention`` (see the module docstring)."""
    if not 0 < fpr_target < 1:
        raise ValueError(f"fpr_target must be in (0, 1); got {fpr_target}")
    fpr, tpr, _ = roc_curve(labels, scores)
    if convention == "strict":
        return float(tpr[np.nonzero(fpr < fpr_target)[0][-1]])
    if convention == "closest":
        return float(tpr[np.argmin(np.abs(fpr - fpr_target))])
    raise ValueError(f"convention must be 'strict' or 'closest'; got {convention!r}")


@dataclass(frozen=True)
class DetectionReport:
    auc: float
    acc: float
    tpr_at_1fpr: float
    tpr_at_1fpr_closest: float


def detection_report(labels: object, scores: object) -> DetectionReport:
    """AUC, ACC and TPR@1%FPR under both conventions."""
    return DetectionReport(
        auc=auc(labels, scores),
        acc=accuracy(labels, scores),
        tpr_at_1fpr=tpr_at_fpr(labels, scores, 0.01, convention="strict"),
        tpr_at_1fpr_closest=tpr_at_fpr(labels, scores, 0.01, convention="closest"),
    )
