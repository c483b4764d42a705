"""Optical flow as a picture: the usual HSV coding (hue = direction, value = magnitude)."""

from __future__ import annotations

import numpy as np


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(H, W, 2) flow in pixels -> (H, W, 3) uint8 RGB. Hue encodes the direction (0° = right),
    brightness the magnitude relative to ``max_magnitude`` (default: this field's 99th
    percentile, so one outlier does not darken the rest); zero flow is black."""
    import cv2

    f = np.asarray(flow, dtype=np.float32)
    if f.ndim != 3 or f.shape[2] != 2:
        raise ValueError(f"flow must have shape (H, W, 2); got {f.shape}")
    mag, ang = cv2.cartToPolar(f[..., 0], f[..., 1], angleInDegrees=True)
    top = float(np.percentile(mag, 99)) if max_magnitude is None else float(max_magnitude)
    hsv = np.empty((*f.shape[:2], 3), dtype=np.uint8)
    hsv[..., 0] = (ang / 2).astype(np.uint8)  # OpenCV hue is 0..179
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / top * 255, 0, 255).astype(np.uint8) if top > 0 else 0
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def flow_pair_png(gen: np.ndarray, ref: np.ndarray) -> bytes:
    """PNG bytes of two flow fields side by side on one magnitude scale (so speeds compare)."""
    import cv2

    top = float(max(np.percentile(np.hypot(gen[..., 0], gen[..., 1]), 99),
                    np.percentile(np.hypot(ref[..., 0], ref[..., 1]), 99)))  # fmt: skip
    gap = np.full((gen.shape[0], 4, 3), 255, dtype=np.uint8)
    image = np.concatenate([flow_to_rgb(gen, top), gap, flow_to_rgb(ref, top)], axis=1)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the flow image as PNG")
    return buf.tobytes()
