"""``manifest.json``: the schema of a reference index, its validation and its atomic write.

The manifest is the index's single commit point: a file exists "in the index" exactly when
the current manifest names it (with its size and sha256). Every other file is written first
under a name the manifest does not reference yet, so replacing the manifest (one atomic
rename) publishes a whole new consistent state.

Schema (version 1)::

    {
      "format": "memlens.reference_index",  "schema_version": 1,  "memlens_version": "0.1.0",
      "created": "2025-01-01T00:00:00+00:00",  "updated": "...",
      "embedder": {"name": ..., "dim": 512, "preprocessing": {...}},
      "dim": 512,  "shard_rows": 65536,
      "num_rows": 1000,          # rows of complete items (what search and items.parquet cover)
      "num_items": 10,
      "copies": ["bf16", "int8"],  # reduced-precision copies stored next to every shard
      "items": {"file": "items.parquet", "bytes": ..., "sha256": ...},
      "shards": [{"rows": 65536, "file": "shards/000000.f32.npy", "bytes": ..., "sha256": ...,
                  "copies": {"bf16": {file, bytes, sha256}, "int8": {...}, "int8_scale": {...}}}]
    }

The shards may hold more rows than ``num_rows``: rows of an item whose remaining rows were
still in memory when the writer was killed. They belong to no item and are never searched;
resuming drops them (see ``writer.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from memlens.embed.base import EmbedderSpec
from memlens.errors import IndexFormatError
from memlens.index.atomic import write_json_atomic
from memlens.index.paths import resolve_inside, shard_file

FORMAT = "memlens.reference_index"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
ITEMS_NAME = "items.parquet"
COPY_KINDS = ("bf16", "int8")
# the files one reduced-precision copy consists of (int8 needs its per-row scales)
COPY_FILES = {"bf16": ("bf16",), "int8": ("int8", "int8_scale")}
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class FileEntry:
    """A file the manifest references, relative to the index directory."""

    file: str
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class ShardEntry:
    """One shard: ``rows`` float32 unit rows in ``data``, plus optional reduced copies."""

    rows: int
    data: FileEntry
    copies: dict[str, FileEntry] = field(default_factory=dict)

    def files(self) -> list[FileEntry]:
        return [self.data, *(self.copies[name] for name in sorted(self.copies))]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, **self.data.to_json()}
        if self.copies:
            out["copies"] = {name: e.to_json() for name, e in sorted(self.copies.items())}
        return out


@dataclass(frozen=True)
class Manifest:
    spec: EmbedderSpec
    shard_rows: int
    num_rows: int
    num_items: int
    copies: tuple[str, ...]
    items: FileEntry
    shards: tuple[ShardEntry, ...] = ()
    created: str = ""
    updated: str = ""
    memlens_version: str = ""

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def stored_rows(self) -> int:
        """Rows in shard files (>= num_rows; see the module docstring)."""
        return sum(s.rows for s in self.shards)

    def files(self) -> list[FileEntry]:
        return [self.items, *(f for s in self.shards for f in s.files())]

    def evolve(self, **changes: Any) -> Manifest:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "memlens_version": self.memlens_version,
            "created": self.created,
            "updated": self.updated,
            "embedder": self.spec.to_json(),
            "dim": self.dim,
            "shard_rows": self.shard_rows,
            "num_rows": self.num_rows,
            "num_items": self.num_items,
            "copies": list(self.copies),
            "items": self.items.to_json(),
            "shards": [s.to_json() for s in self.shards],
        }

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST_NAME) -> Manifest:
        """Validate a parsed manifest; every problem is an IndexFormatError naming the field."""
        d = _dict(data, where)
        fmt = d.get("format")
        if fmt != FORMAT:
            raise IndexFormatError(f"{where} format must be {FORMAT!r}; got {fmt!r}")
        version = _int(d, "schema_version", where, low=1)
        if version != SCHEMA_VERSION:
            raise IndexFormatError(
                f"{where} schema_version {version} is not supported; this memlens reads "
                f"version {SCHEMA_VERSION}" + (" (upgrade memlens)" if version > 1 else "")
            )
        try:
            spec = EmbedderSpec.from_json(_dict(d.get("embedder"), f"{where} embedder"))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IndexFormatError(f"{where} embedder is malformed: {e!r}") from None
        dim = _int(d, "dim", where, low=1)
        if dim != spec.dim:
            raise IndexFormatError(f"{where} dim is {dim} but embedder.dim is {spec.dim}")
        shard_rows = _int(d, "shard_rows", where, low=1)
        num_rows = _int(d, "num_rows", where, low=0)
        num_items = _int(d, "num_items", where, low=0, high=num_rows)
        copies = d.get("copies", [])
        if (
            not isinstance(copies, list)
            or len(set(copies)) != len(copies)
            or not set(copies) <= set(COPY_KINDS)
        ):
            raise IndexFormatError(
                f"{where} copies must be a list of distinct names from {COPY_KINDS}; got {copies!r}"
            )
        shards_raw = d.get("shards")
        if not isinstance(shards_raw, list):
            raise IndexFormatError(
                f"{where} shards must be a list; got {type(shards_raw).__name__}"
            )
        need = sorted(f for c in copies for f in COPY_FILES[c])
        shards = []
        for n, raw in enumerate(shards_raw):
            w = f"{where} shards[{n}]"
            s = _dict(raw, w)
            last = n == len(shards_raw) - 1
            rows = _int(s, "rows", w, low=1, high=shard_rows)
            if not last and rows != shard_rows:
                raise IndexFormatError(
                    f"{w}.rows must be shard_rows={shard_rows} (only the last shard may be "
                    f"partial); got {rows}"
                )
            got = _dict(s.get("copies", {}), f"{w}.copies")
            if sorted(got) != need:
                raise IndexFormatError(f"{w}.copies must hold {need}; got {sorted(got)}")
            entries = {k: _file_entry(v, f"{w}.copies.{k}") for k, v in got.items()}
            shards.append(ShardEntry(rows, _file_entry(s, w), entries))
        stored = sum(s.rows for s in shards)
        if stored < num_rows:
            raise IndexFormatError(
                f"{where} counts num_rows={num_rows} but its shards hold only {stored} rows"
            )
        if num_items == 0 and num_rows:
            raise IndexFormatError(f"{where} counts {num_rows} rows but no items")
        m = cls(
            spec=spec,
            shard_rows=shard_rows,
            num_rows=num_rows,
            num_items=num_items,
            copies=tuple(copies),
            items=_file_entry(d.get("items"), f"{where} items"),
            shards=tuple(shards),
            created=_str(d, "created", where),
            updated=_str(d, "updated", where),
            memlens_version=_str(d, "memlens_version", where),
        )
        names = [f.file for f in m.files()]
        if len(set(names)) != len(names):
            raise IndexFormatError(f"{where} references a file twice: {sorted(names)}")
        return m


def read_manifest(root: Path) -> Manifest:
    """Read and validate ``root/manifest.json``, including that every path stays in ``root``."""
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise IndexFormatError(f"index directory {str(root)!r} does not exist")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IndexFormatError(
            f"{str(path)!r} is missing: {str(root)!r} is not a memlens index (or its creation "
            "was interrupted; ReferenceIndex.create(..., exist_ok_resume=True) starts it again)"
        ) from None
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise IndexFormatError(f"{str(path)!r} is not valid JSON: {e}") from None
    m = Manifest.from_json(data, str(path))
    for n, f in enumerate(m.files()):
        resolve_inside(root, f.file, f"{path} file #{n} ({f.file!r})")
    if m.items.file != ITEMS_NAME:
        raise IndexFormatError(f"{path} items.file must be {ITEMS_NAME!r}; got {m.items.file!r}")
    for n, s in enumerate(m.shards):
        kinds = {"fp32": s.data, **s.copies}
        for kind, f in kinds.items():
            want = shard_file(n, s.rows, m.shard_rows, kind)
            if f.file != want:
                raise IndexFormatError(
                    f"{path} shards[{n}] {kind} file must be {want!r}; got {f.file!r}"
                )
    return m


def write_manifest(root: Path, m: Manifest) -> None:
    write_json_atomic(root / MANIFEST_NAME, m.to_json())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _dict(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise IndexFormatError(f"{where} must be a JSON object; got {type(v).__name__}")
    return v


def _int(d: dict[str, Any], key: str, where: str, *, low: int, high: int | None = None) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise IndexFormatError(f"{where} {key} must be an integer; got {v!r}")
    if v < low or (high is not None and v > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise IndexFormatError(f"{where} {key} must be {bound}; got {v}")
    return v


def _str(d: dict[str, Any], key: str, where: str) -> str:
    v = d.get(key, "")
    if not isinstance(v, str):
        raise IndexFormatError(f"{where} {key} must be a string; got {v!r}")
    return v


def _file_entry(v: Any, where: str) -> FileEntry:
    d = _dict(v, where)
    f = d.get("file")
    if not isinstance(f, str):
        raise IndexFormatError(f"{where}.file must be a string; got {f!r}")
    sha = d.get("sha256")
    if not isinstance(sha, str) or not _SHA_RE.match(sha):
        raise IndexFormatError(f"{where}.sha256 must be 64 lowercase hex digits; got {sha!r}")
    return FileEntry(f, _int(d, "bytes", where, low=0), sha)
