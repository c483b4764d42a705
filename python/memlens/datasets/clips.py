"""Short clips made from real photographs, and atomic writers for videos and images.

A clip is a camera moving over a still photograph: :func:`pan_clip` slides a crop window,
:func:`zoom_clip` shrinks (or grows) one around a point, :func:`spin_clip` turns one (a camera
roll, optionally zooming as it turns). The windows move by sub-pixel
amounts and are resampled with OpenCV, so consecutive frames differ the way real footage
does, while every frame is still a view of the photograph (what copy-detection tests need).
Frames are (T, H, W, 3) uint8 RGB, the layout ``memlens.video.read_media`` returns.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from numbers import Real
from pathlib import Path

import cv2
import numpy as np

from memlens.errors import MediaError
from memlens.video.sampling import positive_int

# A window narrower than this many photo pixels is a smear, not a view of the photo.
_MIN_WINDOW = 8.0


def pan_clip(
    image: np.ndarray,
    *,
    frames: int = 16,
    size: tuple[int, int] = (160, 120),
    direction: tuple[float, float] = (3.0, 1.0),
    scale: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """A pan over ``image``: a window of ``size`` (W, H) output pixels moving ``direction``
    (dx, dy) photo pixels per frame.

    scale: photo pixels per output pixel. None takes 1 (a 1:1 crop) when the whole pan
    fits, else the largest scale that fits. seed picks the start position (an integer
    pixel, so with scale 1 the first frame is exactly ``image[y:y+H, x:x+W]``) among those
    that keep the pan inside the photo. Returns (frames, H, W, 3) uint8.
    """
    photo = _check_image(image)
    t = positive_int("frames", frames)
    width, height = _check_size(size)
    dx, dy = _finite_pair("direction", direction)
    photo_h, photo_w = photo.shape[:2]
    travel_x, travel_y = abs(dx) * (t - 1), abs(dy) * (t - 1)
    if scale is None:
        s = min(1.0, (photo_w - travel_x) / width, (photo_h - travel_y) / height)
    else:
        s = _positive_float("scale", scale)
    win_w, win_h = width * s, height * s
    if min(win_w, win_h) < _MIN_WINDOW or win_w + travel_x > photo_w or win_h + travel_y > photo_h:
        raise ValueError(
            f"a {t}-frame pan at direction ({dx:g}, {dy:g}) travels ({travel_x:g}, "
            f"{travel_y:g}) px, which leaves no room for a {win_w:g}x{win_h:g} px window "
            f"in a {photo_w}x{photo_h} photo; use fewer frames, a smaller direction or scale"
        )
    rng = np.random.default_rng(seed)
    x0 = _start(rng, photo_w, win_w, dx * (t - 1))
    y0 = _start(rng, photo_h, win_h, dy * (t - 1))
    windows = ((x0 + i * dx, y0 + i * dy, win_w, win_h) for i in range(t))
    return _render_all(photo, windows, (width, height), t)


def zoom_clip(
    image: np.ndarray,
    *,
    frames: int = 16,
    size: tuple[int, int] = (160, 120),
    zoom_per_frame: float = 1.02,
    center: tuple[float, float] = (0.5, 0.5),
) -> np.ndarray:
    """A zoom into ``image`` (out of it if ``zoom_per_frame`` < 1) around ``center``, given
    as fractions (x, y) of the photo's width and height.

    The largest window of the clip is the largest one with the aspect of ``size`` that
    fits the photo; each frame's window is ``zoom_per_frame`` times smaller than the
    previous one, centred on ``center`` as far as the photo's edges allow. Returns
    (frames, H, W, 3) uint8.
    """
    photo = _check_image(image)
    t = positive_int("frames", frames)
    width, height = _check_size(size)
    zoom = _positive_float("zoom_per_frame", zoom_per_frame)
    cx, cy = _fraction_pair("center", center)
    photo_h, photo_w = photo.shape[:2]
    aspect = width / height
    full_w = min(float(photo_w), photo_h * aspect)
    # Relative window size per frame, normalized so the largest window is the full fit.
    rel = [zoom ** (-i) for i in range(t)]
    largest = max(rel)
    smallest_w = full_w * min(rel) / largest
    if smallest_w / aspect < _MIN_WINDOW or smallest_w < _MIN_WINDOW:
        raise ValueError(
            f"zoom_per_frame={zoom:g} over {t} frames shrinks the window to "
            f"{smallest_w:.3g} px wide in a {photo_w}x{photo_h} photo; zoom less or use "
            f"fewer frames"
        )

    def windows() -> Iterator[tuple[float, float, float, float]]:
        for r in rel:
            w = full_w * r / largest
            h = w / aspect
            x = min(max(cx * photo_w - w / 2, 0.0), photo_w - w)
            y = min(max(cy * photo_h - h / 2, 0.0), photo_h - h)
            yield x, y, w, h

    return _render_all(photo, windows(), (width, height), t)


def spin_clip(
    image: np.ndarray,
    *,
    frames: int = 16,
    size: tuple[int, int] = (160, 120),
    degrees_per_frame: float = 5.0,
    zoom_per_frame: float = 1.0,
    scale: float | None = None,
    center: tuple[float, float] = (0.5, 0.5),
) -> np.ndarray:
    """A camera roll over ``image``: a window of ``size`` (W, H) output pixels centred on
    ``center`` (fractions of the photo's width and height) turns by ``degrees_per_frame``
    about its centre each frame and shrinks ``zoom_per_frame`` times (1: no zoom), so the
    picture turns the other way on screen: positive degrees turn the window clockwise on the
    photo and the picture counter-clockwise on screen. Flow is tangential (plus radial with a
    zoom), a field no pan or plain zoom makes.

    scale: photo pixels per output pixel of the largest window (the first when zooming in).
    None takes the largest scale whose window fits the photo at every angle (a disc of the
    window's half-diagonal around the centre, which is moved inwards as far as the photo
    needs).
    Returns (frames, H, W, 3) uint8."""
    photo = _check_image(image)
    t = positive_int("frames", frames)
    width, height = _check_size(size)
    degrees = _finite_float("degrees_per_frame", degrees_per_frame)
    zoom = _positive_float("zoom_per_frame", zoom_per_frame)
    cx, cy = _fraction_pair("center", center)
    photo_h, photo_w = photo.shape[:2]
    rel = [zoom ** (-i) for i in range(t)]
    largest = max(rel)
    half_diagonal = math.hypot(width, height) / 2  # output pixels
    room = min(photo_w, photo_h) / 2  # the largest disc radius the photo holds
    s = room / half_diagonal if scale is None else _positive_float("scale", scale)
    radius = s * half_diagonal
    smallest = s * min(rel) / largest * min(width, height)
    if radius > room or smallest < _MIN_WINDOW:
        raise ValueError(
            f"a {width}x{height} window at scale {s:g} turning about its centre needs a disc "
            f"of radius {radius:.3g} px and shrinks to {smallest:.3g} px; a {photo_w}x{photo_h} "
            f"photo holds radius {room:g} and the window must stay >= {_MIN_WINDOW:g} px; "
            f"use a smaller scale or zoom"
        )
    px = min(max(cx * photo_w, radius), photo_w - radius)
    py = min(max(cy * photo_h, radius), photo_h - radius)
    out = np.empty((t, height, width, 3), dtype=np.uint8)
    for i, r in enumerate(rel):
        w, h = width * s * r / largest, height * s * r / largest
        out[i] = _render(photo, px - w / 2, py - h / 2, w, h, (width, height), i * degrees)
    return out


def sprite_clip(
    background: np.ndarray,
    sprite: np.ndarray,
    trajectory: Sequence[tuple[float, float]],
    *,
    size: tuple[int, int] = (160, 120),
    sprite_size: tuple[int, int] = (40, 40),
) -> np.ndarray:
    """Local object motion: a ``sprite_size`` (w, h) patch of ``sprite`` pasted over a still
    ``background`` (both photos, resized to fit) at each (x, y) of ``trajectory`` (top-left
    corner, output pixels; sub-pixel positions are rendered by bilinear warping). One frame per
    position: (len(trajectory), H, W, 3) uint8. The same trajectory with another sprite and
    background has the same motion and unrelated content."""
    width, height = _check_size(size)
    sw, sh = _check_size(sprite_size)
    if sw > width or sh > height:
        raise ValueError(f"sprite_size {sprite_size} must fit in size {size}")
    if len(trajectory) < 1:
        raise ValueError("trajectory must have at least one position")
    bg = cv2.resize(_check_image(background), (width, height), interpolation=cv2.INTER_AREA)
    patch = cv2.resize(_check_image(sprite), (sw, sh), interpolation=cv2.INTER_AREA)
    mask = np.ones((sh, sw), np.float32)
    out = np.empty((len(trajectory), height, width, 3), np.uint8)
    for n, pos in enumerate(trajectory):
        x, y = _finite_pair(f"trajectory[{n}]", pos)
        shift = np.array([[1, 0, x], [0, 1, y]], dtype=np.float32)
        warped = cv2.warpAffine(patch, shift, (width, height), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(mask, shift, (width, height), flags=cv2.INTER_LINEAR)[..., None]
        out[n] = np.clip(bg * (1 - alpha) + warped * alpha + 0.5, 0, 255).astype(np.uint8)
    return out


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    *,
    fps: float = 8.0,
    codec: str = "mp4v",
) -> Path:
    """Write (T, H, W, 3) uint8 RGB ``frames`` as a video, atomically.

    The container follows the extension (``.mp4``, ``.avi``, ...) and ``codec`` is a
    FOURCC (``mp4v`` for .mp4/.mov, ``MJPG`` for .avi/.mkv, ``VP80`` for .webm). The video
    is written to a hidden temporary file in the same directory and renamed into place,
    so a reader never sees a partial file. Raises ``MediaError`` if OpenCV cannot write
    that codec/container pair. Returns the path.
    """
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3 or arr.shape[0] == 0:
        raise ValueError(
            f"frames must be (T, H, W, 3) uint8 with T >= 1; got {arr.shape} {arr.dtype}"
        )
    height, width = arr.shape[1:3]
    if width % 2 or height % 2:
        # OpenCV's FFmpeg writer silently drops the odd row/column (it encodes 62x46 for
        # 63x47 input), so the file would not hold the frames given.
        raise ValueError(
            f"frame width and height must be even to write a video; got {width}x{height}"
        )
    rate = _positive_float("fps", fps)
    if not isinstance(codec, str) or len(codec) != 4:
        raise ValueError(f"codec must be a 4-character FOURCC such as 'mp4v'; got {codec!r}")
    target = Path(path)
    with _atomic_target(target) as tmp:
        writer = cv2.VideoWriter(
            str(tmp.absolute()),
            cv2.CAP_FFMPEG,
            cv2.VideoWriter.fourcc(*codec),
            rate,
            (width, height),
        )
        try:
            if not writer.isOpened():
                raise MediaError(
                    f"OpenCV cannot write codec {codec!r} into a {target.suffix or 'suffix-less'} "
                    f"file: '{target}' (mp4v in .mp4 and MJPG in .avi work in most builds)"
                )
            for frame in arr:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        if tmp.stat().st_size == 0:
            raise MediaError(f"OpenCV wrote nothing for '{target}' (codec {codec!r})")
    return target


def write_image(
    path: str | os.PathLike[str], frame: np.ndarray, *, quality: int | None = None
) -> Path:
    """Write an image atomically; the format follows the extension (png/jpg/webp/bmp).

    ``frame``: (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) gray, uint8 or (PNG only) uint16.
    ``quality`` (1-100) applies to JPEG and WebP. Returns the path.
    """
    arr = np.asarray(frame)
    if arr.dtype not in (np.uint8, np.uint16) or not (
        arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))
    ):
        raise ValueError(
            f"frame must be (H, W), (H, W, 3) or (H, W, 4) uint8/uint16; got {arr.shape} "
            f"{arr.dtype}"
        )
    target = Path(path)
    ext = target.suffix.lower()
    params: list[int] = []
    if quality is not None:
        q = positive_int("quality", quality)
        if ext in (".jpg", ".jpeg"):
            params = [cv2.IMWRITE_JPEG_QUALITY, min(q, 100)]
        elif ext == ".webp":
            params = [cv2.IMWRITE_WEBP_QUALITY, min(q, 100)]
    if arr.ndim == 3:
        code = cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        arr = cv2.cvtColor(arr, code)
    try:
        ok, buf = cv2.imencode(ext, arr, params)
    except cv2.error as e:
        raise ValueError(
            f"cannot encode a {arr.shape} {arr.dtype} image as '{ext}' for '{target}': {e}"
        ) from None
    if not ok:
        raise ValueError(f"cannot encode a {arr.shape} {arr.dtype} image as '{ext}' for '{target}'")
    with _atomic_target(target) as tmp:
        tmp.write_bytes(buf.tobytes())
    return target


# -- helpers -------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_target(target: Path) -> Iterator[Path]:
    """A temporary path next to ``target`` (same directory, so ``os.replace`` is an atomic
    rename; same extension, so encoders pick the right format; a leading "." so directory
    listings such as ``list_media`` skip it), renamed onto ``target`` on success and
    removed on failure."""
    parent = target.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write '{target}': directory '{parent}' does not exist")
    fd, name = tempfile.mkstemp(
        dir=parent, prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}"
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _render_all(
    photo: np.ndarray,
    windows: Iterator[tuple[float, float, float, float]],
    size: tuple[int, int],
    count: int,
) -> np.ndarray:
    out = np.empty((count, size[1], size[0], 3), dtype=np.uint8)
    for i, (x, y, w, h) in enumerate(windows):
        out[i] = _render(photo, x, y, w, h, size)
    return out


def _render(
    photo: np.ndarray,
    x: float,
    y: float,
    w: float,
    h: float,
    size: tuple[int, int],
    degrees: float = 0.0,
) -> np.ndarray:
    """The window [x, x+w) x [y, y+h) of ``photo`` (continuous coordinates: pixel i covers
    [i, i+1)), turned ``degrees`` clockwise about its centre, resampled to ``size`` = (W, H)."""
    width, height = size
    sx, sy = w / width, h / height
    if sx > 1 or sy > 1:
        # Shrinking: average with INTER_AREA first (bilinear warping alone would alias
        # fine texture), then warp at about 1:1 for the sub-pixel position.
        photo_h, photo_w = photo.shape[:2]
        small_w = max(1, round(photo_w / max(sx, 1.0)))
        small_h = max(1, round(photo_h / max(sy, 1.0)))
        photo = cv2.resize(photo, (small_w, small_h), interpolation=cv2.INTER_AREA)
        fx, fy = small_w / photo_w, small_h / photo_h
        x, y, w, h = x * fx, y * fy, w * fx, h * fy
        sx, sy = w / width, h / height
    # Output pixel centre (u + 0.5, v + 0.5) maps to the window centre plus the turned offset
    # R @ (sx * (u + 0.5 - W/2), sy * (v + 0.5 - H/2)) in continuous coordinates, minus 0.5 for
    # pixel-index coordinates; unturned, with sx = 1 and integer x, that is exactly x + u, a
    # plain crop.
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    linear = np.array([[cos * sx, -sin * sy], [sin * sx, cos * sy]], dtype=np.float64)
    centre = np.array([x + w / 2, y + h / 2], dtype=np.float64)
    offset = centre - 0.5 + linear @ np.array([0.5 - width / 2, 0.5 - height / 2])
    matrix = np.concatenate([linear, offset[:, None]], axis=1)
    return cv2.warpAffine(
        photo,
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )


def _start(rng: np.random.Generator, extent: int, window: float, travel: float) -> float:
    """A start coordinate keeping [start, start + window) inside [0, extent) for the whole
    signed ``travel``; an integer where the room allows one."""
    lo = max(0.0, -travel)
    hi = extent - window - max(0.0, travel)
    lo_i, hi_i = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
    if hi_i < lo_i:
        return lo
    return float(rng.integers(lo_i, hi_i + 1))


def _check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB; got {arr.shape} {arr.dtype}")
    return np.ascontiguousarray(arr)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if isinstance(size, str) or not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(f"size must be a (width, height) pair; got {size!r}")
    return positive_int("size width", size[0]), positive_int("size height", size[1])


def _finite_pair(name: str, value: Sequence[float]) -> tuple[float, float]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be an (x, y) pair of numbers; got {value!r}")
    a, b = (float(v) for v in value)
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return a, b


def _fraction_pair(name: str, value: Sequence[float]) -> tuple[float, float]:
    a, b = _finite_pair(name, value)
    if not (0 <= a <= 1 and 0 <= b <= 1):
        raise ValueError(f"{name} must be fractions in [0, 1]; got ({a:g}, {b:g})")
    return a, b


def _finite_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number; got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return v


def _positive_float(name: str, value: object) -> float:
    v = _finite_float(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return v
