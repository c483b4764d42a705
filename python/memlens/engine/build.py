"""``memlens index build``: decode training videos/images, embed their frames, add them to a
reference index. Resumable: items already complete in the index are skipped, and since items
are added in the same sorted order, a resumed build ends with the index a clean build gives.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter

from memlens.embed import Embedder, get_embedder
from memlens.engine.media import read_for_batch
from memlens.engine.progress import Progress
from memlens.engine.records import atomic_write_text
from memlens.errors import MediaError
from memlens.index import ReferenceIndex
from memlens.video import list_media
from memlens.video.formats import printable

BUILD_ERRORS = "build_errors.json"


@dataclass
class BuildSummary:
    items: int = 0  # items in the index at the end
    added: int = 0  # items added by this run
    skipped: int = 0  # already complete (resume)
    frames: int = 0  # frames embedded by this run
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)  # e.g. truncated, prefix indexed
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("decode", "embed", "write"), 0.0)
    )

    @property
    def frames_per_second(self) -> float:
        total = sum(self.seconds.values())
        return self.frames / total if total > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["frames_per_second"] = self.frames_per_second
        return out


def build_index(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    embedder: Embedder | str = "default",
    frames: int | None = None,
    fps: float | None = None,
    resume: bool = False,
    shard_rows: int = 65536,
    copies: Sequence[str] = (),
    checkpoint_seconds: float = 60.0,
    threads: int | None = None,
    progress: bool = True,
) -> BuildSummary:
    """Index every video/image under ``sources`` into ``out``.

    Videos are sampled to ``frames`` uniform frames (default 16, methods.md §1.3) or at
    ``fps``; images are 1-frame items. A file that cannot be decoded is recorded in the
    summary (and in ``out/build_errors.json``) and the build goes on.
    """
    if frames is None and fps is None:
        frames = 16
    media = list_media(sources)
    if not media:
        raise ValueError(f"sources contain no videos or images: {[str(s) for s in sources]}")
    emb = get_embedder(embedder, threads=threads) if isinstance(embedder, str) else embedder
    out = Path(out)
    # resuming checks that the embedder, shard size and copies match the existing index
    index = ReferenceIndex.create(
        out, emb.spec, shard_rows=shard_rows, copies=copies, exist_ok_resume=resume
    )
    summary = BuildSummary()
    bar = Progress(len(media), "index", enabled=progress)
    last_commit = perf_counter()
    with index:
        for m in media:
            if index.has_item(m.item_id):
                summary.skipped += 1
                bar.update()
                continue
            t0 = perf_counter()
            try:
                clip, warning = read_for_batch(
                    m.path, frames=frames if fps is None else None, fps=fps
                )
            except MediaError as e:
                summary.errors.append(
                    {"item": m.item_id, "source": printable(m.path), "error": str(e)}
                )
                bar.update(errors=1)
                continue
            if warning:
                summary.warnings.append(
                    {"item": m.item_id, "source": printable(m.path), "warning": warning}
                )
            t1 = perf_counter()
            emb_rows = emb.embed(clip.frames)
            t2 = perf_counter()
            index.add(
                m.item_id,
                emb_rows,
                source=str(m.path),
                frame_indices=clip.frame_indices,
                timestamps=clip.timestamps,
                is_image=clip.is_image,
            )
            summary.seconds["decode"] += t1 - t0
            summary.seconds["embed"] += t2 - t1
            summary.seconds["write"] += perf_counter() - t2
            summary.added += 1
            summary.frames += len(clip.frames)
            bar.update(frames=len(clip.frames))
            if perf_counter() - last_commit > checkpoint_seconds:
                # commit the partial shard too: a crash then loses at most this much work
                index.flush()
                last_commit = perf_counter()
        t = perf_counter()
    summary.seconds["write"] += perf_counter() - t  # the final flush on close
    summary.items = ReferenceIndex.open(out).num_items
    report = {"errors": summary.errors, "warnings": summary.warnings}
    atomic_write_text(out / BUILD_ERRORS, json.dumps(report, indent=2) + "\n")
    return summary
