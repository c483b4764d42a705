"""memlens: measure memorization in image and video diffusion models.

``import memlens`` is cheap and safe: it never imports triton and never initializes CUDA.
"""

from __future__ import annotations

from memlens._build_info import build_info
from memlens._dispatch import BackendUnavailableError
from memlens.ops import cosine_topk, flow_similarity, merge_topk

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "__version__",
    "build_info",
    "cosine_topk",
    "flow_similarity",
    "merge_topk",
]
