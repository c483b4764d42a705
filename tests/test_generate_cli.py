"""`memlens generate` end to end on tiny image and video pipelines saved to disk: files, one
traceable record per sample, seeding shared with detect, resume, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch

from memlens.cli import main
from memlens.diffusion import load_pipeline
from memlens.engine.generate import to_uint8

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["a photo of a cat", "Emma <i>Beauty</i> & the beast", "blue sky"]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def _png(path: Path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_generate_images_records_seeds_and_resumes(
    tiny_model_dirs: dict[str, Path],
    prompts: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "gen"
    args = ["generate", "--model", str(tiny_model_dirs["sd"]), "--prompts", str(prompts), "--out",
            str(out), "--generations", "2", "--seed", "3", "--steps", "3", "--guidance", "6",
            "--batch-size", "2", "--quiet", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    rows = _rows(out)
    assert [(r["prompt_index"], r["generation"]) for r in rows] == [
        (i, j) for i in range(3) for j in range(2)
    ]
    for r in rows:
        assert r["prompt"] == PROMPTS[r["prompt_index"]]
        assert r["seed"] == 3 + r["prompt_index"]
        assert r["kind"] == "image"
        assert (r["num_inference_steps"], r["guidance_scale"]) == (3, 6.0)
        assert (r["height"], r["width"]) == (16, 16)
        assert (out / r["file"]).is_file()
    # the record is enough to regenerate the sample: generation j is draw j of seed + i
    pipe = load_pipeline(tiny_model_dirs["sd"])
    pipe.set_progress_bar_config(disable=True)
    r = rows[3]
    g = torch.Generator().manual_seed(r["seed"])
    again = pipe(prompt=[r["prompt"]] * 2, generator=[g, g], num_inference_steps=3,
                 guidance_scale=6.0, output_type="np").images  # fmt: skip
    np.testing.assert_array_equal(_png(out / r["file"]), to_uint8(again)[r["generation"]])
    assert "6 samples of 3 prompts" in capsys.readouterr().out
    # resume: a lost sample (row and file) is regenerated identically, the rest skipped
    before = _png(out / rows[3]["file"])
    (out / rows[3]["file"]).unlink()
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:3] + lines[4:]))
    assert main(args) == 2  # an existing run needs --resume
    assert main([*args, "--resume"]) == 0
    np.testing.assert_array_equal(_png(out / rows[3]["file"]), before)
    assert sorted((r["prompt_index"], r["generation"]) for r in _rows(out)) == [
        (i, j) for i in range(3) for j in range(2)
    ]
    assert "1 generated, 5 already there" in capsys.readouterr().out
    import pyarrow.parquet as pq

    assert pq.read_table(out / "results.parquet").num_rows == 6


def test_generate_video_writes_mp4(
    tiny_model_dirs: dict[str, Path], prompts: Path, tmp_path: Path
) -> None:
    from memlens.video import read_media

    out = tmp_path / "vid"
    assert main(["generate", "--model", str(tiny_model_dirs["t2v"]), "--prompts", str(prompts), "--out",
                 str(out), "--steps", "2", "--num-frames", "4", "--fps", "4",
                 "--quiet"]) == 0  # fmt: skip
    rows = _rows(out)
    assert len(rows) == 3
    for r in rows:
        assert r["kind"] == "video"
        assert r["file"].endswith(".mp4")
        assert (r["frames"], r["fps"]) == (4, 4.0)
        clip = read_media(out / r["file"])
        assert clip.frames.shape == (4, 16, 16, 3)


def test_generate_user_errors_exit_2(
    tiny_model_dirs: dict[str, Path],
    prompts: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cases = [
        ["--model", str(tmp_path / "missing"), "--prompts", str(prompts)],
        ["--model", str(tiny_model_dirs["sd"]), "--prompts", str(tmp_path / "missing.txt")],
        ["--model", str(tiny_model_dirs["sd"]), "--prompts", str(prompts), "--num-frames", "4"],
    ]
    for case in cases:
        capsys.readouterr()
        assert main(["generate", *case, "--out", str(tmp_path / "o"), "--quiet"]) == 2, case
        err = capsys.readouterr().err.strip()
        assert err.startswith("memlens: error:")
        assert "\n" not in err
