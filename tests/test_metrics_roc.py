"""Detection metrics against scikit-learn and the methods.md §1.8 oracle 9."""

from __future__ import annotations

import numpy as np
import pytest

from memlens.metrics import roc

sk = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(12))
def test_roc_and_auc_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 400))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = np.round(rng.standard_normal(n) + y * rng.uniform(0, 2), int(rng.integers(0, 3)))
    fpr, tpr, thr = sk.roc_curve(y, s, drop_intermediate=False)
    f2, t2, th2 = roc.roc_curve(y, s)
    np.testing.assert_allclose(f2, fpr)
    np.testing.assert_allclose(t2, tpr)
    np.testing.assert_allclose(th2[1:], thr[1:])
    assert roc.auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    # Wen et al.'s strict convention and Jeon et al.'s closest-point convention
    assert roc.tpr_at_fpr(y, s) == tpr[np.where(fpr < 0.01)[0][-1]]
    assert roc.tpr_at_fpr(y, s, convention="closest") == tpr[np.argmin(np.abs(fpr - 0.01))]
    assert roc.accuracy(y, s) == pytest.approx(np.max(1 - (fpr + (1 - tpr)) / 2))


def test_perfect_separation_oracle() -> None:
    y = np.r_[np.zeros(500), np.ones(500)].astype(int)
    s = np.r_[np.linspace(0, 0.4, 500), np.linspace(0.6, 1, 500)]
    r = roc.detection_report(y, s)
    assert r.auc == 1.0
    assert r.acc == 1.0
    assert r.tpr_at_1fpr == 1.0
    assert r.tpr_at_1fpr_closest == 1.0


def test_identical_distributions_give_chance() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20000)
    s = rng.standard_normal(20000)
    assert roc.auc(y, s) == pytest.approx(0.5, abs=0.02)
    assert roc.auc(y, np.zeros(20000)) == 0.5  # all tied: one diagonal step


def test_strict_and_closest_conventions_differ() -> None:
    # 70 negatives (fpr steps of 1/70 ~ 0.014); a score tied between 4 positives and the top
    # negative makes a diagonal ROC step from (0, 0.1) to (1/70, 0.5)
    y = np.r_[np.ones(10), np.zeros(70)].astype(int)
    s = np.r_[[1.0, 0.9, 0.9, 0.9, 0.9], np.linspace(0.8, 0.5, 5), [0.9], np.linspace(0.4, 0, 69)]
    assert roc.tpr_at_fpr(y, s, convention="strict") == pytest.approx(0.1)
    assert roc.tpr_at_fpr(y, s, convention="closest") == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("y", "s", "match"),
    [
        ([0, 1], [0.1], "same length"),
        ([1, 1], [0.1, 0.2], "both positives"),
        ([0, 2], [0.1, 0.2], "labels must be 0"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_bad_inputs(y: object, s: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        roc.auc(y, s)


def test_unknown_convention() -> None:
    with pytest.raises(ValueError, match="convention"):
        roc.tpr_at_fpr([0, 1], [0.1, 0.2], convention="loose")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fpr_target"):
        roc.tpr_at_fpr([0, 1], [0.1, 0.2], 1.5)
