"""IndexHits: the top-k rows of an index search, with lookups of what each row is."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from memlens.index.items import ItemTable


@dataclass(frozen=True)
class IndexHits:
    """Per query, the k best index rows, best first (equal scores: lower row first).

    ``scores`` float32 (nq, k) cosine similarities; ``rows`` int64 (nq, k) global row numbers;
    ``item_numbers`` int32 (nq, k) the item each row belongs to. The helpers map rows to the
    items table (item ids, sources, frame indices, timestamps) as arrays of shape (nq, k).
    """

    scores: np.ndarray
    rows: np.ndarray
    item_numbers: np.ndarray
    _items: ItemTable = field(repr=False, compare=False)

    @property
    def k(self) -> int:
        return int(self.scores.shape[1])

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def item_ids(self) -> np.ndarray:
        """object (nq, k) of item id strings."""
        return self._items.id_array()[self.item_numbers]

    def sources(self) -> np.ndarray:
        """object (nq, k) of source strings (the file each row's item was read from)."""
        return self._items.source_array()[self.item_numbers]

    def is_image(self) -> np.ndarray:
        return self._items.is_image_array()[self.item_numbers]

    def frame_indices(self) -> np.ndarray:
        """int64 (nq, k): the frame of its item each row was embedded from."""
        return self._items.frame_index[self.rows]

    def timestamps(self) -> np.ndarray:
        """float64 (nq, k) in seconds (NaN where the item had none)."""
        return self._items.timestamp[self.rows]
