"""Crash-safe file writes: temp file in the target's directory, fsync, ``os.replace``, fsync dir.

A reader (or a process restarted after a crash) sees either the old file or the new one,
never a torn mix. Temp files are named ``.<target>.<random>.tmp`` so a later writer can
recognize and remove what a killed process left behind (:func:`remove_stale_temps`).
Usable by any module that writes results (run.json, result Parquet parts, ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# fsync makes a finished write survive power loss or an OS crash; a killed *process* needs only
# the atomic rename. Tests that simulate hundreds of process crashes switch it off for speed.
FSYNC = True
TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")
_HASH_CHUNK = 4 << 20


def temp_name(target: Path) -> Path:
    """A fresh temp path next to ``target`` (same directory, so the rename is atomic)."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:16]}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    return bool(_TEMP_RE.match(name))


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (a no-op where directories cannot be opened)."""
    if not FSYNC:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directory entries are durable with the rename itself
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HashingWriter:
    """A binary file wrapper that hashes (sha256) and counts every byte written through it.

    Deliberately not a real file object: numpy's ``write_array`` then writes in chunks
    through :meth:`write` instead of ``tofile``, so the checksum costs no second read.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._hash = hashlib.sha256()
        self.nbytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hash.update(data)
        n = self._f.write(data)
        self.nbytes += len(memoryview(data).cast("B"))
        return n

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@contextlib.contextmanager
def atomic_writer(target: Path) -> Iterator[HashingWriter]:
    """Write ``target`` atomically: yields a hashing writer on a temp file; on normal exit the
    temp file is fsynced and renamed over ``target`` (and the directory fsynced); on an
    exception it is removed and ``target`` is untouched."""
    tmp = temp_name(target)
    done = False
    try:
        with open(tmp, "xb") as f:
            w = HashingWriter(f)
            yield w
            f.flush()
            if FSYNC:
                os.fsync(f.fileno())
        os.replace(tmp, target)
        done = True
    finally:
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    fsync_dir(target.parent)


def write_bytes_atomic(target: Path, data: bytes) -> str:
    """Atomically replace ``target`` with ``data``; returns the sha256 hex digest."""
    with atomic_writer(target) as w:
        w.write(data)
    return w.hexdigest()


def json_bytes(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, 2-space indent, no NaN/Infinity, trailing newline."""
    return (json.dumps(obj, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()


def write_json_atomic(target: Path, obj: Any) -> str:
    """Atomically write ``obj`` as canonical JSON (see :func:`json_bytes`); returns sha256."""
    return write_bytes_atomic(target, json_bytes(obj))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temp files a killed writer left in ``directory``; returns what was removed.

    Only call this while holding the directory's write lock: a live writer's temp file
    looks exactly the same.
    """
    removed = []
    for entry in sorted(directory.iterdir()):
        if is_temp_name(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink()
            removed.append(entry)
    if removed:
        fsync_dir(directory)
    return removed
