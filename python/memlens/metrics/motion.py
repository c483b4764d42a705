"""Motion memorization: OFS-k with natural-motion filtering (methods.md §1.4, [RECON]).

The paper's exact definitions are unverified, so every threshold below is a named option whose
default is the reconstruction's, documented as such. Given flow fields of a generated video G
and a training video R, resampled to the same T frames and size and computed with the same
frame stride k (``memlens.video.flow``):

- ``OFS_k(G, R) = sum_{t,p} m c / sum_{t,p} m``: the mean direction cosine over pixels where
  both flows move more than ``mu_min``; ``OFS_k^mag`` weights each cosine by the magnitude
  ratio min/max (so "same direction, twice the speed" scores 0.5);
- NMF (a) static: no valid pixel, or G's or R's mean flow magnitude below ``mu_static`` ->
  OFS = 0, ``static``: a still video has no motion to memorize, and a still *training* video
  has none to be copied (methods.md states the rule for G; it holds for R for the same
  reason: otherwise the few pixels of sensor or codec noise above ``mu_min`` in a still
  training clip agree with a moving generation by chance, on too few pixels to mean
  anything);
- NMF (b) camera motion: a least-squares global affine flow per frame pair; if it explains G's
  flow (mean residual ratio ``rho < rho_min``) the motion is generic camera motion: the pair
  is excluded from the decision (``camera_filter="exclude"``) or scored on the residual flow
  after removing both fits (``"residual"``). A residual pixel moves above
  ``max(mu_min, RESIDUAL_FLOOR * L)``, ``L`` the largest per-frame L2 norm of the fields in the
  call: a field that is exactly affine leaves a residual of float32 rounding size (about
  1e-7 L), which must not count as motion; the floor only matters for ``mu_min`` near 0;
- NMF (c) population z-score of OFS(G, R) against OFS(G, R') over non-matching training
  videos R' (``z_min``; skipped when fewer than ``min_population`` are available);
- temporal offsets ``-max_offset..max_offset`` frames, best one kept.

All of it comes from one :func:`memlens.flow_similarity` pass per offset (two with
``camera_filter="residual"``): the sufficient statistics hold everything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from memlens.ops.flow import flow_similarity
from memlens.reference.flow import FlowStats, grid

CameraFilter = Literal["exclude", "residual", "off"]
# relative to the largest frame's L2 flow norm: ~100 float32 ulps, far below any flow
# estimator's precision (0.01 px), so real residual motion is never cut
RESIDUAL_FLOOR = 1e-5


@dataclass(frozen=True)
class MotionSettings:
    """OFS-k / NMF options; defaults are methods.md §1.4's reconstruction [RECON]."""

    mu_min: float = 0.5  # px: a pixel "moves" above this (at 256 px short side)
    mu_static: float = 0.2  # px/frame: G's (or R's) mean flow magnitude below this is static
    rho_min: float = 0.1  # affine residual ratio below this = generic camera motion
    camera_filter: CameraFilter = "exclude"
    z_min: float = 3.0  # population z-score a memorized pair must exceed
    # fewer non-matching videos than this: the z-score filter is skipped (a standard deviation
    # from a handful of values is too noisy to hold a 3-sigma rule)
    min_population: int = 20
    tau: float = 0.8  # directional OFS a memorized pair must exceed (after NMF)
    max_offset: int = 0  # temporal offsets searched, in flow frames

    def __post_init__(self) -> None:
        for name in ("mu_min", "mu_static", "rho_min"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
        if self.camera_filter not in ("exclude", "residual", "off"):
            raise ValueError(
                f"camera_filter must be 'exclude', 'residual' or 'off'; got {self.camera_filter!r}"
            )
        if not -1 <= self.tau <= 1:
            raise ValueError(f"tau must be in [-1, 1]; got {self.tau}")
        if not isinstance(self.max_offset, int) or self.max_offset < 0:
            raise ValueError(f"max_offset must be an int >= 0; got {self.max_offset!r}")


@dataclass(frozen=True)
class MotionScore:
    """OFS of one generated video against one training video."""

    ofs: float  # directional OFS_k (0 when static)
    ofs_mag: float  # magnitude-aware OFS_k^mag (0 when static)
    static: bool  # NMF (a)
    camera_motion: bool  # NMF (b): G's flow is explained by a global affine motion
    rho_gen: float  # mean affine residual ratio of G's flow (1 = no global component)
    rho_ref: float  # the same for R
    offset: int  # temporal offset of R against G (flow frames) giving the best OFS
    valid_fraction: float  # share of (frame, pixel) positions where both flows move


# ------------------------------------------------------------------- statistics -> metrics


def _grid_moments(h: int, w: int) -> tuple[float, float, float]:
    """sum 1, sum x^2, sum y^2 over the normalized pixel grid (sum x = sum y = sum xy = 0).

    A 1-pixel axis has x (or y) = 0 everywhere: its moment is returned as inf, so the
    coefficient it cannot determine, and the flow it explains, come out 0 (not 0 / 0)."""
    y, x = grid(h, w)
    sxx, syy = float(h * (x**2).sum()), float(w * (y**2).sum())
    return float(h * w), sxx if sxx > 0 else np.inf, syy if syy > 0 else np.inf


def affine_fit(field: np.ndarray, h: int, w: int) -> np.ndarray:
    """Per-frame least-squares affine flows (..., 6) from FIELD statistics (..., 8)."""
    n1, sxx, syy = _grid_moments(h, w)
    f = np.asarray(field, dtype=np.float64)
    return np.stack(
        [f[..., 2] / n1, f[..., 3] / sxx, f[..., 4] / syy,
         f[..., 5] / n1, f[..., 6] / sxx, f[..., 7] / syy], axis=-1,
    )  # fmt: skip


def residual_ratio(field: np.ndarray, h: int, w: int) -> np.ndarray:
    """Per-frame ``||u - A u||^2 / ||u||^2`` (...,) from FIELD statistics; frames without
    motion give NaN (excluded from means)."""
    n1, sxx, syy = _grid_moments(h, w)
    f = np.asarray(field, dtype=np.float64)
    explained = (f[..., 2] ** 2 + f[..., 5] ** 2) / n1 + (f[..., 3] ** 2 + f[..., 6] ** 2) / sxx
    explained = explained + (f[..., 4] ** 2 + f[..., 7] ** 2) / syy
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.clip((f[..., 1] - explained) / f[..., 1], 0.0, 1.0)
    return np.where(f[..., 1] > 0, rho, np.nan)


def _nanmean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    valid = ~np.isnan(x)
    total = np.where(valid, x, 0.0).sum(axis=axis)
    count = valid.sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), 1.0)  # no motion: nothing explained


def _scores(
    stats: FlowStats, residual: FlowStats | None, s: MotionSettings
) -> dict[str, np.ndarray]:
    """Per-candidate arrays from one offset's statistics."""
    h, w = stats.height, stats.width
    pair = np.asarray((residual or stats).pair, dtype=np.float64)
    count = pair[..., 0].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ofs = np.where(count > 0, pair[..., 1].sum(axis=1) / count, 0.0)
        ofs_mag = np.where(count > 0, pair[..., 3].sum(axis=1) / count, 0.0)
    gen_field = np.asarray(stats.gen_field, dtype=np.float64)
    t = gen_field.shape[0]
    gen_mean_mag = gen_field[:, 0].sum() / (t * h * w)
    cand_field = np.asarray(stats.cand_field, dtype=np.float64)
    ref_mean_mag = cand_field[..., 0].sum(axis=1) / (t * h * w)
    static = (count == 0) | (gen_mean_mag < s.mu_static) | (ref_mean_mag < s.mu_static)
    rho_gen = float(_nanmean(residual_ratio(gen_field, h, w)))
    rho_ref = _nanmean(residual_ratio(cand_field, h, w))
    return {
        "ofs": np.where(static, 0.0, ofs),
        "ofs_mag": np.where(static, 0.0, ofs_mag),
        "static": static,
        "rho_gen": np.full(len(count), rho_gen),
        "rho_ref": rho_ref,
        "valid": count / (t * h * w),
    }


def _check_flows(gen: Any, cands: Any) -> tuple[np.ndarray | Any, np.ndarray | Any]:
    if getattr(gen, "ndim", None) != 4:
        raise ValueError(
            f"gen_flow must have shape (T, H, W, 2); got {getattr(gen, 'shape', None)}"
        )
    if getattr(cands, "ndim", None) != 5:
        raise ValueError(
            f"ref_flows must have shape (N, T, H, W, 2); got {getattr(cands, 'shape', None)}"
        )
    if min(gen.shape[:3]) < 1:
        raise ValueError(
            f"gen_flow must have at least one frame and pixel (T, H, W >= 1); got {tuple(gen.shape)}"
        )
    return gen, cands


def motion_scores(
    gen_flow: Any, ref_flows: Any, settings: MotionSettings | None = None, *,
    backend: str | None = None,
) -> list[MotionScore]:  # fmt: skip
    """OFS/NMF of one generated flow (T, H, W, 2) against each of N reference flows
    (N, T, H, W, 2) (same T, size and stride; numpy or torch, float32/float16). ``mu_min``
    and ``mu_static`` are pixels at a 256-pixel short side and scale with the flows' size."""
    s = settings or MotionSettings()
    gen_flow, ref_flows = _check_flows(gen_flow, ref_flows)
    t = gen_flow.shape[0]
    scale = min(gen_flow.shape[1], gen_flow.shape[2]) / 256
    s = replace(s, mu_min=s.mu_min * scale, mu_static=s.mu_static * scale)
    best: dict[str, np.ndarray] | None = None
    best_offset = np.zeros(ref_flows.shape[0], dtype=np.int64)
    for off in range(-min(s.max_offset, t - 1), min(s.max_offset, t - 1) + 1):
        # R's frame t + off is compared with G's frame t
        g = gen_flow[max(0, -off) : t - max(0, off)]
        r = ref_flows[:, max(0, off) : t + min(0, off)]
        stats = flow_similarity(g, r, mu_min=s.mu_min, backend=backend)
        residual = None
        if s.camera_filter == "residual":
            h, w = stats.height, stats.width
            energy = max(np.max(np.asarray(stats.gen_field)[..., 1], initial=0.0),
                         np.max(np.asarray(stats.cand_field)[..., 1], initial=0.0))  # fmt: skip
            floor = RESIDUAL_FLOOR * float(np.sqrt(energy))
            residual = flow_similarity(
                g, r, mu_min=max(s.mu_min, floor), backend=backend,
                gen_affine=affine_fit(np.asarray(stats.gen_field), h, w),
                cand_affine=affine_fit(np.asarray(stats.cand_field), h, w),
            )  # fmt: skip
        cur = _scores(stats, residual, s)
        if best is None:
            best = cur
            best_offset[:] = off
            continue
        better = cur["ofs"] > best["ofs"]
        for key in best:
            best[key] = np.where(better, cur[key], best[key])
        best_offset = np.where(better, off, best_offset)
    assert best is not None
    camera = best["rho_gen"] < s.rho_min
    return [
        MotionScore(
            ofs=float(best["ofs"][n]),
            ofs_mag=float(best["ofs_mag"][n]),
            static=bool(best["static"][n]),
            camera_motion=bool(camera[n]) and not bool(best["static"][n]),
            rho_gen=float(best["rho_gen"][n]),
            rho_ref=float(best["rho_ref"][n]),
            offset=int(best_offset[n]),
            valid_fraction=float(best["valid"][n]),
        )
        for n in range(ref_flows.shape[0])
    ]


def population_z(score: float, population: Any) -> float | None:
    """NMF (c): z-score of ``score`` against OFS values of non-matching videos (None if the
    population has fewer than 2 values or no spread)."""
    p = np.asarray(population, dtype=np.float64)
    if not (np.isfinite(p).all() and np.isfinite(score)):
        raise ValueError("score and population must be finite (no NaN/Inf)")
    if p.size < 2:
        return None
    sd = float(p.std(ddof=1))
    if sd <= 1e-12:  # no spread (float noise aside): a z-score would be meaningless
        return None
    return float((score - p.mean()) / sd)


@dataclass(frozen=True)
class MotionDecision:
    best: int  # index of the best candidate (highest OFS after NMF), -1 if none
    score: MotionScore | None
    z: float | None
    memorized: bool


def decide(scores: list[MotionScore], settings: MotionSettings | None = None) -> MotionDecision:
    """Motion-memorized iff the best candidate's OFS exceeds ``tau`` after NMF: not static,
    not generic camera motion (``camera_filter="exclude"``), and, when enough other
    candidates exist to form a population, a z-score above ``z_min`` against them."""
    s = settings or MotionSettings()
    if not scores:
        return MotionDecision(-1, None, None, False)
    eligible = [
        n for n, m in enumerate(scores)
        if not m.static and not (s.camera_filter == "exclude" and m.camera_motion)
    ]  # fmt: skip
    pool = eligible or list(range(len(scores)))
    best = max(pool, key=lambda n: scores[n].ofs)
    m = scores[best]
    others = [scores[n].ofs for n in range(len(scores)) if n != best]
    z = population_z(m.ofs, others) if len(others) >= s.min_population else None
    memorized = bool(eligible) and m.ofs > s.tau and (z is None or z > s.z_min)
    return MotionDecision(best, m, z, memorized)
