"""Reading one input inside a batch job: decode problems become data, not crashes.

A file that cannot be read raises :class:`~memlens.errors.MediaError` (the caller records an
error row and goes on). A truncated video that still decodes a prefix is scored, and the
truncation warning is returned as text so it lands in the result record instead of escaping
as a Python warning (which a ``-W error`` run would turn into a crash).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from memlens.video import Clip, read_media
from memlens.video.errors import TruncatedMediaWarning


def read_for_batch(path: str | Path, **options: Any) -> tuple[Clip, str | None]:
    """``read_media(path, **options)`` and the text of a truncation warning, if any."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncatedMediaWarning)
        clip = read_media(path, **options)
    notes = [str(w.message) for w in caught if issubclass(w.category, TruncatedMediaWarning)]
    for w in caught:  # anything else keeps its normal route
        if not issubclass(w.category, TruncatedMediaWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return clip, "; ".join(notes) or None
