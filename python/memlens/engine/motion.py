"""Motion scoring of videos: frames -> flows (cached for training items) -> OFS-k / NMF.

A generated video and each candidate training video are resampled to the same number of
frames and to the generated video's flow size (short side 256, multiples of 8), so their
flows compare pixel to pixel (methods.md §1.4). Training flows are cached next to the index
(``IDX/flow_cache``), keyed by item, source file, frames, size, stride and estimator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memlens.errors import MediaError
from memlens.index import ReferenceIndex
from memlens.metrics.motion import (
    MotionDecision,
    MotionScore,
    MotionSettings,
    decide,
    motion_scores,
)
from memlens.video import read_media
from memlens.video.flow import estimate_flow, flow_size, prepare_for_flow
from memlens.video.flow_cache import FlowCache, flow_cache_key

FLOW_CACHE_DIR = "flow_cache"
CANDIDATES = 50  # methods.md §1.4: R restricted to the content top-K (K = 50)
_CHUNK = 16  # candidate flows held at once (16 x 15 x 256 x 256 x 2 float32 = 126 MB)


@dataclass(frozen=True)
class FlowOptions:
    """How flows are estimated; every field is part of the cache key."""

    frames: int = 16  # frames per video (uniform resampling); flows = frames - stride
    short_side: int = 256
    stride: int = 1  # k of OFS-k
    method: str = "dis"
    preset: str = "medium"
    raft_weights: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(f"stride must be an int >= 1; got {self.stride!r}")
        if not isinstance(self.frames, int) or self.frames <= self.stride:
            raise ValueError(f"frames must be an int > stride ({self.stride}); got {self.frames!r}")


def flow_of(frames: np.ndarray, size: tuple[int, int], opts: FlowOptions) -> np.ndarray:
    """(T', H, W, 2) float32 flow of uint8 RGB ``frames`` at ``size`` = (W, H)."""
    video = prepare_for_flow(frames, frames=opts.frames, size=size)
    return estimate_flow(video, stride=opts.stride, method=opts.method, preset=opts.preset,
                         raft_weights=opts.raft_weights, threads=opts.threads)  # fmt: skip


def size_for(frames: np.ndarray, opts: FlowOptions) -> tuple[int, int]:
    """The flow grid (W, H) of a video: its aspect, short side ``opts.short_side``."""
    return flow_size(frames.shape[2], frames.shape[1], short_side=opts.short_side)


def compare_motion(
    gen_frames: np.ndarray, ref_frames: np.ndarray, settings: MotionSettings, opts: FlowOptions
) -> tuple[MotionScore, np.ndarray, np.ndarray]:
    """Motion score of one pair (and both flows) on the generated video's grid."""
    size = size_for(gen_frames, opts)
    g, r = flow_of(gen_frames, size, opts), flow_of(ref_frames, size, opts)
    (score,) = motion_scores(g, r[None], settings)
    return score, g, r


@dataclass
class MotionResult:
    decision: MotionDecision
    candidates: list[int]  # item numbers scored, in content order
    gen_flow: np.ndarray
    best_flow: np.ndarray | None
    errors: list[str] = field(default_factory=list)  # candidates that could not be decoded


class MotionScorer:
    """Scores generated videos against their content neighbours in an index."""

    def __init__(self, index: ReferenceIndex, settings: MotionSettings, opts: FlowOptions,
                 *, candidates: int = CANDIDATES, extra: Sequence[str] = ()):  # fmt: skip
        """``extra``: training item ids scored for motion against every generated video, on
        top of its ``candidates`` content neighbours (issue 5: "plus an optional explicit
        list"), e.g. videos known for a distinctive motion."""
        self.index, self.settings, self.opts, self.k = index, settings, opts, candidates
        self.cache = FlowCache(Path(index.path) / FLOW_CACHE_DIR)
        missing = [i for i in extra if not index.has_item(i)]
        if missing:
            raise ValueError(f"motion candidates not in the index: {missing[:5]}")
        self.extra = tuple(dict.fromkeys(index.item_number(i) for i in extra))

    def training_flow(self, item: int, size: tuple[int, int]) -> np.ndarray:
        info = self.index.item_info(item)
        o = self.opts
        key = flow_cache_key(info.item_id, info.source, frames=o.frames, size=size,
                             stride=o.stride, method=o.method, preset=o.preset,
                             raft_weights=o.raft_weights)  # fmt: skip

        def compute() -> np.ndarray:
            return flow_of(read_media(info.source, frames=o.frames).frames, size, o)

        return self.cache.get_or_compute(key, compute)

    def score(self, gen_frames: np.ndarray, neighbours: tuple[int, ...]) -> MotionResult:
        """Motion decision for one generated video given its content neighbours."""
        size = size_for(gen_frames, self.opts)
        g = flow_of(gen_frames, size, self.opts)
        scale = min(size) / 256
        if float(np.hypot(g[..., 0], g[..., 1]).mean()) < self.settings.mu_static * scale:
            # NMF (a): nothing moves, so no candidate can share its motion (skip their flows)
            still = MotionScore(0.0, 0.0, True, False, float("nan"), float("nan"), 0, 0.0)
            return MotionResult(MotionDecision(-1, still, None, False), [], g, None)
        videos = [n for n in neighbours if not self.index.item_info(n).is_image][: self.k]
        videos += [
            n for n in self.extra if n not in videos and not self.index.item_info(n).is_image
        ]
        scores: list[MotionScore] = []
        kept: list[int] = []
        errors: list[str] = []
        for start in range(0, len(videos), _CHUNK):
            flows = []
            for n in videos[start : start + _CHUNK]:
                try:
                    flows.append(self.training_flow(n, size))
                    kept.append(n)
                except MediaError as e:  # a training video that vanished or broke
                    errors.append(f"{self.index.item_info(n).item_id}: {e}")
            if flows:
                scores += motion_scores(g, np.stack(flows), self.settings)
        decision = decide(scores, self.settings)
        best = self.training_flow(kept[decision.best], size) if decision.best >= 0 else None
        return MotionResult(decision, kept, g, best, errors)


def flow_image_name(item_id: str) -> str:
    """A file name for an item's flow picture that no user string can steer."""
    return hashlib.sha256(item_id.encode()).hexdigest()[:24] + ".png"


def motion_record(result: MotionResult, index: ReferenceIndex) -> dict[str, Any]:
    """The scan record's motion columns (DESIGN.md §11)."""
    d = result.decision
    m = d.score
    return {
        "motion_ofs": None if m is None else m.ofs,
        "motion_ofs_mag": None if m is None else m.ofs_mag,
        "motion_static": None if m is None else m.static,
        "motion_camera": None if m is None else m.camera_motion,
        "motion_offset": None if m is None else m.offset,
        "motion_z": d.z,
        "motion_best_item": None
        if d.best < 0
        else index.item_info(result.candidates[d.best]).item_id,
        "motion_candidates": len(result.candidates),
        "motion_memorized": d.memorized,
    }
