"""On-disk cache of flow fields, so each training video's flow is estimated once.

Layout (the caller keeps it at ``IDX/flow_cache/`` next to an index)::

    <directory>/<h[:2]>/<h>.npy    the flow, (T', H, W, 2) float16 (or float32)
    <directory>/<h[:2]>/<h>.json   sidecar: format, the key, dtype, shape, sha256 of the .npy

``h`` is the sha256 (40 hex digits) of the canonical JSON of the key, so no user string
ever becomes part of a path. An entry counts only when its sidecar matches the key and the
.npy's bytes match the sidecar's checksum: a truncated, corrupt or half-replaced entry is a
miss, recomputed and overwritten, never an error. Both files are written to hidden temp
names (``.<name>.<random>.tmp``) and renamed into place; the .npy first, so a crash between
the two leaves a checksum mismatch, i.e. a miss. No fsync: a torn file after power loss
fails the checksum the same way, so durability would buy nothing here.

Precision: float16 by default. Relative rounding error is at most 2**-11 (4.9e-4): below
1 px the error is <= 2.4e-4 px, at 128-256 px <= 0.0625 px, at 256-512 px <= 0.125 px.
The mu_min = 0.5 px mask of methods.md §1.4 can flip only for magnitudes within 2.4e-4 px
of the threshold, and direction cosines move by < 1e-3; both are far below the estimators'
own error (>= 0.01 px on clean translations, more on real video). It halves the cache
(256x256, 16 pairs: 4 MiB -> 2 MiB per video), and ``memlens.flow_similarity`` consumes
float16 directly. Pass ``dtype="float32"`` for a bit-exact cache. Either way the cache
returns float32 holding exactly the stored values, on a miss as on a hit, so a run's
results do not depend on whether the cache was warm.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from memlens.index.atomic import is_temp_name, sha256_file, temp_name
from memlens.video.errors import MediaNotFoundError
from memlens.video.flow import FLOW_VERSION, METHODS, RAFT_ITERATIONS

CACHE_FORMAT = 1
STORAGE_DTYPES = ("float16", "float32")
_HASH_CHARS = 40
_FLOAT16_MAX = float(np.finfo(np.float16).max)
# Reading or parsing a damaged entry can fail in any of these ways; all mean "miss".
_DAMAGED = (OSError, ValueError, EOFError, KeyError, TypeError, UnicodeDecodeError)


class FlowCacheWarning(UserWarning):
    """A flow could not be written to the cache (disk full, read-only directory, ...); it
    was returned uncached."""


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    damaged: int = 0  # entries found unreadable and recomputed (counted in misses too)
    write_failures: int = 0


class FlowCache:
    """A directory of flow fields keyed by JSON-able dicts (see :func:`flow_cache_key`).

    Safe for concurrent readers and writers (threads or processes): a reader sees a whole
    entry or a miss; two writers of one key both compute it and the last rename wins.
    """

    def __init__(self, directory: str | os.PathLike[str], *, dtype: str = "float16") -> None:
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(STORAGE_DTYPES)}; got {dtype!r}")
        self.directory = Path(directory)
        self.dtype = np.dtype(dtype)
        self.stats = CacheStats()

    def key_hash(self, key_parts: Mapping[str, Any]) -> str:
        """The entry name for ``key_parts`` (hex; includes the cache format and dtype)."""
        return hashlib.sha256(_canonical(self._full_key(key_parts))).hexdigest()[:_HASH_CHARS]

    def path_for(self, key_parts: Mapping[str, Any]) -> Path:
        """Where the .npy of ``key_parts`` lives (it may not exist)."""
        h = self.key_hash(key_parts)
        return self.directory / h[:2] / f"{h}.npy"

    def get(self, key_parts: Mapping[str, Any]) -> np.ndarray | None:
        """The cached float32 flow, or None if absent or damaged."""
        full = self._full_key(key_parts)
        path = self.path_for(key_parts)
        try:
            flow = self._read(path, full)
        except FileNotFoundError:
            return None
        except _DAMAGED:
            self.stats.damaged += 1
            return None
        return flow

    def put(self, key_parts: Mapping[str, Any], flow: np.ndarray) -> np.ndarray:
        """Store ``flow`` and return it as float32 rounded to the storage dtype. A failed
        write warns (:class:`FlowCacheWarning`) instead of raising."""
        full = self._full_key(key_parts)
        stored = self._to_storage(flow)
        try:
            self._write(self.path_for(key_parts), full, stored)
        except OSError as e:
            self.stats.write_failures += 1
            warnings.warn(
                FlowCacheWarning(f"flow cache write failed in '{self.directory}': {e}"),
                stacklevel=3,
            )
        return stored.astype(np.float32)

    def get_or_compute(
        self, key_parts: Mapping[str, Any], compute: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """The cached flow for ``key_parts``; on a miss (absent or damaged entry) call
        ``compute()`` (a (T', H, W, 2) float flow), store it and return it. Always float32
        holding the stored (float16-rounded by default) values."""
        cached = self.get(key_parts)
        if cached is not None:
            self.stats.hits += 1
            return cached
        self.stats.misses += 1
        return self.put(key_parts, compute())

    def remove_stale_temps(self, *, older_than_s: float = 3600.0) -> list[Path]:
        """Delete temp files that killed writers left, if older than ``older_than_s``
        (a live writer's temp file is younger). Returns what was removed."""
        cutoff = time.time() - older_than_s
        removed = []
        for entry in self.directory.glob("*/.*"):
            with contextlib.suppress(OSError):
                if is_temp_name(entry.name) and entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed.append(entry)
        return removed

    # -- internals ---------------------------------------------------------------------------

    def _full_key(self, key_parts: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(key_parts, Mapping):
            raise TypeError(f"key_parts must be a dict; got {type(key_parts).__name__}")
        key = _json_data(key_parts, "key_parts")
        return {"format": CACHE_FORMAT, "dtype": self.dtype.name, "key": key}

    def _to_storage(self, flow: object) -> np.ndarray:
        arr = np.asarray(flow)
        if arr.dtype.kind != "f" or arr.ndim != 4 or arr.shape[3] != 2:
            raise ValueError(
                f"compute() must return a (T', H, W, 2) float flow; got {arr.shape} {arr.dtype}"
            )
        if not np.isfinite(arr).all():
            raise ValueError("compute() returned a flow with NaN or Inf; not caching it")
        if self.dtype == np.float16 and arr.size and np.abs(arr).max() > _FLOAT16_MAX:
            raise ValueError(f"flow magnitudes above {_FLOAT16_MAX:g} px do not fit float16")
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def _read(self, path: Path, full: dict[str, Any]) -> np.ndarray:
        sidecar = json.loads(path.with_suffix(".json").read_bytes())
        if sidecar["key"] != full:
            raise ValueError("sidecar key differs (hash collision or foreign file)")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sidecar["sha256"]:
            raise ValueError("checksum mismatch")
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        if arr.dtype != self.dtype or list(arr.shape) != sidecar["shape"] or arr.ndim != 4:
            raise ValueError("stored array does not match its sidecar")
        return arr.astype(np.float32)

    def _write(self, path: Path, full: dict[str, Any], stored: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, stored, allow_pickle=False)
        data = buffer.getvalue()
        sidecar = {
            "key": full,
            "dtype": stored.dtype.name,
            "shape": list(stored.shape),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        _replace(path, data)
        _replace(path.with_suffix(".json"), json.dumps(sidecar, indent=1).encode() + b"\n")


def flow_cache_key(
    item_id: str,
    source: str | os.PathLike[str] | None,
    *,
    frames: int | None,
    size: tuple[int, int],
    stride: int,
    method: str,
    preset: str = "medium",
    raft_weights: str | os.PathLike[str] | None = None,
    checksum: bool = False,
) -> dict[str, Any]:
    """The key parts of one video's flow, for :meth:`FlowCache.get_or_compute`.

    source: the video file; identified by size + mtime (cheap), or by size + sha256 with
    ``checksum=True`` (survives copies and touch). None for in-memory frames (then
    ``item_id`` alone must identify the content). frames/size/stride/method/preset: as
    passed to :func:`~memlens.video.flow.prepare_for_flow` and
    :func:`~memlens.video.flow.estimate_flow` (size as (W, H)); preset counts only for
    "dis". The weights' sha256 (raft), the estimator library's version and memlens'
    ``FLOW_VERSION`` are included, so upgrading either invalidates old entries.
    """
    if not isinstance(item_id, str):
        raise TypeError(f"item_id must be a str; got {type(item_id).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    key: dict[str, Any] = {
        "item": item_id,
        "source": None if source is None else _source_fingerprint(Path(source), checksum),
        "frames": frames,
        "size": list(size),
        "stride": stride,
        "method": method,
        "preset": preset if method == "dis" else None,
        "flow_version": FLOW_VERSION,
    }
    if method == "raft":
        if raft_weights is None:
            raise ValueError("method='raft' needs raft_weights for its cache key")
        key["weights_sha256"] = _weights_sha256(Path(raft_weights))
        key["estimator"] = {"torchvision": _package_version("torchvision")}
        key["iterations"] = RAFT_ITERATIONS
    else:
        key["estimator"] = {"opencv": cv2.__version__}
    return key


# -- helpers ---------------------------------------------------------------------------------


def _replace(target: Path, data: bytes) -> None:
    """Write ``data`` to a hidden temp file next to ``target`` and rename it over
    ``target``; the temp file is removed if anything fails."""
    tmp = temp_name(target)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _json_data(value: object, where: str) -> Any:
    """``value`` as plain JSON data (tuples -> lists, numpy scalars -> Python numbers);
    raises naming the offending place. Dict keys must be str, so {1: x} and {"1": x}
    cannot silently become one key."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{where} must be finite; got {value!r}")
        return number
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} keys must be str; got {k!r}")
            out[k] = _json_data(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return [_json_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{where} must be JSON data (str, number, bool, None, list, dict); "
        f"got {type(value).__name__} {value!r}"
    )


def _source_fingerprint(path: Path, checksum: bool) -> dict[str, Any]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise MediaNotFoundError(f"source '{path}' does not exist") from None
    if checksum:
        return {
            "bytes": stat.st_size,
            "sha256": _file_sha256(str(path), stat.st_size, stat.st_mtime_ns),
        }
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _weights_sha256(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"raft_weights '{path}' is not a file")
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, memoized on (path, size, mtime) so a weights file is hashed once
    per process, not once per video."""
    del size, mtime_ns  # cache key only
    return sha256_file(Path(path))


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


__all__ = [
    "CACHE_FORMAT",
    "STORAGE_DTYPES",
    "CacheStats",
    "FlowCache",
    "FlowCacheWarning",
    "flow_cache_key",
]
