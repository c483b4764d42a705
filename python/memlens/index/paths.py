"""Where index files live and what they are called; manifest paths are checked against both.

A manifest is a user-supplied file (an index may be downloaded or shared), so a path such as
``../../home/user/.ssh/id_rsa`` or ``/etc/passwd`` — or a symlink pointing outside — must never
be opened, hashed, overwritten or deleted. Shard files must moreover carry the exact name the
writer gives them, so the files a writer supersedes and deletes are always its own.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from memlens.errors import IndexFormatError

SHARD_DIR = "shards"
# file-name suffix of each array a shard may consist of
SUFFIXES = {"fp32": "f32", "bf16": "bf16", "int8": "i8", "int8_scale": "i8scale"}
_SHARD_NAME_RE = re.compile(r"^\d{6}(\.partial-\d+)?\.(f32|bf16|i8|i8scale)\.npy$")


def shard_file(index: int, rows: int, shard_rows: int, kind: str = "fp32") -> str:
    """Relative path of shard ``index``'s ``kind`` array; a partial shard's name carries its
    row count, so growing it writes a new file rather than overwriting a committed one."""
    part = "" if rows == shard_rows else f".partial-{rows}"
    return f"{SHARD_DIR}/{index:06d}{part}.{SUFFIXES[kind]}.npy"


def is_shard_name(name: str) -> bool:
    """Whether ``name`` (a file in ``shards/``) is one memlens writes (so cleanup may remove it)."""
    return bool(_SHARD_NAME_RE.match(name))


def resolve_inside(root: Path, rel: object, what: str) -> Path:
    """``root / rel`` after checking that ``rel`` is a relative POSIX path without ``..`` that
    resolves (following symlinks) to a location inside ``root``.

    ``what`` names the manifest field in the error, e.g. ``"manifest.json shards[3].file"``.
    """
    if not isinstance(rel, str) or not rel:
        raise IndexFormatError(f"{what} must be a non-empty relative path; got {rel!r}")
    pure = PurePosixPath(rel)
    if "\\" in rel or "\x00" in rel or pure.is_absolute() or rel.startswith("~"):
        raise IndexFormatError(
            f"{what} must be a relative path inside the index directory; got {rel!r}"
        )
    if any(part in ("..", ".", "") for part in rel.split("/")):
        raise IndexFormatError(f"{what} must not contain '..', '.' or empty parts; got {rel!r}")
    path = root.joinpath(*pure.parts)
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise IndexFormatError(
            f"{what} escapes the index directory {str(root)!r}: {rel!r} resolves to {real!r}"
        )
    return path


def shard_dir(root: Path) -> Path:
    """``root/shards``, refusing a symlink that leads out of the index (cleanup deletes and
    writers create files in it)."""
    return resolve_inside(root, SHARD_DIR, "the shards directory")
