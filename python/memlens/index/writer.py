"""Appending to an index: buffering, per-shard commits, crash recovery and resume.

Commit protocol (the manifest rename is the only commit point):

1. a full shard is written under its final name ``shards/NNNNNN.f32.npy`` (temp + fsync +
   rename) — no committed manifest references that name yet;
2. if the set of complete items changed, the items table is staged as ``items.parquet.next``;
3. ``manifest.json`` is replaced: it now counts the new shard and names the staged items
   table's sha256 (under the final name ``items.parquet``);
4. ``items.parquet.next`` is renamed to ``items.parquet``;
5. files the previous manifest referenced and this one does not (a superseded partial last
   shard) are deleted.

A crash between any two steps leaves a manifest whose files all exist with their checksums:
before 3 the new files are unreferenced strays; between 3 and 4 the manifest's items sha256
matches ``items.parquet.next``, which readers then use and the next writer renames (roll
forward); after 4 only strays remain. Opening for append removes strays (temp files and
shard/items files the manifest does not reference) while holding the directory lock.

Items are atomic. ``num_rows`` counts rows of complete items only; a shard committed while an
item spanning it was still being added holds rows past ``num_rows`` that belong to no item.
:func:`resume` drops them: rows ``[0, num_rows)`` are kept, the shard holding row
``num_rows`` is re-read into the buffer up to that row (re-committed as a partial shard, so
no manifest ever references a file that is later overwritten), and later shards are
released. Adding the remaining items in the original order then rewrites exactly the bytes a
clean build writes: shard files depend only on the rows, and names only on shard number and
row count.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from memlens import __version__
from memlens.index.atomic import fsync_dir, remove_stale_temps, write_bytes_atomic
from memlens.index.items import ItemTable
from memlens.index.lock import DirLock
from memlens.index.manifest import FileEntry, Manifest, ShardEntry, now_utc, write_manifest
from memlens.index.paths import SHARD_DIR, is_shard_name, resolve_inside, shard_dir
from memlens.index.shards import load_shard, verify_file, write_shard

STAGED_SUFFIX = ".next"


def staged_items_file(items_file: str) -> str:
    return items_file + STAGED_SUFFIX


class IndexWriter:
    """Holds the directory lock, the partial shard in memory and the committed manifest."""

    def __init__(self, root: Path, manifest: Manifest, items: ItemTable, lock: DirLock) -> None:
        self.root = root
        self.manifest = manifest  # the last committed state
        self.items = items  # complete items: committed ones, then those added since
        self.lock = lock
        self.full: list[ShardEntry] = []  # full shard files, rows [0, len(full) * shard_rows)
        self.tail: ShardEntry | None = None  # committed partial shard equal to buffer[:rows]
        self.fill = 0  # rows in the buffer
        self._buffer: np.ndarray | None = None  # one shard of rows, allocated on first use
        self.failed: str | None = None  # why the writer stopped (state no longer trusted)

    # ---- state -----------------------------------------------------------------------------

    @property
    def shard_rows(self) -> int:
        return self.manifest.shard_rows

    @property
    def buffer(self) -> np.ndarray:
        if self._buffer is None:
            self._buffer = np.empty((self.shard_rows, self.manifest.dim), dtype=np.float32)
        return self._buffer

    def buffered(self) -> np.ndarray:
        """A view of the rows not yet in a full shard."""
        if self._buffer is None:
            return np.empty((0, self.manifest.dim), dtype=np.float32)
        return self._buffer[: self.fill]

    # ---- appending -------------------------------------------------------------------------

    def add(
        self,
        item_id: str,
        rows: np.ndarray,
        source: str,
        is_image: bool,
        frames: np.ndarray,
        times: np.ndarray,
    ) -> int:
        """Append one validated item (unit float32 rows); commits every shard it fills."""
        self.check_usable()
        try:
            n, pos, number = rows.shape[0], 0, -1
            while pos < n:
                take = min(n - pos, self.shard_rows - self.fill)
                self.buffer[self.fill : self.fill + take] = rows[pos : pos + take]
                self.fill += take
                pos += take
                if self.fill == self.shard_rows:
                    if pos == n:  # the item ends exactly at the shard end: commit it too
                        number = self.items.append(item_id, source, is_image, frames, times)
                    self._write_full_shard()
            if number < 0:
                number = self.items.append(item_id, source, is_image, frames, times)
            return number
        except BaseException as e:
            # rows of this item may already be in committed shards: only a resume (which
            # drops them) restores a consistent state
            self.failed = f"add({item_id!r}) failed: {e!r}"
            raise

    def _write_full_shard(self) -> None:
        entry = write_shard(
            self.root, len(self.full), self.buffer, self.shard_rows, self.manifest.copies
        )
        self.full.append(entry)
        self.fill = 0
        self.tail = None  # its rows are in the new full shard
        self._commit(list(self.full))

    def flush(self) -> None:
        """Commit every complete item, writing the buffered rows as a partial last shard."""
        self.check_usable()
        try:
            shards = list(self.full)
            if self.fill:
                if self.tail is None or self.tail.rows != self.fill:
                    self.tail = write_shard(
                        self.root,
                        len(self.full),
                        self.buffered(),
                        self.shard_rows,
                        self.manifest.copies,
                    )
                shards.append(self.tail)
            if tuple(shards) != self.manifest.shards or self.items.num_items != (
                self.manifest.num_items
            ):
                self._commit(shards)
        except BaseException as e:
            self.failed = f"flush failed: {e!r}"
            raise

    def _commit(self, shards: list[ShardEntry]) -> None:
        old = self.manifest
        items_entry = old.items
        staged = None
        if self.items.num_items != old.num_items:
            data = self.items.to_parquet(self.items.num_items)
            staged = staged_items_file(old.items.file)
            sha = write_bytes_atomic(resolve_inside(self.root, staged, "items file"), data)
            items_entry = FileEntry(old.items.file, len(data), sha)
        new = old.evolve(
            shards=tuple(shards),
            num_rows=self.items.num_rows,
            num_items=self.items.num_items,
            items=items_entry,
            updated=now_utc(),
            memlens_version=__version__,
        )
        write_manifest(self.root, new)  # the commit point
        self.manifest = new
        if staged is not None:
            os.replace(self.root / staged, self.root / old.items.file)
            fsync_dir(self.root)
        keep = {f.file for f in new.files()}
        gone = [f.file for f in old.files() if f.file not in keep]
        for rel in gone:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.root / rel)
        if gone:
            fsync_dir(self.root / SHARD_DIR)

    def check_usable(self) -> None:
        if self.failed is not None:
            raise RuntimeError(
                f"this index writer stopped ({self.failed}); reopen the index with "
                "ReferenceIndex.open(path, mode='a') to resume from the last commit"
            )

    def release(self) -> None:
        self.lock.release()


def clean_strays(root: Path, manifest: Manifest, items_source: str) -> None:
    """Remove what a killed writer left: temp files, unreferenced shard files, and the staged
    items table (renamed into place when the manifest already counts it: roll forward)."""
    remove_stale_temps(root)
    staged = staged_items_file(manifest.items.file)
    staged_path = resolve_inside(root, staged, "staged items file")
    if items_source == staged:
        os.replace(staged_path, root / manifest.items.file)
        fsync_dir(root)
    elif staged_path.is_file():
        staged_path.unlink()
    shards = shard_dir(root)
    if not shards.is_dir():
        shards.mkdir()
        return
    remove_stale_temps(shards)
    referenced = {f.file for f in manifest.files()}
    removed = False
    for entry in sorted(shards.iterdir()):
        rel = f"{SHARD_DIR}/{entry.name}"
        if is_shard_name(entry.name) and rel not in referenced and entry.is_file():
            entry.unlink()
            removed = True
    if removed:
        fsync_dir(shards)


def resume(
    root: Path, manifest: Manifest, items: ItemTable, items_source: str, lock: DirLock
) -> IndexWriter:
    """A writer continuing the committed state: strays removed, rows of an item that was only
    partly written dropped, and the rows after the last full shard back in the buffer."""
    clean_strays(root, manifest, items_source)
    w = IndexWriter(root, manifest, items, lock)
    s = manifest.shard_rows
    keep, tail_rows = divmod(manifest.num_rows, s)
    w.full = list(manifest.shards[:keep])
    if tail_rows:
        src = manifest.shards[keep]
        what = f"{root / 'manifest.json'} shards[{keep}]"
        # these rows are copied into new files: a corrupt source must not propagate
        verify_file(root, src.data, what)
        w.buffer[:tail_rows] = load_shard(root, src, manifest.dim, what)[:tail_rows]
        w.fill = tail_rows
        if src.rows == tail_rows:
            w.tail = src
    if len(manifest.shards) > keep + (1 if tail_rows else 0) or (tail_rows and w.tail is None):
        w.flush()  # re-commit without the partial item's rows; releases the shards past them
    return w
