"""memlens.prompts: mine memorization-prone prompts from training captions (seed 000).

``datasketch`` (the ``prompts`` extra) is imported only when mining runs, so importing this
package, like ``import memlens``, never needs it.
"""

from __future__ import annotations

from memlens.prompts.captions import Caption, CaptionFormat, read_captions
from memlens.prompts.mine import (
    DEFAULT_NUM_PERM,
    DEFAULT_SHINGLE_SIZE,
    DEFAULT_THRESHOLD,
    DEFAULT_TOP,
    MinedPrompt,
    MiningResult,
    MiningStats,
    ScoreFn,
    mine_prompts,
    write_mined_prompts,
)
from memlens.prompts.normalize import normalize_caption, word_shingles

__all__ = [
    "DEFAULT_NUM_PERM",
    "DEFAULT_SHINGLE_SIZE",
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOP",
    "Caption",
    "CaptionFormat",
    "MinedPrompt",
    "MiningResult",
    "MiningStats",
    "ScoreFn",
    "mine_prompts",
    "normalize_caption",
    "read_captions",
    "word_shingles",
    "write_mined_prompts",
]
