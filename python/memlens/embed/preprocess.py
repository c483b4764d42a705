"""Preprocessing shared by the embedders: frame checks, resize rules, row normalization and
model-file checksums (recorded in specs so a different model file gives a different spec)."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def check_frames(frames: object, *, arg: str = "frames") -> np.ndarray:
    """Validate a batch of frames; returns it C-contiguous. Raises TypeError/ValueError
    naming ``arg`` and showing expected vs actual."""
    if not isinstance(frames, np.ndarray):
        raise TypeError(
            f"{arg} must be a numpy.ndarray of uint8 with shape (N, H, W, 3); "
            f"got {type(frames).__module__}.{type(frames).__qualname__}"
        )
    if frames.dtype != np.uint8:
        raise TypeError(f"{arg} must have dtype uint8 (RGB 0..255); got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"{arg} must have shape (N, H, W, 3) (RGB); got {frames.shape}")
    if frames.shape[0] > 0 and (frames.shape[1] == 0 or frames.shape[2] == 0):
        raise ValueError(f"{arg} must have H >= 1 and W >= 1; got {frames.shape}")
    return np.ascontiguousarray(frames)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm. A zero row stays zero (cosine 0 with everything,
    so a degenerate frame never matches anything) instead of becoming NaN. Non-finite model
    outputs are an error."""
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("the model produced non-finite (NaN/Inf) embeddings")
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    out = (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return np.ascontiguousarray(out)


_RESIZE = re.compile(r"(small|skew)_(\d+)|none")


@dataclass(frozen=True)
class ResizeRule:
    """How frames reach a model: ``small_N`` scales the short edge to N (aspect preserved,
    SSCD's ``small_288``), ``skew_N`` scales to N x N (SSCD's ``skew_320``), ``none`` feeds
    frames as they are. Shrinking uses INTER_AREA (anti-aliased), enlarging INTER_LINEAR."""

    kind: str  # "small", "skew" or "none"
    size: int = 0

    @classmethod
    def parse(cls, text: str) -> ResizeRule:
        m = _RESIZE.fullmatch(text) if isinstance(text, str) else None
        if m is None or (m.group(2) is not None and int(m.group(2)) < 1):
            raise ValueError(
                f"resize must be 'small_N', 'skew_N' or 'none' (e.g. 'small_288'); got {text!r}"
            )
        if text == "none":
            return cls("none")
        return cls(m.group(1), int(m.group(2)))

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}_{self.size}"

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) of a resized ``h x w`` frame."""
        if self.kind == "skew":
            return self.size, self.size
        if self.kind == "small":
            scale = self.size / min(h, w)
            return max(1, round(h * scale)), max(1, round(w * scale))
        return h, w

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """Resize ``(N, H, W, C)`` frames (all of one size) to ``output_size``."""
        import cv2

        n, h, w = frames.shape[:3]
        oh, ow = self.output_size(h, w)
        if (oh, ow) == (h, w):
            return frames
        interp = cv2.INTER_AREA if oh * ow < h * w else cv2.INTER_LINEAR
        out = np.empty((n, oh, ow, *frames.shape[3:]), dtype=frames.dtype)
        for i in range(n):
            out[i] = cv2.resize(frames[i], (ow, oh), interpolation=interp)
        return out

    def describe(self) -> dict[str, object]:
        return {"rule": str(self), "interpolation": "cv2 INTER_AREA down / INTER_LINEAR up"}


def file_checksum(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256 (cached by path, size and mtime), so a
    different model file gives a different embedder spec."""
    st = path.stat()
    return _checksum(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _checksum(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
