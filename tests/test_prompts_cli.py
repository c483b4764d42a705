"""`memlens prompts mine` end to end: duplication ranking, re-ranking by a tiny model's
first-step magnitude, the output read back by `memlens detect`, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("datasketch")


from memlens.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CAPTIONS = [
    "a photo of a cat on a mat",
    "A photo of a cat on a mat!",
    "a photo of a small cat on a mat",
    "blue sky over the sea",
    "blue sky over the sea",
    "blue sky over the sea",
    "something <i>else</i> entirely",
]


@pytest.fixture
def captions(tmp_path: Path) -> Path:
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(CAPTIONS) + "\n")
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_mine_by_duplication(
    captions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mined.jsonl"
    assert main(["prompts", "mine", str(captions), "--out", str(out), "--top", "2"]) == 0
    rows = _rows(out)
    assert [r["caption"] for r in rows] == ["blue sky over the sea", "a photo of a cat on a mat"]
    assert [r["exact_duplicates"] for r in rows] == [3, 2]
    # "a photo of a small cat on a mat": bigram Jaccard 6/9 = 0.67, below the default 0.7
    assert rows[1]["near_duplicates"] == 2
    assert all(r["score"] is None for r in rows)
    assert "2 prompts from 7 captions" in capsys.readouterr().out
    assert main(["prompts", "mine", str(captions), "--out", str(out), "--top", "2",
                 "--threshold", "0.6"]) == 0  # fmt: skip
    rows = _rows(out)
    assert rows[1]["near_duplicates"] == 3
    assert rows[1]["variant_captions"] == ["a photo of a small cat on a mat"]


def test_mine_with_model_scores_and_feeds_detect(captions: Path, tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from memlens.diffusion import load_pipeline, tiny_pipeline
    from memlens.engine.detect import magnitude_scorer

    model = tmp_path / "sd"
    tiny_pipeline("sd").save_pretrained(model)
    out = tmp_path / "mined.jsonl"
    assert main(["prompts", "mine", str(captions), "--out", str(out), "--top", "3",
                 "--model", str(model), "--generations", "2", "--seed", "1",
                 "--device", "cpu"]) == 0  # fmt: skip
    rows = _rows(out)
    scores = [r["score"] for r in rows]
    assert all(isinstance(s, float) and s > 0 for s in scores)
    assert scores == sorted(scores, reverse=True)  # re-ranked by magnitude
    # the score is the first-step magnitude from the shared noises, batch-independent
    pipe = load_pipeline(model)
    alone = magnitude_scorer(pipe, generations=2, seed=1)([rows[0]["caption"]])
    assert alone[0] == pytest.approx(scores[0], rel=1e-5)
    # the mined file is a prompt file for detect (its "caption" column)
    run = tmp_path / "run"
    assert main(["detect", "--model", str(model), "--prompts", str(out), "--out", str(run),
                 "--generations", "1", "--quiet"]) == 0  # fmt: skip
    detected = _rows(run / "results.jsonl")
    assert [r["prompt"] for r in detected] == [r["caption"] for r in rows]


def test_mine_user_errors_exit_2(
    captions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        [str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o.jsonl")],
        [str(captions), "--out", str(tmp_path / "no" / "such" / "o.jsonl")],
        [str(captions), "--out", str(tmp_path / "o.jsonl"), "--model", str(tmp_path / "none")],
        [str(captions), "--out", str(tmp_path / "o.jsonl"), "--guidance", "5"],
    ]
    for case in cases:
        capsys.readouterr()
        assert main(["prompts", "mine", *case]) == 2, case
        err = capsys.readouterr().err.strip()
        assert err.startswith("memlens: error:")
        assert "\n" not in err
