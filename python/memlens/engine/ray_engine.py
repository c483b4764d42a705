"""``memlens scan --engine ray``: the scan's search, embedding and flow work on a Ray cluster.

DESIGN.md §7. Three kinds of work leave the driver:

- **search**: the index's committed shards are split into contiguous groups, one
  :class:`ShardGroup` actor per group. An actor opens the index read-only, keeps its shards
  resident (copied into its memory, or memory-mapped with ``resident=False``) and answers a
  batch of queries with each query's exact top-k over its rows, global row numbers (the
  same :func:`memlens.index.search.stream_topk` a local search runs, i.e. one
  :func:`memlens.cosine_topk` per shard). The driver merges the actors' lists with
  :func:`memlens.merge_topk`, which is exact (equal scores keep the lower row), so the merged
  list equals the local search's;
- **embedding** of the generated videos: one Ray task per input (decode + embed), results
  consumed in input order with a bounded number of tasks in flight;
- **flows** (``--motion``): one Ray task per scored input computes its flow, its candidates'
  flows (through the index's flow cache) and the motion columns of its record.

Everything else (content scores from the hits, records, output files) stays on the driver,
so a Ray scan writes the same records in the same order as a local one. Ray is imported here
only, and only when a Ray scan runs: ``import memlens`` never imports it. The index
directory, the generated media and the run directory must be readable (the run directory
and ``IDX/flow_cache`` writable) at the same paths on every node: a shared file system.
"""

from __future__ import annotations

import itertools
import os
import pickle
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from memlens.errors import MediaError, ModelUnavailableError
from memlens.index import ReferenceIndex
from memlens.index.search import Segment, stream_topk
from memlens.ops.topk import merge_topk

if TYPE_CHECKING:
    from memlens.embed import Embedder
    from memlens.engine.motion import FlowOptions
    from memlens.index.hits import IndexHits
    from memlens.metrics.content import ContentMatch
    from memlens.metrics.motion import MotionSettings
    from memlens.video.sources import MediaFile

RAY_MISSING = "--engine ray needs Ray: pip install 'memlens[ray]'"
# embedding tasks in flight per cluster CPU: enough to keep every worker busy while the
# driver searches, few enough that finished embeddings waiting for their turn stay small
_IN_FLIGHT_PER_CPU = 2


class RayUnavailableError(ModelUnavailableError):
    """``engine="ray"`` without Ray installed (the CLI exits 2 with the message)."""


def require_ray() -> ModuleType:
    """The ``ray`` module, or :class:`RayUnavailableError` saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise RayUnavailableError(RAY_MISSING) from e
    return ray


def connect(address: str | None = None) -> tuple[ModuleType, bool]:
    """Use the running Ray session if ``ray.is_initialized()``, else ``ray.init(address)``
    (None: start a local cluster). Returns ``(ray, started)``; ``started`` is True when this
    call started the session (the caller then shuts it down)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return ray, True


# ---- search ---------------------------------------------------------------------------------


def shard_groups(rows: Sequence[int], groups: int) -> list[list[int]]:
    """Split shards (their row counts, in order) into at most ``groups`` contiguous groups of
    about equal rows; every group non-empty."""
    if groups < 1:
        raise ValueError(f"groups must be >= 1; got {groups}")
    n = len(rows)
    groups = min(groups, n)
    total = sum(rows)
    out: list[list[int]] = []
    start, acc = 0, 0
    for g in range(groups):
        if g == groups - 1:
            out.append(list(range(start, n)))
            break
        target = total * (g + 1) / groups
        stop = start + 1  # at least one shard
        acc += rows[start]
        # leave at least one shard for each remaining group
        while stop < n - (groups - 1 - g) and acc + rows[stop] / 2 <= target:
            acc += rows[stop]
            stop += 1
        out.append(list(range(start, stop)))
        start = stop
    return out


class ShardGroup:
    """A group of an index's committed shards held by one process (a Ray actor in a Ray
    scan; usable directly, which is how the tests check it).

    Args:
        index_path: the index directory (read-only; the same path on every node).
        shards: committed shard numbers (see :attr:`ReferenceIndex.shards`).
        resident: copy the shards into this process's memory (True), or keep them
            memory-mapped (False: the page cache holds them, shared by actors on one node).
        device: "cpu", or a CUDA device ("cuda", "cuda:N"): the shards are then kept on it.
        backend: cosine_topk backend (None: automatic).
        concat: hold the group's rows (consecutive: a group is a run of shards) as one array
            and answer with one cosine_topk call over it, which equals the per-shard calls
            merged (equal scores keep the lower row). None: on a GPU (a 65536-row shard is
            too small a call for one), not on the CPU, where the per-shard calls are what a
            local search runs, so scores are bitwise those of ``--engine local``. (A copy,
            whatever ``resident`` says.)
    """

    def __init__(
        self,
        index_path: str | os.PathLike[str],
        shards: Sequence[int],
        *,
        resident: bool = True,
        device: str = "cpu",
        backend: str | None = None,
        concat: bool | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.backend = backend
        self.segments: list[Segment] = []
        with ReferenceIndex.open(index_path) as index:
            infos = index.shards
            numbers = sorted(int(n) for n in shards)
            if concat is None:
                concat = self.device.type != "cpu"
            if concat and any(b != a + 1 for a, b in itertools.pairwise(numbers)):
                raise ValueError(f"concat needs consecutive shards; got {numbers}")
            parts = []
            for n in numbers:
                info = infos[n]
                (arr,) = index.load_shard(info.number)
                if concat:
                    parts.append(arr)
                    continue
                if self.device.type != "cpu":
                    held: Any = torch.from_numpy(np.array(arr)).to(self.device)
                elif resident:
                    held = np.array(arr)  # an owned, contiguous copy of the memory map
                else:
                    held = arr
                self.segments.append(Segment(info.first_row, info.rows, _const(held)))
            if parts:
                whole = np.concatenate(parts)
                held = whole if self.device.type == "cpu" else torch.from_numpy(whole).to(device)
                del whole
                first = infos[numbers[0]].first_row
                self.segments = [Segment(first, sum(len(p) for p in parts), _const(held))]
        self.dim = index.dim
        self.rows = sum(s.rows for s in self.segments)
        self.nbytes = self.rows * index.dim * 4

    def info(self) -> dict[str, Any]:
        """first row, rows and bytes held (for the driver's checks and logs)."""
        first = self.segments[0].first_row if self.segments else 0
        return {"first_row": first, "rows": self.rows, "bytes": self.nbytes, "pid": os.getpid()}

    def topk(
        self, queries: np.ndarray, k: int, precision: str = "fp32"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's exact top-``min(k, rows)`` over this group: float32 scores, int64
        global rows (best first; equal scores: lower row first)."""
        q = np.array(queries, dtype=np.float32, order="C")  # Ray hands in a read-only view
        kk = min(int(k), self.rows)
        if self.device.type == "cpu":
            return stream_topk(q, self.segments, kk, precision, self.backend, self.device)
        return self._topk_device(q, kk, precision)

    def _topk_device(self, q: np.ndarray, k: int, precision: str) -> tuple[np.ndarray, np.ndarray]:
        from memlens.ops.topk import cosine_topk

        qd = torch.from_numpy(q).to(self.device)
        best: Any = None
        for seg in self.segments:
            s, i = cosine_topk(qd, seg.load(), min(k, seg.rows), precision=precision,
                               backend=self.backend, check_finite=False)  # fmt: skip
            part = (s, i + seg.first_row)
            best = (
                part
                if best is None
                else merge_topk([best, part], min(k, best[0].shape[1] + s.shape[1]))
            )
        scores, rows = best
        return scores.cpu().numpy(), rows.cpu().numpy()


def _const(a: Any) -> Callable[[], Any]:
    return lambda: a


class RayIndex:
    """What content scoring needs from an index (``metrics.content.SearchableIndex``), with
    the search answered by :class:`ShardGroup` actors and merged on the driver; rows, items
    and full passes come from the local (memory-mapped) index."""

    def __init__(self, ray: ModuleType, index: ReferenceIndex, actors: list[Any]) -> None:
        self._ray, self._index, self.actors = ray, index, actors

    @property
    def num_rows(self) -> int:
        return self._index.num_rows

    def search(self, queries: Any, k: int, *, precision: str = "fp32") -> IndexHits:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if not 1 <= k <= self._index.num_rows:
            raise ValueError(f"k must be in [1, {self._index.num_rows}]; got {k}")
        ref = self._ray.put(q)  # one copy in the object store, read by every actor
        parts = self._ray.get([a.topk.remote(ref, k, precision) for a in self.actors])
        # results come back as read-only views of the object store: own them
        parts = [(np.array(sc), np.array(ro)) for sc, ro in parts]
        scores, rows = parts[0] if len(parts) == 1 else merge_topk(parts, k)
        return self._index._hits(scores, rows)

    def embeddings_of(self, item: int | str) -> np.ndarray:
        return self._index.embeddings_of(item)

    def item_bounds(self) -> np.ndarray:
        return self._index.item_bounds()

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray]]:
        return self._index.iter_shards()


# ---- embedding and flow tasks ------------------------------------------------------------

# per worker process: a worker runs many tasks, and a model embedder or an open index is
# expensive to make, so each is made once per worker and key
_WORKER_CACHE: dict[Any, Any] = {}


@dataclass(frozen=True)
class EmbedderFactory:
    """How a worker gets the scan's embedder: by name (what ``get_embedder`` takes), or the
    pickled object for an embedder passed in (it must pickle)."""

    name: str | None
    options: tuple[tuple[str, Any], ...] = ()
    threads: int | None = None
    pickled: bytes | None = None

    def make(self) -> Embedder:
        from memlens.embed import get_embedder

        if self.pickled is not None:
            emb: Embedder = pickle.loads(self.pickled)
            return emb
        assert self.name is not None
        return get_embedder(self.name, threads=self.threads, **dict(self.options))


def _worker_embedder(factory: EmbedderFactory) -> Embedder:
    key = ("embedder", factory)
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = factory.make()
    emb: Embedder = _WORKER_CACHE[key]
    return emb


def embed_task(
    factory: EmbedderFactory, path: str, frames: int | None, fps: float | None, max_frames: int
) -> tuple[Any, ...]:
    """Decode and embed one input: ``("ok", frame_indices, rows, warning, decode_s, embed_s)``
    or ``("error", message)`` for a file that cannot be read (an error row, as locally)."""
    from memlens.engine.media import read_for_batch

    t0 = perf_counter()
    try:
        clip, warning = read_for_batch(path, frames=frames, fps=fps, max_frames=max_frames)
    except MediaError as err:
        return ("error", str(err))
    t1 = perf_counter()
    rows = _worker_embedder(factory).embed(clip.frames)
    return ("ok", clip.frame_indices, rows, warning, t1 - t0, perf_counter() - t1)


def motion_task(
    index_path: str,
    settings: MotionSettings,
    flow: FlowOptions,
    candidates: int,
    extra: tuple[str, ...],
    item_id: str,
    source: str,
    match: ContentMatch,
    run: str,
) -> dict[str, Any]:
    """The motion columns of one record (``scan._motion`` in a worker)."""
    from memlens.engine.motion import MotionScorer
    from memlens.engine.scan import _motion, _Pending

    key = ("motion", index_path, settings, flow, candidates, extra)
    if key not in _WORKER_CACHE:
        index = ReferenceIndex.open(index_path)
        _WORKER_CACHE[key] = MotionScorer(index, settings, flow, candidates=candidates, extra=extra)
    scorer: MotionScorer = _WORKER_CACHE[key]
    empty = np.empty((0,), np.int64)
    pending = _Pending(item_id, source, empty, np.empty((0, 0), np.float32), None)
    return _motion(scorer, scorer.index, pending, match, Path(run))


# ---- the scan's engine --------------------------------------------------------------------


class RayScan:
    """The Ray side of one ``scan(engine="ray")``: actors for the index, remote tasks for
    embedding and flows. Use :meth:`start`, and :meth:`close` when the scan ends."""

    def __init__(self, ray: ModuleType, started: bool, index: ReferenceIndex, actors: list[Any],
                 factory: EmbedderFactory) -> None:  # fmt: skip
        self.ray, self.started = ray, started
        self.index = RayIndex(ray, index, actors)
        self.factory = factory
        self._embed = ray.remote(embed_task)
        self._motion = ray.remote(motion_task)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.in_flight = max(2, _IN_FLIGHT_PER_CPU * cpus)

    @classmethod
    def start(
        cls,
        index: ReferenceIndex,
        factory: EmbedderFactory,
        *,
        address: str | None = None,
        actors: int | None = None,
        resident: bool = True,
        device: str = "cpu",
    ) -> RayScan:
        """Connect to (or start) Ray and place the index's shards on ``actors`` actors
        (None: one per cluster CPU, at most one per shard). With a CUDA ``device`` each actor
        takes one GPU and keeps its shards there."""
        ray, started = connect(address)
        try:
            shards = index.shards
            if not shards:
                raise ValueError("the index has no committed shards; build it before scanning")
            if actors is None:
                actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
            elif actors < 1:
                raise ValueError(f"actors must be >= 1; got {actors}")
            groups = shard_groups([s.rows for s in shards], actors)
            opts: dict[str, Any] = {"num_gpus": 1} if device != "cpu" else {}
            remote = ray.remote(ShardGroup).options(**opts)
            handles = [
                remote.remote(str(index.path), g, resident=resident, device=device) for g in groups
            ]
            held = ray.get([h.info.remote() for h in handles])  # fail here if an actor cannot load
            if sum(h["rows"] for h in held) != index.num_rows:
                raise ValueError(
                    f"the actors hold {sum(h['rows'] for h in held)} rows, the index has "
                    f"{index.num_rows}: open the index read-only (its rows must all be committed)"
                )
            return cls(ray, started, index, handles, factory)
        except BaseException:
            if started:
                ray.shutdown()
            raise

    def embedded(
        self, todo: Sequence[MediaFile], frames: int | None, fps: float | None, max_frames: int
    ) -> Iterator[tuple[MediaFile, Any, float, float]]:
        """``(media, outcome, decode_s, embed_s)`` per input, in input order, where outcome is
        ``(frame_indices, rows, warning)`` or a :class:`MediaError`; at most ``in_flight``
        tasks are submitted ahead of the one being consumed."""
        factory = self.ray.put(self.factory)
        queue: deque[tuple[MediaFile, Any]] = deque()
        it = iter(todo)
        for m in it:
            queue.append((m, self._embed.remote(factory, str(m.path), frames, fps, max_frames)))
            if len(queue) >= self.in_flight:
                break
        while queue:
            m, ref = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                args = (factory, str(nxt.path), frames, fps, max_frames)
                queue.append((nxt, self._embed.remote(*args)))
            got = self.ray.get(ref)
            if got[0] == "error":
                yield m, MediaError(got[1]), 0.0, 0.0
            else:
                _, frame_indices, rows, warning, decode_s, embed_s = got
                yield m, (frame_indices, rows, warning), decode_s, embed_s

    def motion(
        self,
        items: Sequence[tuple[str, str, ContentMatch]],
        run: Path,
        settings: MotionSettings,
        flow: FlowOptions,
        candidates: int,
        extra: tuple[str, ...],
    ) -> Iterator[dict[str, Any]]:
        """Submit one flow task per ``(item_id, source, match)`` now; yield their motion
        columns in order."""
        path = str(self.index._index.path)
        refs = [
            self._motion.remote(path, settings, flow, candidates, extra, item, source, m, str(run))
            for item, source, m in items
        ]
        return (self.ray.get(r) for r in refs)

    def close(self) -> None:
        for a in self.index.actors:
            self.ray.kill(a)
        self.index.actors = []
        if self.started:
            self.ray.shutdown()


def embedder_factory(
    index: ReferenceIndex, embedder: Embedder | str | None, threads: int | None
) -> EmbedderFactory:
    """How workers make the embedder ``scan`` resolved from ``embedder`` (see
    ``scan._embedder_for``, which checks it against the index on the driver)."""
    if embedder is None:
        from memlens.engine.scan import _options_of

        return EmbedderFactory(index.spec.name, tuple(_options_of(index.spec).items()), threads)
    if isinstance(embedder, str):
        return EmbedderFactory(embedder, (), threads)
    try:
        return EmbedderFactory(None, pickled=pickle.dumps(embedder))
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise TypeError(
            f"--engine ray ships the embedder to its workers, but {type(embedder).__name__} "
            f"cannot be pickled ({e}); pass the embedder by name instead"
        ) from e
