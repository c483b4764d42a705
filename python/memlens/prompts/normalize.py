"""Caption text normalization and word shingles for duplicate detection.

Two captions are exact duplicates when their normalized forms are equal. Normalization is:
Unicode NFKC (full-width and compatibility forms fold to their plain form), casefold (a
stronger ``lower`` that also folds e.g. ``ß`` to ``ss``), every punctuation character (Unicode
category ``P*``) replaced by a space, then whitespace collapsed to single spaces and trimmed.
Punctuation becomes a space rather than vanishing so that ``"dog,cat"`` and ``"dog, cat"``
agree; symbols (``S*``: ``<``, ``$``, emoji) are kept because they can carry meaning, and
Wen et al.'s trigger token ``<i>`` is one.
"""

from __future__ import annotations

import functools
import sys
import unicodedata

__all__ = ["normalize_caption", "word_shingles"]


@functools.cache
def _punctuation_table() -> dict[int, str]:
    # built once (~0.2 s over all code points); str.translate with it is a C loop
    return {
        cp: " " for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("P")
    }


def normalize_caption(text: str) -> str:
    """The normalized form used as the exact-duplicate key (see the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(folded.translate(_punctuation_table()).split())


def word_shingles(normalized: str, size: int) -> set[str]:
    """The set of ``size``-word shingles of a normalized caption.

    A caption shorter than ``size`` words is one shingle (itself), so short captions still
    match their exact and near copies instead of having an empty set.
    """
    words = normalized.split()
    if len(words) <= size:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}
