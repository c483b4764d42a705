"""Shard files: naming, writing (with checksums and optional reduced copies), checked reading.

A shard holds ``shard_rows`` consecutive index rows as a float32 ``(rows, dim)`` ``.npy``
(format 1.0, C order) that search memory-maps. Only the last shard may be partial; a partial
shard's name carries its row count (``000003.partial-5.f32.npy``, see ``paths.shard_file``),
so growing it writes a new file instead of overwriting one the committed manifest references.

Reduced-precision copies (opt-in, see ``reference.py`` for why search does not read them):
``.bf16.npy`` uint16 bfloat16 bit patterns (round to nearest even) and ``.i8.npy`` int8 with a
float32 per-row scale ``.i8scale.npy`` (``row ≈ i8 * scale``, ``scale = max|row| / 127``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from memlens.errors import IndexFormatError
from memlens.index.atomic import atomic_writer, sha256_file
from memlens.index.manifest import COPY_FILES, FileEntry, ShardEntry
from memlens.index.paths import resolve_inside, shard_file

# dtype of each array a shard may consist of
DTYPES: dict[str, np.dtype] = {
    "fp32": np.dtype(np.float32),
    "bf16": np.dtype(np.uint16),
    "int8": np.dtype(np.int8),
    "int8_scale": np.dtype(np.float32),
}


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even like torch does.

    Inputs are finite unit rows, so adding the rounding bias cannot overflow uint32.
    """
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    bias = ((u >> 16) & 1) + np.uint32(0x7FFF)
    return ((u + bias) >> 16).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def to_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: ``(q, scale)`` with ``x ≈ q * scale[:, None]``."""
    amax = np.abs(x).max(axis=1).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _write_npy(root: Path, rel: str, arr: np.ndarray) -> FileEntry:
    with atomic_writer(resolve_inside(root, rel, "shard file")) as w:
        np.lib.format.write_array(w, np.ascontiguousarray(arr), version=(1, 0), allow_pickle=False)
    return FileEntry(rel, w.nbytes, w.hexdigest())


def write_shard(
    root: Path, index: int, rows: np.ndarray, shard_rows: int, copies: tuple[str, ...]
) -> ShardEntry:
    """Write shard ``index`` (and its reduced copies), each file atomically; returns its entry.

    The files are not part of the index until a manifest naming them is committed.
    """
    n = int(rows.shape[0])
    data = _write_npy(root, shard_file(index, n, shard_rows), rows)
    arrays: dict[str, np.ndarray] = {}
    if "bf16" in copies:
        arrays["bf16"] = to_bf16_bits(rows)
    if "int8" in copies:
        arrays["int8"], arrays["int8_scale"] = to_int8(rows)
    entries = {
        kind: _write_npy(root, shard_file(index, n, shard_rows, kind), arr)
        for kind, arr in arrays.items()
    }
    return ShardEntry(n, data, entries)


def check_present(root: Path, entry: FileEntry, what: str) -> Path:
    """The file's path, after checking it exists with the size the manifest records."""
    path = resolve_inside(root, entry.file, what)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise IndexFormatError(
            f"{what}: the manifest counts {entry.file!r} but {str(path)!r} is missing"
        ) from None
    if size != entry.bytes:
        raise IndexFormatError(
            f"{what}: {str(path)!r} has {size} bytes; the manifest records {entry.bytes} "
            "(truncated or replaced)"
        )
    return path


def verify_file(root: Path, entry: FileEntry, what: str) -> None:
    """Raise IndexFormatError naming the file unless its sha256 is the manifest's."""
    path = check_present(root, entry, what)
    got = sha256_file(path)
    if got != entry.sha256:
        raise IndexFormatError(
            f"{what}: checksum mismatch for {str(path)!r}: expected sha256 {entry.sha256}, "
            f"got {got} (the file is corrupt or was modified)"
        )


def load_array(
    root: Path, entry: FileEntry, shape: tuple[int, ...], kind: str, what: str
) -> np.ndarray:
    """Memory-map one shard array read-only, checking its header against the manifest."""
    path = check_present(root, entry, what)
    try:
        arr: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise IndexFormatError(f"{what}: {str(path)!r} is not a readable .npy file: {e}") from None
    dtype = DTYPES[kind]
    if arr.dtype != dtype or arr.shape != shape or not arr.flags.c_contiguous:
        raise IndexFormatError(
            f"{what}: {str(path)!r} must hold a C-order {dtype} array of shape {shape}; got "
            f"{arr.dtype} {arr.shape}"
        )
    return arr


def load_shard(root: Path, shard: ShardEntry, dim: int, what: str) -> np.ndarray:
    """The shard's float32 ``(rows, dim)`` rows, memory-mapped."""
    return load_array(root, shard.data, (shard.rows, dim), "fp32", what)


def load_copy(
    root: Path, shard: ShardEntry, dim: int, precision: str, what: str
) -> tuple[np.ndarray, ...]:
    """A reduced copy, memory-mapped: ``(bits,)`` for bf16, ``(int8, scale)`` for int8."""
    if precision not in COPY_FILES or COPY_FILES[precision][0] not in shard.copies:
        raise ValueError(f"{what} has no {precision!r} copy; stored: {sorted(shard.copies)}")
    out = []
    for kind in COPY_FILES[precision]:
        shape = (shard.rows,) if kind == "int8_scale" else (shard.rows, dim)
        out.append(load_array(root, shard.copies[kind], shape, kind, f"{what} {kind}"))
    return tuple(out)
