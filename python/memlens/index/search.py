"""Exact top-k over an index's rows, streamed one block of rows (a shard) at a time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from memlens.ops.topk import cosine_topk, merge_topk


@dataclass(frozen=True)
class Segment:
    """Consecutive searchable rows and how to get them (memory-mapped, or the write buffer)."""

    first_row: int
    rows: int
    load: Callable[[], np.ndarray]


def stream_topk(
    q: np.ndarray,
    segments: list[Segment],
    k: int,
    precision: str,
    backend: str | None,
    dev: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over consecutive segments: one cosine_topk per segment (k clipped to its
    rows), global row numbers, merged as we go so memory stays at two (nq, k) lists."""
    qd: Any = q if dev.type == "cpu" else torch.from_numpy(q).to(dev)
    best: Any = None
    for seg in segments:
        arr = seg.load()  # memory-mapped: only this shard's pages are touched
        refs: Any = arr if dev.type == "cpu" else torch.from_numpy(np.array(arr)).to(dev)
        # rows were checked finite when added (and by checksum with verify=True)
        s, i = cosine_topk(
            qd, refs, min(k, seg.rows), precision=precision, backend=backend, check_finite=False
        )
        part = (s, i + seg.first_row)
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
