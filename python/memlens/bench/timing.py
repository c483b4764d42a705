"""Timing helpers shared by the benchmark and GPU-check scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], dev: str, reps: int, *, warmups: int = 1) -> float:
    """Median seconds of ``reps`` calls after ``warmups`` (compilation, allocator); CUDA
    calls are timed with events on the current stream, CPU calls with perf_counter."""
    for _ in range(warmups):
        fn()
    sync(dev)
    times = []
    for _ in range(reps):
        if dev == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)
