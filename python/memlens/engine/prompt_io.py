"""Prompt and label files of ``memlens detect`` / ``memlens generate``.

Prompts (format by suffix):

- ``.jsonl`` / ``.ndjson``: one JSON object per line with a ``prompt`` field (else ``caption``,
  else ``text``: the output of ``memlens prompts mine`` works as is);
- ``.csv`` / ``.tsv``: a header row with one of those columns;
- anything else: plain text, one prompt per line.

Blank prompts are skipped (the empty prompt is the unconditional branch itself: its
magnitude is 0 by definition). A prompt's index is its position among the kept prompts.

Labels (format by suffix; label ``1`` = memorized, ``0`` = not):

- plain text (``.tsv``, ``.txt``, ...): ``prompt<TAB>label`` per line, split at the last tab
  (an optional first line ``prompt<TAB>label`` is a header);
- ``.jsonl``: objects with ``prompt`` and ``label``;
- ``.csv``: a header with ``prompt`` and ``label`` columns.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memlens.engine.records import iter_json_objects

PROMPT_COLUMNS = ("prompt", "caption", "text")
_JSONL = (".jsonl", ".ndjson")
_CSV = (".csv", ".tsv")


def _rows(path: Path, what: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) of a JSONL or CSV/TSV file."""
    suffix = path.suffix.lower()
    if suffix in _JSONL:
        yield from iter_json_objects(path, f"{what} ")
        return
    delimiter = "\t" if suffix == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row, rec in enumerate(csv.DictReader(f, delimiter=delimiter), start=2):
            yield f"{what} {path} row {row}", dict(rec)


def _open_check(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what}: {str(p)!r} is not a file")
    return p


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of ``path`` in file order (see the module docstring for formats)."""
    p = _open_check(path, "--prompts")
    if p.suffix.lower() not in _JSONL + _CSV:
        with open(p, encoding="utf-8-sig", newline="") as f:
            prompts = [line.rstrip("\r\n") for line in f]
    else:
        prompts = []
        column: str | None = None
        for where, rec in _rows(p, "--prompts"):
            if column is None:  # the first record decides, like a header would
                found = [c for c in PROMPT_COLUMNS if c in rec]
                if not found:
                    raise ValueError(
                        f"{where} has no prompt column: expected one of {list(PROMPT_COLUMNS)}; "
                        f"found {list(rec)[:10]}"
                    )
                column = found[0]
            value = rec.get(column)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{where}: {column!r} must be a string; got {value!r:.60}")
            prompts.append(value or "")
    prompts = [x for x in prompts if x.strip()]
    if not prompts:
        raise ValueError(f"--prompts: {str(p)!r} holds no prompt")
    return prompts


def _label(value: object, where: str) -> int:
    if isinstance(value, str):
        value = value.strip()
    if value in (0, 1, "0", "1") and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"{where}: label must be 0 or 1 (1 = memorized); got {value!r:.40}")


def read_labels(path: str | Path) -> dict[str, int]:
    """``{prompt: label}`` from ``path``; the same prompt with two labels is an error."""
    p = _open_check(path, "--labels")
    pairs: list[tuple[str, str, int]] = []
    if p.suffix.lower() in (*_JSONL, ".csv"):
        for where, rec in _rows(p, "--labels"):
            if "prompt" not in rec or "label" not in rec:
                raise ValueError(f"{where} needs 'prompt' and 'label'; found {list(rec)[:10]}")
            if not isinstance(rec["prompt"], str):
                raise TypeError(f"{where}: 'prompt' must be a string")
            pairs.append((where, rec["prompt"], _label(rec["label"], where)))
    else:
        with open(p, encoding="utf-8-sig", newline="") as f:
            for lineno, line in enumerate(f, start=1):
                text = line.rstrip("\r\n")
                if not text.strip():
                    continue
                where = f"--labels {p}:{lineno}"
                prompt, tab, value = text.rpartition("\t")
                if lineno == 1 and (prompt.strip(), value.strip()) == ("prompt", "label"):
                    continue  # an optional header line
                if not tab:
                    raise ValueError(f"{where}: expected 'prompt<TAB>label'; got {text!r:.60}")
                pairs.append((where, prompt, _label(value, where)))
    labels: dict[str, int] = {}
    for where, prompt, label in pairs:
        if labels.setdefault(prompt, label) != label:
            raise ValueError(f"{where}: prompt {prompt!r:.60} has labels 0 and 1")
    if not labels:
        raise ValueError(f"--labels: {str(p)!r} holds no label")
    return labels
