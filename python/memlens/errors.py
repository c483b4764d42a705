"""Exception types shared across memlens.

Every error a user can cause is a ``ValueError``/``TypeError``/``OSError`` subclass with a
message naming the argument or file, so the CLI turns it into one line and exit status 2,
and batch code can record it as an error row and go on.
"""

from __future__ import annotations


class MediaError(OSError):
    """A video or image that cannot be read: missing, zero-byte, truncated, corrupt or of an
    unsupported kind. Batch code records it as an error row and continues."""


class ModelUnavailableError(ImportError):
    """An embedder's model or runtime is not installed. The message says what to install."""


class IndexFormatError(ValueError):
    """A reference index directory is missing, incomplete, corrupt (checksum mismatch) or of
    an unknown schema version."""


class EmbedderMismatchError(ValueError):
    """An index was opened (or extended) with a different embedder than its manifest's."""
