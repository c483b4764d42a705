"""Train the demo model from scratch: ``memlens demo --retrain --out DIR``.

The recipe (also a template for training a small memorizing model of your own):

1. build the training set (:func:`memlens.demo.dataset.training_set`, seeded);
2. train the VAE on every distinct training frame (MSE + a tiny KL term), then set its
   ``scaling_factor`` so the latents have unit variance;
3. encode every clip once and train the 3D UNet and the text encoder for eps-prediction on
   those latents with 10% caption dropout (so classifier-free guidance works), AdamW with a
   warm-up then a constant learning rate;
4. save a diffusers ``TextToVideoSDPipeline`` directory plus ``training.json`` (the command,
   seed, settings, loss curve, versions).

Everything runs on the CPU with a fixed thread count, so the same command on the same torch
build gives the same weights. Defaults take about half an hour on two cores.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memlens.demo import dataset, model


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    unique: int = 160
    copies: int = 48
    vae_steps: int = 600
    vae_batch: int = 32
    vae_lr: float = 1e-3
    unet_steps: int = 3000
    unet_batch: int = 16
    unet_lr: float = 5e-4
    warmup: int = 100
    caption_dropout: float = 0.1
    threads: int = 2
    # phase 2: a fresh AdamW and its own batches on the phase-1 weights (0: none)
    refine_steps: int = 2000
    refine_lr: float = 5e-4
    checkpoint_every: int = 0  # also save the pipeline every N UNet steps (0: never)


def _lr(step: int, total: int | None, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% over ``total`` steps, or constant when
    ``total`` is None (the UNet: then the weights after N steps are those of a run of N steps,
    so any checkpoint is reproducible by its own command)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if total is None:
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _frames_tensor(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(
    vae: Any,
    frames: np.ndarray,
    s: TrainSettings,
    log: Callable[[str], None],
    device: str | torch.device = "cpu",
) -> list[float]:
    """Random draws come from CPU generators whatever ``device``, so the batches and noises do
    not depend on where the model runs."""
    x_all = _frames_tensor(frames).to(device)
    gen = torch.Generator().manual_seed(s.seed + 11)
    opt = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, weight_decay=0.0)
    vae.train()
    losses: list[float] = []
    for step in range(s.vae_steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, s.vae_steps, s.vae_lr, s.warmup)
        idx = torch.randint(len(x_all), (s.vae_batch,), generator=gen).to(device)
        x = x_all[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
        rec = vae.decode(z).sample
        loss = torch.nn.functional.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            log(f"vae step {step + 1}/{s.vae_steps} loss {np.mean(losses[-100:]):.4f}")
    vae.eval()
    return losses


@torch.no_grad()
def encode_clips(vae: Any, clips: np.ndarray, batch: int = 64) -> torch.Tensor:
    """(N, F, H, W, 3) uint8 -> (N, C, F, h, w) unscaled latent means."""
    n, f = clips.shape[:2]
    x = _frames_tensor(clips.reshape(n * f, *clips.shape[2:])).to(vae.device)
    z = torch.cat([vae.encode(x[i : i + batch]).latent_dist.mean for i in range(0, len(x), batch)])
    return z.reshape(n, f, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


def caption_ids(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """(N, L) token ids, padded to the tokenizer's length as the pipeline pads them."""
    ids: torch.Tensor = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids


def train_unet(
    unet: Any,
    text_encoder: Any,
    latents: torch.Tensor,
    ids: torch.Tensor,
    null_ids: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    s: TrainSettings,
    log: Callable[[str], None],
    device: str | torch.device = "cpu",
    callback: Callable[[int], None] | None = None,
    phase: int = 1,
) -> list[float]:
    """Phase 1 (``unet_steps`` at ``unet_lr``) or phase 2 (``refine_steps`` at ``refine_lr``,
    a fresh optimizer and its own batches: the recipe's second phase) of training ``unet`` and
    ``text_encoder`` jointly (a frozen random text encoder leaves
    captions too alike for the cross-attention to tell apart). ``latents`` (N, C, F, h, w)
    and ``ids`` (N, L) on ``device``; ``callback(step)`` runs after every step (checkpoints,
    evaluation of intermediate weights)."""
    steps, lr = (s.unet_steps, s.unet_lr) if phase == 1 else (s.refine_steps, s.refine_lr)
    gen = torch.Generator().manual_seed(s.seed + 13 + 4 * (phase - 1))
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ab = alphas_cumprod.float().to(device)
    unet.train()
    text_encoder.train().requires_grad_(True)
    losses: list[float] = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, None, lr, s.warmup)
        idx = torch.randint(len(latents), (s.unet_batch,), generator=gen).to(device)
        x0 = latents[idx]
        t = torch.randint(len(ab), (s.unet_batch,), generator=gen).to(device)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        a = ab[t].view(-1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        drop = (torch.rand(s.unet_batch, generator=gen) < s.caption_dropout).to(device)
        tokens = torch.where(drop.view(-1, 1), null_ids.expand_as(ids[idx]), ids[idx])
        cond = text_encoder(tokens)[0]
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            log(f"unet phase {phase} step {step + 1}/{steps} loss {np.mean(losses[-100:]):.4f}")
        if callback is not None:
            callback(step + 1)
    unet.eval()
    text_encoder.eval().requires_grad_(False)
    return losses


def train(
    out: str | Path,
    settings: TrainSettings | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train the demo model and save it as a diffusers directory at ``out``. Returns ``out``."""
    s = settings or TrainSettings()
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    start = time.perf_counter()
    try:
        items = dataset.training_set(unique=s.unique, copies=s.copies, seed=s.seed)
        clips = np.stack([it.frames for it in items])
        frames = np.unique(clips.reshape(-1, *clips.shape[2:]), axis=0)
        say(f"training set: {len(items)} clips, {len(frames)} distinct frames")
        text_encoder, tokenizer = model.text(s.seed)
        vae = model.vae(s.seed)
        vae_losses = train_vae(vae, frames, s, say)
        z = encode_clips(vae, clips)
        scale = float(1.0 / z.std())
        vae.register_to_config(scaling_factor=scale)
        latents = z * scale
        ids = caption_ids(tokenizer, [it.caption for it in items])
        null_ids = caption_ids(tokenizer, [""])
        unet = model.unet(s.seed, text_encoder.config.hidden_size)
        sched = model.scheduler()
        pipe = model.pipeline(vae, unet, text_encoder, tokenizer)
        target = Path(out)

        def checkpoint(step: int) -> None:
            if s.checkpoint_every and step % s.checkpoint_every == 0 and step < s.unet_steps:
                pipe.save_pretrained(str(target / "checkpoints" / f"step-{step}"))

        ab = torch.as_tensor(sched.alphas_cumprod)
        unet_losses = train_unet(unet, text_encoder, latents, ids, null_ids, ab, s, say,
                                 callback=checkpoint)  # fmt: skip
        if s.refine_steps:
            unet_losses += train_unet(unet, text_encoder, latents, ids, null_ids, ab, s, say,
                                      phase=2)  # fmt: skip
        target.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(str(target), safe_serialization=True)
        record = {
            "command": "memlens demo --retrain --out DIR"
            + "".join(
                f" --{k.replace('_', '-')} {v}"
                for k, v in asdict(s).items()
                if v != getattr(TrainSettings(), k)
            ),
            "settings": asdict(s),
            "seconds": round(time.perf_counter() - start, 1),
            "scaling_factor": scale,
            "vae_loss": [
                round(float(np.mean(vae_losses[i : i + 50])), 5)
                for i in range(0, len(vae_losses), 50)
            ],
            "unet_loss": [
                round(float(np.mean(unet_losses[i : i + 50])), 5)
                for i in range(0, len(unet_losses), 50)
            ],
            "torch": torch.__version__,
        }
        (target / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        say(f"saved {target} in {record['seconds']} s")
        return target
    finally:
        torch.set_num_threads(threads)
