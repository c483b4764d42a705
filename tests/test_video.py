"""memlens.video (decoding, sampling, listing) and memlens.datasets.clips, on real files
written here with OpenCV (and Pillow for GIF) and on real photographs."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from memlens.datasets.clips import pan_clip, spin_clip, write_image, write_video, zoom_clip
from memlens.datasets.photos import real_photographs
from memlens.errors import MediaError
from memlens.video import (
    IMAGE_EXTENSIONS,
    MEDIA_EXTENSIONS,
    VIDEO_EXTENSIONS,
    CorruptMediaError,
    MediaNotFoundError,
    TruncatedMediaWarning,
    UnsupportedMediaError,
    fps_indices,
    is_image,
    is_video,
    list_media,
    read_frame,
    read_media,
    uniform_indices,
)
from memlens.video.sampling import FpsSelector

# -- coded test videos ----------------------------------------------------------------------
# Frame i carries i as a binary code in 16x16 black/white blocks (rows 0-1 of a 6x4 block
# grid, 12 bits), which every lossy codec here preserves, so each decoded frame says which
# source frame it is. Row 3 is red on the left and blue on the right (channel order).

W, H, BLOCK, N_FRAMES, FPS = 96, 64, 16, 24, 8.0
RED, BLUE = (220, 20, 20), (20, 20, 220)


def coded_frame(i: int) -> np.ndarray:
    frame = np.full((H, W, 3), 128, dtype=np.uint8)
    for bit in range(12):
        r, c = divmod(bit, 6)
        value = 255 if (i >> bit) & 1 else 0
        frame[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = value
    frame[3 * BLOCK :, : W // 2] = RED
    frame[3 * BLOCK :, W // 2 :] = BLUE
    return frame


def frame_code(frame: np.ndarray) -> int:
    """Inverse of coded_frame on a decoded (possibly resized) RGB frame."""
    bh, bw = frame.shape[0] / 4, frame.shape[1] / 6
    code = 0
    for bit in range(12):
        r, c = divmod(bit, 6)
        # The block's central half, away from ringing at the edges.
        y0, y1 = int((r + 0.25) * bh), int((r + 0.75) * bh)
        x0, x1 = int((c + 0.25) * bw), int((c + 0.75) * bw)
        if frame[y0:y1, x0:x1].mean() > 128:
            code |= 1 << bit
    return code


def assert_identified(clip_frames: np.ndarray, indices: np.ndarray) -> None:
    assert [frame_code(f) for f in clip_frames] == indices.tolist()


CODED = np.stack([coded_frame(i) for i in range(N_FRAMES)])
CONTAINERS = [("mp4", "mp4v"), ("avi", "MJPG"), ("mkv", "MJPG"), ("webm", "VP80"), ("mov", "mp4v")]


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    # GIF delays are centiseconds: 8 fps -> 12 cs per frame -> 8.33 fps as read back.
    images[0].save(path, save_all=True, append_images=images[1:], duration=1000 / fps, loop=0)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One coded video per container this OpenCV build can write (and a Pillow GIF)."""
    root = tmp_path_factory.mktemp("videos")
    out: dict[str, Path] = {}
    for ext, codec in CONTAINERS:
        try:
            out[ext] = write_video(root / f"coded.{ext}", CODED, fps=FPS, codec=codec)
        except MediaError:
            continue  # not writable in this build; its tests skip
    gif = root / "coded.gif"
    _write_gif(gif, CODED, FPS)
    out["gif"] = gif
    return out


def video(videos: dict[str, Path], ext: str) -> Path:
    if ext not in videos:
        pytest.skip(f"this OpenCV build cannot write .{ext}")
    return videos[ext]


ALL_KINDS = [ext for ext, _ in CONTAINERS] + ["gif"]


# -- sampling -------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ALL_KINDS)
def test_all_frames_decode_in_order_with_content(videos: dict[str, Path], ext: str) -> None:
    clip = read_media(video(videos, ext))
    assert clip.frames.shape == (N_FRAMES, H, W, 3)
    assert clip.frames.dtype == np.uint8
    assert clip.frames.flags.c_contiguous
    assert clip.frame_indices.dtype == np.int64
    assert clip.timestamps.dtype == np.float64
    np.testing.assert_array_equal(clip.frame_indices, np.arange(N_FRAMES))
    assert_identified(clip.frames, clip.frame_indices)
    assert clip.native_frame_count == N_FRAMES
    assert not clip.is_image
    assert clip.native_fps is not None
    if ext != "gif":  # GIF stores centisecond delays: 8 fps comes back as 8.33
        assert clip.native_fps == pytest.approx(FPS)
    np.testing.assert_allclose(clip.timestamps, np.arange(N_FRAMES) / clip.native_fps)
    # RGB, not OpenCV's BGR: the red strip is red.
    red = clip.frames[:, 3 * BLOCK + 4 :, 4 : W // 2 - 4].mean(axis=(0, 1, 2))
    blue = clip.frames[:, 3 * BLOCK + 4 :, W // 2 + 4 : -4].mean(axis=(0, 1, 2))
    assert red[0] > 150 > red[2]
    assert blue[2] > 150 > blue[0]
    assert clip.source == str(videos[ext])
    assert len(clip) == N_FRAMES


@pytest.mark.parametrize("ext", ALL_KINDS)
@pytest.mark.parametrize("n", [1, 5, 7, 24])
def test_frames_n_uniform(videos: dict[str, Path], ext: str, n: int) -> None:
    clip = read_media(video(videos, ext), frames=n)
    expected = np.unique(np.round(np.linspace(0, N_FRAMES - 1, n)).astype(np.int64))
    np.testing.assert_array_equal(clip.frame_indices, expected)
    assert_identified(clip.frames, clip.frame_indices)
    assert clip.native_frame_count == N_FRAMES


def test_frames_n_larger_than_video_gives_each_frame_once(videos: dict[str, Path]) -> None:
    clip = read_media(videos["avi"], frames=100)
    np.testing.assert_array_equal(clip.frame_indices, np.arange(N_FRAMES))
    assert_identified(clip.frames, clip.frame_indices)


@pytest.mark.parametrize(
    ("fps", "expected"),
    [
        (2.0, [0, 4, 8, 12, 16, 20]),
        (3.0, [0, 2, 5, 8, 10, 13, 16, 18, 21]),  # floor(k * 8 / 3): the frame shown at k/3 s
        (8.0, list(range(24))),
        (50.0, list(range(24))),  # faster than the video: every frame once
        (0.3, [0]),
    ],
)
def test_fps_sampling(videos: dict[str, Path], fps: float, expected: list[int]) -> None:
    clip = read_media(videos["mp4"], fps=fps)
    assert clip.frame_indices.tolist() == expected
    assert_identified(clip.frames, clip.frame_indices)
    np.testing.assert_allclose(clip.timestamps, np.asarray(expected) / FPS)
    # Each kept frame is the one on screen at its sampling time k / fps.
    k = np.arange(len(expected)) if fps <= FPS else None
    if k is not None:
        np.testing.assert_allclose(clip.timestamps, np.floor(k * FPS / fps + 1e-9) / FPS)


def test_fps_indices_matches_streaming_selector() -> None:
    for native, fps, count in [
        (8, 3, 50),
        (29.97, 7.5, 300),
        (25, 25, 40),
        (24, 60, 30),
        (30, 1, 95),
    ]:
        selector = FpsSelector(native, fps)
        streamed = [i for i in range(count) if selector.wants(i)]
        assert streamed == fps_indices(count, native, fps).tolist()


def test_uniform_indices_edges() -> None:
    assert uniform_indices(1, 1).tolist() == [0]
    assert uniform_indices(10, 1).tolist() == [0]
    assert uniform_indices(10, 2).tolist() == [0, 9]
    assert uniform_indices(10, 3).tolist() == [0, 4, 9]  # 4.5 rounds half to even
    assert uniform_indices(3, 8).tolist() == [0, 1, 2]
    assert uniform_indices(0, 4).tolist() == []
    for count in range(1, 60):
        for n in range(1, count + 1):
            idx = uniform_indices(count, n)
            assert len(idx) == n
            assert idx[0] == 0
            assert n == 1 or idx[-1] == count - 1
            assert np.all(np.diff(idx) > 0)


def test_max_frames_caps_by_uniform_sampling(videos: dict[str, Path]) -> None:
    path = videos["mp4"]
    capped = read_media(path, max_frames=5)
    np.testing.assert_array_equal(capped.frame_indices, read_media(path, frames=5).frame_indices)
    assert_identified(capped.frames, capped.frame_indices)
    assert read_media(path, fps=4.0, max_frames=3).frame_indices.tolist() == [0, 12, 23]
    assert len(read_media(path, frames=10, max_frames=4)) == 4
    assert len(read_media(path, max_frames=N_FRAMES)) == N_FRAMES
    assert read_media(path, fps=2.0, max_frames=6).frame_indices.tolist() == [0, 4, 8, 12, 16, 20]


class _CountingCapture:
    """Wraps a real capture and counts calls. (Not a cv2.VideoCapture subclass: OpenCV 5's
    bindings crash when the garbage collector frees instances of Python subclasses.)"""

    retrieved = 0
    grabbed = 0
    real = cv2.VideoCapture

    def __init__(self, *args: object) -> None:
        self._cap = _CountingCapture.real(*args)

    def grab(self) -> bool:
        _CountingCapture.grabbed += 1
        return self._cap.grab()

    def retrieve(self) -> tuple[bool, np.ndarray]:
        _CountingCapture.retrieved += 1
        return self._cap.retrieve()

    def __getattr__(self, name: str) -> object:
        return getattr(self._cap, name)


@pytest.mark.parametrize(
    ("kwargs", "retrieved"), [({"frames": 3}, 3), ({"fps": 1.0}, 3), ({"max_frames": 4}, 4)]
)
def test_decode_converts_only_sampled_frames(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch, kwargs: dict, retrieved: int
) -> None:
    monkeypatch.setattr(cv2, "VideoCapture", _CountingCapture)
    _CountingCapture.retrieved = _CountingCapture.grabbed = 0
    clip = read_media(videos["avi"], **kwargs)
    assert len(clip) == retrieved
    assert _CountingCapture.retrieved == retrieved
    # One pass over the stream plus the grab that confirms its end.
    assert _CountingCapture.grabbed == N_FRAMES + 1


@pytest.mark.parametrize("ext", ["mp4", "avi"])
def test_resize(videos: dict[str, Path], ext: str) -> None:
    short = read_media(videos[ext], frames=4, resize=32)
    assert short.frames.shape == (4, 32, 48, 3)  # 96x64 -> short edge 32, aspect kept
    assert_identified(short.frames, short.frame_indices)
    exact = read_media(videos[ext], frames=4, resize=(40, 30))
    assert exact.frames.shape == (4, 30, 40, 3)
    assert_identified(exact.frames, exact.frame_indices)
    up = read_media(videos[ext], frames=2, resize=128)
    assert up.frames.shape == (2, 128, 192, 3)
    assert_identified(up.frames, up.frame_indices)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"frames": 4, "fps": 2.0}, ValueError, "not both"),
        ({"frames": 0}, ValueError, "frames must be >= 1; got 0"),
        ({"frames": 2.5}, TypeError, "frames must be a positive int"),
        ({"frames": True}, TypeError, "frames"),
        ({"fps": 0.0}, ValueError, "fps must be a finite number > 0"),
        ({"fps": float("nan")}, ValueError, "fps"),
        ({"fps": "2"}, TypeError, "fps"),
        ({"resize": 0}, ValueError, "resize must be >= 1"),
        ({"resize": (10, 20, 30)}, ValueError, r"\(width, height\)"),
        ({"resize": (10, -1)}, ValueError, "resize height"),
        ({"max_frames": 0}, ValueError, "max_frames"),
    ],
)
def test_bad_options(
    videos: dict[str, Path], kwargs: dict, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        read_media(videos["mp4"], **kwargs)


def test_read_frame(videos: dict[str, Path], tmp_path: Path) -> None:
    frame = read_frame(videos["avi"], 13)
    assert frame.shape == (H, W, 3)
    assert frame_code(frame) == 13
    np.testing.assert_array_equal(frame, read_media(videos["avi"]).frames[13])
    with pytest.raises(MediaError, match="24 readable frames; frame_index 24"):
        read_frame(videos["avi"], 24)
    with pytest.raises(ValueError, match="frame_index"):
        read_frame(videos["avi"], -1)
    png = write_image(tmp_path / "a.png", CODED[3])
    np.testing.assert_array_equal(read_frame(png, 0), CODED[3])


# -- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "exact"), [("png", True), ("bmp", True), ("jpg", False), ("webp", False)]
)
def test_images(tmp_path: Path, ext: str, exact: bool) -> None:
    photo = real_photographs()["chelsea"]
    path = write_image(tmp_path / f"chelsea.{ext}", photo)
    clip = read_media(path, frames=5, fps=None)
    assert clip.is_image
    assert clip.frames.shape == (1, *photo.shape)
    assert clip.frame_indices.tolist() == [0]
    assert clip.timestamps.tolist() == [0.0]
    assert clip.native_fps is None
    assert clip.native_frame_count == 1
    err = np.abs(clip.frames[0].astype(int) - photo).mean()
    assert err == 0 if exact else err < 6  # lossy codecs, but RGB order is right
    assert read_media(path, fps=3.0).frames.shape == (1, *photo.shape)


def test_gray_rgba_and_16_bit_images(tmp_path: Path) -> None:
    photo = real_photographs()["astronaut"][:100, :150]
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    clip = read_media(write_image(tmp_path / "gray.png", gray))
    assert clip.frames.shape == (1, 100, 150, 3)
    for c in range(3):
        np.testing.assert_array_equal(clip.frames[0, :, :, c], gray)

    rgba = np.dstack([photo, np.linspace(0, 255, 150, dtype=np.uint8)[None].repeat(100, 0)])
    np.testing.assert_array_equal(
        read_media(write_image(tmp_path / "a.png", rgba)).frames[0], photo
    )
    webp = read_media(write_image(tmp_path / "a.webp", rgba, quality=101)).frames[0]
    assert webp.shape == photo.shape  # WebP may alter colour under low alpha: opaque half only
    assert np.abs(webp[:, 75:].astype(int) - photo[:, 75:]).mean() < 2

    deep = photo.astype(np.uint16) * 257  # 8-bit v -> 16-bit v * 257 -> back to v exactly
    np.testing.assert_array_equal(
        read_media(write_image(tmp_path / "c16.png", deep)).frames[0], photo
    )
    deep_gray = gray.astype(np.uint16) * 257
    got = read_media(write_image(tmp_path / "g16.png", deep_gray)).frames[0]
    np.testing.assert_array_equal(got[:, :, 1], gray)
    extremes = np.array([[0, 65535, 128, 32896]], dtype=np.uint16)
    got = read_media(write_image(tmp_path / "e16.png", extremes)).frames[0, 0, :, 0]
    assert got.tolist() == [0, 255, 0, 128]


def test_image_resize(tmp_path: Path) -> None:
    photo = real_photographs()["coffee"]  # 400 x 600
    path = write_image(tmp_path / "coffee.jpg", photo, quality=95)
    assert read_media(path, resize=100).frames.shape == (1, 100, 150, 3)
    assert read_media(path, resize=(64, 64)).frames.shape == (1, 64, 64, 3)
    tall = write_image(tmp_path / "tall.png", np.ascontiguousarray(photo.transpose(1, 0, 2)))
    assert read_media(tall, resize=100).frames.shape == (1, 150, 100, 3)


def test_odd_paths(
    tmp_path: Path, videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = tmp_path / "dir with spaces ü %d"
    odd.mkdir()
    video_path = odd / "clip 100%d ünï.AVI"
    video_path.write_bytes(videos["avi"].read_bytes())
    clip = read_media(video_path, frames=3)
    assert_identified(clip.frames, clip.frame_indices)
    image_path = write_image(odd / "fötö %03d.PNG", CODED[5])
    np.testing.assert_array_equal(read_media(image_path).frames[0], CODED[5])
    # Not an FFmpeg protocol: a relative "pipe:..." file name is read as a file.
    monkeypatch.chdir(odd)
    Path("pipe:0.avi").write_bytes(videos["avi"].read_bytes())
    assert len(read_media("pipe:0.avi", frames=2)) == 2


# -- bad files ------------------------------------------------------------------------------


def _bad(path: Path, error: type[MediaError], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        read_media(path)
    assert isinstance(info.value, MediaError)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    _bad(tmp_path / "nope.mp4", MediaNotFoundError, "does not exist")
    with pytest.raises(FileNotFoundError):  # also the builtin type
        read_media(tmp_path / "nope.png")


@pytest.mark.parametrize("name", ["empty.mp4", "empty.png", "empty.gif"])
def test_zero_byte_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).touch()
    _bad(tmp_path / name, CorruptMediaError, r"empty \(0 bytes\)")


@pytest.mark.parametrize("name", ["noise.mp4", "noise.avi", "noise.webm", "noise.png", "noise.jpg"])
def test_random_bytes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    _bad(path, CorruptMediaError, "cannot be (opened|decoded)")


def test_truncated_mp4_is_an_error(tmp_path: Path, videos: dict[str, Path]) -> None:
    # mp4v files keep their index (moov) at the end: half a file has no index at all.
    data = videos["mp4"].read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    _bad(path, CorruptMediaError, "cannot be opened")


def test_truncated_avi_gives_readable_prefix_with_warning(
    tmp_path: Path, videos: dict[str, Path]
) -> None:
    # An AVI keeps its header (with the frame count) at the front: half a file still opens,
    # reports 24 frames and decodes about half of them.
    data = videos["avi"].read_bytes()
    path = tmp_path / "half.avi"
    path.write_bytes(data[: len(data) // 2])
    with pytest.warns(TruncatedMediaWarning, match=r"half\.avi' ends after \d+ of the 24 frames"):
        clip = read_media(path)
    n = clip.native_frame_count
    assert n is not None
    assert 2 <= n < N_FRAMES
    np.testing.assert_array_equal(clip.frame_indices, np.arange(n))
    assert_identified(clip.frames[:-1], clip.frame_indices[:-1])  # the last may be partial
    with pytest.warns(TruncatedMediaWarning):
        sampled = read_media(path, frames=4)
    np.testing.assert_array_equal(sampled.frame_indices, uniform_indices(n, 4))
    assert_identified(sampled.frames[:-1], sampled.frame_indices[:-1])


def test_video_without_frames(tmp_path: Path) -> None:
    writer = cv2.VideoWriter(
        str(tmp_path / "none.avi"), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*"MJPG"), 8.0, (64, 48)
    )
    writer.release()  # a valid AVI header and no frame
    _bad(tmp_path / "none.avi", CorruptMediaError, "no decodable frame")


def test_unsupported_extension_and_directory(tmp_path: Path, videos: dict[str, Path]) -> None:
    path = tmp_path / "clip.txt"
    path.write_bytes(videos["mp4"].read_bytes())
    _bad(path, UnsupportedMediaError, r"unsupported extension '\.txt'; expected one of .*\.mp4")
    no_ext = tmp_path / "clip"
    no_ext.write_bytes(b"x")
    _bad(no_ext, UnsupportedMediaError, r"'\(none\)'")
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    _bad(folder, UnsupportedMediaError, "is a directory; expected a video or image file")


# -- listing --------------------------------------------------------------------------------


def test_extensions() -> None:
    assert is_video("a/B.MP4")
    assert is_video(Path("x.webm"))
    assert not is_video("x.png")
    assert is_image("x.JPeG")
    assert is_image("a.b/c.webp")
    assert not is_image("x.gif")
    assert not is_video("mp4")
    assert not is_image(".png")
    assert MEDIA_EXTENSIONS == VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    assert not VIDEO_EXTENSIONS & IMAGE_EXTENSIONS
    assert {".mp4", ".avi", ".webm", ".mkv", ".mov", ".gif"} <= VIDEO_EXTENSIONS
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp"} <= IMAGE_EXTENSIONS


def test_list_media(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "train"
    for rel in [
        "b.mp4", "a.png", "A.JPG", "notes.txt", ".hidden.mp4", "z.gif",
        "sub/c.avi", "sub/deeper/d.webm", "sub/e.bmp", ".cache/e.mp4", "sub/.x/f.png",
    ]:  # fmt: skip
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(b"x")
    single = tmp_path / "other" / "single.mkv"
    single.parent.mkdir()
    single.write_bytes(b"x")

    items = list_media([data, single])
    assert [m.item_id for m in items] == [
        "train/A.JPG", "train/a.png", "train/b.mp4", "train/sub/c.avi",
        "train/sub/deeper/d.webm", "train/sub/e.bmp", "train/z.gif", "single.mkv",
    ]  # fmt: skip
    assert items[3].path == data / "sub" / "c.avi"
    assert items[-1].path == single
    assert [m.kind for m in items[:3]] == ["image", "image", "video"]

    # Ids do not depend on how the directory is spelled.
    monkeypatch.chdir(tmp_path)
    assert [m.item_id for m in list_media(["train/"])] == [m.item_id for m in items[:-1]]
    monkeypatch.chdir(data)
    assert [m.item_id for m in list_media(["."])] == [m.item_id for m in items[:-1]]

    # A file named explicitly is listed whatever its kind; read_media reports it.
    assert [(m.item_id, m.kind) for m in list_media([data / "notes.txt"])] == [
        ("notes.txt", "unknown")
    ]
    assert list_media([]) == []


def test_list_media_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        list_media([tmp_path / "missing"])
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "a.mp4").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"same item id 'a\.mp4'"):
        list_media([tmp_path / "x" / "a.mp4", tmp_path / "y" / "a.mp4"])
    with pytest.raises(TypeError, match="sequence of paths"):
        list_media(str(tmp_path))


# -- clips from real photographs ------------------------------------------------------------


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "text", "page"])
def test_pan_clip_is_a_moving_crop(name: str) -> None:
    photo = real_photographs()[name]
    dx, dy = 4, -2
    clip = pan_clip(photo, frames=10, size=(96, 64), direction=(dx, dy), seed=7)
    assert clip.shape == (10, 64, 96, 3)
    assert clip.dtype == np.uint8
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(clip))
    # Frame 0 is exactly a crop of the photo; integer steps make every frame one.
    scores = cv2.matchTemplate(photo, clip[0], cv2.TM_SQDIFF)
    y0, x0 = np.unravel_index(np.argmin(scores), scores.shape)
    for t, frame in enumerate(clip):
        x, y = x0 + t * dx, y0 + t * dy
        np.testing.assert_array_equal(frame, photo[y : y + 64, x : x + 96])


def test_pan_clip_subpixel_motion_and_seed() -> None:
    photo = real_photographs()["coffee"]
    kwargs = {"frames": 6, "size": (128, 96), "direction": (0.5, 0.25)}
    clip = pan_clip(photo, seed=1, **kwargs)  # type: ignore[arg-type]
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(clip))
    scores = cv2.matchTemplate(photo, clip[0], cv2.TM_SQDIFF)
    y0, x0 = np.unravel_index(np.argmin(scores), scores.shape)
    np.testing.assert_array_equal(clip[0], photo[y0 : y0 + 96, x0 : x0 + 128])
    # t = 4 moves by (2, 1): a whole-pixel crop again.
    np.testing.assert_array_equal(clip[4], photo[y0 + 1 : y0 + 97, x0 + 2 : x0 + 130])
    # t = 2 moves by (1, 0.5): the mean of two vertically adjacent crops.
    rows = photo[y0 : y0 + 97, x0 + 1 : x0 + 129].astype(np.float64)
    halfway = (rows[:-1] + rows[1:]) / 2
    assert np.abs(clip[2] - halfway).max() <= 1.0
    np.testing.assert_array_equal(clip, pan_clip(photo, seed=1, **kwargs))  # type: ignore[arg-type]
    other = pan_clip(photo, seed=2, **kwargs)  # type: ignore[arg-type]
    assert not np.array_equal(clip[0], other[0])


def test_pan_clip_larger_than_photo_scales_the_window() -> None:
    photo = real_photographs()["text"]  # 172 x 448
    clip = pan_clip(photo, frames=8, size=(320, 240), direction=(2, 0))
    assert clip.shape == (8, 240, 320, 3)
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(clip))
    with pytest.raises(ValueError, match="no room for a"):
        pan_clip(photo, frames=100, direction=(0, 3))
    with pytest.raises(ValueError, match=r"image must be \(H, W, 3\) uint8"):
        pan_clip(photo[:, :, 0])
    with pytest.raises(TypeError, match="frames must be a positive int"):
        pan_clip(photo, frames=2.0)  # type: ignore[arg-type]


def test_zoom_clip_zooms_into_the_center() -> None:
    photo = real_photographs()["astronaut"]
    size, zoom = (96, 64), 1.1
    clip = zoom_clip(photo, frames=8, size=size, zoom_per_frame=zoom)
    assert clip.shape == (8, 64, 96, 3)
    assert clip.dtype == np.uint8
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(clip))
    # Frame 0 is the largest centred window with the clip's aspect (512 x 341).
    h0 = 512 * 64 / 96
    top = round((512 - h0) / 2)
    first = cv2.resize(photo[top : top + round(h0)], size, interpolation=cv2.INTER_AREA)
    assert np.abs(clip[0].astype(int) - first).mean() < 3
    # Frame t is the centre 1 / zoom**t of frame 0, enlarged.
    f = zoom**-7
    cw, ch = 96 * f, 64 * f
    x, y = (96 - cw) / 2, (64 - ch) / 2
    centre = cv2.resize(clip[0][round(y) : round(y + ch), round(x) : round(x + cw)], size)
    assert (
        np.abs(clip[7].astype(int) - centre).mean()
        < 0.5 * np.abs(clip[7].astype(int) - clip[0]).mean()
    )
    still = zoom_clip(photo, frames=3, size=size, zoom_per_frame=1.0)
    assert np.array_equal(still[0], still[2])
    out = zoom_clip(photo, frames=4, size=size, zoom_per_frame=0.9, center=(0.2, 0.8))
    assert out.shape == (4, 64, 96, 3)
    assert not np.array_equal(out[0], out[3])
    with pytest.raises(ValueError, match="center must be fractions"):
        zoom_clip(photo, center=(1.5, 0.5))
    with pytest.raises(ValueError, match="shrinks the window"):
        zoom_clip(photo, frames=200, zoom_per_frame=1.5)


def test_spin_clip_turns_the_picture_about_the_centre() -> None:
    photo = real_photographs()["astronaut"]
    size, degrees = (96, 64), 6.0
    clip = spin_clip(photo, frames=6, size=size, degrees_per_frame=degrees, scale=1.5)
    assert clip.shape == (6, 64, 96, 3)
    assert clip.dtype == np.uint8
    # Frame t is frame 0 turned t * degrees counter-clockwise on screen (cv2's positive angle):
    # compared inside the inscribed circle, where both frames see the photo.
    yy, xx = np.mgrid[:64, :96]
    inside = np.hypot(xx - 47.5, yy - 31.5) < 30
    for t in (1, 5):
        turn = cv2.getRotationMatrix2D((47.5, 31.5), t * degrees, 1.0)
        expected = cv2.warpAffine(clip[0], turn, size, flags=cv2.INTER_LINEAR).astype(int)
        wrong = cv2.warpAffine(clip[0], cv2.getRotationMatrix2D((47.5, 31.5), -t * degrees, 1.0),
                               size, flags=cv2.INTER_LINEAR).astype(int)  # fmt: skip
        err = np.abs(clip[t].astype(int) - expected)[inside].mean()
        assert err < 0.25 * np.abs(clip[t].astype(int) - clip[0])[inside].mean(), (t, err)
        assert err < 0.25 * np.abs(clip[t].astype(int) - wrong)[inside].mean(), (t, err)
    # Unturned at scale 1, frame 0 is exactly the centred crop.
    flat = spin_clip(photo, frames=2, size=size, degrees_per_frame=0.0, scale=1.0)
    np.testing.assert_array_equal(flat[0], photo[224:288, 208:304])
    np.testing.assert_array_equal(flat[0], flat[1])
    # A zoom shrinks the window as it turns; scale=None takes the largest that fits.
    spiral = spin_clip(photo, frames=4, size=size, degrees_per_frame=-4.0, zoom_per_frame=1.1)
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(spiral))
    with pytest.raises(ValueError, match="needs a disc"):
        spin_clip(photo, size=size, scale=20.0)
    with pytest.raises(ValueError, match="center must be fractions"):
        spin_clip(photo, center=(0.5, -0.1))
    with pytest.raises(ValueError, match="degrees_per_frame must be finite"):
        spin_clip(photo, degrees_per_frame=float("nan"))
    with pytest.raises(TypeError, match="zoom_per_frame must be a number"):
        spin_clip(photo, zoom_per_frame="1.1")  # type: ignore[arg-type]


# -- writers --------------------------------------------------------------------------------


def test_write_video_round_trip_and_atomicity(tmp_path: Path) -> None:
    clip = pan_clip(real_photographs()["chelsea"], frames=12, size=(160, 120), direction=(3, 1))
    path = write_video(tmp_path / "pan.mp4", clip, fps=12.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pan.mp4"]  # no temp file left
    back = read_media(path)
    assert back.frames.shape == clip.shape
    assert back.native_fps == pytest.approx(12.0)
    psnr = cv2.PSNR(np.ascontiguousarray(back.frames), clip)
    assert psnr > 25, psnr

    (tmp_path / "old.avi").write_bytes(b"old")
    write_video(tmp_path / "old.avi", clip, codec="MJPG")  # replaces an existing file
    assert len(read_media(tmp_path / "old.avi")) == 12

    with pytest.raises(MediaError, match=r"cannot write codec 'MJPG' into a \.xyz"):
        write_video(tmp_path / "bad.xyz", clip, codec="MJPG")
    with pytest.raises(ValueError, match="must be even"):
        write_video(tmp_path / "odd.mp4", clip[:, :119])
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\) uint8"):
        write_video(tmp_path / "f.mp4", clip.astype(np.float32))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_video(tmp_path / "no" / "dir.mp4", clip)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.avi", "pan.mp4"]


def test_write_image_errors_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot encode"):
        write_image(tmp_path / "a.xyz", CODED[0])
    with pytest.raises(ValueError, match=r"frame must be \(H, W\)"):
        write_image(tmp_path / "a.png", CODED[0].astype(np.float32))
    assert list(tmp_path.iterdir()) == []
