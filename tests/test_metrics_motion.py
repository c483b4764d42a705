"""OFS-k and NMF on synthetic flow fields: the methods.md §1.8 oracles 3-7 at the flow level
(the estimator-level versions are in test_flow_estimation.py and test_motion_e2e.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memlens.metrics.motion import (
    MotionSettings,
    affine_fit,
    decide,
    motion_scores,
    population_z,
    residual_ratio,
)
from memlens.reference.flow import field_stats

T, H, W = 6, 32, 40


def translation(dx: float, dy: float = 0.0, t: int = T) -> np.ndarray:
    f = np.zeros((t, H, W, 2), np.float32)
    f[..., 0], f[..., 1] = dx, dy
    return f


def local_motion(seed: int, t: int = T) -> np.ndarray:
    """A still background with a 10x10 object moving along a random per-frame velocity."""
    rng = np.random.default_rng(seed)
    f = np.zeros((t, H, W, 2), np.float32)
    y, x = 8, 8
    for i in range(t):
        v = rng.uniform(-3, 3, 2)
        f[i, y : y + 10, x : x + 10] = v
        x, y = int(np.clip(x + v[0], 0, W - 10)), int(np.clip(y + v[1], 0, H - 10))
    return f


def score(gen: np.ndarray, *refs: np.ndarray, **kw: object):  # type: ignore[no-untyped-def]
    return motion_scores(gen, np.stack(refs), MotionSettings(**kw))  # type: ignore[arg-type]


def test_identity_and_frozen_frame() -> None:
    g = local_motion(0)
    (m,) = score(g, g)
    assert m.ofs == pytest.approx(1, abs=1e-6)
    assert m.ofs_mag == pytest.approx(1, abs=1e-6)
    assert not m.static
    assert not m.camera_motion
    (still,) = score(np.zeros_like(g), g)  # a frozen frame has exactly zero flow
    assert still.static
    assert still.ofs == 0.0
    assert still.ofs_mag == 0.0
    assert not decide([still]).memorized


def test_a_still_training_clip_has_no_motion_to_copy() -> None:
    """NMF (a) on the reference side: a still training clip whose flow is noise (a few
    pixels above mu_min, its mean magnitude below mu_static) scores 0 and static against a
    moving generation, not the chance agreement of those pixels."""
    g = translation(2.0) + local_motion(4)
    noise = np.zeros_like(g)
    noise[0, :3, :3] = g[0, :3, :3]  # 9 pixels of one frame, moving exactly like g there
    assert np.hypot(noise[..., 0], noise[..., 1]).mean() * 256 / H < MotionSettings().mu_static
    (m,) = score(g, noise, camera_filter="off")
    assert m.static
    assert m.ofs == 0.0
    assert m.ofs_mag == 0.0
    # the same pixels in a clip that moves (like g) in its other frames do count
    moving = noise.copy()
    moving[1:] = g[1:]
    (n,) = score(g, moving, camera_filter="off")
    assert not n.static
    assert n.ofs == pytest.approx(1, abs=1e-6)


def test_pure_translation_is_ofs_1_and_camera_motion() -> None:
    (m,) = score(translation(3.0), translation(3.0))
    assert m.ofs == pytest.approx(1, abs=1e-6)
    assert m.camera_motion
    assert m.rho_gen < 1e-9
    assert not decide([m]).memorized  # NMF (b) excludes generic camera motion
    assert decide([m], MotionSettings(camera_filter="off", min_population=99)).memorized
    # scored on the residual flow, pure camera motion leaves nothing to compare
    (r,) = score(translation(3.0), translation(3.0), camera_filter="residual")
    assert r.static
    assert r.ofs == 0


def test_time_reversal_negates() -> None:
    # reversed playback: the flow at t becomes minus the flow at T-1-t
    g = translation(2.0) + np.repeat(local_motion(1)[:1], T, axis=0)  # same field every frame
    (m,) = score(g, -g[::-1].copy(), camera_filter="off")
    assert m.ofs == pytest.approx(-1, abs=1e-6)
    assert not decide([m], MotionSettings(camera_filter="off")).memorized


def test_speed_change_keeps_direction_halves_magnitude_score() -> None:
    g = local_motion(2)
    (m,) = score(g, 2 * g)
    assert m.ofs == pytest.approx(1, abs=1e-6)
    assert m.ofs_mag == pytest.approx(0.5, abs=1e-6)


def test_stride_doubles_magnitude_not_cosine() -> None:
    k1, k2 = translation(1.5), translation(3.0)
    (m,) = score(k1, k2, camera_filter="off")
    assert m.ofs == pytest.approx(1, abs=1e-6)
    assert m.ofs_mag == pytest.approx(0.5, abs=1e-6)


def test_local_object_motion_is_not_camera_motion() -> None:
    g = local_motion(3)
    (m,) = score(g, g)
    assert m.rho_gen > 0.5
    others = [local_motion(s) for s in range(10, 35)]
    scores = score(g, g, *others)
    d = decide(scores)
    assert d.best == 0
    assert d.memorized
    assert d.z is not None
    assert d.z > 3


def test_affine_fit_recovers_zoom_and_rotation() -> None:
    yy, xx = np.meshgrid(
        (2 * np.arange(H) + 1) / H - 1, (2 * np.arange(W) + 1) / W - 1, indexing="ij"
    )
    a = np.array([0.5, 2.0, -1.0, -0.25, 1.0, 2.0])
    f = np.stack([a[0] + a[1] * xx + a[2] * yy, a[3] + a[4] * xx + a[5] * yy], -1)[None]
    stats = field_stats(torch.from_numpy(f)).numpy()
    np.testing.assert_allclose(affine_fit(stats, H, W)[0], a, atol=1e-12)
    assert residual_ratio(stats, H, W)[0] == pytest.approx(0, abs=1e-12)
    assert np.isnan(residual_ratio(np.zeros((1, 8)), H, W)[0])


def test_offset_search_finds_the_shift() -> None:
    base = local_motion(4, t=T + 2)
    g, r = base[2:], base[:-2]  # G lags R by two flow frames
    (none,) = score(g, r)
    (m,) = score(g, r, max_offset=2)
    assert m.offset == 2 or m.offset == -2
    assert m.ofs == pytest.approx(1, abs=1e-6)
    assert none.ofs < m.ofs


def test_population_z_and_bad_settings() -> None:
    assert population_z(1.0, [0.0]) is None
    assert population_z(1.0, [0.1, 0.1, 0.1]) is None
    assert population_z(1.0, [0.0, 0.2]) == pytest.approx(1.0 / np.std([0.0, 0.2], ddof=1) * 0.9)
    with pytest.raises(ValueError, match="camera_filter"):
        MotionSettings(camera_filter="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mu_min"):
        MotionSettings(mu_min=-1)
    with pytest.raises(ValueError, match="gen_flow"):
        motion_scores(np.zeros((3, 4, 2)), np.zeros((1, 3, 4, 4, 2)))
