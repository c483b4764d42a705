"""Memory bound of searching a memory-mapped index larger than RAM (issue 9).

Writes a reference index of ``--rows`` x ``--dim`` rows in the real on-disk format (float32
shards written by ``memlens.index.shards.write_shard``, an items table, a manifest; 1e7 x 512
is 20.5 GB), then searches a batch of queries against it in a child process with
``MEMLENS_WORKSPACE_MB`` set, sampling ``/proc/self/status`` every 20 ms:

- ``RssAnon``: anonymous memory (heap, numpy/torch buffers) — must stay below the workspace
  plus a small constant over what the process held before the search;
- ``RssFile``: file-backed pages of the mapped shards — page cache the kernel reclaims, not
  memory the search allocates;
- ``VmHWM``: the peak total resident set.

A second child searches a float16 ``np.memmap`` of the same shape (``--fp16``, 10 GB) with
:func:`memlens.cosine_topk` directly, the case of a caller that keeps its own memmap.

python benchmarks/bench_memory_bound.py [--rows 10000000] [--dim 512] [--nq 64] [--k 10]
    [--workspace-mb 256] [--dir /tmp/memlens-membound] [--fp16] [--keep] [--json OUT]

The data directory is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SHARD_ROWS = 65536
KIB = 1024


def _status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem of this process, in bytes."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * KIB
    return out


def _base_block(dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((SHARD_ROWS, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _shard_rows(base: np.ndarray, n: int, rows: int) -> np.ndarray:
    """Shard ``n``: the base block with its columns rotated by n and signs flipped by parity
    (distinct unit rows without generating 5e9 random numbers)."""
    out = np.roll(base[:rows], n % base.shape[1], axis=1)
    if n % 2:
        np.negative(out, out=out)
    return out


def write_index(root: Path, rows: int, dim: int) -> dict[str, Any]:
    """An index in the real format, written shard by shard (one shard in memory at a time)."""
    from memlens.embed.base import EmbedderSpec
    from memlens.index.atomic import write_bytes_atomic
    from memlens.index.items import ItemTable
    from memlens.index.manifest import ITEMS_NAME, FileEntry, Manifest, now_utc, write_manifest
    from memlens.index.paths import SHARD_DIR
    from memlens.index.shards import write_shard

    t0 = time.perf_counter()
    root.mkdir(parents=True)
    (root / SHARD_DIR).mkdir()
    base = _base_block(dim)
    items = ItemTable()
    shards = []
    for n, first in enumerate(range(0, rows, SHARD_ROWS)):
        count = min(SHARD_ROWS, rows - first)
        shards.append(write_shard(root, n, _shard_rows(base, n, count), SHARD_ROWS, ()))
        # one item per shard (a 65536-frame "video")
        items.append(f"item{n:05d}", f"synthetic/{n}", False, np.arange(count, dtype=np.int64),
                     np.full(count, np.nan))  # fmt: skip
    data = items.to_parquet(items.num_items)
    sha = write_bytes_atomic(root / ITEMS_NAME, data)
    stamp = now_utc()
    write_manifest(root, Manifest(
        spec=EmbedderSpec("synthetic", dim, {"bench": "memory_bound"}), shard_rows=SHARD_ROWS,
        num_rows=rows, num_items=items.num_items, copies=(),
        items=FileEntry(ITEMS_NAME, len(data), sha), shards=tuple(shards),
        created=stamp, updated=stamp,
    ))  # fmt: skip
    return {"seconds": time.perf_counter() - t0, "shards": len(shards),
            "bytes": sum(s.data.bytes for s in shards)}  # fmt: skip


def write_fp16(path: Path, rows: int, dim: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    base = _base_block(dim)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, dim))
    for n, first in enumerate(range(0, rows, SHARD_ROWS)):
        count = min(SHARD_ROWS, rows - first)
        mm[first : first + count] = _shard_rows(base, n, count)
    mm.flush()
    del mm
    return {"seconds": time.perf_counter() - t0, "bytes": path.stat().st_size}


# ------------------------------------------------------------------------------ the child


def _queries(dim: int, nq: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy copies of known rows (spread over the index), and those rows' numbers."""
    rng = np.random.default_rng(1)
    want = np.sort(rng.choice(rows, nq, replace=False))
    base = _base_block(dim)
    q = np.stack([_shard_rows(base[r % SHARD_ROWS][None], r // SHARD_ROWS, 1)[0]
                  for r in want.tolist()])  # fmt: skip
    del base
    q = q + 0.01 * rng.standard_normal(q.shape, dtype=np.float32)
    return q.astype(np.float32), want


def child(kind: str, path: str, rows: int, dim: int, nq: int, k: int, precision: str) -> None:
    import threading

    import memlens
    from memlens.index import ReferenceIndex

    q, want = _queries(dim, nq, rows)
    if kind == "index":
        idx = ReferenceIndex.open(path)
        run = lambda: idx.search(q, k, precision=precision).rows
    else:
        refs = np.load(path, mmap_mode="r", allow_pickle=False)
        run = lambda: memlens.cosine_topk(q, refs, k, precision=precision)[1]
    before = _status()
    peak = dict(before)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for key, v in _status().items():
                peak[key] = max(peak[key], v)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    got = np.asarray(run())
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    for key, v in _status().items():
        peak[key] = max(peak[key], v)
    print(json.dumps({
        "seconds": seconds, "before": before, "peak": peak,
        "top1_correct": int((got[:, 0] == want).sum()), "nq": nq,
    }))  # fmt: skip


def _run_child(args: argparse.Namespace, kind: str, path: Path, precision: str) -> dict[str, Any]:
    env = {**os.environ, "MEMLENS_WORKSPACE_MB": str(args.workspace_mb)}
    cmd = [sys.executable, __file__, "--child", kind, str(path), "--rows", str(args.rows),
           "--dim", str(args.dim), "--nq", str(args.nq), "--k", str(args.k),
           "--precision", precision]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child failed ({out.returncode}):\n{out.stderr[-4000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 1 << 20
    anon_growth = r["peak"]["RssAnon"] - r["before"]["RssAnon"]
    r["summary_mib"] = {
        "anon_before": r["before"]["RssAnon"] / mib,
        "anon_peak": r["peak"]["RssAnon"] / mib,
        "anon_growth": anon_growth / mib,
        "file_peak": r["peak"]["RssFile"] / mib,
        "vm_hwm_before": r["before"]["VmHWM"] / mib,
        "vm_hwm": r["peak"]["VmHWM"] / mib,
        "workspace": args.workspace_mb,
    }
    r["within_workspace"] = anon_growth <= (args.workspace_mb + args.slack_mb) * mib
    r["precision"] = precision
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--nq", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--workspace-mb", type=int, default=256)
    p.add_argument("--slack-mb", type=int, default=64, help="allowed constant over the workspace")
    p.add_argument("--precision", nargs="+", default=["fp32"])
    p.add_argument("--dir", default="/tmp/memlens-membound")
    p.add_argument("--fp16", action="store_true", help="also search a float16 np.memmap")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json")
    p.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.rows, args.dim, args.nq, args.k,
              args.precision[0])  # fmt: skip
        return 0
    root = Path(args.dir)
    if root.exists():
        raise SystemExit(f"{root} exists; remove it first")
    result: dict[str, Any] = {
        "rows": args.rows, "dim": args.dim, "nq": args.nq, "k": args.k,
        "workspace_mb": args.workspace_mb, "slack_mb": args.slack_mb,
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "ram_gib": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30},
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }  # fmt: skip
    try:
        result["write_index"] = write_index(root / "index", args.rows, args.dim)
        print(f"index written: {result['write_index']}", flush=True)
        result["index_search"] = [
            _run_child(args, "index", root / "index", prec) for prec in args.precision
        ]
        for r in result["index_search"]:
            print(f"index search {r['precision']}: {r['seconds']:.1f} s, "
                  f"{r['summary_mib']}", flush=True)  # fmt: skip
        if args.fp16:
            shutil.rmtree(root / "index")  # disk space
            result["write_fp16"] = write_fp16(root / "refs.f16.npy", args.rows, args.dim)
            r = _run_child(args, "fp16", root / "refs.f16.npy", "fp32")
            result["fp16_memmap_search"] = r
            print(f"fp16 memmap search: {r['seconds']:.1f} s, {r['summary_mib']}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ok = all(r["within_workspace"] for r in result["index_search"])
    if "fp16_memmap_search" in result:
        ok = ok and result["fp16_memmap_search"]["within_workspace"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
