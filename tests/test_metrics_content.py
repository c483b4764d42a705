"""Content metrics: the methods.md §1.8 oracles (1-3) and exactness of the index-level CM."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

import memlens
from memlens.metrics import content
from memlens.metrics.content import content_scores, gsscd, replication_rate, vsscd


def stub_embed(frames: np.ndarray) -> np.ndarray:
    """methods.md §1.8's offline stub: normalize(flatten(avgpool(x, 8x8)))."""
    t, h, w, c = frames.shape
    x = frames[:, : h // 8 * 8, : w // 8 * 8].astype(np.float64)
    x = x.reshape(t, h // 8, 8, w // 8, 8, c).mean(axis=(2, 4)).reshape(t, -1)
    x -= x.mean(axis=1, keepdims=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def video(seed: int, frames: int = 12, size: int = 32) -> np.ndarray:
    """A random-texture video whose frames differ (a texture drifting right)."""
    base = np.random.default_rng(seed).integers(0, 256, (size, size * 2, 3), dtype=np.uint8)
    return np.stack([np.roll(base, 3 * t, axis=1)[:, :size] for t in range(frames)])


class FakeIndex:
    """An in-memory stand-in with the SearchableIndex protocol (items in contiguous rows)."""

    def __init__(self, items: list[np.ndarray], shard_rows: int = 37):
        self.items = items
        self.rows = np.concatenate(items).astype(np.float32)
        self.bounds = np.cumsum([0] + [len(i) for i in items])
        self.shard_rows = shard_rows
        self.searches: list[int] = []

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def search(self, queries: np.ndarray, k: int, *, precision: str = "fp32") -> SimpleNamespace:
        self.searches.append(k)
        s, i = memlens.cosine_topk(queries, self.rows, k, precision=precision)
        items = (np.searchsorted(self.bounds, i, side="right") - 1).astype(np.int32)
        return SimpleNamespace(scores=s, rows=i, item_numbers=items)

    def embeddings_of(self, item: int | str) -> np.ndarray:
        return self.items[int(item)]

    def item_bounds(self) -> np.ndarray:
        return self.bounds

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.num_rows, self.shard_rows):
            yield start, self.rows[start : start + self.shard_rows]


def brute(gen: np.ndarray, items: list[np.ndarray]) -> tuple[float, float, int]:
    maxes = [gsscd(gen, r, agg="max") for r in items]
    means = [gsscd(gen, r, agg="mean") for r in items]
    return max(maxes), max(means), int(np.argmax(means))


def test_identity_oracle() -> None:
    e = stub_embed(video(0))
    assert gsscd(e, e, agg="max") == pytest.approx(1, abs=1e-6)
    assert gsscd(e, e, agg="mean") == pytest.approx(1, abs=1e-6)
    assert vsscd(e, e) == pytest.approx(1, abs=1e-6)


def test_frame_shuffle_keeps_gsscd_and_lowers_vsscd() -> None:
    v = video(1)
    shuffled = v[np.random.default_rng(0).permutation(len(v))]
    a, b = stub_embed(shuffled), stub_embed(v)
    assert gsscd(a, b, agg="max") == pytest.approx(1, abs=1e-6)
    assert gsscd(a, b, agg="mean") == pytest.approx(1, abs=1e-6)
    assert vsscd(a, b) < 0.9


def test_still_image_repeated_matches_image_item_with_cm_1() -> None:
    image = video(2, frames=1)
    frozen = np.repeat(image, 16, axis=0)
    items = [stub_embed(video(s)) for s in range(3, 8)] + [stub_embed(image)]
    (m,) = content_scores(FakeIndex(items), [stub_embed(frozen)])
    assert m.content_max == pytest.approx(1, abs=1e-6)
    assert m.content_mean == pytest.approx(1, abs=1e-6)
    assert m.best_item == m.mean_item == len(items) - 1
    assert m.memorized()
    assert m.memorized(content.TAU_STRICT, agg="mean")


def test_unrelated_video_is_not_memorized() -> None:
    items = [stub_embed(video(s)) for s in range(10, 20)]
    (m,) = content_scores(FakeIndex(items), [stub_embed(video(99))])
    assert m.content_max < 0.5
    assert not m.memorized()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_level_scores_equal_brute_force(seed: int, precision: str) -> None:
    rng = np.random.default_rng(seed)
    d = 16
    # correlated items so rankings are close and the mean variant needs several k rounds
    centre = rng.standard_normal(d)
    items = [centre + 0.8 * rng.standard_normal((int(rng.integers(1, 9)), d)) for _ in range(60)]
    items = [(x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32) for x in items]
    gens = [
        (centre + 0.8 * rng.standard_normal((int(rng.integers(1, 7)), d))).astype(np.float32)
        for _ in range(7)
    ]
    gens.append(items[5][::-1].copy())  # a copy of an item, reversed
    index = FakeIndex(items)
    got = content_scores(index, gens, precision=precision, k_start=2)
    for g, m in zip(gens, got, strict=True):
        want_max, want_mean, _ = brute(g, items)
        assert m.content_max == pytest.approx(want_max, abs=1e-5)
        assert m.content_mean == pytest.approx(want_mean, abs=1e-5)
        assert gsscd(g, items[m.mean_item], agg="mean") == pytest.approx(want_mean, abs=1e-5)
        assert gsscd(g, items[m.best_item], agg="max") == pytest.approx(want_max, abs=1e-5)
        assert m.vsscd == pytest.approx(vsscd(g, items[m.best_item]))
    assert got[-1].best_item == got[-1].mean_item == 5
    for m in got:  # neighbours: items seen in the hits, by their best seen score
        assert m.neighbours[0] == m.best_item
        assert len(set(m.neighbours)) == len(m.neighbours) <= content.NEIGHBOURS
    assert len(index.searches) >= 2  # k grew past k_start for some video


def test_full_pass_fallback_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(content, "_K_CAP", 2)  # force the streaming fallback
    rng = np.random.default_rng(5)
    items = [
        rng.standard_normal((int(rng.integers(1, 6)), 8)).astype(np.float32) for _ in range(40)
    ]
    gens = [rng.standard_normal((5, 8)).astype(np.float32) for _ in range(4)]
    got = content_scores(FakeIndex(items, shard_rows=9), gens, k_start=1)
    for g, m in zip(gens, got, strict=True):
        want_max, want_mean, _ = brute(g, items)
        all_max = [gsscd(g, r, agg="max") for r in items]
        assert [round(all_max[n], 5) for n in m.neighbours] == sorted(
            (round(x, 5) for x in all_max), reverse=True
        )
        assert m.content_max == pytest.approx(want_max, abs=1e-5)
        assert m.content_mean == pytest.approx(want_mean, abs=1e-5)


def test_vsscd_resamples_lengths_and_penalizes_offsets() -> None:
    e = stub_embed(video(3, frames=16))
    assert vsscd(e, e[::2]) > 0.5  # half-length copy, aligned by resampling
    assert vsscd(e[4:], e[:-4]) < vsscd(e, e)  # temporal offset lowers the aligned score


@pytest.mark.parametrize(
    ("gen", "ref", "match"),
    [
        (np.zeros((3,)), np.zeros((2, 3)), "gen must have shape"),
        (np.zeros((0, 3)), np.zeros((2, 3)), "at least one frame"),
        (np.ones((2, 3)), np.ones((2, 4)), "same dim"),
        (np.full((2, 3), np.nan), np.ones((2, 3)), "NaN"),
    ],
)
def test_bad_inputs_name_the_argument(gen: np.ndarray, ref: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gsscd(gen, ref)


def test_agg_and_replication_rate() -> None:
    with pytest.raises(ValueError, match="agg"):
        gsscd(np.ones((1, 2)), np.ones((1, 2)), agg="median")  # type: ignore[arg-type]
    assert replication_rate([0.2, 0.51, 0.9, 0.5]) == 0.5
    assert replication_rate([0.2, 0.51, 0.9, 0.5], tau=0.7) == 0.25
