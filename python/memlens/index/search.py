"""Exact top-k over an index's rows, streamed one block of rows (a shard) at a time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from memlens._config import workspace_bytes
from memlens.ops.topk import cosine_topk, merge_topk


@dataclass(frozen=True)
class Segment:
    """Consecutive searchable rows and how to get them (memory-mapped, or the write buffer)."""

    first_row: int
    rows: int
    load: Callable[[], np.ndarray]


# Reduced precision pays off in proportion to the rows of one cosine_topk call (its candidate
# margin may grow with them; ops._certify.max_candidates), so on the CPU consecutive shards
# are searched together, copied into RAM up to this many bytes (a shard is 128 MiB at the
# default 65536 x 512 fp32). fp32 gains nothing from it and keeps streaming one memmap.
# The copy is anonymous memory, so it is also held to the ops' workspace
# (MEMLENS_WORKSPACE_MB): with a smaller workspace fewer shards go together, and a shard
# larger than the workspace is searched alone, memory-mapped, without a copy.
GROUP_BYTES = 512 << 20


def _group_bytes() -> int:
    return min(GROUP_BYTES, workspace_bytes())


def _groups(segments: list[Segment], row_bytes: int, grouped: bool) -> list[list[Segment]]:
    if not grouped:
        return [[s] for s in segments]
    limit = _group_bytes()
    out: list[list[Segment]] = []
    size = 0
    for seg in segments:
        if out and size + seg.rows * row_bytes <= limit:
            out[-1].append(seg)
            size += seg.rows * row_bytes
        else:
            out.append([seg])
            size = seg.rows * row_bytes
    return out


def _load(group: list[Segment]) -> np.ndarray:
    if len(group) == 1:
        return group[0].load()
    return np.concatenate([s.load() for s in group])


def stream_topk(
    q: np.ndarray,
    segments: list[Segment],
    k: int,
    precision: str,
    backend: str | None,
    dev: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over consecutive segments: one cosine_topk per segment or group (k clipped to its
    rows), global row numbers, merged as we go so memory stays at two (nq, k) lists."""
    qd: Any = q if dev.type == "cpu" else torch.from_numpy(q).to(dev)
    best: Any = None
    grouped = precision != "fp32" and dev.type == "cpu"
    for group in _groups(segments, q.shape[1] * 4, grouped):
        arr = _load(group)  # memory-mapped (one shard) or a bounded copy of a few shards
        n_rows = sum(seg.rows for seg in group)
        refs: Any = arr if dev.type == "cpu" else torch.from_numpy(np.array(arr)).to(dev)
        # rows were checked finite when added (and by checksum with verify=True)
        s, i = cosine_topk(
            qd, refs, min(k, n_rows), precision=precision, backend=backend, check_finite=False
        )
        part = (s, i + group[0].first_row)
        best = (
            part
            if best is None
            else merge_topk([best, part], min(k, best[0].shape[1] + s.shape[1]))
        )
        del arr, refs
    scores, rows = best
    if isinstance(scores, torch.Tensor):
        return scores.cpu().numpy(), rows.cpu().numpy()
    return scores, rows
