"""Which files are videos and which are images, by extension (case-insensitive).

The extension decides the decoder: videos go through OpenCV's FFmpeg backend, images
through ``cv2.imdecode``. GIF is a video here (it may be animated); a still GIF is a
1-frame video.
"""

from __future__ import annotations

import os
from os import PathLike

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".gif"}
)
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
MEDIA_EXTENSIONS: frozenset[str] = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS


def _suffix(path: str | PathLike[str]) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()


def is_video(path: str | PathLike[str]) -> bool:
    """True if ``path`` has a video extension (see ``VIDEO_EXTENSIONS``)."""
    return _suffix(path) in VIDEO_EXTENSIONS


def is_image(path: str | PathLike[str]) -> bool:
    """True if ``path`` has an image extension (see ``IMAGE_EXTENSIONS``)."""
    return _suffix(path) in IMAGE_EXTENSIONS


def printable(path: str | os.PathLike[str]) -> str:
    """A path as valid UTF-8 text: bytes of a non-UTF-8 file name (kept by Python as lone
    surrogates) become backslash escapes, so the name can go into JSON, Parquet and the
    terminal."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
