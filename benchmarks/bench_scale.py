"""Scale-out benchmark: the scan's search stage (and the embedding of generated videos) in this
process (``--engine local``) against Ray shard actors / tasks (``--engine ray``), same run.

python benchmarks/bench_scale.py [--rows 100000 300000 1000000] [--nq 1024] [--actors 1 2]
                                 [--reps 2] [--gen 16] [--json PATH]

Search: an index of random unit rows (d = 512, the SSCD dimension; 65536-row shards, the
default) is searched with ``nq`` random unit queries at k = 64 (the first round of
``content_scores``): locally with ``ReferenceIndex.search`` (one memory-mapped shard at a
time through ``cosine_topk``), and through ``RayIndex.search`` with 1..N ``ShardGroup``
actors holding the shards in their memory, merged on the driver with ``merge_topk``. Local and
Ray repetitions alternate, and the best of ``--reps`` is kept (the machine is shared). Results
are checked equal (rows and scores). ``merge`` times ``merge_topk`` alone for S lists of
(nq, k), the driver's cost per batch as the shard/actor count grows.

Embedding: ``--gen`` generated clips (16 frames each, 160x120) decoded and embedded by the
builtin descriptor in this process vs one Ray task per clip.

Frames/s = query frames per second of the stage. Ray runs on this machine only
(``ray.init(num_cpus=os.cpu_count())``): on one machine it can only add overhead to a
search that already uses every core; the point is the overhead's size, which a cluster pays
once per batch while its throughput grows with the actors' cores/GPUs (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from memlens.bench.machine import metadata
from memlens.datasets.clips import pan_clip, write_video
from memlens.datasets.photos import real_photographs
from memlens.embed import EmbedderSpec, get_embedder
from memlens.engine import ray_engine
from memlens.engine.scan import ScanSettings, _embed_local
from memlens.index import ReferenceIndex
from memlens.ops.topk import merge_topk
from memlens.video import list_media

DIM = 512
K = 64
ITEM_ROWS = 1024


def make_index(path: Path, rows: int, seed: int = 0) -> None:
    spec = EmbedderSpec("synthetic-unit", DIM, {"bench": "bench_scale"})
    rng = np.random.default_rng(seed)
    with ReferenceIndex.create(path, spec) as index:
        for n in range(0, rows, ITEM_ROWS):
            x = rng.standard_normal((min(ITEM_ROWS, rows - n), DIM)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            index.add(f"r/{n:010d}", x, source="synthetic")


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_search(ray: Any, root: Path, rows: int, args: argparse.Namespace) -> dict[str, Any]:
    idx = root / f"idx{rows}"
    t = time.perf_counter()
    make_index(idx, rows)
    build_s = time.perf_counter() - t
    q = unit(args.nq, seed=1)
    index = ReferenceIndex.open(idx)
    k = min(K, rows)
    factory = ray_engine.EmbedderFactory("builtin")
    engines: dict[str, Any] = {}
    load_s: dict[str, float] = {}
    for n in args.actors:
        t = time.perf_counter()
        engines[f"ray x{n}"] = ray_engine.RayScan.start(index, factory, actors=n)
        load_s[f"ray x{n}"] = time.perf_counter() - t
    best: dict[str, float] = {}
    want = index.search(q, k)  # warm-up (page cache) and the reference answer
    for _ in range(args.reps):
        for name in ["local", *engines]:
            searcher = index if name == "local" else engines[name].index
            t = time.perf_counter()
            hits = searcher.search(q, k)
            dt = time.perf_counter() - t
            best[name] = min(best.get(name, np.inf), dt)
            if not (
                np.array_equal(hits.rows, want.rows) and np.array_equal(hits.scores, want.scores)
            ):
                raise AssertionError(f"{name} differs from the local search at {rows} rows")
    for e in engines.values():
        e.close()
    index.close()
    out = {
        "index_rows": rows,
        "shards": -(-rows // 65536),
        "nq": args.nq,
        "k": k,
        "index_build_seconds": build_s,
        "actor_start_seconds": load_s,
        "seconds": best,
        "frames_per_s": {n: args.nq / s for n, s in best.items()},
        "pairs_per_s": {n: args.nq * rows / s for n, s in best.items()},
        "identical_to_local": True,
    }
    print(f"search @ {rows:>9} rows: " + ", ".join(
        f"{n} {out['frames_per_s'][n]:8.1f} frames/s ({out['pairs_per_s'][n]:.3g} pairs/s)"
        for n in best))  # fmt: skip
    shutil.rmtree(idx)  # the next size needs the disk (and the page cache)
    return out


def bench_merge(nq: int) -> list[dict[str, Any]]:
    out = []
    rng = np.random.default_rng(2)
    for parts in (2, 16, 64, 256):
        lists = []
        for p in range(parts):
            s = -np.sort(-rng.random((nq, K), dtype=np.float32), axis=1)
            lists.append((s, rng.integers(0, 1 << 40, (nq, K), dtype=np.int64) + p))
        t = time.perf_counter()
        merge_topk(lists, K)
        dt = time.perf_counter() - t
        out.append({"parts": parts, "nq": nq, "k": K, "seconds": dt,
                    "ns_per_query_candidate": dt / (nq * K * parts) * 1e9})  # fmt: skip
        print(f"merge_topk {parts:>3} lists of ({nq}, {K}): {dt * 1e3:7.1f} ms")
    return out


def bench_embed(ray: Any, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    gen = root / "gen"
    gen.mkdir()
    photos = list(real_photographs().values())
    for n in range(args.gen):
        write_video(gen / f"g{n:03d}.mp4", pan_clip(photos[n % len(photos)], seed=n))
    todo = list_media([gen])
    s = ScanSettings()
    emb = get_embedder("builtin")
    # a 1-row index only to start a RayScan (its embedding tasks need no shards)
    idx = root / "idx-embed"
    with ReferenceIndex.create(idx, emb.spec) as index:
        index.add("x", unit(1, 3)[:, : emb.spec.dim], source="synthetic")
    index = ReferenceIndex.open(idx)
    fan = ray_engine.RayScan.start(index, ray_engine.EmbedderFactory("builtin"), actors=1)
    # warm-up: start the Ray workers (a Python process each, importing memlens and OpenCV)
    for _ in fan.embedded(todo, s.frames, s.fps, s.max_frames):
        pass
    best: dict[str, float] = {}
    frames = 0
    for _ in range(args.reps):
        for name in ("local", "ray"):
            t = time.perf_counter()
            it = (
                _embed_local(todo, emb, s)
                if name == "local"
                else fan.embedded(todo, s.frames, s.fps, s.max_frames)
            )
            frames = sum(len(got[0]) for _, got, _, _ in it)
            best[name] = min(best.get(name, np.inf), time.perf_counter() - t)
    fan.close()
    out = {
        "clips": args.gen,
        "frames": frames,
        "seconds": best,
        "frames_per_s": {n: frames / s for n, s in best.items()},
    }
    print("embed (decode + builtin): " + ", ".join(
        f"{n} {v:.1f} frames/s" for n, v in out["frames_per_s"].items()))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    p.add_argument("--nq", type=int, default=1024)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--gen", type=int, default=16)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    ray = ray_engine.require_ray()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            embed = bench_embed(ray, root, args)
            merge = bench_merge(args.nq)
            search = [bench_search(ray, root, r, args) for r in args.rows]
        result = {
            "machine": {**metadata(), "ray": ray.__version__,
                        "ray_cpus": ray.cluster_resources().get("CPU")},
            "config": {"dim": DIM, "k": K, "nq": args.nq, "actors": args.actors,
                       "reps": args.reps, "shard_rows": 65536},
            "embed": embed,
            "merge": merge,
            "search": search,
        }  # fmt: skip
    finally:
        ray.shutdown()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
