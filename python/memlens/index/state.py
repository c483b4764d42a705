"""Reading the committed state of an index directory, and initializing an empty one."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from memlens import __version__
from memlens.embed.base import EmbedderSpec
from memlens.errors import IndexFormatError
from memlens.index.atomic import is_temp_name, remove_stale_temps, sha256_file, write_bytes_atomic
from memlens.index.items import ItemTable
from memlens.index.manifest import (
    ITEMS_NAME,
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    now_utc,
    read_manifest,
    write_manifest,
)
from memlens.index.paths import SHARD_DIR, is_shard_name, resolve_inside, shard_dir
from memlens.index.shards import check_present, verify_file
from memlens.index.writer import staged_items_file

# a writer may commit between our reads of the manifest and of the files it names
READ_ATTEMPTS = 3


def read_items(root: Path, m: Manifest) -> tuple[ItemTable, str]:
    """The items table the manifest commits to, and which file held it: ``items.parquet``,
    or its staged successor when a writer died between the manifest and the final rename."""
    what = f"{root / m.items.file}"
    for rel in (m.items.file, staged_items_file(m.items.file)):
        path = resolve_inside(root, rel, f"{root / MANIFEST_NAME} items.file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        if len(data) == m.items.bytes and hashlib.sha256(data).hexdigest() == m.items.sha256:
            return ItemTable.from_parquet(data, m.num_rows, m.num_items, what), rel
    path = root / m.items.file
    got = sha256_file(path) if path.is_file() else "(missing)"
    raise IndexFormatError(
        f"{what}: checksum mismatch: the manifest expects sha256 {m.items.sha256}, got {got}"
    )


def read_committed(root: Path, verify: bool) -> tuple[Manifest, ItemTable, str]:
    """The committed state: manifest, items table (and its file), every shard file present
    with its recorded size (and checksum with ``verify``)."""
    for attempt in range(READ_ATTEMPTS):
        m = read_manifest(root)
        try:
            items, source = read_items(root, m)
            for n, shard in enumerate(m.shards):
                for f in shard.files():
                    what = f"{root / MANIFEST_NAME} shards[{n}]"
                    (verify_file if verify else check_present)(root, f, what)
        except IndexFormatError:
            # a writer may have committed in between (replacing items.parquet, deleting a
            # superseded partial shard): retry with its newer manifest
            if attempt + 1 < READ_ATTEMPTS and read_manifest(root) != m:
                continue
            raise
        return m, items, source
    raise AssertionError("unreachable")


def initialize(
    root: Path, spec: EmbedderSpec, shard_rows: int, copies: tuple[str, ...]
) -> Manifest:
    """Write an empty index into ``root`` (locked by the caller); the manifest comes last, so
    its presence marks a complete creation."""
    _clear_creation_leftovers(root)
    shard_dir(root).mkdir(exist_ok=True)
    data = ItemTable().to_parquet(0)
    sha = write_bytes_atomic(root / ITEMS_NAME, data)
    stamp = now_utc()
    manifest = Manifest(
        spec=spec,
        shard_rows=shard_rows,
        num_rows=0,
        num_items=0,
        copies=copies,
        items=FileEntry(ITEMS_NAME, len(data), sha),
        created=stamp,
        updated=stamp,
        memlens_version=__version__,
    )
    write_manifest(root, manifest)
    return manifest


def only_creation_leftovers(root: Path) -> bool:
    """Whether ``root`` holds only what an interrupted :meth:`ReferenceIndex.create` writes."""
    for entry in root.iterdir():
        if entry.name in (ITEMS_NAME, staged_items_file(ITEMS_NAME)) or is_temp_name(entry.name):
            continue
        if (
            entry.name == SHARD_DIR
            and entry.is_dir()
            and not entry.is_symlink()
            and all(is_shard_name(e.name) or is_temp_name(e.name) for e in entry.iterdir())
        ):
            continue
        return False
    return True


def _clear_creation_leftovers(root: Path) -> None:
    remove_stale_temps(root)
    for name in (ITEMS_NAME, staged_items_file(ITEMS_NAME)):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()
    shards = shard_dir(root)
    if shards.is_dir():
        for e in shards.iterdir():
            if is_shard_name(e.name) or is_temp_name(e.name):
                e.unlink()
