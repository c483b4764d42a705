"""Content memorization end to end through the command line, on real photographs turned into
short clips (pans and zooms over scikit-image's photographs, encoded with OpenCV): training
clips are indexed, re-encoded copies of them are flagged, unrelated clips are not; crashes in
the middle of a build or a scan resume to the result a clean run gives."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from memlens.cli import main
from memlens.datasets.clips import pan_clip, write_image, write_video, zoom_clip
from memlens.datasets.photos import real_photographs
from memlens.embed import sscd_installed
from memlens.engine import build as build_mod
from memlens.engine import scan as scan_mod
from memlens.index import ReferenceIndex

TRAIN = ("astronaut", "coffee", "rocket", "chelsea", "camera", "coins", "clock", "moon")
UNRELATED = ("stereo_motorcycle", "retina", "hubble_deep_field", "page")


def _shrink(clip: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in clip])


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/: 8 clips (mp4) + 1 image; gen/: copies (re-encoded MJPG avi at a smaller size,
    sub-clips, a resized still image), unrelated clips, a corrupt file and a file whose name
    needs HTML escaping."""
    root = tmp_path_factory.mktemp("media")
    (root / "train").mkdir()
    (root / "gen").mkdir()
    photos = real_photographs()
    for n, name in enumerate(TRAIN):
        clip = pan_clip(photos[name], frames=16, seed=n) if n % 2 == 0 else zoom_clip(photos[name])
        write_video(root / "train" / f"{name}.mp4", clip)
        if n % 2 == 0:
            copy = _shrink(clip[3:13], (96, 72))
            write_video(root / "gen" / f"copy_{name}.avi", copy, codec="MJPG")
    write_image(root / "train" / "gravel.png", photos["gravel"])
    write_image(
        root / "gen" / "still_gravel.jpg", cv2.resize(photos["gravel"], (200, 200)), quality=60
    )
    for n, name in enumerate(UNRELATED):
        write_video(root / "gen" / f"unrelated_{name}.mp4", pan_clip(photos[name], seed=10 + n))
    write_video(root / "gen" / "<b>odd&amp; name.mp4", pan_clip(photos["page"], seed=3))
    (root / "gen" / "broken.mp4").write_bytes(b"\x00" * 64)
    return root


def _rows(run: Path) -> dict[str, dict]:
    return {r["item"]: r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())}


def _build(media: Path, out: Path, embedder: str, *extra: str) -> int:
    return main(["index", "build", str(media / "train"), "--out", str(out), "--embedder", embedder,
                 "--shard-rows", "20", "--quiet", *extra])  # fmt: skip


@pytest.mark.parametrize(
    "embedder",
    [
        "builtin",
        pytest.param("sscd", marks=pytest.mark.skipif(not sscd_installed(), reason="no sscd")),
    ],
)
def test_copies_flagged_unrelated_not(media: Path, tmp_path: Path, embedder: str) -> None:
    idx, run = tmp_path / "idx", tmp_path / "run"
    assert _build(media, idx, embedder) == 0
    index = ReferenceIndex.open(idx, verify=True)
    assert index.num_items == len(TRAIN) + 1
    assert index.num_rows == 16 * len(TRAIN) + 1
    assert (
        # 1: the scan finished with error rows (gen/broken.mp4)
        main(["scan", str(media / "gen"), "--index", str(idx), "--out", str(run), "--quiet"]) == 1
    )
    rows = _rows(run)
    assert rows["gen/broken.mp4"]["status"] == "error"
    assert "broken.mp4" in rows["gen/broken.mp4"]["error"]
    for name in TRAIN[::2]:
        r = rows[f"gen/copy_{name}.avi"]
        assert r["content_memorized"], r
        assert r["best_item"] == r["mean_item"] == f"train/{name}.mp4"
        assert r["content_mean"] > 0.5
    still = rows["gen/still_gravel.jpg"]
    assert still["content_memorized"]
    assert still["best_item"] == "train/gravel.png"
    for name in UNRELATED:
        r = rows[f"gen/unrelated_{name}.mp4"]
        assert not r["content_memorized"], r
        assert r["content_max"] < 0.5
    # Parquet has the same rows; the report escapes user strings
    table = pq.read_table(run / "results.parquet").to_pylist()
    assert {r["item"] for r in table} == set(rows)
    html = (run / "report.html").read_text()
    assert "&lt;b&gt;odd&amp;amp; name.mp4" in html
    assert "<b>odd" not in html
    assert html.count("data:image/jpeg;base64,") >= 2 * 6
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["schema_version"] == 1
    assert run_json["settings"]["embedder"]["name"] == embedder


@pytest.mark.parametrize("checkpoint", [60.0, 0.0])
def test_build_resume_after_crash_equals_clean_build(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint: float
) -> None:
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    assert _build(media, clean, "builtin") == 0
    # checkpoint 0: the partial shard is committed after every item
    defaults = build_mod.build_index.__kwdefaults__
    monkeypatch.setitem(defaults, "checkpoint_seconds", checkpoint)
    real = build_mod.read_for_batch
    calls = {"n": 0}

    def dying(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # the user hits Ctrl-C in the 6th item
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(build_mod, "read_for_batch", dying)
    assert _build(media, crashed, "builtin") == 130
    monkeypatch.setattr(build_mod, "read_for_batch", real)
    assert _build(media, crashed, "builtin", "--resume") == 0
    for f in sorted(p.relative_to(clean) for p in clean.rglob("*.npy")):
        assert (crashed / f).read_bytes() == (clean / f).read_bytes(), f
    assert sorted(p.name for p in (crashed / "shards").iterdir()) == sorted(
        p.name for p in (clean / "shards").iterdir()
    )
    assert pq.read_table(crashed / "items.parquet").equals(pq.read_table(clean / "items.parquet"))


def test_build_resume_with_another_embedder_is_an_error(
    media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    idx = tmp_path / "idx"
    assert _build(media, idx, "builtin") == 0
    capsys.readouterr()
    assert _build(media, idx, "onnx:/nonexistent/model.onnx", "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "model.onnx" in err


@pytest.mark.skipif(not sscd_installed(), reason="no sscd")
def test_embedder_mismatch_between_index_and_scan(media: Path, tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    assert _build(media, idx, "builtin") == 0
    with pytest.raises(ValueError, match="embedder"):
        ReferenceIndex.open(
            idx, embedder=__import__("memlens.embed").embed.get_embedder("sscd").spec
        )
    with pytest.raises(ValueError, match="built with embedder"):
        scan_mod.scan([media / "gen"], idx, tmp_path / "run", embedder="sscd", progress=False)


def test_scan_resume_after_crash_equals_clean_scan(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = tmp_path / "idx"
    assert _build(media, idx, "builtin") == 0
    settings = scan_mod.ScanSettings(batch_frames=20)  # several batches
    clean = tmp_path / "clean"
    scan_mod.scan([media / "gen"], idx, clean, settings=settings, progress=False)
    real = scan_mod.content_scores
    calls = {"n": 0}

    def dying(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scan_mod, "content_scores", dying)
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        scan_mod.scan([media / "gen"], idx, crashed, settings=settings, progress=False)
    partial = _rows(crashed)
    assert 0 < len(partial) < len(_rows(clean))
    # a torn last line (killed mid-write) is cut off on resume
    with open(crashed / "results.jsonl", "a") as f:
        f.write('{"item": "gen/tor')
    monkeypatch.setattr(scan_mod, "content_scores", real)
    with pytest.raises(FileExistsError, match="--resume"):
        scan_mod.scan([media / "gen"], idx, crashed, settings=settings, progress=False)
    s = scan_mod.scan([media / "gen"], idx, crashed, settings=settings, progress=False, resume=True)
    assert s.skipped == len(partial)
    assert _rows(crashed) == _rows(clean)


def test_compare_json_keys(media: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = media / "gen" / "copy_astronaut.avi"
    b = media / "train" / "astronaut.mp4"
    assert main(["compare", str(a), str(b), "--embedder", "builtin", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["content"]) == {"gsscd_max", "gsscd_mean", "vsscd"}
    assert out["content"]["gsscd_max"] > 0.9
    assert out["content"]["gsscd_max"] >= out["content"]["gsscd_mean"]
    assert main(["compare", str(b), str(b), "--embedder", "builtin"]) == 0
    assert "gsscd_max 1.0000" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["compare", "missing.mp4", "other.mp4", "--embedder", "builtin"], "missing.mp4"),
        (["scan", "nowhere", "--index", "noindex", "--out", "r"], "nowhere"),
        (["index", "build", "x", "--out", "y", "--embedder", "bogus"], "bogus"),
        (["scan", "g", "--index", "i", "--out", "r", "--tau", "2"], "--tau"),
        (["index", "build", "x", "--out", "y", "--frames", "4", "--fps", "2"], "not allowed"),
    ],
)
def test_user_errors_are_one_line_exit_2(
    argv: list[str], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    write_image(tmp_path / "x" / "a.png", np.zeros((8, 8, 3), np.uint8))
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors exit from parse_args
        rc = int(e.code or 0)
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("memlens: error:")
    assert err.count("\n") == 1
    assert needle in err


def test_build_with_reduced_copies_and_mismatched_resume(
    media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    idx = tmp_path / "idx"
    assert _build(media, idx, "builtin", "--copies", "bf16", "int8") == 0
    index = ReferenceIndex.open(idx, verify=True)
    assert set(index.copies) == {"bf16", "int8"}
    assert index.load_shard(0, precision="int8") is not None
    capsys.readouterr()
    # resuming with another shard size would silently change the layout: refused
    assert main(["index", "build", str(media / "train"), "--out", str(idx), "--embedder",
                 "builtin", "--shard-rows", "7", "--resume", "--quiet"]) == 2  # fmt: skip
    assert "shard_rows" in capsys.readouterr().err


_KILLED_BUILD = """
import os, sys
from memlens.engine import build
real, calls = build.read_for_batch, [0]
def dying(*a, **k):
    calls[0] += 1
    if calls[0] == 6:
        os._exit(137)  # killed: no cleanup, no flush
    return real(*a, **k)
build.read_for_batch = dying
build.build_index([sys.argv[1]], sys.argv[2], embedder="builtin", shard_rows=1000,
                  checkpoint_seconds=float(sys.argv[3]), progress=False)
"""


@pytest.mark.parametrize(("checkpoint", "kept"), [(3600.0, 0), (0.0, 5)])
def test_killed_build_keeps_checkpointed_items(
    media: Path, tmp_path: Path, checkpoint: float, kept: int
) -> None:
    import subprocess
    import sys

    clean, killed = tmp_path / "clean", tmp_path / "killed"
    build_mod.build_index([media / "train"], clean, embedder="builtin", shard_rows=1000,
                          progress=False)  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _KILLED_BUILD, str(media / "train"),
                           str(killed), str(checkpoint)], capture_output=True, check=False)  # fmt: skip
    assert proc.returncode == 137, proc.stderr.decode()
    s = build_mod.build_index([media / "train"], killed, embedder="builtin", shard_rows=1000,
                              resume=True, progress=False)  # fmt: skip
    assert s.skipped == kept
    for f in sorted(p.relative_to(clean) for p in clean.rglob("*.npy")):
        assert (killed / f).read_bytes() == (clean / f).read_bytes(), f
    assert pq.read_table(killed / "items.parquet").equals(pq.read_table(clean / "items.parquet"))


def test_user_onnx_model_index_needs_the_model_named_at_scan(
    media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_embed import W8, _onnx_model

    model = _onnx_model(tmp_path / "m.onnx", dtype="uint8", layout="NHWC", side=None, weight=W8)
    idx = tmp_path / "idx"
    assert _build(media, idx, f"onnx:{model}") == 0
    scan_args = ["scan", str(media / "gen" / "copy_astronaut.avi"), "--index", str(idx),
                 "--quiet", "--threads", "1"]  # fmt: skip
    capsys.readouterr()
    assert main([*scan_args, "--out", str(tmp_path / "r1")]) == 2
    assert "--embedder onnx:PATH" in capsys.readouterr().err
    other = _onnx_model(tmp_path / "o.onnx", dtype="uint8", layout="NHWC", side=None, weight=-W8)
    assert main([*scan_args, "--out", str(tmp_path / "r2"), "--embedder", f"onnx:{other}"]) == 2
    assert "built with embedder" in capsys.readouterr().err
    assert main([*scan_args, "--out", str(tmp_path / "r3"), "--embedder", f"onnx:{model}"]) == 0
    assert _rows(tmp_path / "r3")["copy_astronaut.avi"]["status"] == "ok"
