"""``memlens invert``: InvMM scores of target images under a local diffusers model.

Run directory::

    results.jsonl    one row per image (appended as each batch finishes: resumable)
    results.parquet  the same rows as a table (rewritten at the end)
    params/<i>.npz   the learned q of image i: mu, logvar (model space)
    run.json         settings, model, versions
    report.html      score distribution, convergence curves, regenerated samples

Models: pixel-space diffusers pipelines built on ``UNet2DModel`` (DDPMPipeline, DDIMPipeline)
in a local directory. Latent and text-conditional pipelines need the VAE/soft-prompt path of
the diffusion driver and are refused with a clear error until it lands.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memlens.engine.progress import Progress
from memlens.engine.records import (
    RESULTS,
    ResultWriter,
    read_results,
    write_parquet,
    write_run_json,
)
from memlens.index.atomic import write_bytes_atomic
from memlens.metrics import invmm

PARAMS = "params"


class PixelModel:
    """A pixel-space eps-prediction UNet2DModel and its schedule."""

    def __init__(self, unet: Any, alphas_cumprod: torch.Tensor, path: str) -> None:
        self.unet = unet.eval().requires_grad_(False)
        self.alphas_cumprod = alphas_cumprod.double()
        self.path = path
        self.size = int(unet.config.sample_size if isinstance(unet.config.sample_size, int)
                        else unet.config.sample_size[0])  # fmt: skip
        self.channels = int(unet.config.in_channels)

    @property
    def denoiser(self) -> invmm.Denoiser:
        return invmm.unet_denoiser(self.unet)


def load_pixel_model(path: str | Path, device: str = "cpu") -> PixelModel:
    """A local diffusers pipeline directory (model_index.json) with a UNet2DModel and a DDPM or
    DDIM scheduler. Never downloads."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"--model: {str(p)!r} is not a directory (a local diffusers pipeline)")
    if not (p / "model_index.json").is_file():
        raise ValueError(f"--model: {str(p)!r} has no model_index.json (not a diffusers pipeline)")
    try:
        from diffusers import DiffusionPipeline, UNet2DModel
    except ImportError as e:  # pragma: no cover - dev installs have it
        from memlens.errors import ModelUnavailableError

        raise ModelUnavailableError(
            "memlens invert needs diffusers: pip install 'memlens[diffusion]'"
        ) from e
    pipe = DiffusionPipeline.from_pretrained(str(p), local_files_only=True)
    unet = getattr(pipe, "unet", None)
    if getattr(pipe, "vae", None) is not None or getattr(pipe, "text_encoder", None) is not None:
        raise ValueError(
            f"--model: {str(p)!r} is a latent or text-conditional pipeline; memlens invert "
            "supports pixel-space UNet2DModel pipelines for now"
        )
    if not isinstance(unet, UNet2DModel):
        msg = f"--model: {str(p)!r} has no UNet2DModel 'unet' component"
        raise ValueError(msg)  # noqa: TRY004 - a user's directory: reported as a user error
    sched = pipe.scheduler
    if getattr(sched.config, "prediction_type", "epsilon") != "epsilon":
        raise ValueError(
            f"--model: only eps-prediction schedulers are supported; got {sched.config.prediction_type!r}"
        )
    unet.to(device)  # type: ignore[attr-defined]  # ModelMixin is an nn.Module
    return PixelModel(unet, torch.as_tensor(sched.alphas_cumprod), str(p))


def load_targets(paths: Sequence[str], size: int, channels: int) -> torch.Tensor:
    """Images -> (N, C, size, size) in [-1, 1]: centre square crop, area resize."""
    import cv2

    from memlens.video import read_frame

    out = []
    for path in paths:
        img = read_frame(path, 0)
        h, w = img.shape[:2]
        m = min(h, w)
        img = img[(h - m) // 2 : (h - m) // 2 + m, (w - m) // 2 : (w - m) // 2 + m]
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 127.5 - 1
        if channels == 1:
            x = x.mean(0, keepdim=True)
        elif channels != 3:
            raise ValueError(f"--model: the UNet takes {channels} channels; images have 3")
        out.append(x)
    return torch.stack(out)


def run_invert(
    model: str | Path,
    images: Sequence[str],
    out: str | Path,
    *,
    preset: str = "pixel",
    overrides: dict[str, Any] | None = None,
    batch: int = 16,
    seed: int = 0,
    embedder: str = "default",
    resume: bool = False,
    backend: str | None = None,
    progress: bool = True,
    similarity: Callable[[torch.Tensor], invmm.Similarity] | None = None,
) -> list[dict[str, Any]]:
    """Invert every image; returns all result rows (this run's and earlier ones on resume)."""
    if preset not in invmm.PRESETS:
        raise ValueError(f"--preset must be one of {sorted(invmm.PRESETS)}; got {preset!r}")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1; got {batch}")
    if not images:
        raise ValueError("--images: give at least one image")
    for p in images:
        if not Path(p).is_file():
            raise ValueError(f"--images: {p!r} is not a file")
    settings = invmm.with_overrides(invmm.PRESETS[preset], **(overrides or {}))
    settings.validate()
    run = Path(out)
    if run.exists() and any(run.iterdir()) and not resume and (run / RESULTS).exists():
        raise ValueError(f"--out: {str(run)!r} holds a run; pass --resume to continue it")
    run.mkdir(parents=True, exist_ok=True)
    (run / PARAMS).mkdir(exist_ok=True)
    pm = load_pixel_model(model)
    done = {r["path"]: r for r in read_results(run / RESULTS)} if resume else {}
    todo = [(i, p) for i, p in enumerate(images) if str(p) not in done]
    write_run_json(run, "invert", {**asdict(settings), "preset": preset, "batch": batch,
                                   "seed": seed, "embedder": embedder}, model=str(model))  # fmt: skip
    make_sim = similarity or _sscd_factory(embedder)
    bar = Progress(len(todo), "invert", enabled=progress)
    rows = list(done.values())
    with ResultWriter(run) as w:
        for b0 in range(0, len(todo), batch):
            chunk = todo[b0 : b0 + batch]
            targets = load_targets([p for _, p in chunk], pm.size, pm.channels)
            res = invmm.invert(pm.denoiser, pm.alphas_cumprod, targets, make_sim(targets),
                               settings=settings, seed=seed + b0, backend=backend)  # fmt: skip
            for (i, path), r in zip(chunk, res, strict=True):
                row = _row(i, path, r)
                buf = _npz(r)
                write_bytes_atomic(run / PARAMS / f"{i}.npz", buf)
                w.write(row)
                rows.append(row)
            bar.update(len(chunk))
    write_parquet(rows, run / "results.parquet")
    from memlens.report.invert_html import render

    render(run, pm)
    return rows


def _sscd_factory(name: str) -> Callable[[torch.Tensor], invmm.Similarity]:
    from memlens.embed import get_embedder

    emb = get_embedder(name)
    return lambda targets: invmm.sscd_similarity(targets, emb)


def _npz(r: invmm.InvMMResult) -> bytes:
    import io

    f = io.BytesIO()
    np.savez(f, mu=r.mu, logvar=r.logvar)
    return f.getvalue()


def _row(i: int, path: str, r: invmm.InvMMResult) -> dict[str, Any]:
    return {
        "index": i,
        "path": str(path),
        "invmm": r.score if math.isfinite(r.score) else None,  # null = +inf (not regenerated)
        "success": r.success,
        "steps": r.steps,
        "final_similarity": r.similarities[-1][1] if r.similarities else None,
        "similarities": [[s, v] for s, v in r.similarities],
        "losses": [round(v, 8) for v in r.losses[:: max(1, len(r.losses) // 200)]],
        "weights": r.weights,
        "params": f"{PARAMS}/{i}.npz",
    }
