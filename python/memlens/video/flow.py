"""Optical flow between video frames, the input of the motion metric (methods.md §1.4).

:func:`prepare_for_flow` puts a generated and a training video on one frame count and one
pixel grid (flows are compared pixel to pixel); :func:`estimate_flow` turns (T, H, W, 3)
uint8 RGB frames into (T - stride, H, W, 2) float32 flow in pixels, ``flow[t, y, x] =
(dx, dy)`` mapping frame ``t`` to frame ``t + stride``. Estimators:

* ``"dis"`` (default): OpenCV's Dense Inverse Search, presets ultrafast/fast/medium. The
  fastest CPU estimator here and, at "medium", as accurate as Farneback on translations.
* ``"farneback"``: OpenCV's Farneback with the parameters of methods.md §1.4.
* ``"raft"``: torchvision's ``raft_large`` (12 refinement iterations) from a local weights
  file; never downloads. Needs torchvision built for the installed torch.

A pair of identical frames gets exactly zero flow with every method. That is the true
answer, and it matters for the "frozen frame" case (content-memorized, not
motion-memorized): raw OpenCV Farneback returns up to ~1.2 px of spurious flow near the
bottom/right border of a 256x256 photo paired with itself (its update step treats the
last row and column as out of range), which a mu_min = 0.5 px mask would count as motion.

OpenCV's thread count is process-global: :func:`estimate_flow` sets it for the duration of
the call and restores it, so concurrent calls from several Python threads should pass the
same ``threads``. Torch is imported only for ``method="raft"``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from memlens.errors import ModelUnavailableError
from memlens.video.sampling import positive_int, resize_frame


@dataclass(frozen=True)
class FarnebackParams:
    """Arguments of ``cv2.calcOpticalFlowFarneback`` after the images."""

    pyr_scale: float
    levels: int
    winsize: int
    iterations: int
    poly_n: int
    poly_sigma: float
    flags: int


METHODS = ("dis", "farneback", "raft")
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# methods.md §1.4, the CPU/test estimator of the reconstruction.
FARNEBACK_PARAMS = FarnebackParams(
    pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0
)
RAFT_ITERATIONS = 12
# RAFT works on a 1/8 feature grid, so both sides must be multiples of 8.
SIZE_MULTIPLE = 8
# OpenCV 5.0's DIS reads out of bounds (segfaults) on short, wide frames: heights 12-31 at
# widths ~40-640 crash with patch size 8 (ultrafast/fast). A 32 px minimum side was clean
# in a sweep of heights 12-63 x widths 12-3840 for every preset.
DIS_MIN_SIDE = 32
# Bump when a change here alters the flow computed for the same input (part of cache keys).
FLOW_VERSION = 1

Estimator = Callable[[np.ndarray, np.ndarray], np.ndarray]
# OpenCV allocates an output passed as None; its type stubs do not say so.
_ALLOCATE: Any = None


# -- preparation -----------------------------------------------------------------------------


def flow_frame_indices(count: int, n: int) -> np.ndarray:
    """Exactly ``n`` indices spread uniformly over ``[0, count - 1]`` (``np.linspace``,
    rounded half-to-even as in ``memlens.video.uniform_indices``).

    Unlike ``uniform_indices`` it repeats frames when ``n > count``: two videos compared
    pixel to pixel need the same frame count, and a repeated frame is a zero-flow pair
    (a 2x-speed copy resampled to T frames then shows half its pairs still). int64.
    """
    total = positive_int("count", count)
    wanted = positive_int("frames", n)
    return np.round(np.linspace(0, total - 1, wanted)).astype(np.int64)


def flow_size(width: int, height: int, *, short_side: int = 256) -> tuple[int, int]:
    """(width, height) with the short side ``short_side`` and the aspect kept, the long
    side rounded to the nearest multiple of 8 (RAFT's requirement; at least 8)."""
    w = positive_int("width", width)
    h = positive_int("height", height)
    side = _multiple_of_8("short_side", short_side)
    if w <= h:
        return side, _round_to_8(h * side / w)
    return _round_to_8(w * side / h), side


def prepare_for_flow(
    video: np.ndarray,
    /,
    *,
    frames: int | None = None,
    short_side: int = 256,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Resample ``video`` (T, H, W, 3) uint8 to ``frames`` frames (all when None; see
    :func:`flow_frame_indices`) and resize every frame.

    size: the exact (width, height), for putting a generated and a training video on one
    grid (any positive size; RAFT pads to multiples of 8 internally). When None, the short
    side becomes ``short_side`` (a multiple of 8) with the aspect kept (:func:`flow_size`).
    ``size`` takes precedence over ``short_side``. Resizing averages when shrinking
    (INTER_AREA) and interpolates bilinearly when growing. Returns a new C-contiguous
    (frames, H', W', 3) uint8 array.
    """
    arr = _check_video("video", video, min_frames=1)
    n = None if frames is None else positive_int("frames", frames)
    height, width = arr.shape[1:3]
    target = (
        _check_size(size) if size is not None else flow_size(width, height, short_side=short_side)
    )
    if n is not None:
        arr = arr[flow_frame_indices(arr.shape[0], n)]
    out = np.empty((arr.shape[0], target[1], target[0], 3), dtype=np.uint8)
    for i, frame in enumerate(arr):
        out[i] = resize_frame(frame, target)
    return out


# -- estimation ------------------------------------------------------------------------------


def estimate_flow(
    frames: np.ndarray,
    *,
    stride: int = 1,
    method: str = "dis",
    preset: str = "medium",
    raft_weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    threads: int | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """Dense optical flow from frame ``t`` to frame ``t + stride`` for every ``t``.

    frames: (T, H, W, 3) uint8 RGB, T >= 2 (e.g. ``read_media(...).frames`` after
    :func:`prepare_for_flow`). stride: 1 <= stride < T (methods.md's k). method: "dis",
    "farneback" or "raft". preset: the DIS preset (ultrafast, fast, medium); ignored by the
    other methods. OpenCV methods run on grayscale (ITU-R BT.601 luma) on the CPU and
    ignore ``device``; DIS needs both sides >= 32 px.

    threads: OpenCV methods estimate frame pairs on this many threads (None: every core
    available to the process), each running OpenCV single-threaded; one pair per thread
    scales better than OpenCV's own parallelism (measured on 2 cores: 1.8-2x for DIS
    medium and Farneback, against 0.9-1.5x from OpenCV's threads).

    raft_weights: a local torchvision ``raft_large`` state dict (``.pth``), required for
    "raft" and loaded with ``weights_only=True``; device: the torch device RAFT runs on;
    batch_size: frame pairs per RAFT forward pass.

    Returns C-contiguous (T - stride, H, W, 2) float32, (dx, dy) in pixels.
    """
    arr = _check_video("frames", frames, min_frames=2)
    k = _check_stride(stride, arr.shape[0])
    name = _check_choice("method", method, METHODS)
    dis_preset = _check_choice("preset", preset, tuple(DIS_PRESETS))
    workers = _check_threads(threads)
    if name == "raft":
        batch = positive_int("batch_size", batch_size)
        return _raft_flow(arr, k, raft_weights, device, batch)
    if name == "dis":
        _check_dis_size(arr.shape[1], arr.shape[2])
    return _opencv_flow(arr, k, _estimator_factory(name, dis_preset), workers)


def _opencv_flow(
    frames: np.ndarray, stride: int, factory: Callable[[], Estimator], threads: int
) -> np.ndarray:
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    count = gray.shape[0] - stride
    out = np.empty((count, *gray.shape[1:], 2), dtype=np.float32)
    workers = min(threads, count)

    def run(pairs: np.ndarray) -> None:
        estimate = factory()  # one estimator per thread: a DIS object is stateful
        for t in pairs:
            out[t] = _pair_flow(estimate, gray[t], gray[t + stride])

    # One interleaved share of the pairs per worker (t = w, w + workers, ...), so a frozen
    # stretch (instant pairs) does not leave one thread idle; each thread reuses its own
    # estimator and writes disjoint slices of ``out``; OpenCV releases the GIL meanwhile.
    chunks = [np.arange(w, count, workers) for w in range(workers)]
    with _opencv_threads(1 if workers > 1 else threads):
        if workers == 1:
            run(chunks[0])
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="memlens-flow") as pool:
                list(pool.map(run, chunks))  # list() re-raises a worker's exception
    return out


def _pair_flow(estimate: Estimator, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    if np.array_equal(first, second):
        # Identical frames have zero flow by definition; see the module docstring for the
        # spurious border flow Farneback would report otherwise.
        return np.zeros((*first.shape, 2), dtype=np.float32)
    return estimate(first, second)


def _estimator_factory(method: str, preset: str) -> Callable[[], Estimator]:
    if method == "farneback":

        def farneback() -> Estimator:
            p = FARNEBACK_PARAMS
            return lambda a, b: cv2.calcOpticalFlowFarneback(
                a,
                b,
                _ALLOCATE,
                p.pyr_scale,
                p.levels,
                p.winsize,
                p.iterations,
                p.poly_n,
                p.poly_sigma,
                p.flags,
            )

        return farneback

    def dis() -> Estimator:
        flow = cv2.DISOpticalFlow.create(DIS_PRESETS[preset])
        return lambda a, b: flow.calc(a, b, _ALLOCATE)

    return dis


@contextlib.contextmanager
def _opencv_threads(count: int) -> Iterator[None]:
    """Set OpenCV's (process-global) thread count for a block, then restore it."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


# -- RAFT ------------------------------------------------------------------------------------


def _raft_flow(
    frames: np.ndarray,
    stride: int,
    weights: str | os.PathLike[str] | None,
    device: str,
    batch_size: int,
) -> np.ndarray:
    path = _check_weights(weights)
    _check_device(device)
    stat = path.stat()
    model = _load_raft(str(path), stat.st_size, stat.st_mtime_ns, device)
    return _raft_pairs(model, frames, stride, device=device, batch_size=batch_size)


def _check_device(device: object) -> None:
    import torch

    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'cpu' or 'cuda'; got {device!r}")
    try:
        torch.device(device)
    except RuntimeError as e:
        raise ValueError(
            f"device must be a torch device such as 'cpu' or 'cuda'; got {device!r}"
        ) from e


def _check_weights(weights: str | os.PathLike[str] | None) -> Path:
    if weights is None:
        raise ValueError(
            "method='raft' needs raft_weights: the path of a local torchvision raft_large "
            "state dict (Raft_Large_Weights.C_T_SKHT_V2); memlens never downloads weights"
        )
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"raft_weights must be a path; got {type(weights).__name__}")
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"raft_weights '{path}' is not a file")
    return path


def _import_raft_large() -> Callable[..., Any]:
    try:
        from torchvision.models.optical_flow import raft_large
    except Exception as e:  # ImportError, or a torchvision built for another torch
        raise ModelUnavailableError(
            "method='raft' needs torchvision (torchvision.models.optical_flow) built for the "
            "installed torch: install the torchvision wheel matching your torch from the "
            f"PyTorch index, or use method='dis' or 'farneback' ({type(e).__name__}: {e})"
        ) from e
    return raft_large


@functools.lru_cache(maxsize=2)
def _load_raft(path: str, size: int, mtime_ns: int, device: str) -> Any:
    """raft_large with the weights at ``path`` on ``device``, in eval mode. Cached on the
    file's size and mtime too, so replacing the file reloads it."""
    del size, mtime_ns  # cache key only
    raft_large = _import_raft_large()
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"raft_weights '{path}' cannot be loaded as a state dict: {e}") from e
    model = raft_large(weights=None, progress=False)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(
            f"raft_weights '{path}' is not a torchvision raft_large state dict: {e}"
        ) from e
    return model.eval().to(device)


def _raft_pairs(
    model: Callable[..., Any], frames: np.ndarray, stride: int, *, device: str, batch_size: int
) -> np.ndarray:
    """Run ``model`` (raft_large's call signature) over all (t, t + stride) pairs in
    batches; pads to multiples of 8 and crops the flow back to (H, W)."""
    import torch

    height, width = frames.shape[1:3]
    pad = _raft_padding(height, width)
    count = frames.shape[0] - stride
    out = np.empty((count, height, width, 2), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            index = np.arange(start, min(start + batch_size, count))
            first = _raft_input(frames[index], pad, device)
            second = _raft_input(frames[index + stride], pad, device)
            # raft_large returns the flow after every iteration; the last is the estimate.
            flow = model(first, second, num_flow_updates=RAFT_ITERATIONS)[-1]
            flow = flow[:, :, pad[2] : pad[2] + height, pad[0] : pad[0] + width]
            out[index] = flow.permute(0, 2, 3, 1).float().cpu().numpy()
    for t in range(count):
        if np.array_equal(frames[t], frames[t + stride]):
            out[t] = 0.0  # identical frames: zero flow by definition, as for OpenCV
    return out


def _raft_padding(height: int, width: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) replicate padding to multiples of 8, split evenly like
    the original RAFT's InputPadder."""
    pad_h = -height % SIZE_MULTIPLE
    pad_w = -width % SIZE_MULTIPLE
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def _raft_input(frames: np.ndarray, pad: tuple[int, int, int, int], device: str) -> Any:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    x = x.permute(0, 3, 1, 2).float()
    # Raft_Large_Weights' transforms: uint8 -> [0, 1] -> Normalize(0.5, 0.5) = [-1, 1].
    x = x / 127.5 - 1.0
    if any(pad):
        x = F.pad(x, pad, mode="replicate")
    return x


# -- benchmark -------------------------------------------------------------------------------


def flow_throughput(
    frames: np.ndarray | None = None,
    *,
    methods: Sequence[str] = ("dis:ultrafast", "dis:fast", "dis:medium", "farneback"),
    size: tuple[int, int] = (256, 256),
    pairs: int = 32,
    threads: int | None = None,
    repeats: int = 3,
    raft_weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> dict[str, float]:
    """Frame pairs per second of :func:`estimate_flow` for each method, best of
    ``repeats`` timed runs after one warm-up pair.

    methods: "dis:<preset>", "farneback" or "raft" (needs ``raft_weights``). frames: the
    clip to time, (T, H, W, 3) uint8 with T >= 2; None synthesizes ``pairs + 1`` frames of
    a smooth random texture at ``size`` (W, H) moving (1.7, 0.6) px per frame.
    """
    if frames is None:
        clip = _benchmark_clip(_check_size(size), positive_int("pairs", pairs) + 1)
    else:
        clip = _check_video("frames", frames, min_frames=2)
    rounds = positive_int("repeats", repeats)
    rates: dict[str, float] = {}
    for spec in methods:
        method, _, preset = spec.partition(":")
        options: dict[str, Any] = {
            "method": method,
            "preset": preset or "medium",
            "threads": threads,
            "raft_weights": raft_weights,
            "device": device,
        }
        estimate_flow(clip[:2], **options)  # warm-up: thread pool, model load, caches
        best = math.inf
        for _ in range(rounds):
            start = time.perf_counter()
            estimate_flow(clip, **options)
            best = min(best, time.perf_counter() - start)
        rates[spec] = (clip.shape[0] - 1) / best
    return rates


def _benchmark_clip(size: tuple[int, int], count: int) -> np.ndarray:
    width, height = size
    rng = np.random.default_rng(0)
    big = (width + 64 + 2 * count, height + 64 + count)
    noise = rng.random((big[1] // 4 + 1, big[0] // 4 + 1)).astype(np.float32)
    texture = cv2.resize(noise, big, interpolation=cv2.INTER_CUBIC)
    texture = (255 * (texture - texture.min()) / np.ptp(texture)).astype(np.uint8)
    texture = np.repeat(texture[:, :, None], 3, axis=2)
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    for t in range(count):
        shift = np.array([[1.0, 0.0, 1.7 * t], [0.0, 1.0, 0.6 * t]])
        out[t] = cv2.warpAffine(texture, shift, size, flags=cv2.WARP_INVERSE_MAP)
    return out


# -- validation ------------------------------------------------------------------------------


def _check_video(name: str, value: object, *, min_frames: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
        raise ValueError(f"{name} must be (T, H, W, 3) uint8 RGB; got {arr.shape} {arr.dtype}")
    if arr.shape[0] < min_frames or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(
            f"{name} must hold at least {min_frames} non-empty frame(s); got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def _check_stride(stride: object, count: int) -> int:
    if isinstance(stride, bool) or not isinstance(stride, Integral):
        raise TypeError(f"stride must be an int; got {type(stride).__name__} {stride!r}")
    k = int(stride)
    if not 1 <= k < count:
        raise ValueError(f"stride must be >= 1 and < T={count} (the frame count); got {k}")
    return k


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def _check_threads(threads: object) -> int:
    if threads is None:
        return _available_cores()
    return positive_int("threads", threads)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_dis_size(height: int, width: int) -> None:
    if min(height, width) < DIS_MIN_SIDE:
        raise ValueError(
            f"method='dis' needs frames at least {DIS_MIN_SIDE}x{DIS_MIN_SIDE} px (OpenCV's "
            f"DIS reads out of bounds on smaller ones); got {width}x{height} (WxH). Resize "
            f"with prepare_for_flow or use method='farneback'"
        )


def _check_size(size: object) -> tuple[int, int]:
    if isinstance(size, str) or not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(f"size must be a (width, height) pair; got {size!r}")
    return positive_int("size width", size[0]), positive_int("size height", size[1])


def _multiple_of_8(name: str, value: object) -> int:
    v = positive_int(name, value)
    if v % SIZE_MULTIPLE:
        raise ValueError(f"{name} must be a multiple of {SIZE_MULTIPLE} (RAFT's grid); got {v}")
    return v


def _round_to_8(x: float) -> int:
    return max(SIZE_MULTIPLE, SIZE_MULTIPLE * math.floor(x / SIZE_MULTIPLE + 0.5))


__all__ = [
    "DIS_MIN_SIDE",
    "DIS_PRESETS",
    "FARNEBACK_PARAMS",
    "FLOW_VERSION",
    "METHODS",
    "RAFT_ITERATIONS",
    "estimate_flow",
    "flow_frame_indices",
    "flow_size",
    "flow_throughput",
    "prepare_for_flow",
]
