"""Result files of a run directory (DESIGN.md §11): ``results.jsonl`` written as each input
finishes (flushed and fsynced, so a crash keeps every finished row), ``results.parquet`` with
the same rows, and ``run.json`` with the schema version, command line, versions and settings.

Resuming reads ``results.jsonl`` back; a torn last line (the process died mid-write) is cut
off so the file stays valid JSON Lines.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memlens.index.atomic import remove_stale_temps, temp_name, write_bytes_atomic

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: no locking
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from typing_extensions import Self

SCHEMA_VERSION = 1
RESULTS = "results.jsonl"
PARQUET = "results.parquet"
RUN = "run.json"


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")


def dumps(record: dict[str, Any]) -> str:
    """One JSON line; +inf is written as ``Infinity`` (Python's json reads it back)."""
    return json.dumps(record, default=_json_default, allow_nan=True, ensure_ascii=False)


def atomic_write_text(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data)


def read_results(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.jsonl; a torn final line is removed from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    good = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if good != len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


class ResultWriter:
    """Appends one record per finished input to results.jsonl, durably.

    Holds an exclusive ``flock`` on results.jsonl while open: a second process writing the
    same run directory (two ``--resume`` runs at once would score the same inputs twice) gets
    a one-line error instead. Under the lock it removes the temp files a killed writer left in
    the run directory (``.<name>.<16 hex>.tmp``).
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / RESULTS
        # open for the writer's lifetime: one durable append per finished input
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        if fcntl is not None:
            try:
                fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._f.close()
                raise BlockingIOError(
                    f"run directory {str(run_dir)!r} is being written by another process "
                    f"(it holds {RESULTS}); wait for it to finish"
                ) from None
        remove_stale_temps(run_dir)

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(dumps(record) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_parquet(rows: Iterable[dict[str, Any]], path: Path) -> None:
    """The JSONL rows as a Parquet table (atomic). Non-finite floats stay floats."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(rows)
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    table = pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])
    tmp = temp_name(path)  # a name ResultWriter recognizes as a killed writer's leftover
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def versions() -> dict[str, Any]:
    import importlib.metadata as md

    out: dict[str, Any] = {"python": platform.python_version()}
    for dist in ("memlens", "numpy", "torch", "onnxruntime", "opencv-python-headless", "pyarrow"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def write_run_json(run_dir: Path, command: str, settings: dict[str, Any], **extra: Any) -> None:
    record = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "argv": sys.argv,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "settings": settings,
        **extra,
    }
    atomic_write_text(
        run_dir / RUN, json.dumps(record, indent=2, sort_keys=True, default=_json_default) + "\n"
    )


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def iter_json_objects(path: Path, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for each non-blank line of a JSON Lines file (a byte-order mark is
    skipped); ``where`` is ``"<prefix>path:line"`` for error messages. A line that is not a
    JSON object is a ValueError / TypeError naming it."""
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{prefix}{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where} is not valid JSON: {e.msg}") from None
            if not isinstance(rec, dict):
                raise TypeError(f"{where} must be a JSON object; got {type(rec).__name__}")
            yield where, rec
