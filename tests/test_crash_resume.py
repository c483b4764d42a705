"""kill -9 ``memlens index build`` and ``memlens scan`` at seeded random points, then
``--resume``: the index must equal a clean build's byte for byte (manifest counts, every
shard's name, size and sha256, items.parquet), and the scan must hold exactly the clean
scan's rows, none lost or duplicated (issue 9, DESIGN.md §6).

Each command runs as a child process (``main([...])`` of the CLI after its imports, so the
import time does not dilute the kill points). Two kinds of kill point: a random delay into
the child's working time (measured on the clean run), and "just after the n-th commit" (the
test watches ``manifest.json`` / ``results.jsonl`` change and kills at once), which lands
between the steps of the commit protocol. A stray shard file that no manifest references is
planted before one resume; it must be removed and never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memlens.datasets.clips import pan_clip, write_image, write_video
from memlens.datasets.photos import real_photographs
from memlens.index import ReferenceIndex

TIMEOUT_S = 120
SHARD_ROWS = 5  # small shards: items span shards, so commits land mid-item
FRAMES = 4
TRAIN_IMAGES, TRAIN_VIDEOS = 60, 8
GEN_IMAGES, GEN_VIDEOS = 40, 6  # plus 16 new ones and a broken file

# The child imports what the command needs, says "ready", then runs it.
_CHILD = """
import sys
import memlens.cli, memlens.engine.build, memlens.engine.scan, memlens.report.html
from memlens.embed import get_embedder
get_embedder("builtin")
import time
sys.stderr.write("ready\\n"); sys.stderr.flush()
t0 = time.perf_counter()
rc = memlens.cli.main(sys.argv[1:])
sys.stderr.write(f"work {time.perf_counter() - t0}\\n")
sys.exit(rc)
"""


@pytest.fixture(scope="module", autouse=True)
def _posix_only() -> None:
    if os.name != "posix":
        pytest.skip("kill -9 needs POSIX signals")


def _media(d: Path, images: int, videos: int, seed: int) -> Path:
    """``images`` distinct noise PNGs and ``videos`` short pans (different embeddings)."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    photos = list(real_photographs().values())
    for n in range(images):
        img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        write_image(d / f"img_{n:03d}.png", img)
    for n in range(videos):
        clip = pan_clip(photos[n % len(photos)], frames=6, size=(48, 40), seed=seed + n)
        write_video(d / f"vid_{n:02d}.mp4", clip)
    return d


class _Child:
    """One CLI run in a child process; ``ready`` is when its imports are done."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "OPENCV_LOG_LEVEL": "ERROR", "OPENCV_FFMPEG_LOGLEVEL": "-8"},
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert line == b"ready\n", line + self.proc.stderr.read()
        self.ready = time.perf_counter()

    def finish(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=TIMEOUT_S)
        return self.proc.returncode, err.decode(errors="replace")

    def kill(self) -> bool:
        """SIGKILL; True when the child was still running (the kill interrupted it)."""
        running = self.proc.poll() is None
        if running:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=TIMEOUT_S)
        return running and self.proc.returncode == -signal.SIGKILL


def _exit_ok(args: list[str]) -> set[int]:
    # scan exits 1 when some input failed (the broken file of the corpus)
    return {0, 1} if args[0] == "scan" else {0}


def _run_clean(args: list[str]) -> float:
    """Run to completion; returns the working time (after imports, before exit)."""
    rc, err = _Child(args).finish()
    assert rc in _exit_ok(args), err
    return float(err.split("work ")[-1])


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _kill_after(child: _Child, delay: float) -> bool:
    time.sleep(max(0.0, delay - (time.perf_counter() - child.ready)))
    return child.kill()


def _kill_at_change(child: _Child, watched: Path, changes: int) -> bool:
    """Kill the moment ``watched`` has changed ``changes`` times (polled every ~0.5 ms)."""
    last, seen = _stamp(watched), 0
    deadline = time.perf_counter() + TIMEOUT_S
    while child.proc.poll() is None and time.perf_counter() < deadline:
        now = _stamp(watched)
        if now != last:
            last, seen = now, seen + 1
            if seen >= changes:
                break
        time.sleep(0.0005)
    return child.kill()


KillPoint = tuple[str, float]  # ("time", fraction of the working time) | ("commit", n)


def _kill_points(seed: int, count: int) -> list[KillPoint]:
    """Alternating time and commit kill points, seeded."""
    rng = np.random.default_rng(seed)
    out: list[KillPoint] = []
    for n in range(count):
        if n % 2 == 0:
            out.append(("time", float(rng.uniform(0.05, 0.6))))
        else:
            out.append(("commit", int(rng.integers(1, 4))))
    return out


def _crash_then_resume(
    args: list[str],
    points: list[KillPoint],
    work_s: float,
    watched: Path,
    done: Callable[[], float],
    before_resume: Callable[[int], None] | None = None,
) -> int:
    """Kill a run at each point in turn (each run after the first resumes), then resume to
    completion; returns how many kills interrupted a running command. A time point is a
    fraction of the work still to do (``done()``: the fraction already committed)."""
    interrupted = 0
    for n, (kind, value) in enumerate(points):
        if n and before_resume is not None:
            before_resume(n)
        left = work_s * (1.0 - done())
        child = _Child(args + (["--resume"] if n else []))
        if kind == "time":
            interrupted += _kill_after(child, value * left)
        else:
            interrupted += _kill_at_change(child, watched, int(value))
    if before_resume is not None:
        before_resume(len(points))
    rc, err = _Child([*args, "--resume"]).finish()
    assert rc in _exit_ok(args), err
    return interrupted


# ---------------------------------------------------------------------------- index build


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _index_state(root: Path) -> dict[str, Any]:
    """What must not depend on crashes: counts, shards, items table and the file set."""
    m = json.loads((root / "manifest.json").read_text())
    files = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()
    )
    return {
        "counts": {k: m[k] for k in ("num_rows", "num_items", "dim", "shard_rows", "copies")},
        "shards": m["shards"],
        "items": m["items"],
        "items_sha": _sha(root / "items.parquet"),
        "shard_sha": {f: _sha(root / f) for f in files if f.startswith("shards/")},
        "files": files,
    }


def _build_args(src: Path, out: Path) -> list[str]:
    return ["index", "build", str(src), "--out", str(out), "--embedder", "builtin",
            "--frames", str(FRAMES), "--shard-rows", str(SHARD_ROWS), "--copies", "bf16",
            "--threads", "1", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Training media, its clean index (and the clean build's working time)."""
    d = tmp_path_factory.mktemp("crash")
    train = _media(d / "train", images=TRAIN_IMAGES, videos=TRAIN_VIDEOS, seed=1)
    clean = d / "clean_index"
    work = _run_clean(_build_args(train, clean))
    items = TRAIN_IMAGES + TRAIN_VIDEOS
    return {"dir": d, "train": train, "clean": clean, "build_s": work, "items": items}


def _plant_stray(root: Path, n: int) -> Path | None:
    """A shard file the manifest does not reference (as a killed writer would leave one
    before committing), with garbage content: it must be removed, never read."""
    shards = root / "shards"
    if not shards.is_dir():
        return None
    stray = shards / f"{900 + n:06d}.f32.npy"
    stray.write_bytes(b"not an array")
    return stray


def _check_build(corpus: dict[str, Any], name: str, points: list[KillPoint]) -> int:
    out = corpus["dir"] / name
    args = _build_args(corpus["train"], out)
    strays: list[Path] = []

    def before_resume(n: int) -> None:
        if (stray := _plant_stray(out, n)) is not None:
            strays.append(stray)

    def done() -> float:
        try:
            m = json.loads((out / "manifest.json").read_text())
        except FileNotFoundError:
            return 0.0
        return m["num_items"] / corpus["items"]

    interrupted = _crash_then_resume(
        args, points, corpus["build_s"], out / "manifest.json", done, before_resume
    )
    assert strays, "no stray shard was planted"
    for stray in strays:
        assert not stray.exists(), f"stray {stray.name} survived the resume"
    assert _index_state(out) == _index_state(corpus["clean"])
    with ReferenceIndex.open(out, verify=True) as idx, ReferenceIndex.open(corpus["clean"]) as c:
        assert idx.item_ids() == c.item_ids()
        assert idx.num_rows == c.num_rows
    print(f"build {name}: {interrupted}/{len(points)} kills interrupted it; points {points}")
    return interrupted


def test_killed_build_resumes_to_the_clean_index(corpus: dict[str, Any]) -> None:
    interrupted = _check_build(corpus, "killed_index", _kill_points(seed=9, count=4))
    assert interrupted >= 2, "most kill points must land while the build runs"


@pytest.mark.slow
def test_killed_build_many_points(corpus: dict[str, Any]) -> None:
    for seed in range(3):
        _check_build(corpus, f"killed_index_{seed}", _kill_points(seed=100 + seed, count=8))


def test_stray_shard_is_ignored_by_readers_and_removed_by_resume(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    """A shard not in the manifest: readers and searches ignore it, ``--resume`` removes it
    (and keeps a file memlens did not write)."""
    import shutil

    out = tmp_path / "idx"
    shutil.copytree(corpus["clean"], out)
    stray = out / "shards" / "000999.f32.npy"
    np.save(stray, np.ones((SHARD_ROWS, 3), np.float32))
    foreign = out / "shards" / "README.txt"
    foreign.write_text("not memlens'")
    with ReferenceIndex.open(out, verify=True) as idx, ReferenceIndex.open(corpus["clean"]) as c:
        assert idx.num_rows == c.num_rows
        q = c.load_shard(0)[0][:2]
        assert np.array_equal(idx.search(q, 3).rows, c.search(q, 3).rows)
    child = _Child([*_build_args(corpus["train"], out), "--resume"])
    rc, err = child.finish()
    assert rc == 0, err
    assert not stray.exists()
    assert foreign.exists()
    foreign.unlink()
    assert _index_state(out) == _index_state(corpus["clean"])


# ---------------------------------------------------------------------------------- scan


def _scan_args(gen: Path, index: Path, out: Path) -> list[str]:
    return ["scan", str(gen), "--index", str(index), "--out", str(out), "--frames", "3",
            "--batch-frames", "4", "--threads", "1", "--quiet"]  # fmt: skip


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def _check_scan(corpus: dict[str, Any], gen: Path, name: str, points: list[KillPoint]) -> int:
    import pyarrow.parquet as pq

    clean_run = corpus["dir"] / "scan_clean"
    if not clean_run.exists():
        corpus["scan_s"] = _run_clean(_scan_args(gen, corpus["clean"], clean_run))
    run = corpus["dir"] / name
    total = len(_rows(clean_run))

    def done() -> float:
        try:
            return (run / "results.jsonl").read_bytes().count(b"\n") / total
        except FileNotFoundError:
            return 0.0

    def before_resume(n: int) -> None:
        # what a writer killed inside write_parquet / the report's atomic write leaves
        if run.is_dir():
            for target in ("results.parquet", "report.html"):
                (run / f".{target}.{n:016x}.tmp").write_bytes(b"partial")

    interrupted = _crash_then_resume(
        _scan_args(gen, corpus["clean"], run),
        points,
        corpus["scan_s"],
        run / "results.jsonl",
        done,
        before_resume,
    )
    clean, got = _rows(clean_run), _rows(run)
    ids = [r["item"] for r in got]
    assert len(ids) == len(set(ids)), "duplicated rows"
    by_item = {r["item"]: r for r in got}
    assert set(by_item) == {r["item"] for r in clean}, "lost rows"
    for r in clean:
        assert by_item[r["item"]] == r
    table = pq.read_table(run / "results.parquet")
    assert sorted(table.column("item").to_pylist()) == sorted(ids)
    assert (run / "report.html").is_file()
    leftovers = [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert not leftovers, f"temporary files left in the run directory: {leftovers}"
    print(f"scan {name}: {interrupted}/{len(points)} kills interrupted it; points {points}")
    return interrupted


@pytest.fixture(scope="module")
def generated(corpus: dict[str, Any]) -> Path:
    """Generated media: some copies of training items, some new; one corrupt file."""
    gen = _media(corpus["dir"] / "gen", images=GEN_IMAGES, videos=GEN_VIDEOS, seed=1)  # copies
    _media(corpus["dir"] / "gen" / "new", images=12, videos=4, seed=7)
    (gen / "broken.mp4").write_bytes(b"\x00" * 300)  # an error row, also resumed past
    return gen


def test_killed_scan_resumes_without_lost_or_duplicated_rows(
    corpus: dict[str, Any], generated: Path
) -> None:
    interrupted = _check_scan(corpus, generated, "scan", _kill_points(seed=5, count=4))
    assert interrupted >= 2, "most kill points must land while the scan runs"


@pytest.mark.slow
def test_killed_scan_many_points(corpus: dict[str, Any], generated: Path) -> None:
    for seed in range(3):
        _check_scan(corpus, generated, f"scan_{seed}", _kill_points(seed=200 + seed, count=8))


def test_a_second_writer_of_the_same_run_is_refused(
    corpus: dict[str, Any], generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two ``scan --resume`` of one run directory at once would score the same inputs twice
    (duplicated rows): the second one stops with one line, exit 2, and writes nothing."""
    from memlens.cli import main
    from memlens.engine.records import ResultWriter

    run = tmp_path / "run"
    run.mkdir()
    with ResultWriter(run):  # another process's scan, in the middle of its batches
        rc = main([*_scan_args(generated, corpus["clean"], run), "--resume"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "is being written by another process" in err[0]
    assert (run / "results.jsonl").read_text() == ""
