"""The items table: which item (video or image) and frame every index row comes from.

On disk, ``items.parquet`` has one row per indexed frame, in row order::

    row int64 | item_id string | item_number int32 | source string | frame_index int64 |
    timestamp float64 | is_image bool

Items occupy consecutive rows and are numbered 0, 1, ... in the order they were added; the
per-item table (item_id -> item_number, first row, row count) is derived from it on load.
In memory, :class:`ItemTable` is append-only, so hits computed earlier stay valid.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from memlens.errors import IndexFormatError

SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("item_id", pa.string()),
        ("item_number", pa.int32()),
        ("source", pa.string()),
        ("frame_index", pa.int64()),
        ("timestamp", pa.float64()),
        ("is_image", pa.bool_()),
    ]
)
MAX_ITEMS = np.iinfo(np.int32).max


class _Record:
    """Field access by attribute or by key (``info.item_id == info["item_id"]``), so records
    drop into code that writes result rows as dicts."""

    def __getitem__(self, key: str) -> Any:
        if key not in self.as_dict():
            raise KeyError(key)
        return getattr(self, key)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class ItemInfo(_Record):
    """One indexed item: its rows are ``first_row .. first_row + num_rows - 1``."""

    item_number: int
    item_id: str
    source: str
    is_image: bool
    first_row: int
    num_rows: int
    frame_indices: np.ndarray  # int64 (num_rows,)
    timestamps: np.ndarray  # float64 (num_rows,); NaN where unknown

    @property
    def rows(self) -> range:
        return range(self.first_row, self.first_row + self.num_rows)


@dataclass(frozen=True)
class RowInfo(_Record):
    """One index row: the frame ``frame_index`` (at ``timestamp`` s) of item ``item_id``."""

    row: int
    item_number: int
    item_id: str
    source: str
    is_image: bool
    frame_index: int
    timestamp: float


class ItemTable:
    """Append-only per-item and per-row metadata of an index (committed or not)."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._sources: list[str] = []
        self._is_image: list[bool] = []
        self._first: list[int] = []
        self._count: list[int] = []
        self._number: dict[str, int] = {}
        # per-row columns as chunks, concatenated lazily (appends are frequent, reads rare)
        self._frames: list[np.ndarray] = []
        self._times: list[np.ndarray] = []
        self._cache: dict[str, np.ndarray] = {}
        self.num_rows = 0

    @property
    def num_items(self) -> int:
        return len(self._ids)

    def append(
        self,
        item_id: str,
        source: str,
        is_image: bool,
        frame_indices: np.ndarray,
        timestamps: np.ndarray,
    ) -> int:
        """Register an item whose rows directly follow the current ones; returns its number."""
        if item_id in self._number:
            raise ValueError(f"item_id {item_id!r} is already in the index")
        if self.num_items >= MAX_ITEMS:
            raise ValueError(f"an index holds at most {MAX_ITEMS} items")
        n = len(self._ids)
        self._ids.append(item_id)
        self._sources.append(source)
        self._is_image.append(bool(is_image))
        self._first.append(self.num_rows)
        self._count.append(int(frame_indices.shape[0]))
        self._number[item_id] = n
        self._frames.append(frame_indices)
        self._times.append(timestamps)
        self.num_rows += int(frame_indices.shape[0])
        self._cache.clear()
        return n

    # ---- lookups ---------------------------------------------------------------------------

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._number

    def ids(self) -> list[str]:
        return list(self._ids)

    def number_of(self, item_id: str) -> int:
        try:
            return self._number[item_id]
        except KeyError:
            raise KeyError(f"item_id {item_id!r} is not in the index") from None

    def resolve(self, item: str | int | np.integer) -> int:
        """An item number from an item id or number (validated)."""
        if isinstance(item, str):
            return self.number_of(item)
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise TypeError(f"item must be an item_id (str) or item_number (int); got {item!r}")
        n = int(item)
        if not 0 <= n < self.num_items:
            raise IndexError(f"item_number must be in [0, {self.num_items}); got {n}")
        return n

    def span(self, n: int) -> tuple[int, int]:
        """(first row, row count) of item ``n``."""
        return self._first[n], self._count[n]

    def info(self, n: int) -> ItemInfo:
        first, count = self.span(n)
        return ItemInfo(
            item_number=n,
            item_id=self._ids[n],
            source=self._sources[n],
            is_image=self._is_image[n],
            first_row=first,
            num_rows=count,
            frame_indices=self.frame_index[first : first + count].copy(),
            timestamps=self.timestamp[first : first + count].copy(),
        )

    def row_info(self, row: int) -> RowInfo:
        n = int(self.item_number[row])
        return RowInfo(
            row=row,
            item_number=n,
            item_id=self._ids[n],
            source=self._sources[n],
            is_image=self._is_image[n],
            frame_index=int(self.frame_index[row]),
            timestamp=float(self.timestamp[row]),
        )

    def bounds(self) -> np.ndarray:
        """int64 (num_items + 1,): item n's rows are ``bounds[n] .. bounds[n + 1] - 1``."""
        return np.asarray([*self._first, self.num_rows], dtype=np.int64)

    def _column(self, name: str) -> np.ndarray:
        if name not in self._cache:
            counts = np.asarray(self._count, dtype=np.int64)
            if name == "item_number":
                col = np.repeat(np.arange(self.num_items, dtype=np.int32), counts)
            elif name == "frame_index":
                col = _concat(self._frames, np.int64)
                self._frames = [col]
            else:
                col = _concat(self._times, np.float64)
                self._times = [col]
            col.flags.writeable = False
            self._cache[name] = col
        return self._cache[name]

    @property
    def item_number(self) -> np.ndarray:
        """int32 (num_rows,): the item of every row."""
        return self._column("item_number")

    @property
    def frame_index(self) -> np.ndarray:
        return self._column("frame_index")

    @property
    def timestamp(self) -> np.ndarray:
        return self._column("timestamp")

    def id_array(self) -> np.ndarray:
        """object (num_items,) of item ids (for vectorized lookups; cached, read-only)."""
        return self._per_item("item_id", self._ids, object)

    def source_array(self) -> np.ndarray:
        return self._per_item("source", self._sources, object)

    def is_image_array(self) -> np.ndarray:
        return self._per_item("is_image", self._is_image, bool)

    def _per_item(self, name: str, values: list[Any], dtype: type) -> np.ndarray:
        if name not in self._cache:
            col: np.ndarray = np.empty(len(values), dtype=dtype)
            col[:] = values  # element-wise: never turns a list of strings into a 2-D array
            col.flags.writeable = False
            self._cache[name] = col
        return self._cache[name]

    # ---- parquet ---------------------------------------------------------------------------

    def to_parquet(self, num_items: int) -> bytes:
        """``items.parquet`` bytes for the first ``num_items`` items (deterministic)."""
        counts = np.asarray(self._count[:num_items], dtype=np.int64)
        rows = int(counts.sum())
        numbers = np.repeat(np.arange(num_items, dtype=np.int32), counts)
        take = pa.array(numbers)
        table = pa.Table.from_arrays(
            [
                pa.array(np.arange(rows, dtype=np.int64)),
                pc.take(pa.array(self._ids[:num_items], pa.string()), take),
                take,
                pc.take(pa.array(self._sources[:num_items], pa.string()), take),
                pa.array(self.frame_index[:rows]),
                pa.array(self.timestamp[:rows]),
                pa.array(np.repeat(np.asarray(self._is_image[:num_items], dtype=bool), counts)),
            ],
            schema=SCHEMA,
        )
        buf = io.BytesIO()
        # page checksums let readers detect corruption even without verify=True
        pq.write_table(table, buf, compression="zstd", write_page_checksum=True)
        return buf.getvalue()

    @classmethod
    def from_parquet(cls, data: bytes, num_rows: int, num_items: int, what: str) -> ItemTable:
        """Parse and validate ``items.parquet`` bytes against the manifest's counts."""
        try:
            table = pq.read_table(io.BytesIO(data), page_checksum_verification=True)
        except (pa.ArrowException, OSError) as e:
            raise IndexFormatError(f"{what} is not a readable Parquet file: {e}") from None
        if table.schema.remove_metadata() != SCHEMA:
            raise IndexFormatError(
                f"{what} must have columns {SCHEMA.to_string()!r}; got {table.schema.to_string()!r}"
            )
        if table.num_rows != num_rows:
            raise IndexFormatError(
                f"{what} has {table.num_rows} rows; the manifest counts {num_rows}"
            )
        for name in SCHEMA.names:
            if table.column(name).null_count:
                raise IndexFormatError(f"{what} column {name!r} has nulls")
        col = {name: table.column(name) for name in SCHEMA.names}
        rows = col["row"].to_numpy()
        if not np.array_equal(rows, np.arange(num_rows, dtype=np.int64)):
            raise IndexFormatError(f"{what} column 'row' must be 0..{num_rows - 1} in order")
        numbers = col["item_number"].to_numpy()
        starts = np.flatnonzero(np.diff(numbers, prepend=-1))
        if num_rows and (
            numbers[0] != 0
            or not np.all(np.diff(numbers) >= 0)
            or not np.all(np.diff(numbers) <= 1)
            or int(numbers[-1]) != num_items - 1
        ):
            raise IndexFormatError(
                f"{what} column 'item_number' must run 0..{num_items - 1} over consecutive rows"
            )
        take = pa.array(numbers)
        first = pa.array(starts)
        for name in ("item_id", "source", "is_image"):
            same = pc.equal(col[name], pc.take(pc.take(col[name], first), take))
            if num_rows and not pc.all(same).as_py():
                raise IndexFormatError(f"{what} column {name!r} must be constant within an item")
        out = cls()
        ids = col["item_id"].take(first).to_pylist()
        if len(set(ids)) != len(ids):
            raise IndexFormatError(f"{what} has duplicate item ids")
        out._ids = ids
        out._sources = col["source"].take(first).to_pylist()
        out._is_image = col["is_image"].take(first).to_pylist()
        out._first = starts.tolist()
        out._count = np.diff(starts, append=num_rows).tolist()
        out._number = {item_id: n for n, item_id in enumerate(ids)}
        out._frames = [col["frame_index"].to_numpy()]
        out._times = [col["timestamp"].to_numpy()]
        out.num_rows = num_rows
        # the checks above materialize every column (~100 B/row at peak); Arrow's allocator
        # would keep those pages (about 800 MiB after opening a 1e7-row index): return them
        del table, col, take, first, same
        pa.default_memory_pool().release_unused()
        return out


def _concat(chunks: list[np.ndarray], dtype: type) -> np.ndarray:
    if not chunks:
        return np.empty(0, dtype=dtype)
    return np.concatenate(chunks).astype(dtype, copy=False)
