"""memlens.video.flow (prepare_for_flow, estimate_flow) and memlens.video.flow_cache.

Oracles from methods.md §1.8 (3 frozen frame, 4 pure translation, 5 time reversal,
7 stride), on real photographs and synthetic textures. RAFT cannot run here (no
torchvision, no weights): its errors are tested, and its batching/padding/normalization
plumbing runs against a fake model with raft_large's call signature.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from memlens.datasets.clips import pan_clip
from memlens.datasets.photos import real_photographs
from memlens.errors import ModelUnavailableError
from memlens.index.atomic import is_temp_name
from memlens.video import flow as flow_mod
from memlens.video.errors import MediaNotFoundError
from memlens.video.flow import (
    estimate_flow,
    flow_frame_indices,
    flow_size,
    flow_throughput,
    prepare_for_flow,
)
from memlens.video.flow_cache import FlowCache, FlowCacheWarning, flow_cache_key

OPENCV_METHODS = ("dis", "farneback")
MARGIN = 24  # px left out at each border (np.roll's wrap seam, pyramid border effects)
# Fraction of interior pixels whose flow is within 0.25 px of the true shift: nearly all
# on texture (measured 1.0); a photograph has flat patches where flow is ill-posed and gets
# smoothed over (coffee crop: DIS 0.94, Farneback 0.60-0.69).
PIXEL_FRACTION = {"noise": 0.99, "texture": 0.99, "photo": 0.5}


def photo_crop(name: str = "astronaut", size: int = 256) -> np.ndarray:
    return np.ascontiguousarray(real_photographs()[name][64 : 64 + size, 96 : 96 + size])


def texture(seed: int, size: int = 256) -> np.ndarray:
    """A smooth random RGB texture: noise on a 4x coarser grid, bicubically upsampled, so
    it has structure at every scale the flow pyramids look at."""
    noise = np.random.default_rng(seed).random((size // 4, size // 4, 3)).astype(np.float32)
    big = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    return (255 * (big - big.min()) / np.ptp(big)).astype(np.uint8)


def rolled(image: np.ndarray, count: int, step: int) -> np.ndarray:
    """methods.md oracle 4: frame t is ``image`` rolled by t * step px along W."""
    return np.stack([np.roll(image, t * step, axis=1) for t in range(count)])


def interior_median(flow: np.ndarray) -> np.ndarray:
    """Median (dx, dy) over all pairs, away from the borders."""
    return np.median(flow[:, MARGIN:-MARGIN, MARGIN:-MARGIN].reshape(-1, 2), axis=0)


# -- oracle 3: frozen frame ------------------------------------------------------------------


@pytest.mark.parametrize("method", OPENCV_METHODS)
def test_frozen_frame_has_exactly_zero_flow(method: str) -> None:
    video = np.stack([photo_crop()] * 4)
    flow = estimate_flow(video, method=method)
    assert flow.shape == (3, 256, 256, 2)
    assert flow.dtype == np.float32
    assert np.abs(flow).max() == 0.0


def test_raw_farneback_is_not_zero_on_identical_frames() -> None:
    """Why estimate_flow special-cases identical pairs: OpenCV's Farneback alone reports
    spurious border flow (methods.md expected exactly 0). If this starts failing, OpenCV
    fixed it and the special case is merely redundant."""
    gray = cv2.cvtColor(photo_crop(), cv2.COLOR_RGB2GRAY)
    p = flow_mod.FARNEBACK_PARAMS
    args = (p.pyr_scale, p.levels, p.winsize, p.iterations, p.poly_n, p.poly_sigma, p.flags)
    raw = cv2.calcOpticalFlowFarneback(gray, gray, np.empty(0, np.float32), *args)
    assert np.abs(raw).max() > 0.1
    medium = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis = medium.calc(gray, gray, np.empty(0, np.float32))
    assert np.abs(dis).max() == 0.0  # DIS gives exactly 0 by itself


@pytest.mark.parametrize("method", OPENCV_METHODS)
def test_noisy_frozen_frame_is_nearly_static(method: str) -> None:
    """A frozen photo with +-2 levels of fresh noise per frame (as after re-encoding) is
    not identical, so it is really estimated: it must stay well under mu_static = 0.2."""
    rng = np.random.default_rng(1)
    base = photo_crop().astype(np.int16)
    video = np.stack([np.clip(base + rng.integers(-2, 3, base.shape), 0, 255) for _ in range(3)])
    flow = estimate_flow(video.astype(np.uint8), method=method)
    magnitude = np.linalg.norm(flow, axis=-1)
    assert magnitude.mean() < 0.1
    assert np.percentile(magnitude, 99) < 0.5


# -- oracle 4: pure translation --------------------------------------------------------------


@pytest.mark.parametrize("method", OPENCV_METHODS)
@pytest.mark.parametrize("source", ["noise", "texture", "photo"])
@pytest.mark.parametrize("step", [1, 3])
def test_pure_translation_gives_the_shift(method: str, source: str, step: int) -> None:
    images = {
        "noise": lambda: np.random.default_rng(9).integers(0, 256, (256, 256, 3), np.uint8),
        "texture": lambda: texture(7),
        "photo": lambda: photo_crop("coffee"),
    }
    flow = estimate_flow(rolled(images[source](), 4, step), method=method)
    assert flow.shape == (3, 256, 256, 2)
    np.testing.assert_allclose(interior_median(flow), [step, 0.0], atol=0.25)
    inner = flow[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
    close = np.linalg.norm(inner - np.array([step, 0.0]), axis=-1) < 0.25
    assert close.mean() > PIXEL_FRACTION[source]


@pytest.mark.parametrize("preset", ["ultrafast", "fast"])
def test_fast_dis_presets_follow_a_translation(preset: str) -> None:
    flow = estimate_flow(rolled(photo_crop("coffee"), 3, 2), method="dis", preset=preset)
    np.testing.assert_allclose(interior_median(flow), [2.0, 0.0], atol=0.25)


def test_vertical_translation_and_non_square_frames() -> None:
    image = texture(3, 256)[:160, :224]
    video = np.stack([np.roll(image, -2 * t, axis=0) for t in range(3)])
    for method in OPENCV_METHODS:
        flow = estimate_flow(video, method=method)
        assert flow.shape == (2, 160, 224, 2)
        np.testing.assert_allclose(interior_median(flow), [0.0, -2.0], atol=0.25)


# -- oracle 7: stride ------------------------------------------------------------------------


@pytest.mark.parametrize("method", OPENCV_METHODS)
def test_stride_two_doubles_a_constant_velocity(method: str) -> None:
    video = rolled(texture(11), 5, 2)
    one = estimate_flow(video, method=method, stride=1)
    two = estimate_flow(video, method=method, stride=2)
    assert one.shape[0] == 4
    assert two.shape[0] == 3
    m1, m2 = interior_median(one), interior_median(two)
    np.testing.assert_allclose(m1, [2.0, 0.0], atol=0.25)
    np.testing.assert_allclose(m2, 2 * m1, atol=0.25)
    cosine = m1 @ m2 / (np.linalg.norm(m1) * np.linalg.norm(m2))
    assert cosine > 0.999


# -- oracle 5: time reversal -----------------------------------------------------------------


@pytest.mark.parametrize("method", OPENCV_METHODS)
def test_time_reversal_negates_the_flow(method: str) -> None:
    # A pan over a real photo: sub-pixel steps (2.5, 1.0) photo px per frame, no wrap seam.
    video = pan_clip(
        real_photographs()["astronaut"], frames=5, size=(192, 160), direction=(2.5, 1.0)
    )
    forward = estimate_flow(video, method=method)
    backward = estimate_flow(video[::-1].copy(), method=method)
    # The window moves right/down, so the content moves left/up.
    np.testing.assert_allclose(interior_median(forward), [-2.5, -1.0], atol=0.25)
    np.testing.assert_allclose(interior_median(backward), [2.5, 1.0], atol=0.25)
    # Pair t of the reversed video is pair T-2-t of the original, traversed backwards.
    residual = forward[::-1] + backward
    inner = np.linalg.norm(residual[:, MARGIN:-MARGIN, MARGIN:-MARGIN], axis=-1)
    assert np.median(inner) < 0.25


# -- threads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", OPENCV_METHODS)
def test_thread_count_does_not_change_the_result_and_is_restored(method: str) -> None:
    video = rolled(texture(5, 128), 5, 1)
    before = cv2.getNumThreads()
    serial = estimate_flow(video, method=method, threads=1)
    assert cv2.getNumThreads() == before
    parallel = estimate_flow(video, method=method, threads=3)
    assert cv2.getNumThreads() == before
    np.testing.assert_array_equal(serial, parallel)
    assert parallel.flags.c_contiguous


def test_odd_sizes_and_non_contiguous_input() -> None:
    video = rolled(texture(2, 128), 3, 1)[:, 3:40, 5:50]  # 37 x 45, a non-contiguous view
    assert not video.flags.c_contiguous
    for method in OPENCV_METHODS:
        assert estimate_flow(video, method=method).shape == (2, 37, 45, 2)
    tiny = rolled(texture(2, 32), 2, 1)[:, :5, :7]
    assert estimate_flow(tiny, method="farneback").shape == (1, 5, 7, 2)


# -- prepare_for_flow ------------------------------------------------------------------------


def indexed_video(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frame i is constant 20 * i, so a frame's value names its source index."""
    return np.stack([np.full((height, width, 3), 20 * i, np.uint8) for i in range(count)])


def test_prepare_keeps_aspect_with_multiples_of_eight() -> None:
    wide = prepare_for_flow(indexed_video(3, 120, 160), short_side=64)
    assert wide.shape == (3, 64, 88, 3)  # 160 * 64 / 120 = 85.3 -> 88
    tall = prepare_for_flow(indexed_video(2, 1280, 720), short_side=256)
    assert tall.shape == (2, 456, 256, 3)  # 1280 * 256 / 720 = 455.1 -> 456
    assert flow_size(1920, 1080) == (456, 256)
    assert flow_size(256, 256) == (256, 256)
    assert flow_size(1000, 10, short_side=8) == (800, 8)
    for w, h in [(33, 97), (640, 480), (500, 499), (3, 200)]:
        fw, fh = flow_size(w, h, short_side=128)
        assert fw % 8 == 0
        assert fh % 8 == 0
        assert min(fw, fh) == 128
        assert abs(max(fw, fh) - max(w, h) * 128 / min(w, h)) <= 4


def test_prepare_exact_size_puts_two_videos_on_one_grid() -> None:
    generated = prepare_for_flow(indexed_video(4, 90, 160), size=(100, 60))
    training = prepare_for_flow(indexed_video(4, 480, 640), size=(100, 60), short_side=512)
    assert generated.shape == training.shape == (4, 60, 100, 3)
    np.testing.assert_array_equal(generated, training)  # constant frames survive resizing


def test_prepare_resamples_time_with_linspace() -> None:
    video = indexed_video(10)
    picked = prepare_for_flow(video, frames=5, short_side=48)
    np.testing.assert_array_equal(picked[:, 0, 0, 0] // 20, [0, 2, 4, 7, 9])
    # More frames than the video has: frames repeat (np.round is half-to-even).
    up = prepare_for_flow(video[:4], frames=7, short_side=48)
    np.testing.assert_array_equal(up[:, 0, 0, 0] // 20, [0, 0, 1, 2, 2, 2, 3])
    np.testing.assert_array_equal(flow_frame_indices(10, 5), [0, 2, 4, 7, 9])
    np.testing.assert_array_equal(flow_frame_indices(1, 3), [0, 0, 0])
    assert prepare_for_flow(video, short_side=48).shape[0] == 10


def test_prepare_at_target_size_is_a_copy_of_the_input() -> None:
    video = rolled(texture(4, 64), 3, 1)
    out = prepare_for_flow(video, short_side=64)
    np.testing.assert_array_equal(out, video)
    assert not np.shares_memory(out, video)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"short_side": 250}, ValueError, "short_side must be a multiple of 8"),
        ({"short_side": 0}, ValueError, "short_side must be >= 1"),
        ({"frames": 0}, ValueError, "frames must be >= 1"),
        ({"frames": 2.5}, TypeError, "frames must be a positive int"),
        ({"size": (64,)}, ValueError, "size must be a .width, height. pair"),
        ({"size": (64, 0)}, ValueError, "size height must be >= 1"),
    ],
)
def test_prepare_argument_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        prepare_for_flow(indexed_video(3), **kwargs)


def test_prepare_rejects_bad_video() -> None:
    with pytest.raises(ValueError, match=r"video must be \(T, H, W, 3\) uint8"):
        prepare_for_flow(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="at least 1"):
        prepare_for_flow(np.zeros((0, 8, 8, 3), np.uint8))


# -- estimate_flow argument errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"stride": 0}, ValueError, r"stride must be >= 1 and < T=3"),
        ({"stride": 3}, ValueError, r"stride must be >= 1 and < T=3 .* got 3"),
        ({"stride": 1.0}, TypeError, "stride must be an int"),
        ({"stride": True}, TypeError, "stride must be an int"),
        ({"method": "lucas-kanade"}, ValueError, "method must be one of dis, farneback, raft"),
        ({"preset": "slow"}, ValueError, "preset must be one of ultrafast, fast, medium"),
        ({"threads": 0}, ValueError, "threads must be >= 1"),
        ({"batch_size": 0, "method": "raft", "raft_weights": "w.pth"}, ValueError, "batch_size"),
    ],
)
def test_estimate_argument_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        estimate_flow(rolled(texture(0, 64), 3, 1), **kwargs)


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (
            np.zeros((3, 64, 64, 3), np.float32),
            r"frames must be \(T, H, W, 3\) uint8 RGB; got \(3, 64, 64, 3\) float32",
        ),
        (np.zeros((3, 64, 64), np.uint8), r"got \(3, 64, 64\) uint8"),
        (np.zeros((3, 64, 64, 4), np.uint8), r"got \(3, 64, 64, 4\)"),
        (np.zeros((1, 64, 64, 3), np.uint8), "at least 2"),
        (np.zeros((2, 0, 64, 3), np.uint8), "at least 2"),
    ],
)
def test_estimate_rejects_bad_frames(frames: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        estimate_flow(frames)


def test_dis_rejects_frames_it_would_crash_on() -> None:
    # OpenCV 5.0's DIS segfaults on e.g. 20x300 frames; the check must come first.
    wide = np.zeros((2, 20, 300, 3), np.uint8)
    with pytest.raises(ValueError, match=r"at least 32x32 px .* got 300x20"):
        estimate_flow(wide, method="dis")
    assert estimate_flow(wide, method="farneback").shape == (1, 20, 300, 2)


# -- RAFT ------------------------------------------------------------------------------------


def test_raft_without_weights_says_they_are_needed() -> None:
    with pytest.raises(ValueError, match="method='raft' needs raft_weights"):
        estimate_flow(rolled(texture(0, 64), 2, 1), method="raft")


def test_raft_with_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"raft_weights .* is not a file"):
        estimate_flow(rolled(texture(0, 64), 2, 1), method="raft", raft_weights=tmp_path / "x.pth")


def test_raft_without_torchvision_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "raft_large.pth"
    weights.write_bytes(b"not used: torchvision is missing first")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes the import fail here
    flow_mod._load_raft.cache_clear()
    with pytest.raises(ModelUnavailableError, match="needs torchvision"):
        estimate_flow(rolled(texture(0, 64), 2, 1), method="raft", raft_weights=weights)


def test_raft_rejects_a_bad_device(tmp_path: Path) -> None:
    weights = tmp_path / "raft_large.pth"
    weights.write_bytes(b"x")
    with pytest.raises(ValueError, match="device must be a torch device"):
        estimate_flow(
            rolled(texture(0, 64), 2, 1), method="raft", raft_weights=weights, device="gpu0"
        )


class FakeRaft:
    """raft_large's call signature; returns a flow that reveals what it was given:
    dx = the padded column index, dy = (mean(second) - mean(first)) in frame-index units
    of :func:`indexed_video` (each frame 20 levels brighter than the previous)."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], float, float, int]] = []

    def __call__(self, first, second, num_flow_updates: int):  # type: ignore[no-untyped-def]
        import torch

        b, _, h, w = first.shape
        self.calls.append(
            (tuple(first.shape), float(first.min()), float(first.max()), num_flow_updates)
        )
        dx = torch.arange(w, dtype=torch.float32).expand(b, h, w)
        steps = (second - first).mean(dim=(1, 2, 3)) * 127.5 / 20
        dy = steps[:, None, None].expand(b, h, w)
        return [torch.zeros(b, 2, h, w), torch.stack([dx, dy], dim=1)]


def test_raft_plumbing_pads_batches_normalizes_and_crops() -> None:
    video = indexed_video(8, height=36, width=50)  # 8 frames -> 6 pairs at stride 2
    video[:, 0, 0] = (0, 128, 255)  # full range present in every frame
    video[5] = video[3]  # pair (3, 5) identical -> exactly zero flow
    fake = FakeRaft()
    flow = flow_mod._raft_pairs(fake, video, 2, device="cpu", batch_size=4)
    assert flow.shape == (6, 36, 50, 2)
    assert flow.dtype == np.float32
    shapes = [call[0] for call in fake.calls]
    assert shapes == [(4, 3, 40, 56), (2, 3, 40, 56)]  # padded to /8, batches of 4 then 2
    assert all(call[1] == -1.0 and call[2] == 1.0 for call in fake.calls)  # [-1, 1] inputs
    assert all(call[3] == flow_mod.RAFT_ITERATIONS == 12 for call in fake.calls)
    left = (56 - 50) // 2
    np.testing.assert_array_equal(flow[0, 0, :, 0], np.arange(50) + left)  # cropped centre
    # dy is the index step of each (t, t + 2) pair: frame 5 is a copy of frame 3.
    expected_steps = np.array([2, 2, 2, 0, 2, 4], np.float32)
    nearly = np.median(flow[..., 1].reshape(6, -1), axis=1)
    np.testing.assert_allclose(nearly, expected_steps, atol=0.05)
    assert np.abs(flow[3]).max() == 0.0


def test_raft_padding_is_split_evenly() -> None:
    assert flow_mod._raft_padding(256, 256) == (0, 0, 0, 0)
    assert flow_mod._raft_padding(36, 50) == (3, 3, 2, 2)
    assert flow_mod._raft_padding(33, 41) == (3, 4, 3, 4)


# -- cache -----------------------------------------------------------------------------------


def key(**changes: object) -> dict:
    base = {
        "item": "clip-001",
        "source": {"bytes": 123, "mtime_ns": 4},
        "frames": 16,
        "size": [256, 256],
        "stride": 1,
        "method": "dis",
        "preset": "medium",
    }
    base.update(changes)
    return base


class Counter:
    def __init__(self, flow: np.ndarray) -> None:
        self.flow = flow
        self.calls = 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.flow


def random_flow(seed: int = 0, shape: tuple[int, ...] = (3, 16, 24, 2)) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 5).astype(np.float32)


def visible_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_cache_hit_returns_the_same_array_without_computing(tmp_path: Path) -> None:
    cache = FlowCache(tmp_path / "flow_cache")
    compute = Counter(random_flow())
    first = cache.get_or_compute(key(), compute)
    second = cache.get_or_compute(key(), compute)
    assert compute.calls == 1
    assert first.dtype == second.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    # float16 storage: relative error <= 2**-11, and the miss returns the stored values too.
    np.testing.assert_allclose(first, compute.flow, rtol=2.0**-11, atol=2.0**-24)
    np.testing.assert_array_equal(first, compute.flow.astype(np.float16).astype(np.float32))
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)
    # A second cache object on the same directory (another process) hits as well.
    assert FlowCache(tmp_path / "flow_cache").get_or_compute(key(), compute) is not None
    assert compute.calls == 1


def test_cache_float32_is_exact(tmp_path: Path) -> None:
    cache = FlowCache(tmp_path, dtype="float32")
    flow = random_flow()
    np.testing.assert_array_equal(cache.get_or_compute(key(), Counter(flow)), flow)
    assert cache.path_for(key()) != FlowCache(tmp_path).path_for(key())  # dtype is in the key


def test_cache_different_key_recomputes(tmp_path: Path) -> None:
    cache = FlowCache(tmp_path)
    compute = Counter(random_flow())
    cache.get_or_compute(key(), compute)
    for changed in (
        key(stride=2),
        key(method="farneback"),
        key(source={"bytes": 124, "mtime_ns": 4}),
    ):
        cache.get_or_compute(changed, compute)
    assert compute.calls == 4
    # Key order and tuple-vs-list do not matter: the key is canonical JSON.
    reordered = dict(reversed(list(key(size=(256, 256)).items())))
    cache.get_or_compute(reordered, compute)
    assert compute.calls == 4


def damage_truncate(npy: Path) -> None:
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])


def damage_flip(npy: Path) -> None:
    data = bytearray(npy.read_bytes())
    data[-3] ^= 0xFF
    npy.write_bytes(bytes(data))


def damage_sidecar_garbage(npy: Path) -> None:
    npy.with_suffix(".json").write_bytes(b"\x00{not json")


def damage_sidecar_missing(npy: Path) -> None:
    npy.with_suffix(".json").unlink()


def damage_empty(npy: Path) -> None:
    npy.write_bytes(b"")


def damage_not_npy(npy: Path) -> None:
    npy.write_bytes(b"\x93NUMPY garbage")


@pytest.mark.parametrize(
    "damage",
    [
        damage_truncate,
        damage_flip,
        damage_sidecar_garbage,
        damage_sidecar_missing,
        damage_empty,
        damage_not_npy,
    ],
)
def test_damaged_entry_is_recomputed_and_overwritten(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    cache = FlowCache(tmp_path)
    compute = Counter(random_flow())
    good = cache.get_or_compute(key(), compute)
    damage(cache.path_for(key()))
    again = cache.get_or_compute(key(), compute)
    assert compute.calls == 2
    np.testing.assert_array_equal(again, good)
    cache.get_or_compute(key(), compute)  # repaired: a hit now
    assert compute.calls == 2


def test_cache_files_are_hashed_names_with_a_debug_sidecar(tmp_path: Path) -> None:
    cache = FlowCache(tmp_path / "c")
    evil = key(item="../../../etc/passwd")
    cache.get_or_compute(evil, Counter(random_flow()))
    files = visible_files(tmp_path)
    assert [p.suffix for p in files] == [".json", ".npy"]
    npy = cache.path_for(evil)
    assert npy.parent.parent == tmp_path / "c"
    assert npy.stem == cache.key_hash(evil)
    assert len(npy.stem) == 40
    assert set(npy.stem) <= set("0123456789abcdef")
    sidecar = json.loads(npy.with_suffix(".json").read_text())
    assert sidecar["key"]["key"]["item"] == "../../../etc/passwd"
    assert sidecar["dtype"] == "float16"
    assert sidecar["shape"] == [3, 16, 24, 2]
    assert np.load(npy).dtype == np.float16


def test_cache_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FlowCache(tmp_path)
    seen: list[tuple[str, list[str]]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # At the moment of the rename the final name does not exist yet, and what does
        # exist under the entry's directory is a hidden temp file.
        seen.append((Path(src).name, [p.name for p in Path(dst).parent.iterdir()]))
        assert not Path(dst).exists()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    cache.get_or_compute(key(), Counter(random_flow()))
    assert len(seen) == 2  # .npy, then .json
    for temp, listing in seen:
        assert temp.startswith(".")
        assert is_temp_name(temp)
        assert all(name.startswith(".") or name.endswith(".npy") for name in listing)
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temp left behind


def test_failed_write_warns_returns_the_flow_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FlowCache(tmp_path)
    compute = Counter(random_flow())

    def disk_full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.warns(FlowCacheWarning, match="No space left"):
        flow = cache.get_or_compute(key(), compute)
    assert flow.shape == (3, 16, 24, 2)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # neither entry nor temp
    monkeypatch.undo()
    cache.get_or_compute(key(), compute)
    cache.get_or_compute(key(), compute)
    assert compute.calls == 2
    assert cache.stats.write_failures == 1


def test_cache_rejects_bad_keys_and_flows(tmp_path: Path) -> None:
    cache = FlowCache(tmp_path)
    with pytest.raises(TypeError, match=r"key_parts\['source'\] must be JSON data"):
        cache.get_or_compute(key(source=Path("/v.mp4")), Counter(random_flow()))
    with pytest.raises(TypeError, match="keys must be str"):
        cache.get_or_compute({"nested": {1: "a"}}, Counter(random_flow()))
    with pytest.raises(ValueError, match="must be finite"):
        cache.get_or_compute(key(frames=float("nan")), Counter(random_flow()))
    with pytest.raises(ValueError, match=r"\(T', H, W, 2\) float flow"):
        cache.get_or_compute(key(), Counter(np.zeros((3, 4, 4), np.float32)))
    bad = random_flow()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        cache.get_or_compute(key(), Counter(bad))
    with pytest.raises(ValueError, match="do not fit float16"):
        cache.get_or_compute(key(), Counter(random_flow() * 1e5))
    with pytest.raises(ValueError, match="dtype must be one of float16, float32"):
        FlowCache(tmp_path, dtype="bfloat16")
    assert not visible_files(tmp_path)  # nothing invalid was stored
    # numpy scalars in keys are fine (they are what shapes and counters often are)
    cache.get_or_compute(key(frames=np.int64(16)), Counter(random_flow()))
    assert cache.path_for(key(frames=np.int64(16))) == cache.path_for(key(frames=16))


def test_flow_cache_key_fingerprints_the_source(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"0123456789")
    common: dict[str, Any] = {"frames": 16, "size": (256, 256), "stride": 1}
    k1 = flow_cache_key("v", video, method="dis", **common)
    assert k1["source"] == {"bytes": 10, "mtime_ns": video.stat().st_mtime_ns}
    assert k1["preset"] == "medium"
    assert k1["estimator"] == {"opencv": cv2.__version__}
    assert flow_cache_key("v", video, method="farneback", preset="fast", **common)["preset"] is None
    summed = flow_cache_key("v", video, method="dis", checksum=True, **common)
    assert len(summed["source"]["sha256"]) == 64
    video.write_bytes(b"01234567890")
    assert flow_cache_key("v", video, method="dis", **common)["source"]["bytes"] == 11
    weights = tmp_path / "raft.pth"
    weights.write_bytes(b"w")
    raft = flow_cache_key("v", None, method="raft", raft_weights=weights, **common)
    assert raft["source"] is None
    assert len(raft["weights_sha256"]) == 64
    assert raft["iterations"] == 12
    FlowCache(tmp_path / "c").get_or_compute(raft, Counter(random_flow()))  # JSON-able
    with pytest.raises(MediaNotFoundError, match="does not exist"):
        flow_cache_key("v", tmp_path / "nope.mp4", method="dis", **common)
    with pytest.raises(ValueError, match="needs raft_weights"):
        flow_cache_key("v", None, method="raft", **common)


def test_remove_stale_temps(tmp_path: Path) -> None:
    cache = FlowCache(tmp_path)
    cache.get_or_compute(key(), Counter(random_flow()))
    npy = cache.path_for(key())
    stale = npy.parent / f".{npy.name}.0123456789abcdef.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (1, 1))
    fresh = npy.parent / f".{npy.name}.fedcba9876543210.tmp"
    fresh.write_bytes(b"in progress")
    assert cache.remove_stale_temps() == [stale]
    assert fresh.exists()
    assert npy.exists()


# -- throughput helper -----------------------------------------------------------------------


def test_flow_throughput_reports_pairs_per_second() -> None:
    rates = flow_throughput(
        methods=("dis:ultrafast", "farneback"), size=(64, 48), pairs=3, repeats=1
    )
    assert set(rates) == {"dis:ultrafast", "farneback"}
    assert all(r > 0 for r in rates.values())
    custom = flow_throughput(rolled(texture(0, 64), 3, 1), methods=("dis:medium",), repeats=1)
    assert custom["dis:medium"] > 0
