"""A corpus of bad files through ``memlens index build`` and ``memlens scan`` (issue 9):
zero-byte, truncated mp4 (several cut points), wrong extensions, 1x1 and 16000x16000 images,
a PNG bomb, symlink loops and non-UTF-8 file names, next to good files. Every good file is
processed, every bad one becomes an error with a reason, nothing crashes, hangs or decodes a
bomb. The CLI runs in a child process (``main([...])`` there), so a crash in native code
fails one test instead of killing pytest, a hang hits a timeout, and the child reports its
peak resident memory."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from memlens.datasets.clips import pan_clip, write_image, write_video
from memlens.datasets.photos import real_photographs
from memlens.index import ReferenceIndex
from memlens.video import MediaError, UnsupportedMediaError, read_media
from memlens.video import decode as decode_mod

TIMEOUT_S = 120  # per CLI run; the whole corpus takes ~3 s
PEAK_LIMIT_KIB = 1536 * 1024  # the bomb alone would need ~3.7 GB to decode
OK, ERROR = "ok", "error"

# The child: main([...]) as the `memlens` command, then its peak RSS (KiB on Linux) to a file.
_CHILD = """
import json, resource, sys
from memlens.cli import main
rc = main(sys.argv[2:])
with open(sys.argv[1], "w", encoding="utf-8") as f:
    json.dump({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}, f)
sys.exit(rc)
"""


@pytest.fixture(scope="module", autouse=True)
def _posix_only() -> None:
    if os.name != "posix":
        pytest.skip("symlink loops and byte file names need a POSIX file system")


def _png_declaring(width: int, height: int) -> bytes:
    """A valid 1-bit gray PNG of ``width`` x ``height`` black pixels: a few hundred KB that
    decode to width * height bytes (x3 as RGB), built row by row without ever holding them."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte 0 + packed bits
    z = zlib.compressobj(9)
    idat = [z.compress(row * 64) for _ in range(height // 64)]
    idat += [z.compress(row * (height % 64)), z.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(idat))
        + chunk(b"IEND", b"")
    )


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to declare width x height."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 90, np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def bomb_bytes() -> dict[str, bytes]:
    return {
        "big.png": _png_declaring(16000, 16000),
        "bomb.png": _png_declaring(30000, 30000),
        "bomb.jpg": _jpeg_declaring(30000, 30000),
    }


def _corpus(d: Path, bombs: dict[str, bytes]) -> dict[str, str]:
    """Write the corpus into ``d``; returns {file name: expected status} for the files that
    list_media must list (the symlinked directories and the .txt file are not media)."""
    d.mkdir(parents=True)
    photos = real_photographs()
    video = write_video(d / "good.mp4", pan_clip(photos["astronaut"], frames=8, size=(64, 48)))
    image = write_image(d / "good.png", photos["coffee"][:120, :160])
    write_image(d / "one_pixel.png", np.full((1, 1, 3), 200, np.uint8))
    good_video = video.read_bytes()
    expected = {"good.mp4": OK, "good.png": OK, "one_pixel.png": OK}

    (d / "empty.mp4").write_bytes(b"")
    (d / "empty.png").write_bytes(b"")
    expected |= {"empty.mp4": ERROR, "empty.png": ERROR}
    # OpenCV's mp4 writer puts the moov index after the frames: a cut inside ftyp, inside
    # mdat or just before moov loses the index (unreadable); a cut in moov's trailing
    # metadata still decodes every frame.
    moov = good_video.index(b"moov") - 4
    for cut in (16, 200, len(good_video) // 2, moov):
        (d / f"cut_{cut}.mp4").write_bytes(good_video[:cut])
        expected[f"cut_{cut}.mp4"] = ERROR
    (d / "cut_tail.mp4").write_bytes(good_video[:-16])
    expected["cut_tail.mp4"] = OK
    # FFmpeg reads a PNG whatever its name (one frame); imdecode cannot read an mp4.
    (d / "png_named.mp4").write_bytes(image.read_bytes())
    (d / "mp4_named.png").write_bytes(good_video)
    expected |= {"png_named.mp4": OK, "mp4_named.png": ERROR}
    for name, data in bombs.items():
        (d / name).write_bytes(data)
        expected[name] = ERROR
    # Links: a directory loop back to the corpus and a pair pointing at each other (walks
    # must not follow them), a file link to itself (ELOOP) and a dangling one.
    (d / "loop").symlink_to(d, target_is_directory=True)
    (d / "ring_a").symlink_to(d / "ring_b")
    (d / "ring_b").symlink_to(d / "ring_a")
    (d / "self.mp4").symlink_to("self.mp4")
    (d / "dangling.png").symlink_to("missing.png")
    expected |= {"self.mp4": ERROR, "dangling.png": ERROR}
    (d / "notes.txt").write_text("not media\n")
    return expected


def _run(argv: list[str], tmp: Path) -> tuple[int, int, str]:
    """(exit status, peak RSS in KiB, stdout) of ``memlens *argv`` in a child process."""
    stats = tmp / f"stats_{len(list(tmp.glob('stats_*')))}.json"
    env = {**os.environ, "OPENCV_LOG_LEVEL": "ERROR", "OPENCV_FFMPEG_LOGLEVEL": "-8"}
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", _CHILD, str(stats), *argv],
        capture_output=True,
        timeout=TIMEOUT_S,
        env=env,
        check=False,
    )
    out = proc.stdout.decode("utf-8", "backslashreplace")
    err = proc.stderr.decode("utf-8", "backslashreplace")
    assert proc.returncode >= 0, f"memlens died of signal {-proc.returncode}:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    peak = json.loads(stats.read_text())["peak_kib"] if stats.exists() else -1
    return proc.returncode, peak, out + err


def _index_items(idx: Path) -> list[str]:
    index = ReferenceIndex.open(idx, verify=True)
    return [index.item_info(i)["item_id"] for i in range(index.num_items)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, bomb_bytes: dict[str, bytes]) -> dict[str, Any]:
    """The corpus twice (train/ and gen/), indexed and scanned once for all tests here."""
    root = tmp_path_factory.mktemp("bad_files")
    expected = _corpus(root / "train", bomb_bytes)
    assert _corpus(root / "gen", bomb_bytes) == expected
    idx, run = root / "idx", root / "run"
    build = _run(["index", "build", str(root / "train"), "--out", str(idx),
                  "--embedder", "builtin", "--frames", "4", "--quiet"], root)  # fmt: skip
    scan = _run(["scan", str(root / "gen"), "--index", str(idx), "--out", str(run),
                 "--quiet"], root)  # fmt: skip
    return {"expected": expected, "idx": idx, "run": run, "build": build, "scan": scan}


def test_build_indexes_good_files_and_lists_every_bad_one(runs: dict[str, Any]) -> None:
    rc, peak, output = runs["build"]
    assert rc not in (2, 130), f"the build stopped instead of recording errors:\n{output}"
    expected: dict[str, str] = runs["expected"]
    good = {f"train/{n}" for n, s in expected.items() if s == OK}
    bad = {f"train/{n}" for n, s in expected.items() if s == ERROR}
    report = json.loads((runs["idx"] / "build_errors.json").read_text(encoding="utf-8"))
    errors = {e["item"]: e["error"] for e in report["errors"]}
    assert set(errors) == bad
    for item, reason in errors.items():
        assert item.split("/", 1)[1] in reason, (item, reason)
        assert f"error: {item}: " in output
    assert "declares 30000x30000 pixels" in errors["train/bomb.png"]
    assert "declares 16000x16000 pixels" in errors["train/big.png"]
    assert "empty (0 bytes)" in errors["train/empty.mp4"]
    assert "Too many levels of symbolic links" in errors["train/self.mp4"]
    assert "does not exist" in errors["train/dangling.png"]
    # Only the good files are in the index, each once (the directory loop is not followed).
    items = _index_items(runs["idx"])
    assert sorted(items) == sorted(good)
    assert f"{len(good)} items ({len(good)} added" in output
    assert f"{len(bad)} errors" in output
    assert 0 < peak < PEAK_LIMIT_KIB, f"peak RSS {peak / 1024:.0f} MiB"


def test_scan_writes_an_ok_or_error_row_for_every_input(runs: dict[str, Any]) -> None:
    rc, peak, output = runs["scan"]
    assert rc not in (2, 130), f"the scan stopped instead of recording errors:\n{output}"
    expected: dict[str, str] = runs["expected"]
    lines = (runs["run"] / "results.jsonl").read_text(encoding="utf-8").splitlines()
    rows = {r["item"]: r for r in map(json.loads, lines)}
    assert len(rows) == len(lines) == len(expected)
    assert {item: r["status"] for item, r in rows.items()} == {
        f"gen/{n}": s for n, s in expected.items()
    }
    for item, r in rows.items():
        if r["status"] == ERROR:
            assert item.split("/", 1)[1] in r["error"], r
        else:
            assert r["error"] is None
            assert r["frames"] >= 1
            # each good input finds itself (the same file is in the index)
            assert r["content_max"] > 0.99, r
    # cut_tail.mp4 holds the same frames as good.mp4: either is the best match
    assert rows["gen/good.mp4"]["best_item"] in ("train/good.mp4", "train/cut_tail.mp4")
    assert rows["gen/one_pixel.png"]["best_item"] == "train/one_pixel.png"
    assert "refused without decoding" in rows["gen/bomb.png"]["error"]
    n_ok = sum(s == OK for s in expected.values())
    assert f"({n_ok} scored, 0 already done, {len(expected) - n_ok} errors)" in output
    assert (runs["run"] / "results.parquet").exists()
    assert (runs["run"] / "report.html").exists()
    assert 0 < peak < PEAK_LIMIT_KIB, f"peak RSS {peak / 1024:.0f} MiB"


def test_exit_status_tells_partial_failure(runs: dict[str, Any]) -> None:
    """1: the run finished and holds error rows (0 would say all went well, 2 is a user
    error that did nothing)."""
    assert runs["build"][0] == 1
    assert runs["scan"][0] == 1


def test_bomb_refused_from_header_before_decoding(
    bomb_bytes: dict[str, bytes], tmp_path: Path
) -> None:
    for name, data in bomb_bytes.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UnsupportedMediaError, match="refused without decoding"):
            read_media(path)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp", "lossless.webp"])
def test_pixel_limit_reads_each_format_header(
    ext: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The declared size is read right for every image format memlens takes: an image one
    pixel over the limit is refused, one at the limit decodes."""
    frame = np.random.default_rng(0).integers(0, 256, (17, 33, 3), dtype=np.uint8)
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext.startswith("lossless") else []
    ok, buf = cv2.imencode(ext[-5:] if ext.startswith("lossless") else ext, frame, params)
    assert ok
    path = tmp_path / f"img{ext[-5:] if ext.startswith('lossless') else ext}"
    path.write_bytes(buf.tobytes())
    monkeypatch.setattr(decode_mod, "MAX_IMAGE_PIXELS", 33 * 17)
    assert read_media(path).frames.shape == (1, 17, 33, 3)
    monkeypatch.setattr(decode_mod, "MAX_IMAGE_PIXELS", 33 * 17 - 1)
    with pytest.raises(UnsupportedMediaError, match="declares 33x17 pixels"):
        read_media(path)


def _byte_named_corpus(d: Path) -> None:
    """A good video, and a good image and video whose names are not valid UTF-8."""
    d.mkdir(parents=True)
    video = write_video(d / "good.mp4", pan_clip(real_photographs()["moon"], frames=6))
    image = write_image(d / "good.png", real_photographs()["coins"][:96, :128])
    base = os.fsencode(d)
    for raw, src in ((b"caf\xe9.mp4", video), (b"bad\xff\xfe.png", image)):
        with open(os.path.join(base, raw), "wb") as f:
            f.write(src.read_bytes())


def test_non_utf8_video_name_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """OpenCV's binding used to die of SIGSEGV on a str with lone surrogates (a non-UTF-8
    name read through os.fsdecode); read_media must raise a MediaError. Run in a child so a
    regression fails this test instead of killing pytest."""
    _byte_named_corpus(tmp_path / "media")
    code = (
        "import os, sys\n"
        "from memlens.errors import MediaError\n"
        "from memlens.video import read_media\n"
        "try:\n"
        "    read_media(os.path.join(sys.argv[1], os.fsdecode(b'caf\\xe9.mp4')))\n"
        "except MediaError as e:\n"
        "    print('MediaError', ascii(str(e)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, str(tmp_path / "media")],
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "backslashreplace")[-3000:]
    assert proc.stdout.startswith(b"MediaError")
    assert b"not valid UTF-8" in proc.stdout


def test_non_utf8_names_are_refused_with_an_escaped_name(tmp_path: Path) -> None:
    """Such a name cannot be recorded as a UTF-8 source (indexes, results) nor handed to
    OpenCV: one clear error, whose message shows the bytes escaped."""
    _byte_named_corpus(tmp_path / "media")
    for raw in (b"bad\xff\xfe.png", b"caf\xe9.mp4"):
        with pytest.raises(MediaError, match="not valid UTF-8") as e:
            read_media(os.path.join(tmp_path / "media", os.fsdecode(raw)))
        str(e.value).encode("utf-8")  # printable: no lone surrogates left


def test_non_utf8_names_through_build_and_scan(tmp_path: Path) -> None:
    _byte_named_corpus(tmp_path / "media")
    idx, run = tmp_path / "idx", tmp_path / "run"
    rc, _, output = _run(["index", "build", str(tmp_path / "media"), "--out", str(idx),
                          "--embedder", "builtin", "--frames", "4", "--quiet"], tmp_path)  # fmt: skip
    assert rc != 2, output
    assert "media/good.mp4" in _index_items(idx)
    rc, _, output = _run(["scan", str(tmp_path / "media"), "--index", str(idx), "--out",
                          str(run), "--quiet"], tmp_path)  # fmt: skip
    assert rc != 2, output
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text("utf-8").splitlines()]
    assert len(rows) == 4
    assert {r["status"] for r in rows if r["item"].startswith("media/good")} == {OK}
