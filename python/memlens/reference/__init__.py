"""Plain torch implementations of every memlens op: the executable specification.

Backends are tested against these (in float64). They favour clarity over speed but still
stream their inputs in blocks, so they also serve as the always-available ``torch`` backend.
"""

from __future__ import annotations

from memlens.reference.topk import cosine_topk, merge_topk, sort_topk

__all__ = ["cosine_topk", "merge_topk", "sort_topk"]
