"""The real photographs bundled with scikit-image (``skimage.data``), as RGB uint8.

Only photographs are listed: synthetic images (checkerboard, blobs, phantom, color wheel,
logo) and duplicates (``cat`` is ``chelsea``) are left out. Grayscale photographs are
replicated to three channels. Needs ``scikit-image`` (a dev/test dependency).
"""

from __future__ import annotations

import functools

import numpy as np

PHOTOGRAPHS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "stereo_motorcycle",
    "text",
)


def _load(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - exercised only without the dev extra
        raise ImportError(
            "the bundled photographs need scikit-image: pip install scikit-image"
        ) from e
    image = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":  # (left, right, disparity): the left view only
        image = image[0]
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)


@functools.cache
def real_photographs() -> dict[str, np.ndarray]:
    """Name -> (H, W, 3) uint8 RGB photograph, in a fixed order. Cached; do not mutate."""
    photos = {name: _load(name) for name in PHOTOGRAPHS}
    for image in photos.values():
        image.setflags(write=False)
    return photos
