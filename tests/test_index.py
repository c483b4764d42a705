"""memlens.index.ReferenceIndex: round trip, exact search, bad files, crash-resume identity."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import memlens
from memlens.embed.base import EmbedderSpec
from memlens.errors import EmbedderMismatchError, IndexFormatError
from memlens.index import ReferenceIndex, atomic
from memlens.index.shards import from_bf16_bits, to_bf16_bits

SPEC = EmbedderSpec("test-embedder", 16, {"resize": 224})
DIM = 16
SHARD = 7
# cumulative 3, 8, 9, 18, 21, 28, 32, 44, 45, 51: items end on shard boundaries (21, 28),
# one fills a shard alone (21..27), one spans three shards (32..43), a partial last shard
SIZES = [3, 5, 1, 9, 3, 7, 4, 12, 1, 6]


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync only matters for power loss; the simulated crashes here are process deaths
    (the subprocess test below keeps it on)."""
    monkeypatch.setattr(atomic, "FSYNC", False)


def make_items(sizes: list[int] = SIZES, dim: int = DIM, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "item_id": f"video-{n:03d}",
            "embeddings": rng.standard_normal((size, dim)).astype(np.float32) * 3,
            "source": f"/data/train/video-{n:03d}.mp4",
            "frame_indices": np.arange(size) * 2,
            "timestamps": np.arange(size) * 0.25,
            "is_image": size == 1,
        }
        for n, size in enumerate(sizes)
    ]


def unit(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (x64 / np.linalg.norm(x64, axis=1, keepdims=True)).astype(np.float32)


def add_all(idx: ReferenceIndex, items: list[dict[str, Any]]) -> None:
    """What a resumable build does: skip the items the index already has."""
    for it in items:
        if not idx.has_item(it["item_id"]):
            idx.add(item_id=it["item_id"], embeddings=it["embeddings"], **_meta(it))


def _meta(it: dict[str, Any]) -> dict[str, Any]:
    return {k: it[k] for k in ("source", "frame_indices", "timestamps", "is_image")}


def build(path: Path, items: list[dict[str, Any]], **create: Any) -> None:
    opts = {"shard_rows": SHARD, "exist_ok_resume": True, **create}
    with ReferenceIndex.create(path, SPEC, **opts) as idx:
        add_all(idx, items)


def snapshot(path: Path) -> dict[str, Any]:
    """Everything that must be identical between two builds of the same items."""
    files = {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }
    manifest = json.loads(files.pop("manifest.json"))
    for volatile in ("created", "updated"):
        manifest.pop(volatile)
    table = pq.read_table(path / "items.parquet").to_pydict()
    return {"files": files, "manifest": manifest, "items": table}


def assert_same_index(a: Path, b: Path) -> None:
    sa, sb = snapshot(a), snapshot(b)
    assert sorted(sa["files"]) == sorted(sb["files"])
    for name in sa["files"]:
        assert sa["files"][name] == sb["files"][name], f"{name} differs"
    assert sa["manifest"] == sb["manifest"]
    assert sa["items"] == sb["items"]


@pytest.fixture(scope="module")
def items() -> list[dict[str, Any]]:
    return make_items()


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, items: list[dict[str, Any]]) -> Path:
    """A clean build (bf16 + int8 copies), the reference for identity checks."""
    path = tmp_path_factory.mktemp("clean") / "idx"
    build(path, items, copies=("bf16", "int8"))
    return path


@pytest.fixture
def small(tmp_path: Path, items: list[dict[str, Any]]) -> Path:
    path = tmp_path / "idx"
    build(path, items)
    return path


# ---- round trip and search ---------------------------------------------------------------


def test_round_trip(clean: Path, items: list[dict[str, Any]]) -> None:
    allrows = np.concatenate([unit(it["embeddings"]) for it in items])
    with ReferenceIndex.open(clean, embedder=SPEC, verify=True) as idx:
        assert (len(idx), idx.num_rows, idx.num_items) == (51, 51, 10)
        assert (idx.dim, idx.spec, idx.shard_rows) == (DIM, SPEC, SHARD)
        assert idx.item_ids() == [it["item_id"] for it in items]
        assert [s.rows for s in idx.shards] == [7] * 7 + [2]
        # the stored rows are the unit-normalized inputs, shard by shard
        for start, rows in idx.iter_shards():
            np.testing.assert_array_equal(rows, allrows[start : start + len(rows)])
        np.testing.assert_allclose(np.linalg.norm(allrows, axis=1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(idx.item_bounds(), np.cumsum([0, *SIZES]))
        for n, it in enumerate(items):
            np.testing.assert_array_equal(idx.embeddings_of(it["item_id"]), unit(it["embeddings"]))
            np.testing.assert_array_equal(idx.embeddings_of(n), unit(it["embeddings"]))
            info = idx.item_info(it["item_id"])
            assert (info.item_number, info.num_rows, info["source"]) == (n, SIZES[n], it["source"])
            np.testing.assert_array_equal(info.frame_indices, it["frame_indices"])
            np.testing.assert_array_equal(info.timestamps, it["timestamps"])
            assert info.is_image == it["is_image"]
        row = idx.row_info(33)  # item 7 starts at row 32
        assert (row.item_id, row["frame_index"], row.timestamp) == ("video-007", 2, 0.25)

        queries = np.random.default_rng(5).standard_normal((9, DIM)).astype(np.float32)
        for k in (1, 5, SHARD, 20, 51):  # k larger than a shard, k == num_rows
            hits = idx.search(queries, k)
            s, i = memlens.cosine_topk(queries, allrows, k)
            np.testing.assert_array_equal(hits.scores, s)
            np.testing.assert_array_equal(hits.rows, i)
            bounds = np.cumsum([0, *SIZES])
            numbers = np.searchsorted(bounds, i, side="right") - 1
            np.testing.assert_array_equal(hits.item_numbers, numbers)
            assert hits.item_numbers.dtype == np.int32
            ids = np.array([it["item_id"] for it in items], dtype=object)
            np.testing.assert_array_equal(hits.item_ids(), ids[numbers])
            np.testing.assert_array_equal(hits.frame_indices(), (i - bounds[numbers]) * 2)
            np.testing.assert_array_equal(hits.timestamps(), (i - bounds[numbers]) * 0.25)
            assert hits.sources()[0, 0] == items[int(numbers[0, 0])]["source"]
            assert (len(hits), hits.k) == (9, k)


def test_search_options_and_bad_k(clean: Path) -> None:
    q = np.random.default_rng(1).standard_normal((4, DIM))
    with ReferenceIndex.open(clean) as idx:
        full = idx.search(q, 10)
        # torch and float64 queries give the same hits
        np.testing.assert_array_equal(idx.search(torch.from_numpy(q), 10).rows, full.rows)
        # shard groups (one per worker) merge to the full result
        parts = [idx.search(q, 10, shards=g) for g in ([0, 1, 2], [3, 4, 5, 6, 7])]
        s, i = memlens.merge_topk([(h.scores, h.rows) for h in parts], 10)
        np.testing.assert_array_equal(s, full.scores)
        np.testing.assert_array_equal(i, full.rows)
        assert idx.search(q[:0], 3).scores.shape == (0, 3)
        for bad in (0, 52):
            with pytest.raises(ValueError, match=r"k must be in \[1, 51\]"):
                idx.search(q, bad)
        with pytest.raises(ValueError, match=r"queries must have shape \(N, 16\); got \(4, 3\)"):
            idx.search(q[:, :3], 2)
        q[2, 5] = np.nan
        with pytest.raises(ValueError, match=r"queries must be finite.*row 2, column 5"):
            idx.search(q, 2)
        with pytest.raises(ValueError, match="precision must be one of"):
            idx.search(q[:1], 2, precision="fp8")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_equals_fp32(tmp_path: Path, precision: str) -> None:
    # shards large enough for cosine_topk's candidate stage to run (not its exact fallback)
    items = make_items([1500] * 8, dim=64, seed=3)
    spec = EmbedderSpec("test-embedder", 64, {})
    with ReferenceIndex.create(tmp_path / "idx", spec, shard_rows=4096) as idx:
        for it in items:
            idx.add(it["item_id"], it["embeddings"], source=it["source"])
    q = np.random.default_rng(4).standard_normal((50, 64)).astype(np.float32)
    with ReferenceIndex.open(tmp_path / "idx") as idx:
        exact = idx.search(q, 10)
        fast = idx.search(q, 10, precision=precision)
    np.testing.assert_array_equal(fast.rows, exact.rows)
    # the certified re-rank's fp32 dot product may round the last bit differently
    np.testing.assert_allclose(fast.scores, exact.scores, rtol=0, atol=1e-6)


def test_reduced_copies(clean: Path) -> None:
    with ReferenceIndex.open(clean, verify=True) as idx:
        assert idx.copies == ("bf16", "int8")
        for n in (0, len(idx.shards) - 1):
            (rows,) = idx.load_shard(n)
            (bits,) = idx.load_shard(n, precision="bf16")
            expect = torch.from_numpy(np.array(rows)).to(torch.bfloat16).view(torch.int16)
            np.testing.assert_array_equal(bits.view(np.int16), expect.numpy())
            np.testing.assert_allclose(from_bf16_bits(bits), rows, rtol=2**-8)
            q8, scale = idx.load_shard(n, precision="int8")
            assert q8.dtype == np.int8
            assert scale.shape == (rows.shape[0],)
            err = np.abs(q8 * scale[:, None] - rows)
            assert (err <= scale[:, None] / 2 + 1e-7).all()
    np.testing.assert_array_equal(to_bf16_bits(np.array([1.0, -0.5], np.float32)), [0x3F80, 0xBF00])


def test_append_mode_searches_buffered_rows(tmp_path: Path, items: list[dict[str, Any]]) -> None:
    with ReferenceIndex.create(tmp_path / "idx", SPEC, shard_rows=SHARD) as idx:
        add_all(idx, items[:4])  # 18 rows: 2 full shards + 4 buffered
        assert idx.committed_rows == 9
        assert idx.num_rows == 18
        allrows = np.concatenate([unit(it["embeddings"]) for it in items[:4]])
        q = allrows[[0, 17]]
        hits = idx.search(q, 18)
        np.testing.assert_array_equal(hits.rows[:, 0], [0, 17])
        np.testing.assert_array_equal(idx.embeddings_of(3), allrows[9:18])
        idx.flush()  # commits the buffered rows as a partial shard
        assert idx.committed_rows == 18
        with ReferenceIndex.open(tmp_path / "idx") as reader:
            assert reader.num_items == 4


# ---- bad input ---------------------------------------------------------------------------


def test_bad_embeddings_rejected_without_side_effects(tmp_path: Path) -> None:
    with ReferenceIndex.create(tmp_path / "idx", SPEC, shard_rows=SHARD) as idx:
        good = np.ones((3, DIM), np.float32)
        cases: list[tuple[Any, type[Exception], str]] = [
            (
                np.full((2, DIM), np.nan),
                ValueError,
                "embeddings must be finite; found nan at row 0",
            ),
            (np.where(np.eye(2, DIM) > 0, np.inf, 1.0), ValueError, "found inf at row 0, column 0"),
            (np.zeros((2, DIM)), ValueError, "rows must be non-zero; row 0"),
            (np.ones((2, DIM + 1)), ValueError, r"shape \(N, 16\); got \(2, 17\)"),
            (np.ones(DIM), ValueError, r"shape \(N, 16\); got \(16,\)"),
            (np.ones((0, DIM)), ValueError, "at least one row"),
            (np.ones((2, DIM), np.int32), TypeError, "floating-point"),
            ([[1.0] * DIM], TypeError, "numpy array or a torch tensor"),
        ]
        for emb, err, msg in cases:
            with pytest.raises(err, match=msg):
                idx.add("x", emb, source="s")
        with pytest.raises(ValueError, match=r"frame_indices must have shape \(3,\)"):
            idx.add("x", good, source="s", frame_indices=[0, 1])
        with pytest.raises(ValueError, match="timestamps must be finite or NaN"):
            idx.add("x", good, source="s", timestamps=[0, np.inf, 1])
        with pytest.raises(TypeError, match="item_id must be a non-empty str"):
            idx.add("", good, source="s")
        assert idx.num_rows == 0
        assert not idx.has_item("x")
        idx.add("x", torch.ones((3, DIM), dtype=torch.bfloat16), source="s")
        with pytest.raises(ValueError, match="item_id 'x' is already in the index"):
            idx.add("x", good, source="s")
    with ReferenceIndex.open(tmp_path / "idx", mode="a") as idx:  # across sessions too
        with pytest.raises(ValueError, match="already in the index"):
            idx.add("x", good, source="s")
        assert idx.num_rows == 3
        np.testing.assert_allclose(idx.embeddings_of("x"), 0.25)


def test_read_only_and_closed(small: Path) -> None:
    idx = ReferenceIndex.open(small)
    with pytest.raises(ValueError, match=r"add\(\) needs mode='a'"):
        idx.add("new", np.ones((1, DIM)), source="s")
    idx.close()
    with pytest.raises(ValueError, match="is closed"):
        idx.search(np.ones((1, DIM)), 1)
    with pytest.raises(ValueError, match="mode must be 'r' or 'a'"):
        ReferenceIndex.open(small, mode="w")  # type: ignore[arg-type]


def test_reader_retries_when_a_writer_commits_meanwhile(
    tmp_path: Path, items: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from memlens.index import state

    path = tmp_path / "idx"
    build(path, items[:3])
    stale = state.read_manifest(path)
    build(path, items)  # replaces items.parquet and the partial last shard
    calls, real = [], state.read_manifest

    def first_stale(root: Path) -> Any:  # the manifest as it was before the writer's commit
        calls.append(root)
        return stale if len(calls) == 1 else real(root)

    monkeypatch.setattr(state, "read_manifest", first_stale)
    with ReferenceIndex.open(path) as idx:
        assert idx.num_items == len(items)
    assert len(calls) == 3  # stale read, the check that it changed, the retry


def test_one_writer_at_a_time(small: Path) -> None:
    with ReferenceIndex.open(small, mode="a"):
        with pytest.raises(BlockingIOError, match="already open for writing"):
            ReferenceIndex.open(small, mode="a")
        ReferenceIndex.open(small).close()  # readers are fine
    ReferenceIndex.open(small, mode="a").close()  # released on close


def test_embedder_mismatch(small: Path) -> None:
    other = EmbedderSpec("test-embedder", 16, {"resize": 256})
    with pytest.raises(EmbedderMismatchError) as e:
        ReferenceIndex.open(small, embedder=other)
    assert "'resize': 224" in str(e.value)
    assert "'resize': 256" in str(e.value)
    with pytest.raises(EmbedderMismatchError):
        ReferenceIndex.create(small, other, shard_rows=SHARD, exist_ok_resume=True)
    with pytest.raises(ValueError, match=r"shard_rows=8.*the index has shard_rows=7"):
        ReferenceIndex.create(small, SPEC, shard_rows=8, exist_ok_resume=True)


def test_create_refuses_existing(small: Path, tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match="already holds an index"):
        ReferenceIndex.create(small, SPEC)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("mine")
    for resume in (False, True):
        with pytest.raises(FileExistsError, match=r"not empty and holds no manifest.json"):
            ReferenceIndex.create(other, SPEC, exist_ok_resume=resume)
    assert (other / "readme.txt").read_text() == "mine"


def _edit_manifest(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{ not json", "manifest.json' is not valid JSON"),
        (b'{"format": "memlens.reference_index", "schema_version": 99}', "schema_version 99"),
        (b"[]", "manifest.json must be a JSON object"),
        (b'{"format": "something-else"}', "format must be 'memlens.reference_index'"),
    ],
)
def test_corrupt_manifest(small: Path, content: bytes, match: str) -> None:
    (small / "manifest.json").write_bytes(content)
    with pytest.raises(IndexFormatError, match=match):
        ReferenceIndex.open(small)


def test_manifest_fields_checked(small: Path) -> None:
    def bad_count(m: dict[str, Any]) -> None:
        m["num_rows"] = 1000

    _edit_manifest(small, bad_count)
    with pytest.raises(IndexFormatError, match="counts num_rows=1000 but its shards hold only 51"):
        ReferenceIndex.open(small)
    (small / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match=r"manifest.json' is missing"):
        ReferenceIndex.open(small)
    with pytest.raises(IndexFormatError, match="does not exist"):
        ReferenceIndex.open(small / "nowhere")


def test_missing_shard(small: Path) -> None:
    (small / "shards" / "000003.f32.npy").unlink()
    for mode in ("r", "a"):
        with pytest.raises(
            IndexFormatError, match=r"shards\[3\].*'shards/000003.f32.npy'.*missing"
        ):
            ReferenceIndex.open(small, mode=mode)


def test_truncated_shard(small: Path) -> None:
    path = small / "shards" / "000001.f32.npy"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(
        IndexFormatError, match=r"000001.f32.npy' has 572 bytes; the manifest records 576"
    ):
        ReferenceIndex.open(small)


def test_checksum_mismatch(small: Path) -> None:
    path = small / "shards" / "000007.partial-2.f32.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # same size, different rows
    path.write_bytes(bytes(data))
    ReferenceIndex.open(small).close()  # sizes and headers only
    for kwargs in ({"verify": True}, {"mode": "a"}):  # append re-reads the partial shard
        with pytest.raises(IndexFormatError, match=r"checksum mismatch for .*000007.partial-2"):
            ReferenceIndex.open(small, **kwargs)
    with ReferenceIndex.open(small) as idx, pytest.raises(IndexFormatError, match="000007"):
        idx.verify()


def test_corrupt_items_table(small: Path) -> None:
    path = small / "items.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=r"items.parquet: checksum mismatch"):
        ReferenceIndex.open(small)


@pytest.mark.parametrize(
    "bad",
    [
        "../outside.f32.npy",
        "/etc/passwd",
        "shards/../../x.npy",
        "shards/./000000.f32.npy",
        "escape",
    ],
)
def test_paths_stay_inside(small: Path, tmp_path: Path, bad: str) -> None:
    if bad == "escape":  # a symlink inside the index pointing out of it
        (tmp_path / "elsewhere.npy").write_bytes((small / "shards/000000.f32.npy").read_bytes())
        (small / "shards" / "link.f32.npy").symlink_to(tmp_path / "elsewhere.npy")
        bad = "shards/link.f32.npy"

    def point(m: dict[str, Any]) -> None:
        m["shards"][0]["file"] = bad

    _edit_manifest(small, point)
    with pytest.raises(
        IndexFormatError, match=r"escapes the index directory|must not contain|relative"
    ):
        ReferenceIndex.open(small)


def test_shard_names_are_the_writers(small: Path) -> None:
    """A manifest may not make a writer supersede (delete) a file that is not a shard."""

    def point(m: dict[str, Any]) -> None:
        m["shards"][0]["file"] = "manifest.json"

    _edit_manifest(small, point)
    with pytest.raises(IndexFormatError, match=r"shards\[0\] fp32 file must be 'shards/000000"):
        ReferenceIndex.open(small)


def test_shards_dir_symlink_out(tmp_path: Path) -> None:
    ReferenceIndex.create(tmp_path / "idx", SPEC).close()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "000000.f32.npy").write_bytes(b"precious")
    (tmp_path / "idx" / "shards").rmdir()
    (tmp_path / "idx" / "shards").symlink_to(outside)
    with pytest.raises(IndexFormatError, match="shards directory escapes the index directory"):
        ReferenceIndex.open(tmp_path / "idx", mode="a")
    assert (outside / "000000.f32.npy").read_bytes() == b"precious"


def test_empty_index(tmp_path: Path) -> None:
    ReferenceIndex.create(tmp_path / "idx", SPEC).close()
    with ReferenceIndex.open(tmp_path / "idx", verify=True) as idx:
        assert (len(idx), idx.num_items, idx.item_ids(), idx.shards) == (0, 0, [], ())
        assert idx.item_bounds().tolist() == [0]
        assert list(idx.iter_shards()) == []
        with pytest.raises(ValueError, match=r"k must be in \[1, 0\].*the index is empty"):
            idx.search(np.ones((2, DIM)), 1)
        with pytest.raises(KeyError, match="'a' is not in the index"):
            idx.embeddings_of("a")
        with pytest.raises(IndexError, match=r"item_number must be in \[0, 0\)"):
            idx.item_info(0)


# ---- crash safety and resume -------------------------------------------------------------


class Crash(BaseException):
    """The simulated death of the writing process (BaseException: nothing catches it)."""


class Killer:
    """Makes the ``at``-th file-system mutation (rename or unlink) and every later one raise,
    as if the process died right before it: later cleanup cannot run either."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0
        self._replace, self._unlink = os.replace, os.unlink

    def _gate(self) -> None:
        self.calls += 1
        if self.calls >= self.at:
            raise Crash(self.at)

    def replace(self, *a: Any, **kw: Any) -> None:
        self._gate()
        self._replace(*a, **kw)

    def unlink(self, *a: Any, **kw: Any) -> None:
        self._gate()
        self._unlink(*a, **kw)


@contextlib.contextmanager
def killer(at: int) -> Iterator[Killer]:
    """Arms a :class:`Killer` on ``os.replace``/``os.unlink`` for the block."""
    k = Killer(at)
    saved = os.replace, os.unlink
    os.replace, os.unlink = k.replace, k.unlink
    try:
        yield k
    finally:
        os.replace, os.unlink = saved


def _crashing_build(path: Path, items: list[dict[str, Any]], at: int) -> bool:
    with killer(at):
        try:
            build(path, items, copies=("bf16", "int8"))
        except Crash:
            return True
    return False


def _check_after_crash(path: Path, items: list[dict[str, Any]]) -> None:
    """What a reader finds after a crash: every counted file present with its checksum, and
    a prefix of the items complete with the right rows."""
    if not (path / "manifest.json").exists():
        return
    with ReferenceIndex.open(path, verify=True) as idx:
        n = idx.num_items
        assert idx.item_ids() == [it["item_id"] for it in items[:n]]
        assert idx.num_rows == sum(SIZES[:n])
        if n:
            np.testing.assert_array_equal(
                idx.embeddings_of(n - 1), unit(items[n - 1]["embeddings"])
            )


def test_crash_resume_identity_everywhere(
    tmp_path: Path, items: list[dict[str, Any]], clean: Path
) -> None:
    """Kill the build before each of its renames/unlinks in turn; resuming and re-adding the
    items the index lacks must end with exactly the clean build's files."""
    with killer(10**9) as counter:
        build(tmp_path / "count", items, copies=("bf16", "int8"))
    total = counter.calls
    assert total > 40  # every shard commit renames several files
    for at in range(1, total + 1):
        path = tmp_path / f"crash{at}"
        assert _crashing_build(path, items, at), f"no crash at mutation {at}"
        _check_after_crash(path, items)
        build(path, items, copies=("bf16", "int8"))
        assert_same_index(path, clean)


@pytest.mark.parametrize(("first", "second"), [(9, 1), (23, 3), (30, 2), (44, 5), (51, 1)])
def test_crash_during_resume(
    tmp_path: Path, items: list[dict[str, Any]], clean: Path, first: int, second: int
) -> None:
    """A second crash while resuming (e.g. during the truncation of a partial item)."""
    path = tmp_path / "idx"
    assert _crashing_build(path, items, first)
    _crashing_build(path, items, second)
    _check_after_crash(path, items)
    build(path, items, copies=("bf16", "int8"))
    assert_same_index(path, clean)


def test_append_in_sessions_equals_clean_build(
    tmp_path: Path, items: list[dict[str, Any]], clean: Path
) -> None:
    """Closing after each item (a partial last shard every time) changes nothing."""
    path = tmp_path / "idx"
    for n in range(len(items)):
        build(path, items[: n + 1], copies=("bf16", "int8"))
    assert_same_index(path, clean)


def test_strays_removed_on_append_only(small: Path) -> None:
    strays = [
        small / ".manifest.json.0123456789abcdef.tmp",
        small / "shards" / ".000009.f32.npy.0123456789abcdef.tmp",
        small / "shards" / "000009.f32.npy",  # written, never committed
        small / "items.parquet.next",
    ]
    for p in strays:
        p.write_bytes(b"junk")
    (small / "shards" / "notes.txt").write_text("not ours")
    ReferenceIndex.open(small).close()
    assert all(p.exists() for p in strays)  # readers never touch the directory
    ReferenceIndex.open(small, mode="a").close()
    assert not any(p.exists() for p in strays)
    assert (small / "shards" / "notes.txt").exists()


_KILL_SCRIPT = """
import os, pickle, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_index as t
calls = 0
real = os.replace
def replace(*a, **kw):
    global calls
    calls += 1
    if calls == {at}:
        os._exit(137)  # no finally blocks, no flush: an abrupt death
    real(*a, **kw)
os.replace = replace
t.build(Path({path!r}), t.make_items(), copies=("bf16", "int8"))
"""


@pytest.mark.parametrize("at", [17, 38])
def test_killed_process_resumes(
    tmp_path: Path, items: list[dict[str, Any]], clean: Path, at: int
) -> None:
    path = tmp_path / "idx"
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), at=at, path=str(path))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=False)
    assert proc.returncode == 137
    assert any(p.name.endswith(".tmp") for p in path.rglob("*"))  # the killed writer's temp
    _check_after_crash(path, items)
    build(path, items, copies=("bf16", "int8"))
    assert_same_index(path, clean)
