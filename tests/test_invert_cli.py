"""`memlens invert` end to end on a tiny pixel DDPM pipeline built in-process (no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from memlens.cli import main

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))  # fmt: skip
    path = tmp_path_factory.mktemp("ddpm")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    import cv2

    d = tmp_path_factory.mktemp("img")
    out = []
    rng = np.random.default_rng(0)
    for i in range(3):
        img = (rng.random((40, 52, 3)) * 255).astype(np.uint8)
        p = d / f"img {i}<&>.png"  # odd characters: escaped in the report
        cv2.imwrite(str(p), img)
        out.append(str(p))
    return out


def test_invert_runs_resumes_and_reports(tiny_pipeline: Path, images: list[str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    run = tmp_path / "run"
    args = ["invert", "--model", str(tiny_pipeline), "--out", str(run), "--max-steps", "20",
            "--samples", "4", "--check-every", "10", "--ddim-steps", "4", "--batch", "2",
            "--embedder", "builtin", "--quiet"]  # fmt: skip
    assert main([*args, "--images", *images[:2]]) == 0
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    for r in rows:
        assert r["steps"] <= 20
        assert len(r["similarities"]) >= 1
        assert (r["invmm"] is None) == (not r["success"])
        z = np.load(run / r["params"])
        assert z["mu"].shape == (3, 16, 16)
        assert z["logvar"].shape == (3, 16, 16)
    assert (run / "results.parquet").is_file()
    html = (run / "report.html").read_text()
    assert "memlens InvMM report" in html
    assert "&lt;&amp;&gt;" in html
    assert "<&>" not in html
    assert html.count("data:image/png") >= 2 * 4  # regenerated samples for both images
    # a second invocation without --resume refuses to overwrite; with it, only the new image runs
    assert main([*args, "--images", *images]) == 2
    assert main([*args, "--images", *images, "--resume"]) == 0
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == [0, 1, 2]
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["settings"]["samples"] == 4
    assert run_json["settings"]["preset"] == "pixel"
    out = capsys.readouterr().out
    assert "3 images" in out


def test_invert_user_errors_exit_2(tmp_path: Path, images: list[str], tiny_pipeline: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["invert", "--model", str(tmp_path / "nope"), "--images", images[0], "--out",
                 str(tmp_path / "r")]) == 2  # fmt: skip
    assert "is not a directory" in capsys.readouterr().err
    assert main(["invert", "--model", str(tiny_pipeline), "--images", str(tmp_path / "x.png"),
                 "--out", str(tmp_path / "r")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "x.png" in err
    assert err.count("\n") == 1


def test_invert_text_to_image_pipeline(images: list[str], tmp_path: Path) -> None:
    """A Stable-Diffusion-style pipeline: latents through the VAE, the soft prompt of §2.2
    learned jointly, the check over guidance scales; the preset follows the model kind."""
    import torch

    from memlens.diffusion import tiny_pipeline

    torch.set_num_threads(1)
    model = tmp_path / "sd"
    tiny_pipeline("sd").save_pretrained(model)
    run = tmp_path / "run"
    assert main(["invert", "--model", str(model), "--out", str(run), "--max-steps", "10",
                 "--samples", "2", "--check-every", "5", "--ddim-steps", "3",
                 "--embedder", "builtin", "--quiet", "--images", images[0]]) == 0  # fmt: skip
    (row,) = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    assert row["steps"] <= 10
    assert len(row["similarities"]) == row["steps"] // 5
    z = np.load(run / row["params"])
    assert z["mu"].shape == (4, 8, 8)  # the latent, not the 16 x 16 image
    assert z["soft_prompt"].ndim == 2
    assert np.abs(z["soft_prompt"]).sum() > 0  # learned, not the initial zeros
    settings = json.loads((run / "run.json").read_text())["settings"]
    assert settings["preset"] == "text"
    assert settings["kind"] == "text"
    assert list(settings["guidance_scales"]) == [1, 2, 3, 4, 5, 6, 7]
    assert (run / "report.html").read_text().count("data:image/png") >= 4
