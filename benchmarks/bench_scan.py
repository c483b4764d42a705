"""End-to-end content scan benchmark: index build and scan throughput, time split into decode,
embed, search and write.

python benchmarks/bench_scan.py [--embedder sscd] [--train 24] [--gen 24] [--pad-rows 0 200000]
                                [--json PATH]

Training media are pans and zooms over scikit-image's real photographs encoded with OpenCV
(16 frames each); generated media are re-encoded copies of half of them plus unrelated clips.
``--pad-rows`` adds random unit embeddings (as 16-row pseudo-items) to the index, to show how
the search share grows with the size of a training set. For each index size the scan's search
stage is compared, on the same queries in the same run, with faiss ``IndexFlatIP`` (the best
existing exact baseline) when faiss is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from memlens.bench.machine import metadata
from memlens.datasets.clips import pan_clip, write_video, zoom_clip
from memlens.datasets.photos import real_photographs
from memlens.embed import get_embedder
from memlens.engine.build import build_index
from memlens.engine.scan import ScanSettings, scan
from memlens.index import ReferenceIndex
from memlens.metrics.content import content_scores

UNRELATED_PHOTOS = 5  # the last photographs never appear in training clips


def make_media(root: Path, n_train: int, n_gen: int) -> tuple[Path, Path]:
    photos = list(real_photographs().values())
    seen, unseen = photos[:-UNRELATED_PHOTOS], photos[-UNRELATED_PHOTOS:]
    train, gen = root / "train", root / "gen"
    train.mkdir()
    gen.mkdir()
    clips = []
    for n in range(n_train):
        photo = seen[n % len(seen)]
        if n % 2 == 0:
            clip = pan_clip(photo, seed=n)
        else:
            clip = zoom_clip(photo, center=(0.3 + 0.02 * (n % 20), 0.5))
        write_video(train / f"t{n:04d}.mp4", clip)
        clips.append(clip)
    for n in range(n_gen):
        if n % 2 == 0:  # a re-encoded, smaller copy of a training clip
            src = clips[n % n_train]
            copy = np.stack([cv2.resize(f, (112, 84), interpolation=cv2.INTER_AREA) for f in src])
            write_video(gen / f"g{n:04d}.avi", copy, codec="MJPG")
        else:  # an unrelated clip: a pan over a photograph no training clip shows
            clip = pan_clip(unseen[n % len(unseen)], seed=1000 + n, direction=(-2.0, 2.0))
            write_video(gen / f"g{n:04d}.mp4", clip)
    return train, gen


def pad_index(path: Path, rows: int, first: int = 0) -> None:
    """Add ``rows`` random unit embeddings as 16-row items named from ``first`` on."""
    rng = np.random.default_rng(first)
    with ReferenceIndex.open(path, mode="a") as index:
        for n in range(first, first + rows // 16):
            x = rng.standard_normal((16, index.dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            index.add(f"pad/{n:08d}", x, source="synthetic", is_image=False)


def faiss_search_seconds(index: ReferenceIndex, queries: np.ndarray, k: int) -> float | None:
    try:
        import faiss
    except ImportError:
        return None
    flat = faiss.IndexFlatIP(index.dim)
    for _, shard in index.iter_shards():
        flat.add(np.ascontiguousarray(shard, dtype=np.float32))
    t = time.perf_counter()
    flat.search(queries, k)
    return time.perf_counter() - t


def run(args: argparse.Namespace) -> dict[str, Any]:
    embedder = get_embedder(args.embedder, threads=args.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train, gen = make_media(root, args.train, args.gen)
        idx = root / "idx"
        b = build_index([train], idx, embedder=embedder, progress=False)
        build = {"items": b.items, "frames": b.frames, "frames_per_s": b.frames_per_second,
                 "seconds": b.seconds, "errors": len(b.errors)}  # fmt: skip
        print(f"build: {b.frames} frames, {b.frames_per_second:.1f} frames/s, split {b.seconds}")
        padded = 0
        for pad in sorted(args.pad_rows):
            if pad > padded:
                pad_index(idx, pad - padded, first=padded // 16)
                padded = pad
            run_dir = root / f"run{pad}"
            s = scan([gen], idx, run_dir, settings=ScanSettings(batch_frames=args.batch_frames),
                     embedder=embedder, progress=False)  # fmt: skip
            total = sum(s.seconds.values())
            index = ReferenceIndex.open(idx)
            # the search stage alone, then faiss on the same queries (k=64, the first round)
            videos = [embedder.embed(f) for f in _gen_frames(gen)]
            queries = np.concatenate(videos)
            t = time.perf_counter()
            content_scores(index, videos)
            ours = time.perf_counter() - t
            t = time.perf_counter()
            index.search(queries, min(64, index.num_rows))
            ours_k64 = time.perf_counter() - t
            base = faiss_search_seconds(index, queries, min(64, index.num_rows))
            row = {
                "index_rows": index.num_rows,
                "scan_frames": s.frames,
                "scan_frames_per_s": s.frames_per_second,
                "seconds": s.seconds,
                "share": {k: v / total for k, v in s.seconds.items()},
                "memorized": s.memorized,
                "search_k64_seconds": ours_k64,
                "faiss_k64_seconds": base,
                "faiss_over_memlens": (base / ours_k64) if base else None,
                "content_scores_seconds": ours,
            }
            rows.append(row)
            share = ", ".join(f"{k} {100 * v:.1f}%" for k, v in row["share"].items())
            vs = f"; faiss/memlens search {row['faiss_over_memlens']:.2f}x" if base else ""
            print(f"scan @ {index.num_rows} rows: {s.frames_per_second:.1f} frames/s ({share}); "
                  f"{s.memorized}/{s.items} memorized{vs}")  # fmt: skip
    return {
        "machine": metadata(),
        "embedder": embedder.spec.to_json(),
        "build": build,
        "scan": rows,
    }


def _gen_frames(gen: Path) -> list[np.ndarray]:
    from memlens.video import list_media, read_media

    return [read_media(m.path).frames for m in list_media([gen])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--embedder", default="default")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--train", type=int, default=24)
    p.add_argument("--gen", type=int, default=24)
    p.add_argument("--pad-rows", type=int, nargs="+", default=[0, 200_000])
    p.add_argument("--batch-frames", type=int, default=512)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    result = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
