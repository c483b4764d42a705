"""``scan --engine ray`` (DESIGN.md §7): shard actors + Ray tasks give the records a local scan
gives, in the same order, floats bitwise equal (the same kernels run on the same rows)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import memlens
from memlens.cli import main
from memlens.datasets.clips import pan_clip, sprite_clip, write_image, write_video
from memlens.datasets.photos import real_photographs
from memlens.engine import ray_engine
from memlens.engine.motion import FlowOptions
from memlens.engine.scan import ScanSettings, scan
from memlens.index import ReferenceIndex

ray = pytest.importorskip("ray")

# Ray's own imports may warn (deprecations in its dependencies); they are not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

TRAIN = ("astronaut", "coffee", "rocket", "chelsea", "camera", "coins")
SHARD_ROWS = 16  # 6 x 12 + 1 rows -> 5 shards


@pytest.fixture(scope="module")
def ray_session():  # type: ignore[no-untyped-def]
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def _path(n: int, seed: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    x, y, out = 40.0, 30.0, []
    for _ in range(n):
        out.append((x, y))
        x = float(np.clip(x + rng.uniform(-6, 6), 0, 110))
        y = float(np.clip(y + rng.uniform(-5, 5), 0, 70))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ (6 clips of 12 frames + 1 image) indexed in 5 shards; gen/ copies, a sprite
    motion copy, unrelated clips, a still and a broken file."""
    root = tmp_path_factory.mktemp("ray")
    train, gen = root / "train", root / "gen"
    train.mkdir()
    gen.mkdir()
    p = real_photographs()
    clips = {}
    for n, name in enumerate(TRAIN):
        clip = (
            pan_clip(p[name], frames=12, seed=n)
            if n % 2 == 0
            else sprite_clip(p[name], p["moon"], _path(12, n))
        )
        clips[name] = clip
        write_video(train / f"{name}.mp4", clip)
    write_image(train / "gravel.png", p["gravel"][:240, :320])
    write_video(gen / "copy_astronaut.mp4", clips["astronaut"][2:10])
    write_video(gen / "motion_copy.mp4", sprite_clip(p["brick"], p["text"], _path(12, 1)))
    write_video(gen / "unrelated.mp4", pan_clip(p["retina"], frames=10, seed=9))
    write_video(gen / "unrelated2.mp4", pan_clip(p["page"], frames=10, seed=3))
    write_video(gen / "still.mp4", np.repeat(p["gravel"][None, :240, :320], 6, axis=0))
    (gen / "broken.mp4").write_bytes(b"\x00" * 64)
    idx = root / "idx"
    assert main(["index", "build", str(train), "--out", str(idx), "--embedder", "builtin",
                 "--shard-rows", str(SHARD_ROWS), "--quiet"]) == 0  # fmt: skip
    with ReferenceIndex.open(idx) as index:
        assert len(index.shards) >= 3
    return root


def _lines(run: Path) -> list[str]:
    return (run / "results.jsonl").read_text().splitlines()


def test_cli_scan_ray_equals_local(ray_session, data: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    common = [str(data / "gen"), "--index", str(data / "idx"), "--quiet", "--batch-frames", "20"]
    assert main(["scan", *common, "--out", str(tmp_path / "local")]) == 1  # 1: broken.mp4
    assert main(["scan", *common, "--out", str(tmp_path / "ray"), "--engine", "ray",
                 "--ray-actors", "2"]) == 1  # fmt: skip
    local, remote = _lines(tmp_path / "local"), _lines(tmp_path / "ray")
    assert len(local) == 6
    assert remote == local  # same records, same order, floats bitwise (JSON round-trips them)
    rows = [json.loads(x) for x in local]
    assert any(r["status"] == "error" for r in rows)
    assert any(r.get("content_memorized") for r in rows)
    assert ray.is_initialized()  # the test's session was used and left running
    # an interrupted run resumed with the other engine ends as the clean run
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(tmp_path / "local" / "run.json", part / "run.json")
    (part / "results.jsonl").write_text("\n".join(local[:3]) + "\n")
    assert json.loads(local[0])["status"] == "error"  # gen/broken.mp4 sorts first: done
    assert main(["scan", *common, "--out", str(part), "--engine", "ray", "--resume"]) == 0
    assert sorted(_lines(part)) == sorted(local)


def test_motion_scan_ray_equals_local(ray_session, data: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = ScanSettings(motion=True, flow=FlowOptions(frames=8, short_side=64), batch_frames=24)
    runs = {}
    for engine in ("local", "ray"):
        idx = tmp_path / f"idx-{engine}"  # each with its own (cold) flow cache
        shutil.copytree(data / "idx", idx)
        runs[engine] = tmp_path / engine
        summary = scan([data / "gen"], idx, runs[engine], settings=s, progress=False,
                       engine=engine, ray_actors=3)  # fmt: skip
        assert summary.scored == 5
        assert summary.errors == 1
        assert (idx / "flow_cache").is_dir()
    local, remote = _lines(runs["local"]), _lines(runs["ray"])
    assert remote == local
    rows = [json.loads(x) for x in local]
    assert any(r.get("motion_candidates") for r in rows)
    for r in rows:
        if r.get("motion_flow_image"):
            a = (runs["local"] / r["motion_flow_image"]).read_bytes()
            assert (runs["ray"] / r["motion_flow_image"]).read_bytes() == a


def test_shard_group_topk_is_cosine_topk(ray_session, data: Path) -> None:  # type: ignore[no-untyped-def]
    with ReferenceIndex.open(data / "idx") as index:
        shards = index.shards
        q = index.rows_between(0, index.num_rows)[::3] + 0.05
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        for group in ([0], [1, 2], list(range(len(shards)))):
            first = shards[group[0]].first_row
            stop = shards[group[-1]].first_row + shards[group[-1]].rows
            refs = index.rows_between(first, stop)
            for resident in (True, False):
                sg = ray_engine.ShardGroup(index.path, group, resident=resident)
                for k in (1, 7, 40):
                    got_s, got_r = sg.topk(q, k)
                    want_s, want_i = memlens.cosine_topk(q, refs, min(k, len(refs)))
                    np.testing.assert_array_equal(got_r, want_i + first)
                    np.testing.assert_array_equal(got_s, want_s)
            # one call over the group's rows (a GPU actor's layout): the same neighbours
            whole = ray_engine.ShardGroup(index.path, group, concat=True)
            per_shard = ray_engine.ShardGroup(index.path, group)
            for k in (1, 7, 40):
                (a_s, a_r), (b_s, b_r) = whole.topk(q, k), per_shard.topk(q, k)
                np.testing.assert_array_equal(a_r, b_r)
                np.testing.assert_allclose(a_s, b_s, atol=1e-6, rtol=0)
        with pytest.raises(ValueError, match="consecutive"):
            ray_engine.ShardGroup(index.path, [0, 2], concat=True)
        # the Ray side: actors over 2 and 3 groups, merged on the driver, equal the local search
        for n_actors in (3,):  # (the CLI test runs 2)
            actors = [
                ray.remote(ray_engine.ShardGroup).remote(str(index.path), g)
                for g in ray_engine.shard_groups([s.rows for s in shards], n_actors)
            ]
            remote = ray_engine.RayIndex(ray, index, actors)
            for k in (1, 7, 40, index.num_rows):
                want = index.search(q, k)
                got = remote.search(q, k)
                np.testing.assert_array_equal(got.rows, want.rows)
                np.testing.assert_array_equal(got.scores, want.scores)
                np.testing.assert_array_equal(got.item_numbers, want.item_numbers)
            # reduced precision: exact indices; scores re-ranked in fp32 (to 1e-6)
            want, got = index.search(q, 5, precision="bf16"), remote.search(q, 5, precision="bf16")
            np.testing.assert_array_equal(got.rows, want.rows)
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-6, rtol=0)
            for a in actors:
                ray.kill(a)


def test_shard_groups_split() -> None:
    assert ray_engine.shard_groups([16] * 5, 2) == [[0, 1, 2], [3, 4]]
    assert ray_engine.shard_groups([16] * 5, 9) == [[0], [1], [2], [3], [4]]
    assert ray_engine.shard_groups([100, 1, 1, 1], 2) == [[0], [1, 2, 3]]
    assert ray_engine.shard_groups([1, 1, 1, 100], 3) == [[0, 1], [2], [3]]
    for rows in ([5, 7, 1, 30, 2, 2], [1] * 11):
        for g in range(1, 8):
            groups = ray_engine.shard_groups(rows, g)
            assert [n for x in groups for n in x] == list(range(len(rows)))
            assert len(groups) == min(g, len(rows))
            assert all(groups)


def test_missing_ray_is_a_clear_error(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ray_engine.RayUnavailableError, match=r"pip install 'memlens\[ray\]'"):
        scan([data / "gen"], data / "idx", tmp_path / "run", engine="ray", progress=False)
    assert not (tmp_path / "run").exists()
    capsys.readouterr()
    assert main(["scan", str(data / "gen"), "--index", str(data / "idx"), "--out",
                 str(tmp_path / "run"), "--engine", "ray", "--quiet"]) == 2  # fmt: skip
    assert "--engine ray needs Ray: pip install 'memlens[ray]'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="engine must be"):
        scan([data / "gen"], data / "idx", tmp_path / "run", engine="dask", progress=False)


def test_import_memlens_does_not_import_ray() -> None:
    code = (
        "import sys, memlens, memlens.cli, memlens.engine.scan, memlens.engine.ray_engine\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
