"""Public ops: validate arguments → select a backend → call it."""

from __future__ import annotations

from memlens.ops.flow import flow_similarity
from memlens.ops.topk import cosine_topk, merge_topk

__all__ = ["cosine_topk", "flow_similarity", "merge_topk"]
