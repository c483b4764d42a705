"""Train the demo model from scratch: ``memlens demo --retrain --out DIR``.

The recipe (also a template for training a small memorizing model of your own):

1. build the training set (:func:`memlens.demo.dataset.training_set`, seeded);
2. train the VAE on every distinct training frame (MSE + a tiny KL term), then set its
   ``scaling_factor`` so the latents have unit variance;
3. encode every clip once and train the 3D UNet and the text encoder for eps-prediction on
   those latents with 10% caption dropout (so classifier-free guidance works), AdamW with a
   warm-up then a constant learning rate, in phases (each later phase starts a fresh AdamW);
4. refine the VAE's decoder alone on the frozen encoder's latents: the UNet's latent space
   does not change, and the decoded frames get much sharper than 600 joint VAE steps make them
   (the samples are only as recognizable as the decoder lets them be);
5. save a diffusers ``TextToVideoSDPipeline`` directory plus ``training.json`` (the command,
   seed, settings, loss curve, versions).

Everything runs on the CPU with a fixed thread count, so the same command on the same torch
build gives the same weights. Defaults take about two hours on two cores.
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
    # phases 2, 3, ...: each a fresh AdamW and its own batches on the previous phase's weights
    refine_steps: tuple[int, ...] = (2000, 4000)
    refine_lr: float = 5e-4
    decoder_steps: int = 1500  # decoder-only refinement after the UNet (0: none)
    decoder_lr: float = 1e-3
    checkpoint_every: int = 0  # also save the pipeline every N steps of each phase (0: never)


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


def _fit(
    params: Any,
    steps: int,
    peak: float,
    s: TrainSettings,
    seed: int,
    loss_of: Callable[[torch.Generator], torch.Tensor],
    log: Callable[[str], None],
    name: str,
    *,
    constant: bool = False,
    clip: float | None = None,
    callback: Callable[[int], None] | None = None,
) -> list[float]:
    """AdamW over ``params`` for ``steps`` steps: warm-up, then cosine decay (or a constant
    learning rate, ``constant``); gradients clipped to norm ``clip`` when given;
    ``loss_of(gen)`` draws its batch (and noise) from ``gen``, seeded ``seed``;
    ``callback(step)`` after every step."""
    params = list(params)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=peak, weight_decay=0.0)
    losses: list[float] = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, None if constant else steps, peak, s.warmup)
        loss = loss_of(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            log(f"{name} step {step + 1}/{steps} loss {np.mean(losses[-100:]):.4f}")
        if callback is not None:
            callback(step + 1)
    return losses


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

    def loss_of(gen: torch.Generator) -> torch.Tensor:
        x = x_all[torch.randint(len(x_all), (s.vae_batch,), generator=gen).to(device)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
        return torch.nn.functional.mse_loss(vae.decode(z).sample, x) + 1e-6 * post.kl().mean()

    vae.train()
    losses = _fit(vae.parameters(), s.vae_steps, s.vae_lr, s, s.seed + 11, loss_of, log, "vae")
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
    """Phase 1 (``unet_steps`` at ``unet_lr``) or phase p > 1 (``refine_steps[p - 2]`` at
    ``refine_lr``, a fresh optimizer and its own batches) of training ``unet`` and
    ``text_encoder`` jointly (a frozen random text encoder leaves
    captions too alike for the cross-attention to tell apart). ``latents`` (N, C, F, h, w)
    and ``ids`` (N, L) on ``device``; ``callback(step)`` runs after every step (checkpoints,
    evaluation of intermediate weights)."""
    steps, lr = (
        (s.unet_steps, s.unet_lr) if phase == 1 else (s.refine_steps[phase - 2], s.refine_lr)
    )
    params = [*unet.parameters(), *text_encoder.parameters()]
    ab = alphas_cumprod.float().to(device)

    def loss_of(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(latents), (s.unet_batch,), generator=gen).to(device)
        x0 = latents[idx]
        t = torch.randint(len(ab), (s.unet_batch,), generator=gen).to(device)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        a = ab[t].view(-1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        drop = (torch.rand(s.unet_batch, generator=gen) < s.caption_dropout).to(device)
        tokens = torch.where(drop.view(-1, 1), null_ids.expand_as(ids[idx]), ids[idx])
        cond = text_encoder(tokens)[0]
        return torch.nn.functional.mse_loss(unet(xt, t, encoder_hidden_states=cond).sample, eps)

    unet.train()
    text_encoder.train().requires_grad_(True)
    losses = _fit(params, steps, lr, s, s.seed + 13 + 4 * (phase - 1), loss_of, log,
                  f"unet phase {phase}", constant=True, clip=1.0, callback=callback)  # fmt: skip
    unet.eval()
    text_encoder.eval().requires_grad_(False)
    return losses


def refine_decoder(
    vae: Any,
    frames: np.ndarray,
    s: TrainSettings,
    log: Callable[[str], None],
    device: str | torch.device = "cpu",
) -> list[float]:
    """Train the decoder (and ``post_quant_conv``) alone, MSE on the frozen encoder's latent
    means of ``frames``, warm-up then cosine decay. The encoder is untouched, so the latents the
    UNet was trained on stay exactly what they were."""
    x_all = _frames_tensor(frames).to(device)
    with torch.no_grad():
        z_all = torch.cat([vae.encode(x_all[i : i + 256]).latent_dist.mean
                           for i in range(0, len(x_all), 256)])  # fmt: skip
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    vae.requires_grad_(False)
    for q in params:
        q.requires_grad_(True)

    def loss_of(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(x_all), (s.vae_batch,), generator=gen).to(device)
        return torch.nn.functional.mse_loss(vae.decode(z_all[idx]).sample, x_all[idx])

    vae.train()
    losses = _fit(params, s.decoder_steps, s.decoder_lr, s, s.seed + 7, loss_of, log, "decoder")
    vae.eval().requires_grad_(False)
    return losses


def _curve(losses: list[float]) -> list[float]:
    return [round(float(np.mean(losses[i : i + 50])), 5) for i in range(0, len(losses), 50)]


def _command(s: TrainSettings) -> str:
    flags = ""
    for k, v in asdict(s).items():
        if k != "checkpoint_every" and v != getattr(TrainSettings(), k):  # no effect on weights
            shown = " ".join(map(str, v)) if isinstance(v, tuple | list) else v
            flags += f" --{k.replace('_', '-')} {shown}"
    return "memlens demo --retrain --out DIR" + flags


def train(
    out: str | Path,
    settings: TrainSettings | None = None,
    *,
    log: Callable[[str], None] | None = None,
    resume: tuple[str | Path, int] | None = None,
) -> Path:
    """Train the demo model and save it as a diffusers directory at ``out``. Returns ``out``.

    ``resume=(DIR, P)`` continues a run of the same settings whose UNet phases 1..P are done
    and saved in ``DIR`` (the weights after phase P, without decoder refinement): the VAE
    training and those phases are skipped, the rest runs as in one call. Every phase and the
    decoder refinement draw from their own seeded generators, so the result is bitwise the one
    call's (tested)."""
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
        if resume is None:
            done = 0
            previous: dict[str, Any] = {"vae_loss": [], "unet_loss": [], "seconds": 0.0}
            text_encoder, tokenizer = model.text(s.seed)
            vae = model.vae(s.seed)
            previous["vae_loss"] = _curve(train_vae(vae, frames, s, say))
            z = encode_clips(vae, clips)
            vae.register_to_config(scaling_factor=float(1.0 / z.std()))
            unet = model.unet(s.seed, text_encoder.config.hidden_size)
        else:
            source, done = Path(resume[0]), resume[1]
            previous = json.loads((source / "training.json").read_text())
            if previous["settings"]["seed"] != s.seed:
                raise ValueError(f"resume: {source} was trained with another seed")
            loaded = model.load(source)
            vae, unet = loaded.vae, loaded.unet
            text_encoder, tokenizer = loaded.text_encoder, loaded.tokenizer
            for module in (vae, unet, text_encoder):
                # fresh, aligned storage: loaded tensors may sit at offsets in one file-backed
                # block, and BLAS rounds differently on differently aligned operands
                for t in [*module.parameters(), *module.buffers()]:
                    t.data = t.data.clone()
            z = encode_clips(vae, clips)
        scale = float(vae.config.scaling_factor)
        latents = z * scale
        ids = caption_ids(tokenizer, [it.caption for it in items])
        null_ids = caption_ids(tokenizer, [""])
        sched = model.scheduler()
        pipe = model.pipeline(vae, unet, text_encoder, tokenizer)
        target = Path(out)

        def checkpoint(phase: int) -> Callable[[int], None]:
            before, steps = (
                _done_steps(s, phase - 1),
                _done_steps(s, phase) - _done_steps(s, phase - 1),
            )

            def save(step: int) -> None:
                if s.checkpoint_every and step % s.checkpoint_every == 0 and step < steps:
                    pipe.save_pretrained(str(target / "checkpoints" / f"step-{before + step}"))

            return save

        ab = torch.as_tensor(sched.alphas_cumprod)
        unet_losses: list[float] = []
        for phase in range(done + 1, len(s.refine_steps) + 2):
            unet_losses += train_unet(unet, text_encoder, latents, ids, null_ids, ab, s, say,
                                      callback=checkpoint(phase), phase=phase)  # fmt: skip
        decoder_losses = refine_decoder(vae, frames, s, say) if s.decoder_steps else []
        target.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(str(target), safe_serialization=True)
        record = {
            "command": _command(s),
            "settings": asdict(s),
            "seconds": round(float(previous["seconds"]) + time.perf_counter() - start, 1),
            "scaling_factor": scale,
            "vae_loss": previous["vae_loss"],
            # a resumed run keeps the curve of the phases it skipped (whole 50-step blocks)
            "unet_loss": previous["unet_loss"][: _done_steps(s, done) // 50] + _curve(unet_losses),
            "decoder_loss": _curve(decoder_losses),
            "torch": torch.__version__,
        }
        if resume is not None:
            record["resumed"] = {"from_phase": done, "seconds_before": previous["seconds"]}
        (target / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        say(f"saved {target} in {record['seconds']} s")
        return target
    finally:
        torch.set_num_threads(threads)


def _done_steps(s: TrainSettings, phases: int) -> int:
    """UNet steps in phases 1..``phases``."""
    return 0 if phases == 0 else s.unet_steps + sum(s.refine_steps[: phases - 1])
