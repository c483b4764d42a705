"""Timing helpers shared by the benchmark and GPU-check scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def samples(fn: Callable[[], object], dev: str, reps: int, *, warmups: int = 1) -> list[float]:
    """Seconds of each of ``reps`` calls after ``warmups`` (compilation, allocator, first-touch
    page faults); CUDA calls are timed with events on the current stream, CPU calls with
    perf_counter."""
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
    return times


def timed(fn: Callable[[], object], dev: str, reps: int, *, warmups: int = 1) -> float:
    """Median seconds of ``reps`` calls after ``warmups`` (see :func:`samples`)."""
    return statistics.median(samples(fn, dev, reps, warmups=warmups))


def times_with_probe(
    fn: Callable[[], object], dev: str, reps: int, probe_mb: int, *, warmups: int = 2
) -> tuple[list[float], list[float]]:
    """Seconds of each of ``reps`` calls of ``fn`` (after ``warmups``) and, on the CPU, the read
    bandwidth in GB/s of a ``probe_mb`` MiB ``torch.sum`` run right after each call (an empty
    list on a GPU). A kernel's bandwidth over the probe's at the same moments is a fair ratio on
    a machine whose memory bandwidth other tenants share: on the 2-core test machine the probe
    read anywhere from 16 to 60 GB/s within minutes, so one probe per run makes the ratio noise."""
    for _ in range(warmups):
        fn()
    a = torch.ones(probe_mb * 2**20 // 4) if dev == "cpu" else None
    times: list[float] = []
    probe: list[float] = []
    for _ in range(reps):
        times.append(timed(fn, dev, 1, warmups=0))
        if a is not None:
            probe.append(a.numel() * 4 / timed(lambda: a.sum(), dev, 1, warmups=0) / 1e9)
    return times, probe


def median_ratio(nbytes: int, times: list[float], probe: list[float]) -> float:
    """The median over calls of (``nbytes`` / call seconds) / the probe read after that call."""
    return statistics.median(nbytes / t / 1e9 / r for t, r in zip(times, probe, strict=True))
