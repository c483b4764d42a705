"""Errors and warnings of ``memlens.video``.

Every error is a :class:`memlens.errors.MediaError` (an ``OSError``), so batch code that
records unreadable inputs as error rows needs to catch only that one type.
"""

from __future__ import annotations

from memlens.errors import MediaError


class MediaNotFoundError(MediaError, FileNotFoundError):
    """The path does not exist (also a ``FileNotFoundError``)."""


class UnsupportedMediaError(MediaError):
    """The file's extension is not a known video or image kind, or the path is not a file."""


class CorruptMediaError(MediaError):
    """The file exists but cannot be decoded: empty, truncated beyond repair, corrupt, or a
    video whose stream yields no frame."""


class TruncatedMediaWarning(UserWarning):
    """A video ended well before the frame count its container reports; the readable
    prefix was used. Only raised for files that are damaged, never on a normal read."""


__all__ = [
    "CorruptMediaError",
    "MediaError",
    "MediaNotFoundError",
    "TruncatedMediaWarning",
    "UnsupportedMediaError",
]
