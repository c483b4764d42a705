"""ReferenceIndex: an on-disk, sharded, exact-search index of training-set frame embeddings.

Layout of an index directory (DESIGN.md §6)::

    manifest.json                  schema, embedder spec, counts, every file's size + sha256
    items.parquet                  one row per indexed frame (see items.py)
    shards/000000.f32.npy          float32 (shard_rows, dim) unit rows, memory-mapped on read
    shards/000001.f32.npy          ...
    shards/000002.partial-5.f32.npy  only the last shard may be partial
    shards/000000.bf16.npy / .i8.npy / .i8scale.npy   optional reduced copies (``copies=``)

Search streams the shards one at a time (each memory-mapped, so an index larger than RAM
works) through :func:`memlens.cosine_topk` and merges the per-shard top-k lists exactly with
:func:`memlens.merge_topk`: the result equals one ``cosine_topk`` over all rows.

Reduced-precision copies are stored only on request, and search never reads them.
``cosine_topk`` accepts float32/float16/bfloat16 references only (no int8 + scales), and one
array serves both its stages: with ``precision="bf16"|"int8"`` it quantizes each reference
tile while packing it for the SIMD kernel (fp32 tiles are packed too, so this is free), then
re-ranks the candidates and certifies the result against the fp32 rows. Handing it a bf16
copy would make it exact for the bf16-rounded rows, not for the index. So ``precision=`` runs
on the fp32 shards; the copies serve consumers that keep shards resident (a GPU, a Ray
actor) at half or a quarter the memory, via :meth:`load_shard`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import torch
from typing_extensions import Self

from memlens.embed.base import EmbedderSpec
from memlens.errors import EmbedderMismatchError, IndexFormatError
from memlens.index import validate
from memlens.index.hits import IndexHits
from memlens.index.items import ItemInfo, ItemTable, RowInfo
from memlens.index.lock import DirLock
from memlens.index.manifest import COPY_KINDS, MANIFEST_NAME, Manifest, ShardEntry
from memlens.index.search import Segment, stream_topk
from memlens.index.shards import load_copy, load_shard, verify_file
from memlens.index.state import initialize, only_creation_leftovers, read_committed, read_items
from memlens.index.writer import IndexWriter, resume
from memlens.ops.topk import MAX_K, PRECISIONS

DEFAULT_SHARD_ROWS = 65536


@dataclass(frozen=True)
class ShardInfo:
    """A committed shard: global rows ``first_row .. first_row + rows - 1``."""

    number: int
    first_row: int
    rows: int
    file: str


class ReferenceIndex:
    """A reference index directory, open for reading (``mode="r"``) or appending (``"a"``).

    Rows are unit-norm float32 embeddings; items (videos or images) are runs of consecutive
    rows numbered in the order they were added. Use as a context manager, or call
    :meth:`close`, so the last partial shard is written.
    """

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        items: ItemTable,
        mode: Literal["r", "a"],
        writer: IndexWriter | None,
    ) -> None:
        # use create() or open()
        self._root = root
        self._manifest = manifest
        self._items = items
        self._mode = mode
        self._writer = writer
        self._closed = False

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        embedder: EmbedderSpec,
        *,
        shard_rows: int = DEFAULT_SHARD_ROWS,
        exist_ok_resume: bool = False,
        copies: Sequence[str] = (),
    ) -> ReferenceIndex:
        """Create an index at ``path`` (a new or empty directory) and open it for appending.

        Args:
            embedder: the spec of the embedder all rows come from (stored in the manifest).
            shard_rows: rows per shard file; one shard is buffered in memory while building.
            exist_ok_resume: if ``path`` already holds an index (or an interrupted creation),
                resume it instead of failing: same as ``open(path, embedder=embedder,
                mode="a")``, and ``shard_rows``/``copies`` must match the existing index.
            copies: reduced-precision copies to store next to every shard, from
                ``("bf16", "int8")`` (search does not need them; see the module docstring).
        """
        if not isinstance(embedder, EmbedderSpec):
            raise TypeError(f"embedder must be an EmbedderSpec; got {type(embedder).__name__}")
        shard_rows = validate.positive_int(shard_rows, "shard_rows")
        copies = validate.copies(copies, COPY_KINDS)
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise FileExistsError(f"path {str(root)!r} exists and is not a directory")
        if (root / MANIFEST_NAME).exists():
            if not exist_ok_resume:
                raise FileExistsError(
                    f"{str(root)!r} already holds an index; use ReferenceIndex.open(path, "
                    "mode='a') or create(..., exist_ok_resume=True) to add to it"
                )
            return cls._resume_existing(root, embedder, shard_rows, copies)
        if (
            root.is_dir()
            and any(root.iterdir())
            and not (exist_ok_resume and only_creation_leftovers(root))
        ):
            raise FileExistsError(
                f"directory {str(root)!r} is not empty and holds no {MANIFEST_NAME}; "
                "refusing to write an index into it"
            )
        root.mkdir(parents=True, exist_ok=True)
        lock = DirLock(root)
        try:
            manifest = initialize(root, embedder, shard_rows, copies)
        except BaseException:
            lock.release()
            raise
        items = ItemTable()
        return cls(root, manifest, items, "a", IndexWriter(root, manifest, items, lock))

    @classmethod
    def _resume_existing(
        cls, root: Path, embedder: EmbedderSpec, shard_rows: int, copies: tuple[str, ...]
    ) -> ReferenceIndex:
        idx = cls.open(root, embedder=embedder, mode="a")
        if (idx.shard_rows, idx.copies) != (shard_rows, copies):
            idx.close()
            raise ValueError(
                f"cannot resume {str(root)!r} with shard_rows={shard_rows}, copies={copies}: "
                f"the index has shard_rows={idx.shard_rows}, copies={idx.copies}"
            )
        return idx

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        embedder: EmbedderSpec | None = None,
        mode: Literal["r", "a"] = "r",
        verify: bool = False,
    ) -> ReferenceIndex:
        """Open an existing index.

        Args:
            embedder: if given, must equal the manifest's spec (else EmbedderMismatchError).
            mode: "r" to read; "a" to append (one writer at a time, resumes an interrupted
                build: see :meth:`add` and ``writer.py``).
            verify: check every file's sha256 (reads the whole index). Without it, sizes and
                array headers are checked, and checksums of ``items.parquet`` and of a shard
                whose rows an append re-reads.

        Raises:
            IndexFormatError: missing/corrupt manifest or items table, a missing or truncated
                file, a checksum mismatch, a path leaving the index directory.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a'; got {mode!r}")
        if embedder is not None and not isinstance(embedder, EmbedderSpec):
            raise TypeError(
                f"embedder must be an EmbedderSpec or None; got {type(embedder).__name__}"
            )
        root = Path(path)
        if not root.is_dir():
            raise IndexFormatError(f"index directory {str(root)!r} does not exist")
        lock = DirLock(root) if mode == "a" else None
        try:
            manifest, items, items_source = read_committed(root, verify)
            if embedder is not None and embedder != manifest.spec:
                raise EmbedderMismatchError(
                    f"index {str(root)!r} was built with embedder {manifest.spec.to_json()}; "
                    f"got embedder {embedder.to_json()}"
                )
            writer = None
            if lock is not None:
                writer = resume(root, manifest, items, items_source, lock)
                manifest = writer.manifest
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return cls(root, manifest, items, mode, writer)

    # ---- appending -------------------------------------------------------------------------

    def add(
        self,
        item_id: str,
        embeddings: Any,
        *,
        source: str,
        frame_indices: Any = None,
        timestamps: Any = None,
        is_image: bool = False,
    ) -> int:
        """Append one item's rows; returns its item number.

        Args:
            item_id: unique, non-empty (duplicate → ValueError; see :meth:`has_item`).
            embeddings: (n, dim) floats, n >= 1, finite, non-zero rows (numpy or torch);
                stored re-normalized to unit length in float32.
            source: where the item was read from (a path or URL; stored as given).
            frame_indices: n integers (default 0..n-1).
            timestamps: n floats in seconds, NaN where unknown (default all NaN).
            is_image: the item is a still image rather than video frames.

        Each full shard is committed as soon as it is written. The item becomes durable when
        the shard holding its last row is committed, or at :meth:`flush`/:meth:`close`; after
        a crash, ``open(path, mode="a")`` resumes with the complete items only.
        """
        writer = self._require_writer("add")
        if not isinstance(item_id, str) or not item_id:
            raise TypeError(f"item_id must be a non-empty str; got {item_id!r}")
        if item_id in self._items:
            raise ValueError(f"item_id {item_id!r} is already in the index {str(self._root)!r}")
        if not isinstance(source, str):
            raise TypeError(f"source must be a str; got {type(source).__name__}")
        if not isinstance(is_image, bool | np.bool_):
            raise TypeError(f"is_image must be a bool; got {type(is_image).__name__}")
        rows = validate.embeddings(embeddings, self.dim)
        n = rows.shape[0]
        frames = validate.frame_indices(frame_indices, n)
        times = validate.timestamps(timestamps, n)
        return writer.add(item_id, rows, source, bool(is_image), frames, times)

    def flush(self) -> None:
        """Commit every item added so far (the buffered rows become a partial last shard)."""
        self._require_writer("flush").flush()

    def close(self) -> None:
        """Flush (mode "a") and release the directory. Idempotent. After a failed write
        nothing more is written: reopen with mode="a" to resume from the last commit."""
        if self._closed:
            return
        writer = self._writer
        try:
            if writer is not None and writer.failed is None:
                writer.flush()
        finally:
            self._closed = True
            if writer is not None:
                writer.release()
                self._manifest = writer.manifest

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # complete items are consistent even if the with-block raised: keep them
        self.close()

    # ---- search ----------------------------------------------------------------------------

    def search(
        self,
        queries: Any,
        k: int,
        *,
        precision: str = "fp32",
        backend: str | None = None,
        device: str | None = None,
        shards: Sequence[int] | None = None,
    ) -> IndexHits:
        """Exact top-k cosine search of ``queries`` (nq, dim) against every row.

        Args:
            k: 1 <= k <= min(rows searched, 4096) (cosine_topk's limit); larger k is a
                ValueError, never silently clamped. k may exceed a shard's rows.
            precision: "fp32", or "bf16"/"int8" (cosine_topk's reduced-precision candidate
                stage on the fp32 shards; still the exact top-k).
            backend: cosine_topk backend ("cpu", "cuda", "triton", "torch"); default automatic.
            device: "cpu" (default) or a CUDA device such as "cuda:0": queries are moved there
                once, each shard as it is streamed.
            shards: search only these committed shards (numbers from :attr:`shards`), e.g. one
                group per worker; merge workers' hits with :func:`memlens.merge_topk`.

        Returns:
            IndexHits: scores float32 (nq, k) best first (equal scores: lower row first),
            rows int64, item_numbers int32, with lookups of item ids, frames and sources.
        """
        self._require_open()
        segments = self._segments() if shards is None else self._selected(shards)
        total = sum(s.rows for s in segments)
        q = validate.queries(queries, self.dim)
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise TypeError(f"k must be an int; got {type(k).__name__}")
        k = int(k)
        if not 1 <= k <= total:
            raise ValueError(
                f"k must be in [1, {total}] (the number of rows searched"
                + (", the index is empty" if total == 0 else "")
                + f"); got {k}"
            )
        if k > MAX_K:
            raise ValueError(f"k must be <= {MAX_K} (cosine_topk's limit); got {k}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
        if q.shape[0] == 0:
            return self._hits(np.empty((0, k), np.float32), np.empty((0, k), np.int64))
        scores, rows = stream_topk(
            q, segments, k, precision, backend, torch.device(device or "cpu")
        )
        return self._hits(scores, rows)

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> IndexHits:
        numbers = self._items.item_number[rows]
        return IndexHits(scores, rows, numbers, self._items)

    # ---- rows and items --------------------------------------------------------------------

    def embeddings_of(self, item: str | int) -> np.ndarray:
        """The (n, dim) float32 rows of an item (by id or number), in frame order."""
        self._require_open()
        first, count = self._items.span(self._items.resolve(item))
        return self.rows_between(first, first + count)

    def rows_between(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start .. stop - 1`` as a float32 (stop - start, dim) array (a copy)."""
        self._require_open()
        if not 0 <= start <= stop <= self.num_rows:
            raise IndexError(
                f"rows must satisfy 0 <= start <= stop <= {self.num_rows}; got {start}, {stop}"
            )
        out = np.empty((stop - start, self.dim), dtype=np.float32)
        for seg in self._segments():
            a, b = max(start, seg.first_row), min(stop, seg.first_row + seg.rows)
            if a < b:
                out[a - start : b - start] = seg.load()[a - seg.first_row : b - seg.first_row]
        return out

    def item_info(self, item: str | int) -> ItemInfo:
        """Item id, source, is_image, first row, row count, frame indices and timestamps."""
        self._require_open()
        return self._items.info(self._items.resolve(item))

    def row_info(self, row: int) -> RowInfo:
        """Item id, item number, source, frame index and timestamp of one row."""
        self._require_open()
        if isinstance(row, bool) or not isinstance(row, int | np.integer):
            raise TypeError(f"row must be an int; got {type(row).__name__}")
        if not 0 <= row < self.num_rows:
            raise IndexError(f"row must be in [0, {self.num_rows}); got {row}")
        return self._items.row_info(int(row))

    def item_bounds(self) -> np.ndarray:
        """int64 (num_items + 1,): item n occupies rows ``bounds[n] .. bounds[n + 1] - 1``."""
        return self._items.bounds()

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, rows)`` for every searchable block of rows in order, one at a time
        (memory-mapped shards; in mode "a" the write buffer last), for full passes."""
        self._require_open()
        for seg in self._segments():
            yield seg.first_row, seg.load()

    def item_number(self, item_id: str) -> int:
        self._require_open()
        return self._items.number_of(item_id)

    def has_item(self, item_id: str) -> bool:
        """Whether the item is complete in the index: after a crash, resume skips these."""
        return item_id in self._items

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def item_ids(self) -> list[str]:
        """Ids of the complete items, in item-number order."""
        return self._items.ids()

    def row_item_numbers(self) -> np.ndarray:
        """int32 (num_rows,): the item number of every row (read-only)."""
        return self._items.item_number[: self.num_rows]

    # ---- shards ----------------------------------------------------------------------------

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        """The committed shards holding searchable rows (of complete, committed items)."""
        out, first = [], 0
        committed = self._current_manifest().num_rows
        for n, s in enumerate(self._current_manifest().shards):
            rows = min(s.rows, committed - first)
            if rows <= 0:
                break
            out.append(ShardInfo(n, first, rows, s.data.file))
            first += s.rows
        return tuple(out)

    def load_shard(self, number: int, *, precision: str = "fp32") -> tuple[np.ndarray, ...]:
        """A committed shard's searchable rows, memory-mapped: ``(fp32,)``, or the stored
        reduced copy ``(bf16_bits,)`` (uint16) / ``(int8, scale)`` (needs ``copies=``)."""
        self._require_open()
        infos = self.shards
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < len(infos):
            raise IndexError(f"shard number must be in [0, {len(infos)}); got {number!r}")
        entry = self._current_manifest().shards[number]
        rows = infos[number].rows
        what = f"{self._root / MANIFEST_NAME} shards[{number}]"
        if precision == "fp32":
            return (load_shard(self._root, entry, self.dim, what)[:rows],)
        return tuple(a[:rows] for a in load_copy(self._root, entry, self.dim, precision, what))

    def verify(self) -> None:
        """Check the sha256 of every file the manifest references (IndexFormatError if not)."""
        self._require_open()
        m = self._current_manifest()
        for n, shard in enumerate(m.shards):
            for f in shard.files():
                verify_file(self._root, f, f"{self._root / MANIFEST_NAME} shards[{n}]")
        read_items(self._root, m)

    # ---- properties ------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._root

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def spec(self) -> EmbedderSpec:
        return self._manifest.spec

    @property
    def dim(self) -> int:
        return self._manifest.dim

    @property
    def shard_rows(self) -> int:
        return self._manifest.shard_rows

    @property
    def copies(self) -> tuple[str, ...]:
        return self._manifest.copies

    @property
    def num_rows(self) -> int:
        """Rows of complete items (in mode "a" including items not yet committed)."""
        return self._items.num_rows

    @property
    def num_items(self) -> int:
        return self._items.num_items

    @property
    def committed_rows(self) -> int:
        """Rows a crash now would keep (the last committed manifest's ``num_rows``)."""
        return self._current_manifest().num_rows

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        """The number of rows (frames), the unit search returns."""
        return self.num_rows

    def __repr__(self) -> str:
        return (
            f"ReferenceIndex({str(self._root)!r}, mode={self._mode!r}, embedder="
            f"{self.spec.name!r}, dim={self.dim}, items={self.num_items}, rows={self.num_rows})"
        )

    # ---- internals -------------------------------------------------------------------------

    def _current_manifest(self) -> Manifest:
        return self._writer.manifest if self._writer is not None else self._manifest

    def _require_open(self) -> None:
        if self._closed:
            raise ValueError(f"index {str(self._root)!r} is closed")

    def _require_writer(self, op: str) -> IndexWriter:
        self._require_open()
        if self._writer is None:
            raise ValueError(f"{op}() needs mode='a'; index {str(self._root)!r} is open read-only")
        return self._writer

    def _segments(self) -> list[Segment]:
        """Every searchable row, in order: shard files, then (mode "a") the write buffer."""
        w = self._writer
        if w is not None and w.failed is not None:
            w.check_usable()
        limit = self.num_rows
        m = self._current_manifest()
        entries = m.shards if w is None else tuple(w.full)
        out, first = [], 0
        for n, entry in enumerate(entries):
            rows = min(entry.rows, limit - first)
            if rows <= 0:
                break
            out.append(Segment(first, rows, self._shard_loader(n, entry, rows)))
            first += entry.rows
        if w is not None and first < limit:
            buf = w.buffered()
            out.append(Segment(first, limit - first, lambda: buf[: limit - first]))
        return out

    def _selected(self, numbers: Sequence[int]) -> list[Segment]:
        infos = self.shards
        m = self._current_manifest()
        out = []
        for n in sorted(set(numbers)):
            if (
                isinstance(n, bool)
                or not isinstance(n, int | np.integer)
                or not 0 <= n < len(infos)
            ):
                raise ValueError(f"shards must hold shard numbers in [0, {len(infos)}); got {n!r}")
            info = infos[int(n)]
            out.append(
                Segment(
                    info.first_row,
                    info.rows,
                    self._shard_loader(info.number, m.shards[info.number], info.rows),
                )
            )
        return out

    def _shard_loader(self, n: int, entry: ShardEntry, rows: int) -> Callable[[], np.ndarray]:
        what = f"{self._root / MANIFEST_NAME} shards[{n}]"
        return lambda: load_shard(self._root, entry, self.dim, what)[:rows]
