"""Which frames of a video to keep, and the size to keep them at (pure functions).

Indices refer to the decoded stream in presentation order, 0-based. Times are nominal:
frame ``i`` is at ``i / native_fps`` seconds (a constant frame rate is assumed; for
variable-frame-rate files such as some GIFs the container's average rate is used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import cv2
import numpy as np

# Absorbs float error in k * native_fps / fps so that exact multiples land on their frame
# (e.g. 3 * 8 / 3 computes to 7.999999999999999, which must select frame 8).
_EPS = 1e-6


@dataclass(frozen=True)
class Sampling:
    """Validated ``read_media`` options. ``frames``/``fps`` are None for "every frame"."""

    frames: int | None
    fps: float | None
    resize: int | tuple[int, int] | None
    max_frames: int | None


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be a positive int; got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value}")
    return int(value)


def check_sampling(
    frames: object = None, fps: object = None, resize: object = None, max_frames: object = None
) -> Sampling:
    """Validate and normalize ``read_media``'s keyword options; raise naming the bad one."""
    if frames is not None and fps is not None:
        raise ValueError(f"pass frames= or fps=, not both; got frames={frames!r}, fps={fps!r}")
    n = None if frames is None else positive_int("frames", frames)
    rate = None
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, Real):
            raise TypeError(f"fps must be a positive number; got {type(fps).__name__} {fps!r}")
        rate = float(fps)
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"fps must be a finite number > 0; got {fps!r}")
    size: int | tuple[int, int] | None
    if resize is None:
        size = None
    elif isinstance(resize, Sequence) and not isinstance(resize, str):
        if len(resize) != 2:
            raise ValueError(f"resize must be an int or a (width, height) pair; got {resize!r}")
        size = (positive_int("resize width", resize[0]), positive_int("resize height", resize[1]))
    else:
        size = positive_int("resize", resize)
    cap = None if max_frames is None else positive_int("max_frames", max_frames)
    return Sampling(frames=n, fps=rate, resize=size, max_frames=cap)


def uniform_indices(count: int, n: int) -> np.ndarray:
    """``n`` indices spread uniformly over ``[0, count - 1]``, both ends included.

    ``np.linspace`` rounded half-to-even; when ``n >= count`` every index once (a video
    shorter than the request gives all its frames, not repeats). int64, strictly increasing.
    """
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    if n >= count:
        return np.arange(count, dtype=np.int64)
    # With n < count the spacing (count-1)/(n-1) is > 1, so rounding never merges two
    # samples; unique() is only a guard that keeps the "strictly increasing" promise.
    return np.unique(np.round(np.linspace(0, count - 1, n)).astype(np.int64))


def fps_target(k: int, native_fps: float, fps: float) -> int:
    """The frame shown at the k-th sampling time ``k / fps``: ``floor(k * native / fps)``."""
    return math.floor(k * native_fps / fps + _EPS)


def fps_indices(count: int, native_fps: float, fps: float) -> np.ndarray:
    """Indices of one frame every ``1 / fps`` seconds in a ``count``-frame video at
    ``native_fps``; deduplicated, so ``fps >= native_fps`` gives every frame."""
    out: list[int] = []
    k = 0
    while (i := fps_target(k, native_fps, fps)) < count:
        if not out or i != out[-1]:
            out.append(i)
        k += 1
    return np.asarray(out, dtype=np.int64)


class FpsSelector:
    """Streaming form of :func:`fps_indices`: ``wants(i)`` for i = 0, 1, 2, ... in order,
    for videos whose length is not known before they end."""

    def __init__(self, native_fps: float, fps: float) -> None:
        self._native = native_fps
        self._fps = fps
        self._k = 0

    def wants(self, index: int) -> bool:
        hit = fps_target(self._k, self._native, self._fps) == index
        while fps_target(self._k, self._native, self._fps) <= index:
            self._k += 1
        return hit


def output_size(width: int, height: int, resize: int | tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) after ``resize``: None keeps it, an int sets the short edge (aspect
    kept, long edge rounded), a pair is taken as the exact (width, height)."""
    if resize is None:
        return width, height
    if isinstance(resize, tuple):
        return resize
    if width <= height:
        return resize, max(1, round(height * resize / width))
    return max(1, round(width * resize / height)), resize


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, C) frame to ``size`` = (width, height); INTER_AREA when shrinking
    (it averages, so no aliasing), INTER_LINEAR when any side grows."""
    height, width = frame.shape[:2]
    if (width, height) == size:
        return frame
    shrink = size[0] <= width and size[1] <= height
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(frame, size, interpolation=interpolation)
