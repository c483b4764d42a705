"""`memlens explain` and `memlens mitigate` end to end on a tiny SD pipeline (no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from memlens.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

pytest.importorskip("diffusers")


def test_explain_prints_tokens_and_json(
    tiny_model_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["explain", "--model", str(tiny_model_dirs["sd"]), "--prompt", "a red fox", "--generations", "2",
            "--inference-steps", "3", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "explain: a red fox" in out
    assert "#" in out
    assert main([*args, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["prompt"] == "a red fox"
    assert len(rec["tokens"]) == len(rec["token_significance"]) == len("a red fox")  # bytes
    assert all(v >= 0 for v in rec["token_significance"])
    assert max(rec["token_significance"]) > 0


def test_mitigate_writes_samples_and_embedding(tiny_model_dirs: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "mit"
    assert main(["mitigate", "--model", str(tiny_model_dirs["sd"]), "--prompt", "a red fox", "--out", str(out),
                 "--generations", "2", "--inference-steps", "2", "--iterations", "3",
                 "--target", "1e-9", "--device", "cpu"]) == 0  # fmt: skip
    rec = json.loads((out / "result.json").read_text())
    assert rec["iterations"] == 3  # the target is out of reach: every iteration runs
    assert not rec["converged"]
    assert rec["magnitude_after"] != rec["magnitude_before"]
    assert len(rec["files"]["before"]) == len(rec["files"]["after"]) == 2
    for rel in rec["files"]["before"] + rec["files"]["after"]:
        assert (out / rel).is_file()
    emb = np.load(out / "embedding.npy", allow_pickle=False)
    assert emb.ndim == 3
    assert emb.shape[0] == 1
    assert "magnitude" in capsys.readouterr().out
    # user errors: one line, exit 2
    assert (
        main(
            ["mitigate", "--model", str(tiny_model_dirs["sd"]), "--prompt", "x", "--out", str(out)]
        )
        == 2
    )
    assert "not empty" in capsys.readouterr().err
    assert main(["explain", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert main(["explain", "--model", str(tiny_model_dirs["sd"]), "--prompt", "  "]) == 2


def test_model_demo_names_the_embedded_model(capsys: pytest.CaptureFixture[str]) -> None:
    """``--model demo`` is the embedded text-to-video model for every command that takes one."""
    pytest.importorskip("skimage")
    args = ["explain", "--model", "demo", "--prompt", "a ginger cat looks into the camera",
            "--generations", "1", "--inference-steps", "2", "--device", "cpu", "--json"]  # fmt: skip
    assert main(args) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["prompt"] == "a ginger cat looks into the camera"
    assert max(rec["token_significance"]) > 0
