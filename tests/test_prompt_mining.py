"""Prompt mining (methods.md §1.5, seed 000): normalization, readers, exact and near-duplicate
counts, score re-ranking, and the atomic JSON Lines output."""

from __future__ import annotations

import csv
import itertools
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memlens.prompts import (
    MinedPrompt,
    mine_prompts,
    normalize_caption,
    read_captions,
    word_shingles,
    write_mined_prompts,
)

VOCAB = [f"word{i}" for i in range(3000)]


def _random_caption(rng: random.Random, words: tuple[int, int] = (8, 14)) -> str:
    return " ".join(rng.choices(VOCAB, k=rng.randint(*words)))


def _planted(seed: int = 0) -> tuple[list[str], str, str]:
    """120 random captions, one caption repeated 9 times with case/punctuation changes, and
    one 12-word caption in 6 near-duplicate variants (one extra word each)."""
    rng = random.Random(seed)
    exact = "A red Car parked by the SEA at sunset"
    near = "emma watson to play belle in disney beauty and the beast live action"
    captions = [_random_caption(rng) for _ in range(120)]
    captions += [exact, exact.lower() + "!", f"  {exact.upper()} ", exact + "..."] * 2 + [exact]
    captions += [f"{near} {w}" for w in ("today", "soon", "confirmed", "news", "film", "2017")]
    rng.shuffle(captions)
    return captions, exact, near


def _fullwidth(text: str) -> str:
    """The full-width form of ASCII text (U+FF01..U+FF5E, ideographic space)."""
    return "".join("\u3000" if c == " " else chr(ord(c) + 0xFEE0) for c in text)


# --- normalization --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello, World!!", "hello world"),
        (_fullwidth("FULL-width text"), "full width text"),  # NFKC: full-width forms fold
        ("Die Straße", "die strasse"),  # casefold, stronger than lower()
        ("  tabs\tand\n\nnewlines  ", "tabs and newlines"),
        ("dog,cat", "dog cat"),  # punctuation becomes a space, so it equals "dog, cat"
        ("Disney's <i>Beauty</i>", "disney s <i>beauty< i>"),  # symbols (<, >) stay
        ("«quoted» — dash…", "quoted dash"),
        ("!!! ...", ""),
    ],
)
def test_normalize_caption(raw: str, expected: str) -> None:
    assert normalize_caption(raw) == expected


def test_normalize_caption_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="text must be a str"):
        normalize_caption(b"bytes")  # type: ignore[arg-type]


def test_word_shingles() -> None:
    assert word_shingles("a b c", 2) == {"a b", "b c"}
    assert word_shingles("a b", 2) == {"a b"}
    assert word_shingles("solo", 3) == {"solo"}  # short captions are one shingle
    assert word_shingles("", 2) == set()


# --- exact and near duplicates ------------------------------------------------------------


def test_exact_and_near_duplicates_rank_first_with_evidence() -> None:
    captions, exact, near = _planted()
    res = mine_prompts(captions, top=5)
    first, second = res.prompts[0], res.prompts[1]

    assert first.normalized == normalize_caption(exact)
    assert first.exact_duplicates == 9
    assert first.near_duplicates == 9
    assert first.variants == 1
    ids = [i for i, c in enumerate(captions) if normalize_caption(c) == first.normalized]
    assert first.member_ids == ids  # in reading order, the first occurrence first
    assert first.id == ids[0]
    assert first.caption == captions[ids[0]]

    assert second.normalized.startswith(near)
    assert second.exact_duplicates == 1
    assert second.near_duplicates == 6
    assert second.variants == 6
    assert len(second.variant_captions) == 5  # a sample of the other variants
    assert all(v.startswith(near) for v in second.variant_captions)
    assert {p.rank for p in res.prompts} == {1, 2, 3, 4, 5}
    assert all(p.near_duplicates == 1 for p in res.prompts[2:])
    assert all(p.score is None for p in res.prompts)

    stats = res.stats
    assert stats.captions == len(captions)
    assert stats.unique == 120 + 1 + 6
    assert stats.clusters == 120 + 1 + 1
    assert stats.verified_pairs >= 5


def test_threshold_option_controls_near_duplicates() -> None:
    captions, _, near = _planted()
    strict = mine_prompts(captions, top=200, threshold=1.0)
    assert all(p.variants == 1 for p in strict.prompts)
    assert sum(p.normalized.startswith(near) for p in strict.prompts) == 6
    # two variants of the 13-word caption differ in their last word: bigram Jaccard 12/14,
    # unigram Jaccard 13/15
    split = mine_prompts(captions, top=200, threshold=0.86).prompts
    assert [p.near_duplicates for p in split if p.normalized.startswith(near)] == [1] * 6
    assert mine_prompts(captions, top=3, threshold=0.85).prompts[1].near_duplicates == 6
    unigram = mine_prompts(captions, top=3, shingle_size=1, threshold=0.866)
    assert unigram.prompts[1].near_duplicates == 6


def test_one_row_per_cluster_unless_asked() -> None:
    captions, _, near = _planted()
    rows = mine_prompts(captions, top=10, one_per_cluster=False).prompts
    near_rows = [p for p in rows if p.normalized.startswith(near)]
    assert len(near_rows) == 6
    assert all(p.near_duplicates == 6 for p in near_rows)


def test_clusters_match_brute_force_components() -> None:
    """On a small set, the LSH + exact-check clusters equal the connected components of all
    pairs with Jaccard >= threshold (computed here by brute force)."""
    rng = random.Random(3)
    bases = [_random_caption(rng, (10, 16)) for _ in range(15)]
    captions = [_random_caption(rng) for _ in range(150)]
    for base in bases:  # each base with a few one-word edits (appended or substituted)
        words = base.split()
        captions.append(base)
        for _ in range(rng.randint(1, 4)):
            edited = list(words)
            if rng.random() < 0.5:
                edited.append(rng.choice(VOCAB))
            else:
                edited[rng.randrange(len(edited))] = rng.choice(VOCAB)
            captions.append(" ".join(edited))
    texts = list(dict.fromkeys(normalize_caption(c) for c in captions))
    shingles = [word_shingles(t, 2) for t in texts]
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in itertools.combinations(range(len(texts)), 2):
        if len(shingles[a] & shingles[b]) / len(shingles[a] | shingles[b]) >= 0.7:
            parent[find(b)] = find(a)
    sizes: dict[int, int] = {}
    for i in range(len(texts)):
        sizes[find(i)] = sizes.get(find(i), 0) + 1

    rows = mine_prompts(captions, top=len(texts), one_per_cluster=False).prompts
    got = {p.normalized: p.variants for p in rows}
    assert got == {t: sizes[find(i)] for i, t in enumerate(texts)}
    assert max(sizes.values()) > 1


def test_large_template_cluster_costs_linear_pairs() -> None:
    # 3000 distinct variants of one template: a bucket pairs each member with its first text
    # only, so candidate pairs stay <= bands * n instead of n^2 / 2
    template = "aerial view of a beautiful mountain lake with green forest at sunrise"
    captions = [f"{template} {i}" for i in range(3000)]
    res = mine_prompts(captions, top=1)
    assert res.prompts[0].near_duplicates == 3000
    assert res.stats.candidate_pairs <= res.stats.lsh_bands * 3000
    assert res.stats.clusters == 1


def test_empty_and_blank_input() -> None:
    res = mine_prompts(["", "  ", "?!"], top=3)
    assert res.prompts == []
    assert res.stats.captions == 3
    assert res.stats.empty == 3
    assert mine_prompts([], top=1).prompts == []


def test_results_are_deterministic() -> None:
    captions, _, _ = _planted(seed=5)
    assert mine_prompts(captions, top=20).prompts == mine_prompts(captions, top=20).prompts


def test_member_ids_are_capped() -> None:
    res = mine_prompts(["same caption"] * 50, top=1, max_members=7)
    assert res.prompts[0].exact_duplicates == 50
    assert res.prompts[0].member_ids == list(range(7))


# --- score ---------------------------------------------------------------------------------


def test_score_reranks_the_duplication_pool_in_batches() -> None:
    captions, _, near = _planted()
    calls: list[int] = []

    def score(batch: list[str]) -> list[float]:
        calls.append(len(batch))
        # a "model" that finds the near-duplicate family most memorized
        return [
            10.0 if normalize_caption(c).startswith(near) else float(len(c)) / 100 for c in batch
        ]

    res = mine_prompts(captions, top=3, score=score, score_pool=8, score_batch_size=3)
    assert calls == [3, 3, 2]
    assert res.stats.scored == 8
    assert res.prompts[0].normalized.startswith(near)
    assert res.prompts[0].score == 10.0
    assert res.prompts[1].score is not None
    assert res.prompts[1].score >= res.prompts[2].score  # type: ignore[operator]
    # the default pool is 4 * top
    assert mine_prompts(captions, top=2, score=score).stats.scored == 8


@pytest.mark.parametrize(
    ("score", "message"),
    [
        (lambda b: [1.0] * (len(b) - 1), "score must return one value per prompt"),
        (lambda b: [math.nan] * len(b), "score returned NaN"),
    ],
)
def test_bad_scores_are_errors(score: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mine_prompts(["a b", "c d", "a b"], top=1, score=score)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"top": 0}, ValueError, "top must be an integer >= 1"),
        ({"threshold": 0.0}, ValueError, r"threshold must be in \(0, 1\]"),
        ({"threshold": 1.5}, ValueError, r"threshold must be in \(0, 1\]"),
        ({"threshold": math.nan}, ValueError, r"threshold must be in \(0, 1\]"),
        ({"threshold": "0.7"}, TypeError, "threshold must be a float"),
        ({"shingle_size": 0}, ValueError, "shingle_size must be an integer >= 1"),
        ({"num_perm": 1}, ValueError, "num_perm must be an integer >= 2"),
        ({"top": 5, "score_pool": 4}, ValueError, r"score_pool must be an integer >= top \(5\)"),
        ({"score": "magnitude"}, TypeError, "score must be a callable"),
        ({"column": "caption"}, ValueError, "apply to a captions file"),
    ],
)
def test_bad_options_name_the_argument(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        mine_prompts(["a caption"], **kwargs)  # type: ignore[arg-type]


# --- readers -------------------------------------------------------------------------------


def _write_all_formats(tmp_path: Path, captions: list[str]) -> dict[str, Path]:
    ids = [f"clip{i:04d}" for i in range(len(captions))]
    paths = {
        "text": tmp_path / "c.txt",
        "jsonl": tmp_path / "c.jsonl",
        "csv": tmp_path / "c.csv",
        "tsv": tmp_path / "c.tsv",
        "parquet": tmp_path / "c.parquet",
    }
    paths["text"].write_text("\n".join(captions) + "\n", encoding="utf-8")
    with open(paths["jsonl"], "w", encoding="utf-8") as f:
        for i, c in zip(ids, captions, strict=True):
            f.write(json.dumps({"id": i, "caption": c, "extra": 1}) + "\n")
            f.write("\n")  # blank lines are skipped
    for key, delimiter in (("csv", ","), ("tsv", "\t")):
        with open(paths[key], "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter=delimiter)
            w.writerow(["id", "text"])
            w.writerows(zip(ids, captions, strict=True))
    pq.write_table(pa.table({"id": ids, "caption": captions}), paths["parquet"], row_group_size=7)
    return paths


def test_every_format_gives_the_same_mining_result(tmp_path: Path) -> None:
    captions, _, _ = _planted()
    paths = _write_all_formats(tmp_path, captions)
    expected = [
        (p.normalized, p.exact_duplicates, p.near_duplicates)
        for p in mine_prompts(captions, top=10).prompts
    ]
    for fmt, path in paths.items():
        res = mine_prompts(path, top=10)
        assert [
            (p.normalized, p.exact_duplicates, p.near_duplicates) for p in res.prompts
        ] == expected, fmt
        first = res.prompts[0]
        if fmt == "text":
            assert first.id == captions.index(first.caption)  # row index = line number - 1
        else:
            assert first.id == f"clip{captions.index(first.caption):04d}"


def test_read_captions_columns_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"key": 7, "prompt": "first", "text": "ignored"}\n{"key": 8, "prompt": null}\n',
        encoding="utf-8",
    )
    got = list(read_captions(path, column="prompt", id_column="key"))
    assert [(c.id, c.text) for c in got] == [(7, "first"), (8, "")]
    # default column: "caption", else "text"; a later record without it is an error
    with pytest.raises(ValueError, match=r"c.jsonl:2 has no 'text' field"):
        list(read_captions(path))
    pq.write_table(pa.table({"text": ["x", "y"]}), tmp_path / "no_id.parquet")
    assert [c.id for c in read_captions(tmp_path / "no_id.parquet")] == [0, 1]
    # an unknown suffix is read as plain text
    (tmp_path / "captions.lst").write_text("one\ntwo\n", encoding="utf-8")
    assert [c.text for c in read_captions(tmp_path / "captions.lst")] == ["one", "two"]


def test_read_captions_errors_name_the_problem(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"caption": "ok"}\n{"caption": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON"):
        list(read_captions(bad_json))
    no_col = tmp_path / "no_col.csv"
    no_col.write_text("id,title\n1,hello\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"no caption column: expected one of \['caption', 'text'\]"
    ):
        list(read_captions(no_col))
    with pytest.raises(ValueError, match="column 'prompt' is not in"):
        list(read_captions(no_col, column="prompt"))
    with pytest.raises(ValueError, match="id_column 'uid' is not in"):
        list(read_captions(no_col, column="title", id_column="uid"))
    with pytest.raises(FileNotFoundError, match="captions file not found"):
        read_captions(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="format must be one of"):
        read_captions(no_col, format="xml")  # type: ignore[arg-type]
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"caption": 3}\n', encoding="utf-8")
    with pytest.raises(TypeError, match="column 'caption' must hold strings"):
        list(read_captions(numbers))


# --- output --------------------------------------------------------------------------------


def test_write_mined_prompts_is_atomic_json_lines(tmp_path: Path) -> None:
    captions, _, _ = _planted()
    res = mine_prompts(captions, top=4, score=lambda b: [math.inf] + [1.0] * (len(b) - 1))
    out = tmp_path / "prompts.jsonl"
    out.write_text("old content\n", encoding="utf-8")
    assert write_mined_prompts(out, res) == out
    lines = out.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["score"] == math.inf
    assert "Infinity" in lines[0]
    assert set(rows[0]) == set(MinedPrompt.__dataclass_fields__)
    assert rows == [p.to_record() for p in res.prompts]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["prompts.jsonl"]  # no temp left
    with pytest.raises(FileNotFoundError, match="directory does not exist"):
        write_mined_prompts(tmp_path / "nope" / "p.jsonl", res)


def test_unicode_captions_round_trip(tmp_path: Path) -> None:
    res = mine_prompts(["東京の夜景 <i>", "東京の夜景 <i>", "другое"], top=2)
    out = write_mined_prompts(tmp_path / "p.jsonl", res.prompts)
    row = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert row["caption"] == "東京の夜景 <i>"
    assert row["exact_duplicates"] == 2


def test_import_does_not_load_datasketch() -> None:
    code = (
        "import sys, memlens, memlens.prompts, memlens.metrics.mitigation\n"
        "print('datasketch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_datasketch_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasketch", None)  # makes `import datasketch` fail
    with pytest.raises(ImportError, match=r"pip install 'memlens\[prompts\]'"):
        mine_prompts(["a caption"], threshold=0.4321)  # a threshold no earlier test cached
