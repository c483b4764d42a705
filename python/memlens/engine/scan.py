"""``memlens scan``: score generated videos/images against a reference index.

Per input one record (DESIGN.md §11) is appended to ``RUN/results.jsonl`` as soon as its
batch is scored; an interrupted scan resumes (``resume=True``) by skipping inputs that already
have a record. Inputs are decoded and embedded one by one and searched in batches of about
``batch_frames`` frames, because one search pass over the index serves the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from memlens.embed import Embedder, EmbedderSpec, get_embedder
from memlens.engine.media import read_for_batch
from memlens.engine.motion import (
    CANDIDATES,
    FlowOptions,
    MotionScorer,
    flow_image_name,
    motion_record,
)
from memlens.engine.progress import Progress
from memlens.engine.records import (
    PARQUET,
    RESULTS,
    ResultWriter,
    atomic_write_bytes,
    read_results,
    write_parquet,
    write_run_json,
)
from memlens.errors import EmbedderMismatchError, MediaError
from memlens.index import ReferenceIndex
from memlens.metrics.content import TAU_DEFAULT, Aggregation, ContentMatch, content_scores
from memlens.metrics.motion import MotionSettings
from memlens.video import list_media, read_media
from memlens.video.flowviz import flow_pair_png
from memlens.video.formats import printable
from memlens.video.sources import MediaFile

FLOWS = "flows"


@dataclass
class ScanSettings:
    tau: float = TAU_DEFAULT
    agg: Aggregation = "max"
    frames: int | None = None  # None: every frame of a generated video (up to max_frames)
    fps: float | None = None
    max_frames: int = 256
    # The search is exact at every precision (bf16/int8 are re-ranked and certified in fp32).
    # Reduced precision is faster only when few references crowd the k-th neighbour: bf16
    # was 1.2x faster on random unit rows but 1.2-2.4x slower on SSCD queries against a
    # 2e5-1e6-row random padding (benchmarks/README.md), so fp32 is the predictable default.
    precision: str = "fp32"
    # one search pass serves a whole batch; the exact search is ~1.25x faster per query at
    # 2048 queries than at 384 (benchmarks/README.md), and a crash loses at most one batch
    batch_frames: int = 2048
    motion: bool = False  # also score motion (OFS-k + NMF) against the content neighbours
    motion_settings: MotionSettings = field(default_factory=MotionSettings)
    flow: FlowOptions = field(default_factory=FlowOptions)
    motion_candidates: int = CANDIDATES
    motion_extra: tuple[str, ...] = ()  # training item ids always scored for motion


@dataclass
class ScanSummary:
    items: int = 0
    scored: int = 0
    skipped: int = 0
    errors: int = 0
    memorized: int = 0
    frames: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("decode", "embed", "search", "motion", "write"), 0.0)
    )
    motion_memorized: int = 0

    @property
    def frames_per_second(self) -> float:
        total = sum(self.seconds.values())
        return self.frames / total if total > 0 else 0.0


def _embedder_for(
    index: ReferenceIndex, embedder: Embedder | str | None, threads: int | None
) -> Embedder:
    """The embedder the index was built with (or the one given, which must match)."""
    spec = index.spec
    if embedder is None:
        if spec.name in ("onnx", "torchscript"):  # a user model: the spec holds its checksum
            raise ValueError(
                f"the index was built with a user {spec.name} model (sha256 "
                f"{spec.preprocessing.get('model_sha256', '?')}); pass embedder "
                f"(--embedder {spec.name}:PATH) to name the same model file"
            )
        embedder = get_embedder(spec.name, threads=threads, **_options_of(spec))
    elif isinstance(embedder, str):
        embedder = get_embedder(embedder, threads=threads)
    if embedder.spec != spec:
        raise EmbedderMismatchError(
            f"the index was built with embedder {spec.to_json()}, "
            f"but the scan would use {embedder.spec.to_json()}"
        )
    return embedder


def _options_of(spec: EmbedderSpec) -> dict[str, Any]:
    """get_embedder keyword arguments that reproduce a recorded spec (the resize rule is the
    only user option a spec records; the builtin descriptor fixes its own)."""
    resize = spec.preprocessing.get("resize")
    if spec.name != "builtin" and isinstance(resize, dict) and "rule" in resize:
        return {"resize": str(resize["rule"])}
    return {}


@dataclass
class _Pending:
    """One embedded input waiting for its batch's search (its pixels are already dropped:
    a batch holds thousands of frames)."""

    item_id: str
    source: str
    frame_indices: np.ndarray  # source frame number of each embedded frame
    embeddings: np.ndarray
    warning: str | None


def _error_record(item_id: str, source: str, err: Exception) -> dict[str, Any]:
    return {"item": item_id, "source": printable(source), "status": "error", "error": str(err)}


def _record(index: ReferenceIndex, p: _Pending, m: ContentMatch, s: ScanSettings) -> dict[str, Any]:
    best = index.row_info(m.best_row)
    return {
        "item": p.item_id,
        "source": p.source,
        "status": "ok",
        "error": None,
        "warning": p.warning,
        "frames": len(p.frame_indices),
        "content_max": m.content_max,
        "content_mean": m.content_mean,
        "vsscd": m.vsscd,
        "best_item": best["item_id"],
        "best_source": best["source"],
        "best_frame": int(best["frame_index"]),
        "best_timestamp": float(best["timestamp"]),
        "best_gen_frame": int(p.frame_indices[m.best_gen_frame]),
        "mean_item": index.item_info(m.mean_item)["item_id"],
        "content_memorized": m.memorized(s.tau, agg=s.agg),
    }


def _motion(
    scorer: MotionScorer, index: ReferenceIndex, p: _Pending, m: ContentMatch, run: Path
) -> dict[str, Any]:
    """Motion columns of one record; a decode failure becomes ``motion_error``, not a crash.
    The best pair's flows are saved as a picture for the report (``flows/``)."""
    try:
        frames = read_media(p.source, frames=scorer.opts.frames).frames
        result = scorer.score(frames, m.neighbours)
    except (MediaError, ValueError) as e:
        return {"motion_memorized": None, "motion_error": str(e)}
    rec = motion_record(result, index)
    if result.errors:
        rec["motion_error"] = "; ".join(result.errors)
    if result.best_flow is not None:
        mid = len(result.gen_flow) // 2
        name = flow_image_name(p.item_id)
        (run / FLOWS).mkdir(exist_ok=True)
        atomic_write_bytes(
            run / FLOWS / name, flow_pair_png(result.gen_flow[mid], result.best_flow[mid])
        )
        rec["motion_flow_image"] = f"{FLOWS}/{name}"
    return rec


def scan(
    sources: Sequence[str | Path],
    index_path: str | Path,
    out: str | Path,
    *,
    settings: ScanSettings | None = None,
    embedder: Embedder | str | None = None,
    resume: bool = False,
    threads: int | None = None,
    progress: bool = True,
    command: str = "scan",
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
) -> ScanSummary:
    """Score every video/image under ``sources``; see the module docstring.

    ``engine="ray"`` runs the search on Ray actors holding the index's shards and the
    embedding and flow work as Ray tasks (``memlens.engine.ray_engine``; same records in the
    same order as ``"local"``): on the running Ray session if ``ray.is_initialized()``, else
    ``ray.init(address=ray_address)`` (None: a local cluster, shut down when the scan ends).
    ``ray_actors``: shard actors (None: one per cluster CPU, at most one per shard).
    """
    s = settings or ScanSettings()
    if not 0 <= s.tau <= 1:
        raise ValueError(f"tau must be in [0, 1]; got {s.tau}")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray'; got {engine!r}")
    if engine == "ray":
        from memlens.engine import ray_engine

        ray_engine.require_ray()  # before any work: RayUnavailableError says what to install
    media = list_media(sources)
    if not media:
        raise ValueError(f"sources contain no videos or images: {[str(x) for x in sources]}")
    index = ReferenceIndex.open(index_path)
    emb = _embedder_for(index, embedder, threads)
    run = Path(out)
    if run.exists() and any(run.iterdir()) and not resume:
        raise FileExistsError(f"{run} exists and is not empty; pass --resume to continue that run")
    run.mkdir(parents=True, exist_ok=True)
    write_run_json(run, command, {**asdict(s), "index": str(index_path),
                                  "embedder": emb.spec.to_json()})  # fmt: skip
    scorer = (
        MotionScorer(
            index, s.motion_settings, s.flow, candidates=s.motion_candidates, extra=s.motion_extra
        )
        if s.motion
        else None
    )
    fan = None
    if engine == "ray":
        factory = ray_engine.embedder_factory(index, embedder, threads)
        fan = ray_engine.RayScan.start(index, factory, address=ray_address, actors=ray_actors)
    try:
        return _scan_loop(media, index, emb, scorer, s, run, progress, fan)
    finally:
        if fan is not None:
            fan.close()


def _embed_local(
    todo: Sequence[MediaFile], emb: Embedder, s: ScanSettings
) -> Iterator[tuple[MediaFile, Any, float, float]]:
    """``(media, outcome, decode_s, embed_s)`` per input, in order: outcome is
    ``(frame_indices, rows, warning)`` or the :class:`MediaError` that reading raised."""
    for m in todo:
        t0 = perf_counter()
        try:
            clip, warning = read_for_batch(
                m.path, frames=s.frames, fps=s.fps, max_frames=s.max_frames
            )
        except MediaError as err:
            yield m, err, 0.0, 0.0
            continue
        t1 = perf_counter()
        emb_rows = emb.embed(clip.frames)
        t2 = perf_counter()
        frame_indices = clip.frame_indices
        del clip
        yield m, (frame_indices, emb_rows, warning), t1 - t0, t2 - t1


def _scan_loop(
    media: list[MediaFile],
    index: ReferenceIndex,
    emb: Embedder,
    scorer: MotionScorer | None,
    s: ScanSettings,
    run: Path,
    progress: bool,
    fan: Any,
) -> ScanSummary:
    """The scan proper; ``fan`` is a ``ray_engine.RayScan`` or None (all in this process)."""
    summary = ScanSummary(items=len(media))
    bar = Progress(len(media), "scan", enabled=progress)
    batch: list[_Pending] = []
    searchable = index if fan is None else fan.index
    with ResultWriter(run) as writer:
        # read under the writer's lock: a second scan of the same run must not cut another's
        # line short or score the same inputs again
        done = {r["item"] for r in read_results(run / RESULTS)}

        def flush() -> None:
            if not batch:
                return
            t0 = perf_counter()
            matches = content_scores(
                searchable, [p.embeddings for p in batch], precision=s.precision
            )
            t1 = perf_counter()
            motion_seconds = 0.0
            motions: Iterator[dict[str, Any]] | None = None
            if scorer is not None and fan is not None:  # every flow task submitted now
                t2 = perf_counter()
                motions = fan.motion(
                    [(p.item_id, p.source, m) for p, m in zip(batch, matches, strict=True)],
                    run, s.motion_settings, s.flow, s.motion_candidates, s.motion_extra,
                )  # fmt: skip
                motion_seconds += perf_counter() - t2
            elif scorer is not None:  # one input at a time, as its record is written
                motions = (
                    _motion(scorer, index, p, m, run) for p, m in zip(batch, matches, strict=True)
                )
            for p, m in zip(batch, matches, strict=True):
                rec = _record(index, p, m, s)
                if motions is not None:
                    t2 = perf_counter()
                    rec.update(next(motions))
                    summary.motion_memorized += bool(rec.get("motion_memorized"))
                    motion_seconds += perf_counter() - t2
                writer.write(rec)
                summary.memorized += rec["content_memorized"]
                summary.scored += 1
            summary.seconds["search"] += t1 - t0
            summary.seconds["motion"] += motion_seconds
            summary.seconds["write"] += perf_counter() - t1 - motion_seconds
            bar.update(len(batch), frames=sum(len(p.frame_indices) for p in batch))
            batch.clear()

        todo = []
        for m in media:
            if m.item_id in done:
                summary.skipped += 1
                bar.update()
            else:
                todo.append(m)
        embedded = (
            _embed_local(todo, emb, s)
            if fan is None
            else fan.embedded(todo, s.frames, s.fps, s.max_frames)
        )
        for m, got, decode_s, embed_s in embedded:
            if isinstance(got, MediaError):
                writer.write(_error_record(m.item_id, str(m.path), got))
                summary.errors += 1
                bar.update(errors=1)
                continue
            frame_indices, emb_rows, warning = got
            summary.seconds["decode"] += decode_s
            summary.seconds["embed"] += embed_s
            summary.frames += len(frame_indices)
            batch.append(_Pending(m.item_id, str(m.path), frame_indices, emb_rows, warning))
            if sum(len(p.embeddings) for p in batch) >= s.batch_frames:
                flush()
        flush()
    t = perf_counter()
    write_parquet(read_results(run / RESULTS), run / PARQUET)
    summary.seconds["write"] += perf_counter() - t
    return summary
