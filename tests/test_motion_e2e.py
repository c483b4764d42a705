"""Motion memorization end to end on clips made from real photographs: frames -> DIS flow ->
flow_similarity -> OFS-k / NMF (methods.md §1.8 oracles 3-7), through the library, `compare`
and `scan --motion`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from memlens.cli import main
from memlens.datasets.clips import pan_clip, sprite_clip, write_image, write_video
from memlens.datasets.photos import real_photographs
from memlens.engine.motion import FlowOptions, compare_motion
from memlens.metrics.content import gsscd
from memlens.metrics.motion import MotionSettings, decide

P = real_photographs()
OPTS = FlowOptions(frames=12, short_side=128)
SETTINGS = MotionSettings()


def trajectory(n: int, seed: int = 0, speed: float = 4.0) -> list[tuple[float, float]]:
    """A wandering path (not a straight line, so it is no generic camera motion)."""
    rng = np.random.default_rng(seed)
    x, y, out = 30.0, 30.0, []
    heading = 0.0
    for _ in range(n):
        out.append((x, y))
        heading += rng.uniform(-0.8, 0.8)
        x = float(np.clip(x + speed * np.cos(heading), 0, 110))
        y = float(np.clip(y + speed * np.sin(heading), 0, 70))
    return out


def sprite(bg: str, obj: str, path: list[tuple[float, float]]) -> np.ndarray:
    return sprite_clip(P[bg], P[obj], path)


@pytest.fixture(scope="module")
def choreography() -> tuple[np.ndarray, np.ndarray]:
    """The same trajectory with an unrelated sprite over an unrelated background."""
    path = trajectory(12)
    return sprite("coffee", "astronaut", path), sprite("brick", "rocket", path)


def test_same_motion_different_content(choreography: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = choreography
    m, _, _ = compare_motion(a, b, SETTINGS, OPTS)
    assert m.ofs > 0.8, m
    assert not m.camera_motion
    assert not m.static
    d = decide([m], MotionSettings(min_population=99))
    assert d.memorized
    # and the content metric does not see it
    from memlens.embed import get_embedder

    emb = get_embedder("builtin")
    assert gsscd(emb.embed(a), emb.embed(b)) < 0.5


def test_unrelated_motion_scores_low(choreography: tuple[np.ndarray, np.ndarray]) -> None:
    a, _ = choreography
    other = sprite("brick", "rocket", trajectory(12, seed=7))
    m, _, _ = compare_motion(a, other, SETTINGS, OPTS)
    assert m.ofs < 0.5


def test_time_reversal_is_negative(choreography: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = choreography
    m, _, _ = compare_motion(a, b[::-1].copy(), SETTINGS, OPTS)
    # reversed, each flow vector sits where the sprite arrives rather than where it left, so
    # only the overlap of the two positions cancels exactly: clearly negative, not -1
    assert m.ofs < -0.3
    assert not decide([m], MotionSettings(min_population=99)).memorized


def test_double_speed_keeps_direction_halves_magnitude() -> None:
    # methods.md oracle 6: G = R at 2x speed (every 2nd frame), resampled back to T frames
    path = trajectory(12, seed=3, speed=2.0)
    r = sprite("coffee", "astronaut", path)
    g = sprite("brick", "rocket", path[::2])
    m, _, _ = compare_motion(g, r, SETTINGS, OPTS)
    assert m.ofs > 0.7
    assert 0.3 < m.ofs_mag < 0.65  # min/max of the speeds: 0.5


def test_frozen_frame_is_static() -> None:
    still = np.repeat(P["chelsea"][None, :240, :320], 12, axis=0)
    m, g, _ = compare_motion(still, sprite("coffee", "astronaut", trajectory(12)), SETTINGS, OPTS)
    assert np.all(g == 0)
    assert m.static
    assert m.ofs == 0


def test_pure_translation_is_camera_motion() -> None:
    a = pan_clip(P["grass"], frames=12, direction=(3.0, 0.0), seed=1)
    b = pan_clip(P["moon"], frames=12, direction=(3.0, 0.0), seed=2)
    m, _, _ = compare_motion(a, b, SETTINGS, OPTS)
    assert m.ofs > 0.8
    assert m.camera_motion
    assert not decide([m], MotionSettings(min_population=99)).memorized


def test_stride_doubles_magnitude_not_direction() -> None:
    a = pan_clip(P["grass"], frames=12, direction=(2.0, 0.0), seed=1)
    _, f1, _ = compare_motion(a, a, SETTINGS, FlowOptions(frames=12, short_side=128, stride=1))
    _, f2, _ = compare_motion(a, a, SETTINGS, FlowOptions(frames=12, short_side=128, stride=2))
    ratio = np.median(f2[..., 0]) / np.median(f1[..., 0])
    assert ratio == pytest.approx(2.0, rel=0.1)


def test_compare_and_scan_motion_cli(
    choreography: tuple[np.ndarray, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = choreography
    train, gen = tmp_path / "train", tmp_path / "gen"
    train.mkdir()
    gen.mkdir()
    write_video(train / "dance.mp4", a)
    for n, name in enumerate(("coins", "camera", "clock", "page", "cell", "text")):
        write_video(train / f"other{n}.mp4", sprite(name, "moon", trajectory(12, seed=20 + n)))
    write_image(train / "photo.png", P["chelsea"][:240, :320])
    write_video(gen / "copied_motion.mp4", b)  # same choreography, other content
    write_video(gen / "content_copy.mp4", a)  # content and motion copy
    write_video(gen / "still.mp4", np.repeat(P["chelsea"][None, :240, :320], 12, axis=0))
    capsys.readouterr()
    assert main(["compare", str(gen / "copied_motion.mp4"), str(train / "dance.mp4"),
                 "--embedder", "builtin", "--json", "--flow-frames", "12"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert set(out["motion"]) >= {"ofs", "ofs_mag", "static", "camera_motion", "best_offset"}
    assert out["motion"]["ofs"] > 0.8
    idx, run = tmp_path / "idx", tmp_path / "run"
    assert main(["index", "build", str(train), "--out", str(idx), "--embedder", "builtin",
                 "--quiet"]) == 0  # fmt: skip
    assert main(["scan", str(gen), "--index", str(idx), "--out", str(run), "--motion",
                 "--flow-frames", "12", "--quiet"]) == 0  # fmt: skip
    rows = {r["item"]: r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())}
    copy = rows["gen/content_copy.mp4"]
    assert copy["content_memorized"]
    assert copy["motion_best_item"] == "train/dance.mp4"
    assert copy["motion_ofs"] > 0.8
    assert copy["motion_memorized"], copy
    assert (run / copy["motion_flow_image"]).is_file()
    still = rows["gen/still.mp4"]
    assert still["content_memorized"]  # a frozen training image: content, not motion
    assert still["motion_static"]
    assert not still["motion_memorized"]
    assert (idx / "flow_cache").is_dir()
    html = (run / "report.html").read_text()
    assert "motion" in html
    # an explicit candidate list: scored against every input on top of the content top-K
    extra = tmp_path / "extra.txt"
    extra.write_text("# distinctive motions\ntrain/dance.mp4\n")
    run2 = tmp_path / "run2"
    assert main(["scan", str(gen / "copied_motion.mp4"), "--index", str(idx), "--out", str(run2),
                 "--motion", "--motion-candidates", "1", "--motion-extra", str(extra),
                 "--flow-frames", "12", "--quiet"]) == 0  # fmt: skip
    (row,) = map(json.loads, (run2 / "results.jsonl").read_text().splitlines())
    assert row["motion_candidates"] >= 1
    assert row["motion_best_item"] == "train/dance.mp4"
    assert row["motion_ofs"] > 0.8
    extra.write_text("train/nope.mp4\n")
    capsys.readouterr()
    assert main(["scan", str(gen), "--index", str(idx), "--out", str(tmp_path / "run3"),
                 "--motion", "--motion-extra", str(extra), "--quiet"]) == 2  # fmt: skip
    assert "not in the index" in capsys.readouterr().err
