"""memlens.index: the on-disk reference index (sharded embeddings + manifest + items table).

See ``reference.py`` for the directory layout and ``writer.py`` for the commit and resume
protocol. ``atomic.py`` holds the temp-file + rename helpers other modules may reuse.
"""

from __future__ import annotations

from memlens.index.hits import IndexHits
from memlens.index.items import ItemInfo, RowInfo
from memlens.index.manifest import SCHEMA_VERSION
from memlens.index.reference import DEFAULT_SHARD_ROWS, ReferenceIndex, ShardInfo

__all__ = [
    "DEFAULT_SHARD_ROWS",
    "SCHEMA_VERSION",
    "IndexHits",
    "ItemInfo",
    "ReferenceIndex",
    "RowInfo",
    "ShardInfo",
]
