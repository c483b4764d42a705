"""Video and image input: decode files into sampled RGB frames (:func:`read_media`) and
expand files/directories into media items (:func:`list_media`).

OpenCV (``opencv-python-headless``) is imported with this package; nothing here imports
torch.
"""

from __future__ import annotations

from memlens.errors import MediaError
from memlens.video.decode import Clip, read_frame, read_media
from memlens.video.errors import (
    CorruptMediaError,
    MediaNotFoundError,
    TruncatedMediaWarning,
    UnsupportedMediaError,
)
from memlens.video.formats import (
    IMAGE_EXTENSIONS,
    MEDIA_EXTENSIONS,
    VIDEO_EXTENSIONS,
    is_image,
    is_video,
)
from memlens.video.sampling import fps_indices, uniform_indices
from memlens.video.sources import MediaFile, list_media

__all__ = [
    "IMAGE_EXTENSIONS",
    "MEDIA_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "CorruptMediaError",
    "MediaError",
    "MediaFile",
    "MediaNotFoundError",
    "TruncatedMediaWarning",
    "UnsupportedMediaError",
    "fps_indices",
    "is_image",
    "is_video",
    "list_media",
    "read_frame",
    "read_media",
    "uniform_indices",
]
