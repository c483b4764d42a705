"""`memlens detect` end to end on tiny pipelines saved to disk and loaded by path (no hub):
rows, resume, labels and ROC, the report's escaping, user errors, and the prompt/label files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")


from memlens.cli import main
from memlens.diffusion import load_pipeline
from memlens.engine.prompt_io import read_labels, read_prompts
from memlens.metrics.magnitude import detect_magnitude

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    "a photo of a cat",
    "Emma <i>Beauty</i> & the beast",
    "a dog on the beach",
    "blue sky",
    "a red car",
]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3]) + "\n\n" + "\n".join(PROMPTS[3:]) + "\n")
    labels = tmp_path / "labels.tsv"
    labels.write_text(
        "prompt\tlabel\n" + "".join(f"{p}\t{int(i < 2)}\n" for i, p in enumerate(PROMPTS))
    )
    return prompts, labels


def exit_code(argv: list[str]) -> int:
    """main()'s status, also for argparse's usage errors (SystemExit(2))."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]


def test_detect_image_model_rows_labels_report(
    tiny_model_dirs: dict[str, Path], files: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    prompts, labels = files
    run = tmp_path / "run"
    args = ["detect", "--model", str(tiny_model_dirs["sd"]), "--prompts", str(prompts), "--out", str(run),
            "--generations", "2", "--batch-size", "2", "--seed", "5", "--labels", str(labels),
            "--quiet", "--device", "cpu"]  # CPU: compared with a CPU run below  # fmt: skip
    assert main(args) == 0
    rows = _rows(run)
    assert [r["prompt"] for r in rows] == PROMPTS  # blank line skipped, file order
    assert [r["index"] for r in rows] == list(range(5))
    assert [r["label"] for r in rows] == [1, 1, 0, 0, 0]
    assert [r["seed"] for r in rows] == [5, 6, 7, 8, 9]
    for r in rows:
        assert r["generations"] == 2
        assert len(r["magnitude_steps"]) == 1
        assert r["magnitude"] > 0
        assert "content_magnitude" not in r  # an image model
    # the same scores as the library call on the whole list (batching does not matter)
    pipe = load_pipeline(tiny_model_dirs["sd"])
    ref = detect_magnitude(pipe, PROMPTS, generations=2, seed=5, batch_size=5)
    for r, m in zip(rows, ref, strict=True):
        assert r["magnitude"] == pytest.approx(m.magnitude, rel=1e-5)
    import pyarrow.parquet as pq

    assert pq.read_table(run / "results.parquet").column("prompt").to_pylist() == PROMPTS
    meta = json.loads((run / "run.json").read_text())
    assert meta["settings"]["generations"] == 2
    assert meta["settings"]["steps"] == "first"
    assert "auc" in meta["summary"]["evaluation"]["magnitude"]
    html = (run / "report.html").read_text()
    assert "memlens detect report" in html
    assert "Emma &lt;i&gt;Beauty&lt;/i&gt; &amp; the beast" in html
    assert "<i>Beauty" not in html
    assert 'aria-label="ROC curve"' in html
    assert "histogram per label" in html
    assert "Token significance" in html
    out = capsys.readouterr().out
    assert "magnitude: AUC" in out
    assert "top prompts by magnitude" in out


def test_detect_resume_matches_an_uninterrupted_run(
    tiny_model_dirs: dict[str, Path], files: tuple[Path, Path], tmp_path: Path
) -> None:
    prompts, _ = files
    full, part = tmp_path / "full", tmp_path / "part"
    base = ["detect", "--model", str(tiny_model_dirs["sd"]), "--generations", "2", "--batch-size", "2",
            "--quiet"]  # fmt: skip
    assert main([*base, "--prompts", str(prompts), "--out", str(full)]) == 0
    # an "interrupted" run: only the first three prompts, then a torn last line
    first = tmp_path / "first.txt"
    first.write_text("\n".join(PROMPTS[:3]) + "\n")
    assert main([*base, "--prompts", str(first), "--out", str(part)]) == 0
    with open(part / "results.jsonl", "a") as f:
        f.write('{"index": 3, "prom')
    assert main([*base, "--prompts", str(prompts), "--out", str(part)]) == 2  # needs --resume
    assert main([*base, "--prompts", str(prompts), "--out", str(part), "--resume"]) == 0
    a, b = _rows(full), _rows(part)
    assert [r["prompt"] for r in b] == PROMPTS
    for x, y in zip(a, b, strict=True):
        assert x["seed"] == y["seed"]
        assert x["magnitude"] == pytest.approx(y["magnitude"], rel=1e-5)
    # other settings than the run's: refused
    assert main(["detect", "--model", str(tiny_model_dirs["sd"]), "--generations", "3", "--quiet",
                 "--prompts", str(prompts), "--out", str(part), "--resume"]) == 2  # fmt: skip


def test_detect_video_model_all_steps(
    tiny_model_dirs: dict[str, Path], files: tuple[Path, Path], tmp_path: Path
) -> None:
    prompts, labels = files
    run = tmp_path / "run"
    assert main(["detect", "--model", str(tiny_model_dirs["t2v"]), "--prompts", str(prompts), "--out",
                 str(run), "--steps", "all", "--inference-steps", "3", "--generations", "1",
                 "--num-frames", "4", "--labels", str(labels), "--quiet"]) == 0  # fmt: skip
    rows = _rows(run)
    for r in rows:
        assert len(r["magnitude_steps"]) == 3
        assert len(r["content_steps"]) == 3
        assert r["content_magnitude"] > 0
        assert r["motion_magnitude"] > 0
    html = (run / "report.html").read_text()
    assert "Content magnitude" in html
    assert "Motion magnitude" in html
    assert html.count('aria-label="ROC curve"') == 3


def test_detect_user_errors_exit_2_with_one_line(
    tiny_model_dirs: dict[str, Path], files: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    prompts, _ = files
    bad_labels = tmp_path / "bad.tsv"
    bad_labels.write_text("a photo of a cat\tyes\n")
    other_labels = tmp_path / "other.tsv"
    other_labels.write_text("not a prompt here\t1\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    model = str(tiny_model_dirs["sd"])
    cases = [
        ["--model", str(tmp_path / "missing"), "--prompts", str(prompts)],
        ["--model", str(tmp_path), "--prompts", str(prompts)],  # no model_index.json
        ["--model", model, "--prompts", str(tmp_path / "nope.txt")],
        ["--model", model, "--prompts", str(empty)],
        ["--model", model, "--prompts", str(prompts), "--labels", str(bad_labels)],
        ["--model", model, "--prompts", str(prompts), "--labels", str(other_labels)],
        ["--model", model, "--prompts", str(prompts), "--steps", "some"],
        ["--model", model, "--prompts", str(prompts), "--generations", "0"],
        ["--model", model, "--prompts", str(prompts), "--num-frames", "4"],  # an image model
        ["--model", model, "--prompts", str(prompts), "--guidance", "0.5"],
    ]
    for case in cases:
        capsys.readouterr()
        assert exit_code(["detect", *case, "--out", str(tmp_path / "run"), "--quiet"]) == 2, case
        err = capsys.readouterr().err.strip()
        assert err.startswith("memlens: error:"), (case, err)
        assert "\n" not in err, (case, err)
        assert "Traceback" not in err


def test_prompt_and_label_files(tmp_path: Path) -> None:
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"caption": "x <b>", "id": 3}\n\n{"caption": "y"}\n')
    assert read_prompts(jl) == ["x <b>", "y"]
    csv_file = tmp_path / "p.csv"
    csv_file.write_text('prompt,other\n"a, b",1\nc,2\n')
    assert read_prompts(csv_file) == ["a, b", "c"]
    lj = tmp_path / "l.jsonl"
    lj.write_text('{"prompt": "a", "label": 1}\n{"prompt": "b", "label": "0"}\n')
    assert read_labels(lj) == {"a": 1, "b": 0}
    lc = tmp_path / "l.csv"
    lc.write_text("prompt,label\na,1\nb,0\n")
    assert read_labels(lc) == {"a": 1, "b": 0}
    lt = tmp_path / "l.txt"
    lt.write_text("tab\tin prompt\t1\nb\t0\n")
    assert read_labels(lt) == {"tab\tin prompt": 1, "b": 0}
    lt.write_text("a\t1\na\t0\n")
    with pytest.raises(ValueError, match="labels 0 and 1"):
        read_labels(lt)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text_missing": 1}\n')
    with pytest.raises(ValueError, match="no prompt column"):
        read_prompts(bad)


def test_detect_explain_top_draws_token_bars(
    tiny_model_dirs: dict[str, Path], files: tuple[Path, Path], tmp_path: Path
) -> None:
    prompts, _ = files
    run = tmp_path / "run"
    assert main(["detect", "--model", str(tiny_model_dirs["sd"]), "--prompts", str(prompts),
                 "--out", str(run), "--generations", "2", "--explain-top", "2", "--quiet",
                 "--device", "cpu"]) == 0  # fmt: skip
    rows = _rows(run)
    explained = [r for r in rows if r.get("tokens")]
    assert len(explained) == 2
    top2 = sorted(rows, key=lambda r: -r["magnitude"])[:2]
    assert {r["index"] for r in explained} == {r["index"] for r in top2}
    for r in explained:
        assert len(r["tokens"]) == len(r["prompt"].encode())  # the tiny tokenizer: one per byte
        assert len(r["token_significance"]) == len(r["tokens"])
        assert all(v >= 0 for v in r["token_significance"])
    html = (run / "report.html").read_text()
    assert html.count("Token significance") >= 1
    assert "memlens explain --model" not in html  # bars instead of the pointer
