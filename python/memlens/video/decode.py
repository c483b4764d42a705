"""Read a video or an image into a :class:`Clip` of sampled RGB frames.

Videos are decoded with OpenCV's FFmpeg backend, strictly in order: ``grab()`` decodes a
frame without converting it and ``retrieve()`` converts only the sampled ones, so memory
holds the sampled frames and nothing else. Seeking (``CAP_PROP_POS_FRAMES``) is not used:
FFmpeg seeks to key frames and OpenCV's frame positions after a seek are inexact for many
codecs, which would make the sampled frames depend on the container.

Frame count rule. The container's ``CAP_PROP_FRAME_COUNT`` is a hint: it can be missing,
negative or wrong (WebM/MKV and GIF estimate it from duration x rate; a truncated AVI keeps
its header's count). Every read therefore decodes the stream to its end (or verifies the
end with one extra ``grab()``), so ``Clip.native_frame_count`` is the number of frames
that actually decode. ``frames=N`` needs the count before choosing frames: it plans on
the hint, and if the stream turns out shorter or longer it re-plans on the true count and
decodes again (a second pass, only for such files); without a usable hint it first counts
with ``grab()`` alone.

Truncation rule. A stream that ends early is read as the video it is (its readable
prefix), deterministically. If the container reported a count and the stream is shorter by
more than ``max(1, count // 100)`` frames (the slack absorbs duration-based estimates), a
:class:`TruncatedMediaWarning` says so; a stream with no decodable frame, or a file the
container cannot open (an MP4 cut before its ``moov`` index), is a ``CorruptMediaError``.

``max_frames`` caps the clip in every mode: when "every frame" or ``fps=`` would keep more,
the clip is instead ``max_frames`` frames spread uniformly over the whole video (the same
frames as ``frames=max_frames``), so memory stays bounded and the clip still covers the
video; ``frames=N`` keeps ``min(N, max_frames)``.
"""

from __future__ import annotations

import math
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import cv2
import numpy as np

from memlens.errors import MediaError
from memlens.video.errors import (
    CorruptMediaError,
    MediaNotFoundError,
    TruncatedMediaWarning,
    UnsupportedMediaError,
)
from memlens.video.formats import MEDIA_EXTENSIONS, is_image, printable
from memlens.video.sampling import (
    FpsSelector,
    fps_indices,
    output_size,
    resize_frame,
    uniform_indices,
)
from memlens.video.sampling import check_sampling as _check_sampling

# Container metadata outside these ranges is treated as absent (a PNG renamed to .mp4
# reports a count of -2**63; raw streams report a 90 kHz time base as their rate).
_MAX_FPS = 1000.0
_MAX_COUNT = 2**31

# Images declaring more pixels are refused before decoding (see _read_image). The value is
# Pillow's decompression-bomb limit (2 x 89.5 MP); one such RGB image still takes ~0.5 GB.
MAX_IMAGE_PIXELS = 178_956_970


@dataclass(eq=False)
class Clip:
    """Frames sampled from one video or image.

    ``frames`` is (T, H, W, 3) uint8 RGB; ``frame_indices`` (T,) int64 are the frames'
    positions in the decoded stream and ``timestamps`` (T,) float64 their nominal times in
    seconds (``index / native_fps``; NaN when the container reports no usable rate). An
    image is a 1-frame clip with ``is_image=True``, ``native_fps=None`` and
    ``native_frame_count=1``.
    """

    source: str
    frames: np.ndarray
    frame_indices: np.ndarray
    timestamps: np.ndarray
    is_image: bool
    native_fps: float | None
    native_frame_count: int | None

    def __post_init__(self) -> None:
        t = self.frames.shape[0] if self.frames.ndim == 4 else -1
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[3] != 3:
            raise ValueError(
                f"Clip.frames must be (T, H, W, 3) uint8; got {self.frames.shape} "
                f"{self.frames.dtype}"
            )
        if self.frame_indices.shape != (t,) or self.timestamps.shape != (t,):
            raise ValueError(
                f"Clip.frame_indices and timestamps must have shape ({t},); got "
                f"{self.frame_indices.shape} and {self.timestamps.shape}"
            )

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def read_media(
    path: str | PathLike[str],
    *,
    frames: int | None = None,
    fps: float | None = None,
    resize: int | tuple[int, int] | None = None,
    max_frames: int | None = None,
) -> Clip:
    """Decode a video or an image into a :class:`Clip`.

    frames: keep N frames spread uniformly over the video (``np.linspace(0, count - 1, N)``
        rounded; all frames once if the video is shorter). fps: keep one frame every
        ``1 / fps`` seconds (the frame shown at ``k / fps``). Neither: every frame. Not both.
    resize: an int sets the short edge (aspect kept); ``(width, height)`` is exact.
    max_frames: at most this many frames; see the module docstring for the rule.

    Images (PNG/JPEG/WebP/BMP) give one frame whatever ``frames``/``fps`` say; gray,
    alpha and 16-bit images become 8-bit RGB. Raises a ``MediaError`` subclass naming the
    file for a missing, empty, unsupported, corrupt or frameless input; ``ValueError`` /
    ``TypeError`` for bad options.
    """
    opts = _check_sampling(frames, fps, resize, max_frames)
    p = _check_file(path)
    if is_image(p):
        return _read_image(p, opts.resize)
    return _read_video(p, opts.frames, opts.fps, opts.resize, opts.max_frames)


def read_frame(path: str | PathLike[str], frame_index: int) -> np.ndarray:
    """One frame, (H, W, 3) uint8 RGB, at ``frame_index`` of a video (0 for an image).

    Decodes the video up to that frame. A ``MediaError`` if the stream ends before it.
    """
    if isinstance(frame_index, bool) or not isinstance(frame_index, int | np.integer):
        raise TypeError(f"frame_index must be an int; got {type(frame_index).__name__}")
    if frame_index < 0:
        raise ValueError(f"frame_index must be >= 0; got {frame_index}")
    p = _check_file(path)
    if is_image(p):
        if frame_index != 0:
            raise MediaError(
                f"image file '{p}' has one frame; frame_index {frame_index} is out of range"
            )
        return _read_image(p, None).frames[0]
    target = int(frame_index)
    result = _decode(p, lambda i: i == target, stop_after=target)
    if not result.frames:
        raise MediaError(
            f"video file '{p}' has {result.count} readable frames; frame_index {target} is "
            f"out of range"
        )
    return result.frames[0]


# -- files ---------------------------------------------------------------------------------


def _check_file(path: str | PathLike[str]) -> Path:
    """The path, if it names a non-empty regular file of a known kind; else a MediaError."""
    p = Path(path)
    if printable(p) != str(p):
        # Such a name cannot be recorded as a source (results, indexes are UTF-8) nor handed
        # to OpenCV (its binding crashes the interpreter on it): one error, before any I/O.
        raise UnsupportedMediaError(
            f"media file '{printable(p)}' has a file name that is not valid UTF-8 (rename the file)"
        )
    try:
        st = p.stat()
    except FileNotFoundError:
        raise MediaNotFoundError(f"media file '{p}' does not exist") from None
    except OSError as e:
        raise MediaError(f"media file '{p}' cannot be accessed: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UnsupportedMediaError(f"'{p}' is a directory; expected a video or image file")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block or stream forever; only plain files are media.
        raise UnsupportedMediaError(f"'{p}' is not a regular file; expected a video or image file")
    if p.suffix.lower() not in MEDIA_EXTENSIONS:
        known = " ".join(sorted(MEDIA_EXTENSIONS))
        raise UnsupportedMediaError(
            f"media file '{p}' has unsupported extension '{p.suffix or '(none)'}'; expected "
            f"one of {known}"
        )
    if st.st_size == 0:
        raise CorruptMediaError(f"media file '{p}' is empty (0 bytes)")
    return p


# -- images --------------------------------------------------------------------------------


def _read_image(p: Path, resize: int | tuple[int, int] | None) -> Clip:
    try:
        # fromfile + imdecode rather than imread: imread fails silently (returns None) on
        # non-ASCII paths on some platforms and cannot tell "unreadable" from "corrupt".
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as e:
        raise MediaError(f"image file '{p}' cannot be read: {e.strerror or e}") from None
    declared = _declared_size(data)
    if declared is not None and declared[0] * declared[1] > MAX_IMAGE_PIXELS:
        # Checked on the header, before decoding: a small file can declare a huge image (a
        # "PNG bomb") and the decoder would allocate all of it (30000x30000: 3.7 GB).
        width, height = declared
        raise UnsupportedMediaError(
            f"image file '{p}' declares {width}x{height} pixels ({width * height / 1e6:.0f} "
            f"MP), more than the {MAX_IMAGE_PIXELS / 1e6:.0f} MP memlens decodes; refused "
            f"without decoding (downscale it first)"
        )
    try:
        # ANYDEPTH keeps 16-bit samples for an exact rescale below; ANYCOLOR keeps gray as
        # one channel and drops alpha. Not IMREAD_UNCHANGED: that would skip EXIF rotation.
        image = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as e:
        raise CorruptMediaError(f"image file '{p}' cannot be decoded: {e}") from None
    if image is None:
        raise CorruptMediaError(
            f"image file '{p}' cannot be decoded ({data.size} bytes; corrupt, truncated or "
            f"not a PNG/JPEG/WebP/BMP image)"
        )
    rgb = _to_rgb8(image, p)
    height, width = rgb.shape[:2]
    rgb = resize_frame(rgb, output_size(width, height, resize))
    return Clip(
        source=str(p),
        frames=np.ascontiguousarray(rgb[None]),
        frame_indices=np.zeros(1, dtype=np.int64),
        timestamps=np.zeros(1, dtype=np.float64),
        is_image=True,
        native_fps=None,
        native_frame_count=1,
    )


def _declared_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, WebP or BMP header, without decoding; None for
    another format or a header too short or malformed to read (the decoder then decides)."""
    head = data[:32].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head.startswith(b"BM") and len(head) >= 26:
        if int.from_bytes(head[14:18], "little") == 12:  # BITMAPCOREHEADER: 16-bit sizes
            return int.from_bytes(head[18:20], "little"), int.from_bytes(head[20:22], "little")
        width = int.from_bytes(head[18:22], "little", signed=True)
        height = int.from_bytes(head[22:26], "little", signed=True)  # < 0: top-down rows
        return abs(width), abs(height)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        kind = head[12:16]
        if kind == b"VP8X":  # extended: 24-bit canvas size minus one
            return (
                int.from_bytes(head[24:27], "little") + 1,
                int.from_bytes(head[27:30], "little") + 1,
            )
        if kind == b"VP8L":  # lossless: 14-bit width-1 and height-1 after the 0x2f signature
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == b"VP8 ":  # lossy: 14-bit sizes after the 9d 01 2a start code
            return (
                int.from_bytes(head[26:28], "little") & 0x3FFF,
                int.from_bytes(head[28:30], "little") & 0x3FFF,
            )
        return None
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's first start-of-frame segment (walking the segment
    lengths from the start; APPn segments such as EXIF are skipped). Gives up (None) after
    4096 markers, so a file of fill bytes cannot keep this loop busy."""
    pos, n = 2, data.size
    for _ in range(4096):
        if pos + 4 > n:
            return None
        if data[pos] != 0xFF:
            return None
        marker = int(data[pos + 1])
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers: no length
            pos += 2
            continue
        length = int(data[pos + 2]) << 8 | int(data[pos + 3])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > n:
                return None
            height = int(data[pos + 5]) << 8 | int(data[pos + 6])
            width = int(data[pos + 7]) << 8 | int(data[pos + 8])
            return width, height
        if marker == 0xDA or length < 2:  # image data before any frame header: malformed
            return None
        pos += 2 + length
    return None


def _to_rgb8(image: np.ndarray, p: Path) -> np.ndarray:
    if image.dtype == np.uint16:
        # round(x * 255 / 65535): maps 0 -> 0 and 65535 -> 255 exactly (x >> 8 would not
        # round and x / 256 would not reach 255).
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise CorruptMediaError(f"image file '{p}' has unsupported sample type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise CorruptMediaError(f"image file '{p}' has {image.shape[2]} channels; expected 1, 3 or 4")


# -- videos --------------------------------------------------------------------------------


@dataclass
class _Decoded:
    frames: list[np.ndarray]
    indices: list[int]
    count: int  # frames the stream yields (exact unless the pass stopped early)
    overflow: bool = False  # more frames were wanted than the limit allowed


def _open(p: Path) -> cv2.VideoCapture:
    # An absolute path: FFmpeg reads "name:" prefixes as protocols (pipe:, concat:, http:),
    # and a path starting with "/" can never be taken for one. CAP_FFMPEG explicitly, so a
    # '%' in the name is not taken as an image-sequence pattern by another backend.
    name = str(p.absolute())
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        # A non-UTF-8 file name (undecodable bytes kept as lone surrogates): OpenCV's Python
        # binding crashes the interpreter (SIGSEGV) converting such a str, so refuse it here.
        raise UnsupportedMediaError(
            f"video file {str(p)!r} has a file name that is not valid UTF-8; OpenCV cannot "
            f"open it (rename the file)"
        ) from None
    try:
        cap = cv2.VideoCapture(name, cv2.CAP_FFMPEG)
    except (cv2.error, UnicodeError) as e:
        raise CorruptMediaError(f"video file '{p}' cannot be opened: {e}") from None
    if not cap.isOpened():
        cap.release()
        raise CorruptMediaError(
            f"video file '{p}' cannot be opened (corrupt, truncated before its index, or a "
            f"codec/container this OpenCV build cannot read)"
        )
    return cap


def _metadata(cap: cv2.VideoCapture) -> tuple[float | None, int | None]:
    """The container's (fps, frame count), each None where absent or implausible."""
    rate = cap.get(cv2.CAP_PROP_FPS)
    reported = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    fps = float(rate) if math.isfinite(rate) and 0 < rate <= _MAX_FPS else None
    count = int(reported) if math.isfinite(reported) and 1 <= reported < _MAX_COUNT else None
    return fps, count


def _decode(
    p: Path,
    wants: Callable[[int], bool],
    *,
    cap: cv2.VideoCapture | None = None,
    limit: int | None = None,
    verify_end: int | None = None,
    stop_after: int | None = None,
    size: int | tuple[int, int] | None = None,
) -> _Decoded:
    """One pass over the stream in order, converting the frames ``wants`` selects.

    Runs to the end of the stream (so ``count`` is exact) unless ``stop_after`` is given.
    ``verify_end``: the caller expects exactly this many frames and wants nothing past
    them, so once frame ``verify_end - 1`` is in, one more ``grab()`` either confirms the
    end or (count was wrong) the pass goes on counting without converting. ``limit``: at
    most this many frames are kept; past it the pass only counts and sets ``overflow``.
    ``cap``: a capture just opened on ``p`` (saves re-probing the file); it is released.
    """
    if cap is None:
        cap = _open(p)
    out = _Decoded(frames=[], indices=[], count=0)
    target: tuple[int, int] | None = None  # (width, height) of every kept frame
    collecting = True
    try:
        index = 0
        while cap.grab():
            if collecting and wants(index):
                if limit is not None and len(out.frames) >= limit:
                    out.overflow, collecting = True, False
                else:
                    ok, bgr = cap.retrieve()
                    if not ok or bgr is None:
                        break  # decoded but not convertible: the readable stream ends here
                    frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    if target is None:
                        target = output_size(frame.shape[1], frame.shape[0], size)
                    # Resizing to the first frame's size also keeps the stack rectangular
                    # if a stream changes resolution mid-way (allowed in WebM).
                    out.frames.append(resize_frame(frame, target))
                    out.indices.append(index)
            index += 1
            if stop_after is not None and index > stop_after:
                break
            if verify_end is not None and index == verify_end:
                collecting = False  # past the planned frames: only count what remains
    except cv2.error as e:
        raise CorruptMediaError(
            f"video file '{p}' failed to decode at frame {index}: {e}"
        ) from None
    finally:
        cap.release()
    out.count = index
    return out


def _read_video(
    p: Path,
    frames: int | None,
    fps: float | None,
    resize: int | tuple[int, int] | None,
    max_frames: int | None,
) -> Clip:
    cap = _open(p)
    native_fps, reported = _metadata(cap)
    if fps is not None and native_fps is None:
        cap.release()
        raise CorruptMediaError(
            f"video file '{p}' reports no usable frame rate, so fps={fps:g} sampling is "
            f"impossible; sample it with frames= instead"
        )
    n_uniform: int | None = None
    if frames is not None:
        n_uniform = frames if max_frames is None else min(frames, max_frames)
    elif max_frames is not None and reported is not None:
        # Known length: decide up front whether the cap applies (a wrong hint is caught
        # below by the overflow check or by the uniform pass's end verification).
        if fps is None:
            expected = reported
        else:
            assert native_fps is not None  # checked above
            expected = len(fps_indices(reported, native_fps, fps))
        if expected > max_frames:
            n_uniform = max_frames

    if n_uniform is None:
        wants: Callable[[int], bool]
        if fps is None:
            wants = _every_frame
        else:
            assert native_fps is not None  # checked above
            wants = FpsSelector(native_fps, fps).wants
        result = _decode(p, wants, cap=cap, limit=max_frames, size=resize)
        if result.overflow:
            assert max_frames is not None
            result = _uniform(p, max_frames, result.count, resize)
    else:
        result = _uniform(p, n_uniform, reported, resize, cap=cap)

    count = result.count
    if not result.frames:
        hint = f" (its container reports {reported})" if reported else ""
        raise CorruptMediaError(f"video file '{p}' has no decodable frame{hint}")
    if reported is not None and count < reported - max(1, reported // 100):
        warnings.warn(
            TruncatedMediaWarning(
                f"video file '{p}' ends after {count} of the {reported} frames its container "
                f"reports (truncated or damaged); using the {count} readable frames"
            ),
            stacklevel=3,
        )
    indices = np.asarray(result.indices, dtype=np.int64)
    timestamps = indices / native_fps if native_fps else np.full(len(indices), np.nan)
    return Clip(
        source=str(p),
        frames=np.stack(result.frames),
        frame_indices=indices,
        timestamps=timestamps.astype(np.float64),
        is_image=False,
        native_fps=native_fps,
        native_frame_count=count,
    )


def _every_frame(index: int) -> bool:
    return True


def _uniform(
    p: Path,
    n: int,
    count_hint: int | None,
    resize: int | tuple[int, int] | None,
    *,
    cap: cv2.VideoCapture | None = None,
) -> _Decoded:
    """``n`` frames spread over the whole stream, planned on ``count_hint`` and re-planned
    on the true count if the stream disagrees (at most one more pass: the first pass
    always learns the exact count). Without a hint, a counting pass comes first."""
    if count_hint is None:
        count = _decode(p, _never, cap=cap).count  # grab() only: decodes, converts nothing
        cap = None
    else:
        count = count_hint
    for _ in range(2):
        if count == 0:  # only after a counting pass, which consumed ``cap``
            return _Decoded(frames=[], indices=[], count=0)
        planned = uniform_indices(count, n)
        result = _decode(p, _Planned(planned).wants, cap=cap, verify_end=count, size=resize)
        cap = None  # consumed by the first pass
        if result.count == count and len(result.frames) == len(planned):
            return result
        count = result.count
    raise CorruptMediaError(
        f"video file '{p}' decoded to a different number of frames on each pass; "
        f"the stream is not readable deterministically"
    )


def _never(index: int) -> bool:
    return False


class _Planned:
    """``wants`` for a sorted index array, in O(1) per frame."""

    def __init__(self, indices: np.ndarray) -> None:
        self._indices = indices.tolist()
        self._next = 0

    def wants(self, index: int) -> bool:
        if self._next < len(self._indices) and self._indices[self._next] == index:
            self._next += 1
            return True
        return False
