"""Streaming readers for training-caption files.

Formats, chosen by ``format=`` or else by the file suffix:

- ``text``    one caption per line (``.txt`` and any unknown suffix);
- ``jsonl``   one JSON object per line (``.jsonl``, ``.ndjson``);
- ``csv``     a header row, then one caption per row (``.csv``; ``.tsv`` is tab-separated);
- ``parquet`` read in record batches (``.parquet``, ``.pq``).

Structured formats take the caption from ``column`` (default: ``caption``, else ``text``)
and the id from ``id_column`` (default: ``id`` when present). Without an id column a caption's
id is its 0-based row index (for text files: line number - 1). Every reader streams: memory
does not grow with the file.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

CaptionFormat = Literal["text", "jsonl", "csv", "parquet"]
CaptionId = int | str
CAPTION_COLUMNS = ("caption", "text")
ID_COLUMN = "id"
_SUFFIXES: dict[str, CaptionFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_PARQUET_BATCH = 1 << 16

__all__ = ["CAPTION_COLUMNS", "Caption", "CaptionFormat", "CaptionId", "read_captions"]


@dataclass(frozen=True)
class Caption:
    """One training caption: its id (given, or the row index) and raw text."""

    id: CaptionId
    text: str


def _format_of(path: Path, fmt: CaptionFormat | None) -> CaptionFormat:
    if fmt is None:
        return _SUFFIXES.get(path.suffix.lower(), "text")
    if fmt not in ("text", "jsonl", "csv", "parquet"):
        raise ValueError(f"format must be one of text, jsonl, csv, parquet; got {fmt!r}")
    return fmt


def _pick_columns(
    names: list[str], column: str | None, id_column: str | None, where: str
) -> tuple[str, str | None]:
    if column is None:
        found = [c for c in CAPTION_COLUMNS if c in names]
        if not found:
            raise ValueError(
                f"{where} has no caption column: expected one of {list(CAPTION_COLUMNS)} "
                f"(or pass column=); found {names[:20]}"
            )
        column = found[0]
    elif column not in names:
        raise ValueError(f"column {column!r} is not in {where}; found {names[:20]}")
    if id_column is None:
        return column, ID_COLUMN if ID_COLUMN in names else None
    if id_column not in names:
        raise ValueError(f"id_column {id_column!r} is not in {where}; found {names[:20]}")
    return column, id_column


def _id_value(value: Any, row: int) -> CaptionId:
    if value is None:
        return row
    # ints and strings pass through so ids round-trip in the JSON output; anything else
    # (a float, a UUID object) is written as its string form
    return value if isinstance(value, int | str) and not isinstance(value, bool) else str(value)


def _text_value(value: Any, column: str, where: str) -> str:
    if value is None:  # a missing caption is an empty one: the miner skips and counts it
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{where}: column {column!r} must hold strings; got {value!r:.60}")
    return value


def _read_text(path: Path) -> Iterator[Caption]:
    # utf-8-sig: caption dumps written on Windows often start with a byte-order mark
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row, line in enumerate(f):
            yield Caption(row, line.rstrip("\r\n"))


def _read_jsonl(path: Path, column: str | None, id_column: str | None) -> Iterator[Caption]:
    from memlens.engine.records import iter_json_objects

    cols: tuple[str, str | None] | None = None
    for row, (where, rec) in enumerate(iter_json_objects(path)):
        if cols is None:  # the first record decides, like a header would
            cols = _pick_columns(list(rec), column, id_column, where)
        text_col, id_col = cols
        if text_col not in rec:
            raise ValueError(f"{where} has no {text_col!r} field")
        ident = _id_value(rec.get(id_col), row) if id_col else row
        yield Caption(ident, _text_value(rec[text_col], text_col, where))


def _read_csv(path: Path, column: str | None, id_column: str | None) -> Iterator[Caption]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        text_col, id_col = _pick_columns(
            list(reader.fieldnames or []), column, id_column, str(path)
        )
        for row, rec in enumerate(reader):
            ident = _id_value(rec.get(id_col), row) if id_col else row
            yield Caption(ident, _text_value(rec.get(text_col), text_col, f"{path} row {row}"))


def _read_parquet(path: Path, column: str | None, id_column: str | None) -> Iterator[Caption]:
    import pyarrow.parquet as pq  # a main dependency, imported here to keep `import` cheap

    pf = pq.ParquetFile(path)
    text_col, id_col = _pick_columns(pf.schema_arrow.names, column, id_column, str(path))
    wanted = [text_col] if id_col is None else [text_col, id_col]
    row = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=wanted):
        texts = batch.column(text_col).to_pylist()
        ids = batch.column(id_col).to_pylist() if id_col else [None] * len(texts)
        for text, ident in zip(texts, ids, strict=True):
            yield Caption(_id_value(ident, row), _text_value(text, text_col, f"{path} row {row}"))
            row += 1


def read_captions(
    path: str | os.PathLike[str],
    *,
    format: CaptionFormat | None = None,
    column: str | None = None,
    id_column: str | None = None,
) -> Iterator[Caption]:
    """Stream the captions of ``path`` (see the module docstring for formats and ids)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"captions file not found: {p}")
    fmt = _format_of(p, format)
    if fmt == "text":
        if column is not None or id_column is not None:
            raise ValueError("column and id_column need a jsonl, csv or parquet file; got text")
        return _read_text(p)
    if fmt == "jsonl":
        return _read_jsonl(p, column, id_column)
    if fmt == "csv":
        return _read_csv(p, column, id_column)
    return _read_parquet(p, column, id_column)
