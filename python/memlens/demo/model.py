"""The demo's text-to-video model: a diffusers ``TextToVideoSDPipeline`` small enough to train
on two CPU cores.

- text: a 2-layer CLIP text encoder over byte tokens, trained jointly with the UNet (a frozen
  random one leaves the captions too alike for the cross-attention to tell apart);
- VAE: an ``AutoencoderKL`` with 4x spatial downsampling and 8 latent channels
  (32 x 32 x 3 frames -> 8 x 8 x 8 latents), trained on the training frames;
- denoiser: a ``UNet3DConditionModel`` (spatial and temporal convolutions and attention) on
  (8, frames, 8, 8) latents, eps-prediction on Stable Diffusion's scaled-linear schedule;
- sampler: DDIM.

The trained weights ship inside the package (``memlens/demo/weights``, about 10 MB) and load
with :func:`memlens.diffusion.load_pipeline` like any local diffusers directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from memlens.demo import WEIGHTS

LATENT_CHANNELS = 8


def vae(seed: int) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 2)
    return AutoencoderKL(
        block_out_channels=(32, 64, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=32,
    )


def unet(seed: int, text_dim: int) -> Any:
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed + 3)
    return UNet3DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=text_dim,
        attention_head_dim=16,
        norm_num_groups=16,
    )


def scheduler() -> Any:
    from memlens.diffusion.tiny import _ddim

    return _ddim()


def text(seed: int) -> tuple[Any, Any]:
    """(text_encoder, tokenizer): the byte-level CLIP text encoder at its seeded initialization."""
    from memlens.diffusion.tiny import _clip_text

    encoder, tokenizer = _clip_text(seed)
    return encoder.eval().requires_grad_(False), tokenizer


def pipeline(vae_model: Any, unet_model: Any, text_encoder: Any, tokenizer: Any) -> Any:
    from diffusers import TextToVideoSDPipeline

    return TextToVideoSDPipeline(
        vae=vae_model,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet_model,
        scheduler=scheduler(),
    )


def load(path: str | Path | None = None, *, device: str | None = None) -> Any:
    """The shipped (or a retrained) demo pipeline, from a local directory."""
    from memlens.diffusion import load_pipeline

    return load_pipeline(WEIGHTS if path is None else path, device=device)
