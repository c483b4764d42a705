"""``memlens invert``: InvMM scores of target images under a local diffusers model.

Run directory::

    results.jsonl    one row per image (appended as each batch finishes: resumable)
    results.parquet  the same rows as a table (rewritten at the end)
    params/<i>.npz   the learned q of image i: mu, logvar (model space)
    run.json         settings, model, versions
    report.html      score distribution, convergence curves, regenerated samples

Models: local diffusers directories with an eps-prediction UNet: pixel-space (``UNet2DModel``:
DDPM/DDIM pipelines), text-to-image (VAE + text encoder + ``UNet2DConditionModel``) and
text-to-video (VAE + text encoder + ``UNet3DConditionModel``, e.g. ``TextToVideoSDPipeline`` and
the demo model). For a video model each target is a clip: its first ``frames`` frames are
inverted together, and the success check compares every frame (mean SSCD cosine).
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


class InversionModel:
    """What InvMM needs from a pipeline: the eps denoiser, its schedule, the image size the
    targets are resized to, and the maps between images ([-1, 1], channels first) and the
    model's space (identity for pixel models; VAE encode (mode) x scaling factor / decode for
    latent ones). Text-conditional models also carry their text encoder and tokenizer (the soft
    prompt of §2.2)."""

    def __init__(self, pipe: Any, path: str, frames: int = 8) -> None:
        self.path = path
        self.unet = pipe.unet.eval().requires_grad_(False)
        # video models: (N, C, F, h, w) in model space, (N, F, C, H, W) as images
        self.video = type(self.unet).__name__ == "UNet3DConditionModel"
        self.frames = frames
        self.alphas_cumprod = torch.as_tensor(pipe.scheduler.alphas_cumprod).double()
        self.vae = getattr(pipe, "vae", None)
        self.text_encoder = getattr(pipe, "text_encoder", None)
        self.tokenizer = getattr(pipe, "tokenizer", None)
        cfg = self.unet.config
        side = int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0])
        if self.vae is not None:
            self.vae.eval().requires_grad_(False)
            self.scale = float(self.vae.config.scaling_factor)
            self.size = side * 2 ** (len(self.vae.config.block_out_channels) - 1)
            self.channels = int(self.vae.config.in_channels)
        else:
            self.scale = 1.0
            self.size = side
            self.channels = int(cfg.in_channels)

    @property
    def kind(self) -> str:
        return (
            "text"
            if self.text_encoder is not None
            else "latent"
            if self.vae is not None
            else "pixel"
        )

    @property
    def denoiser(self) -> invmm.Denoiser | invmm.ConditionalDenoiser:
        if self.text_encoder is not None:
            return invmm.unet_cond_denoiser(self.unet)
        return invmm.unet_denoiser(self.unet)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return images
        if self.video:  # (N, F, C, H, W) -> (N, c, F, h, w), frame by frame
            n, f = images.shape[:2]
            z = self.encode_frames(images.flatten(0, 1))
            return z.view(n, f, *z.shape[1:]).transpose(1, 2).contiguous()
        return self.encode_frames(images)

    def encode_frames(self, images: torch.Tensor) -> torch.Tensor:
        assert self.vae is not None
        return self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode().float() * self.scale

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return x
        if self.video:  # (N, c, F, h, w) -> (N, F, C, H, W)
            n, f = x.shape[0], x.shape[2]
            im = self._decode(x.transpose(1, 2).flatten(0, 1))
            return im.view(n, f, *im.shape[1:])
        return self._decode(x)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        assert self.vae is not None
        return self.vae.decode((x / self.scale).to(self.vae.dtype)).sample.float().clamp(-1, 1)

    def preview(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples -> (M, C, H, W) images to show (a video's first frame)."""
        im = self.decode(x)
        return im[:, 0] if self.video else im


_UNETS = ("UNet2DModel", "UNet2DConditionModel", "UNet3DConditionModel")


def load_model(path: str | Path, device: str = "cpu", frames: int = 8) -> InversionModel:
    """A local diffusers pipeline directory with an eps-prediction UNet: pixel-space
    (UNet2DModel, DDPM/DDIM), text-to-image (VAE + text encoder + UNet2DConditionModel) or
    text-to-video (VAE + text encoder + UNet3DConditionModel; ``frames`` per clip). Never
    downloads."""
    from memlens.diffusion import load_pipeline
    from memlens.engine.pipeline import _no_load_bars
    from memlens.errors import ModelUnavailableError

    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"--model: {str(p)!r} is not a directory (a local diffusers pipeline)")
    try:
        with _no_load_bars():
            pipe = load_pipeline(p, device=device)
    except ModelUnavailableError as e:
        if (p / "model_index.json").is_file():
            raise
        raise ValueError(
            f"--model: {str(p)!r} has no model_index.json (not a diffusers pipeline)"
        ) from e
    unet = getattr(pipe, "unet", None)
    if unet is None or type(unet).__name__ not in _UNETS:
        raise ValueError(f"--model: {str(p)!r} has no {'/'.join(_UNETS)} 'unet'")
    if (type(unet).__name__ != "UNet2DModel") != (getattr(pipe, "text_encoder", None) is not None):
        raise ValueError(
            f"--model: {str(p)!r}: a conditional UNet needs the pipeline's text encoder"
        )
    sched = pipe.scheduler
    if getattr(sched.config, "prediction_type", "epsilon") != "epsilon":
        raise ValueError(
            f"--model: only eps-prediction schedulers are supported; got {sched.config.prediction_type!r}"
        )
    if frames < 1:
        raise ValueError(f"--frames must be >= 1; got {frames}")
    return InversionModel(pipe, str(p), frames)


def _to_model_image(img: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (C, size, size) in [-1, 1]: centre square crop, area resize."""
    import cv2

    h, w = img.shape[:2]
    m = min(h, w)
    img = img[(h - m) // 2 : (h - m) // 2 + m, (w - m) // 2 : (w - m) // 2 + m]
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 127.5 - 1
    if channels == 1:
        return x.mean(0, keepdim=True)
    if channels != 3:
        raise ValueError(f"--model: the UNet takes {channels} channels; images have 3")
    return x


def load_targets(
    paths: Sequence[str], size: int, channels: int, frames: int | None = None
) -> torch.Tensor:
    """Images -> (N, C, size, size) in [-1, 1]; with ``frames`` (video models) the first
    ``frames`` frames of each video (an image is a still clip) -> (N, frames, C, size, size)."""
    from memlens.video import read_frame, read_media

    out = []
    for path in paths:
        if frames is None:
            out.append(_to_model_image(read_frame(path, 0), size, channels))
            continue
        clip = read_media(path).frames[:frames]
        if len(clip) < frames:  # a short clip or an image holds its last frame
            clip = np.concatenate([clip, np.repeat(clip[-1:], frames - len(clip), axis=0)])
        out.append(torch.stack([_to_model_image(f, size, channels) for f in clip]))
    return torch.stack(out)


def run_invert(
    model: str | Path,
    images: Sequence[str],
    out: str | Path,
    *,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    batch: int = 16,
    seed: int = 0,
    embedder: str = "default",
    resume: bool = False,
    backend: str | None = None,
    progress: bool = True,
    similarity: Callable[[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], invmm.Similarity]
    | None = None,
    frames: int = 8,
    report: bool = True,
) -> list[dict[str, Any]]:
    """Invert every image; returns all result rows (this run's and earlier ones on resume)."""
    if batch < 1:
        raise ValueError(f"--batch must be >= 1; got {batch}")
    if not images:
        raise ValueError("--images: give at least one image")
    for p in images:
        if not Path(p).is_file():
            raise ValueError(f"--images: {p!r} is not a file")
    pm = load_model(model, frames=frames)
    preset = preset or ("pixel" if pm.kind == "pixel" else pm.kind)
    if preset not in invmm.PRESETS:
        raise ValueError(f"--preset must be one of {sorted(invmm.PRESETS)}; got {preset!r}")
    settings = invmm.with_overrides(invmm.PRESETS[preset], **(overrides or {}))
    settings.validate()
    run = Path(out)
    if run.exists() and any(run.iterdir()) and not resume and (run / RESULTS).exists():
        raise ValueError(f"--out: {str(run)!r} holds a run; pass --resume to continue it")
    run.mkdir(parents=True, exist_ok=True)
    (run / PARAMS).mkdir(exist_ok=True)
    done = {r["path"]: r for r in read_results(run / RESULTS)} if resume else {}
    todo = [(i, p) for i, p in enumerate(images) if str(p) not in done]
    write_run_json(run, "invert", {**asdict(settings), "preset": preset, "batch": batch,
                                   "seed": seed, "embedder": embedder, "kind": pm.kind,
                                   **({"frames": frames} if pm.video else {})},
                   model=str(model))  # fmt: skip
    make_sim = similarity or _sscd_factory(embedder, pm.video)
    bar = Progress(len(todo), "invert", enabled=progress)
    rows = list(done.values())
    with ResultWriter(run) as w:
        for b0 in range(0, len(todo), batch):
            chunk = todo[b0 : b0 + batch]
            images_t = load_targets([p for _, p in chunk], pm.size, pm.channels,
                                    pm.frames if pm.video else None)  # fmt: skip
            targets = pm.encode(images_t)
            sp = None
            if pm.text_encoder is not None:
                sp = invmm.SoftPrompt(
                    pm.text_encoder, pm.tokenizer, len(chunk), settings, seed=seed + b0
                )
            status = _Status(progress, f"batch {b0 // batch + 1}/{-(-len(todo) // batch)}",
                             settings.steps)  # fmt: skip
            res = invmm.invert(pm.denoiser, pm.alphas_cumprod, targets,
                               make_sim(images_t, pm.decode), settings=settings, seed=seed + b0,
                               backend=backend, soft_prompt=sp, on_step=status)  # fmt: skip
            status.close()
            for (i, path), r in zip(chunk, res, strict=True):
                row = _row(i, path, r)
                buf = _npz(r)
                write_bytes_atomic(run / PARAMS / f"{i}.npz", buf)
                w.write(row)
                rows.append(row)
            bar.update(len(chunk))
    write_parquet(rows, run / "results.parquet")
    if report:
        from memlens.report.invert_html import render

        render(run, pm)
    return rows


def _sscd_factory(
    name: str, video: bool = False
) -> Callable[[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], invmm.Similarity]:
    """similarity(target images, decode): model-space samples are decoded to images first;
    video targets (N, F, C, H, W) score the mean cosine over their frames."""
    from memlens.embed import get_embedder

    emb = get_embedder(name)
    if not video:
        return lambda images, decode: invmm.sscd_similarity(images, emb, decode)

    def make(
        clips: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor]
    ) -> invmm.Similarity:
        n, f = clips.shape[:2]
        target = torch.from_numpy(emb.embed(invmm.pixels_to_uint8(clips.flatten(0, 1))))
        target = target.view(n, f, -1)

        def sim(samples: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            frames = decode(samples)  # (M, F, C, H, W)
            e = torch.from_numpy(emb.embed(invmm.pixels_to_uint8(frames.flatten(0, 1))))
            return (e.view(len(samples), f, -1) * target[index.cpu()]).sum(-1).mean(1)

        return sim

    return make


class _Status:
    """One progress line per batch on stderr: step, active images, their x0 loss, the
    normality weight and the best check similarity so far (redrawn in place on a terminal,
    every few seconds otherwise)."""

    def __init__(self, enabled: bool, label: str, steps: int) -> None:
        import sys

        self.enabled, self.label, self.steps = enabled, label, steps
        self.stream = sys.stderr
        self.tty = self.stream.isatty()
        self.last = 0.0
        self.best = float("nan")
        self.line = ""

    def __call__(self, info: invmm.StepInfo) -> None:
        import time

        if info.similarities is not None and len(info.similarities):
            m = float(np.max(info.similarities))
            self.best = m if math.isnan(self.best) else max(self.best, m)
        now = time.perf_counter()
        if not self.enabled or now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        self.line = (f"invert {self.label}: step {info.step + 1}/{self.steps}, "
                     f"{len(info.active)} active, loss {float(np.mean(info.losses)):.4g}, "
                     f"w {float(np.mean(info.weights)):.3g}, best similarity {self.best:.3f}")  # fmt: skip
        self.stream.write(("\r" + self.line + "\x1b[K") if self.tty else self.line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.line:
            self.stream.write("\n")


def _npz(r: invmm.InvMMResult) -> bytes:
    import io

    f = io.BytesIO()
    arrays: dict[str, np.ndarray] = {"mu": r.mu, "logvar": r.logvar}
    if r.soft_prompt is not None:  # (L, |V|): float16 halves ~15 MB per image for real CLIP
        arrays["soft_prompt"] = r.soft_prompt.astype(np.float16)
    np.savez(f, **arrays)  # type: ignore[arg-type]
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
