"""Exact cosine top-k search benchmark: memlens vs faiss, numpy and torch in the same run.

Every number is measured in this process on the same data, so the ratios are meaningful on a
noisy machine; absolute times are not. Data: random unit vectors (d = 512 by default).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from typing_extensions import Self

import memlens
from memlens.bench.machine import metadata
from memlens.bench.timing import samples


@dataclass
class Config:
    d: int
    nq: int
    nr: list[int]
    k: list[int]


FULL = Config(d=512, nq=4096, nr=[100_000, 1_000_000], k=[1, 10, 100, 1000])
SMOKE = Config(d=512, nq=512, nr=[20_000], k=[10, 100])
# Baselines that materialize scores do so one block of references at a time.
BASELINE_BLOCK = 16384


@dataclass
class Row:
    method: str
    nr: int
    k: int
    seconds: float
    pairs_per_s: float
    gflops: float
    vs_faiss: float | None = None
    vs_sgemm: float | None = None
    recall: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    step = 65536
    for s in range(0, n, step):
        x = rng.standard_normal((min(step, n - s), d), dtype=np.float32)
        out[s : s + x.shape[0]] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median seconds of ``repeat`` calls (no warm-up: the first call's cost is part of a
    search) and the last call's result, timed by the benchmarks' one timer."""
    last: list[Any] = [None]

    def call() -> None:
        last[0] = fn()

    return statistics.median(samples(call, "cpu", repeat, warmups=0)), last[0]


def numpy_topk(q: np.ndarray, r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    best_s = np.empty((q.shape[0], 0), np.float32)
    best_i = np.empty((q.shape[0], 0), np.int64)
    for s in range(0, r.shape[0], BASELINE_BLOCK):
        sc = q @ r[s : s + BASELINE_BLOCK].T
        kk = min(k, sc.shape[1])
        part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
        cs = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], 1)
        ci = np.concatenate([best_i, part + s], 1)
        keep = np.argpartition(-cs, k - 1, axis=1)[:, :k] if cs.shape[1] > k else None
        if keep is not None:
            cs, ci = np.take_along_axis(cs, keep, 1), np.take_along_axis(ci, keep, 1)
        best_s, best_i = cs, ci
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def torch_topk(q: torch.Tensor, r: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    best_s = torch.empty((q.shape[0], 0))
    best_i = torch.empty((q.shape[0], 0), dtype=torch.int64)
    for s in range(0, r.shape[0], BASELINE_BLOCK):
        sc = q @ r[s : s + BASELINE_BLOCK].T
        ts, ti = torch.topk(sc, min(k, sc.shape[1]), dim=1)
        cs, ci = torch.cat([best_s, ts], 1), torch.cat([best_i, ti + s], 1)
        best_s, pos = torch.topk(cs, min(k, cs.shape[1]), dim=1)
        best_i = torch.gather(ci, 1, pos)
    return best_s, best_i


def sgemm_gflops(q: np.ndarray, r: np.ndarray, repeat: int) -> dict[str, float]:
    """Same-run sgemm rate on the search's own shape: (nq x d) @ (d x BASELINE_BLOCK)."""
    blk = r[:BASELINE_BLOCK]
    flop = 2.0 * q.shape[0] * blk.shape[0] * q.shape[1]
    t_np, _ = timed(lambda: q @ blk.T, repeat)
    qt, bt = torch.from_numpy(q), torch.from_numpy(np.ascontiguousarray(blk))
    t_t, _ = timed(lambda: qt @ bt.T, repeat)
    return {"numpy": flop / t_np / 1e9, "torch": flop / t_t / 1e9}


def recall(idx: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(idx, truth, strict=True))
    return hits / truth.size


class PeakRSS:
    """Samples this process's resident memory in a background thread."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def memory_probe(nq: int, nr: int, d: int, k: int, precision: str) -> dict[str, Any]:
    """Peak resident memory of one search, measured in a fresh process (no allocator history)."""
    code = (
        "import json, numpy as np, memlens\n"
        "from memlens.bench.search import PeakRSS, unit_rows\n"
        f"q, r = unit_rows({nq}, {d}, 1), unit_rows({nr}, {d}, 2)\n"
        "with PeakRSS() as mem:\n"
        f"    memlens.cosine_topk(q, r, {k}, precision={precision!r}, backend='cpu')\n"
        "print(json.dumps({'inputs_mb': (q.nbytes + r.nbytes) / 2**20,"
        " 'peak_over_inputs_mb': (mem.peak - mem.start) / 2**20}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {
        "nr": nr,
        "k": k,
        "precision": precision,
        **json.loads(out.stdout.strip().splitlines()[-1]),
    }


def _methods(q: np.ndarray, r: np.ndarray, k: int, index: Any) -> dict[str, Callable[[], Any]]:
    """The contenders for one (nr, k) cell; the first is the reference for ratios and recall."""
    methods: dict[str, Callable[[], Any]] = {}
    if index is not None:
        methods["faiss IndexFlatIP"] = lambda: tuple(index.search(q, k))
    for prec in ("fp32", "bf16", "int8"):
        methods[f"memlens cpu {prec}"] = functools.partial(
            memlens.cosine_topk, q, r, k, precision=prec, backend="cpu", check_finite=False
        )
    qt, rt = torch.from_numpy(q), torch.from_numpy(r)
    methods["numpy matmul+argpartition"] = lambda: numpy_topk(q, r, k)
    methods["torch mm+topk"] = lambda: torch_topk(qt, rt, k)
    return methods


def run(
    smoke: bool,
    json_path: str | None,
    log: Callable[[str], None] = print,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cfg = Config(**asdict(SMOKE if smoke else FULL))
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(cfg, key, value)
    d, nq = cfg.d, cfg.nq
    meta = metadata()
    simd = meta["memlens"]["cpu"].get("simd", "n/a")
    log(
        f"memlens bench search  d={d} nq={nq}  cpu={meta['cpu']}  cores={meta['cores']}  simd={simd}"
    )
    try:
        import faiss
    except ImportError:
        faiss = None  # type: ignore[assignment]
        log("faiss is not installed: ratios to faiss are omitted (pip install faiss-cpu)")
    q = unit_rows(nq, d, 1)
    rows: list[Row] = []
    for nr in cfg.nr:
        r = unit_rows(nr, d, 2)
        repeat = 3 if nr * nq <= 5e8 else 1
        sg = sgemm_gflops(q, r, 3)
        sgemm = max(sg.values())
        log(
            f"\nnr={nr:,}  same-run sgemm: numpy {sg['numpy']:.1f}, torch {sg['torch']:.1f} GFLOP/s"
        )
        index = None
        if faiss is not None:
            index = faiss.IndexFlatIP(d)
            index.add(r)
        for k in cfg.k:
            methods = _methods(q, r, k, index)
            truth: np.ndarray | None = None
            faiss_rate: float | None = None
            for name, fn in methods.items():
                secs, (_s, i) = timed(fn, repeat)
                i = np.asarray(i)
                pairs = nq * nr / secs
                row = Row(name, nr, k, secs, pairs, pairs * 2 * d / 1e9)
                row.vs_sgemm = row.gflops / sgemm
                if name.startswith("faiss"):
                    faiss_rate, truth = pairs, i
                if faiss_rate:
                    row.vs_faiss = pairs / faiss_rate
                if name == "memlens cpu fp32" and truth is None:
                    truth = i
                if truth is not None:
                    row.recall = recall(i, truth)
                rows.append(row)
                log(
                    f"  k={k:<5} {name:<28} {pairs:10.3e} pairs/s  {row.gflops:7.1f} GFLOP/s"
                    f"  x{row.vs_sgemm:5.2f} sgemm"
                    + (f"  x{row.vs_faiss:5.2f} faiss" if row.vs_faiss else "")
                    + (f"  recall {row.recall:.4f}" if row.recall is not None else "")
                )
        meta.setdefault("sgemm_gflops", {})[str(nr)] = sg
    memory = [
        memory_probe(nq, max(cfg.nr), d, k, p) for k, p in ((10, "fp32"), (max(cfg.k), "bf16"))
    ]
    for m in memory:
        log(
            f"peak resident memory, fresh process, nr={m['nr']:,} k={m['k']} {m['precision']}: "
            f"+{m['peak_over_inputs_mb']:.0f} MB over {m['inputs_mb']:.0f} MB of inputs"
        )
    result = {
        "machine": meta,
        "config": asdict(cfg),
        "rows": [asdict(x) for x in rows],
        "memory": memory,
    }
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(path)
        log(f"\nwrote {path}")
    return result
