"""Classifier-free-guidance sampling for users without a diffusers pipeline.

:class:`BareDiffusion` wraps a denoiser, a diffusers scheduler and a text encoder (with its
tokenizer, or any ``encode(prompts) -> embeddings`` callable) and behaves like a minimal
pipeline: ``bare(prompt=[...], generator=[...], num_inference_steps=..., guidance_scale=...)``
returns the final latents. memlens observes it with the same hooks it uses on pipelines, so the
batched ``[uncond; cond]`` layout below is the only contract between the two.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from memlens.diffusion.observer import forward_signature, output_tensor

Encoder = Callable[[list[str]], torch.Tensor]


class BareDiffusion:
    """A denoiser + scheduler + text encoder, sampled with classifier-free guidance.

    ``latent_shape`` is one sample's latent shape without the batch axis, e.g. ``(4, 64, 64)``
    for an image model or ``(4, 16, 32, 32)`` for a ``(C, F, H, W)`` video model. Text: either
    ``encode`` or ``text_encoder`` + ``tokenizer`` (padded to ``tokenizer.model_max_length``,
    the encoder's first output is the embedding, as in Stable Diffusion). ``denoiser_kwargs``
    are passed to every denoiser call (e.g. ``added_cond_kwargs``).
    """

    def __init__(
        self,
        denoiser: torch.nn.Module,
        scheduler: Any,
        *,
        latent_shape: Sequence[int],
        text_encoder: torch.nn.Module | None = None,
        tokenizer: Any = None,
        encode: Encoder | None = None,
        null_prompt: str = "",
        denoiser_kwargs: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(denoiser, torch.nn.Module):
            raise TypeError(f"denoiser must be a torch.nn.Module; got {type(denoiser).__name__}")
        for name in ("set_timesteps", "step", "scale_model_input"):
            if not callable(getattr(scheduler, name, None)):
                raise TypeError(f"scheduler must be a diffusers scheduler (no {name}())")
        shape = tuple(latent_shape)
        if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ValueError(f"latent_shape must be positive ints; got {latent_shape!r}")
        if (encode is None) == (text_encoder is None):
            raise ValueError("pass exactly one of encode or text_encoder (+ tokenizer)")
        if text_encoder is not None and tokenizer is None:
            raise ValueError("tokenizer is required with text_encoder")
        self.denoiser = denoiser
        self.scheduler = scheduler
        self.latent_shape = shape
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self._encode = encode
        self.null_prompt = null_prompt
        self.denoiser_kwargs = dict(denoiser_kwargs or {})
        self.device = torch.device(device) if device is not None else _device_of(denoiser)
        # UNets take the latents as "sample", transformers as "hidden_states".
        self._latent_name = list(forward_signature(denoiser).parameters)[1]

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings ``(len(prompts), L, D)`` on the denoiser's device."""
        if self._encode is not None:
            emb = self._encode(prompts)
        else:
            assert self.text_encoder is not None
            ids = self.tokenizer(
                prompts,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            emb = self.text_encoder(ids.to(_device_of(self.text_encoder)))[0]
        if not isinstance(emb, torch.Tensor) or emb.shape[0] != len(prompts):
            raise ValueError(
                f"the text encoder must return one embedding row per prompt ({len(prompts)}); "
                f"got {getattr(emb, 'shape', type(emb).__name__)}"
            )
        return emb.to(self.device)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        *,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        output_type: str = "latent",
    ) -> torch.Tensor:
        """Sample; returns the final latents ``(len(prompt), *latent_shape)``.

        A list ``generator`` has one entry per prompt row and draws that row's ``x_T`` (the
        same object repeated draws consecutive samples), as diffusers' ``randn_tensor`` does.
        """
        if output_type != "latent":
            raise ValueError(f"output_type must be 'latent' (no VAE here); got {output_type!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        gens = generator if isinstance(generator, list) else [generator] * len(prompts)
        if len(gens) != len(prompts):
            raise ValueError(f"generator must have one entry per prompt; got {len(gens)}")
        cond = self.encode_prompts(prompts)
        null = self.encode_prompts([self.null_prompt]).expand_as(cond)
        embeds = torch.cat([null, cond])  # diffusers' [uncond; cond] batched layout
        rows = [torch.randn((1, *self.latent_shape), generator=g, dtype=cond.dtype) for g in gens]
        latents = torch.cat(rows).to(self.device) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        # Stochastic schedulers (DDPM, DDIM with eta > 0) draw their noise per row from the
        # same generators; deterministic ones take no generator.
        step_kwargs: dict[str, Any] = {}
        if (
            generator is not None
            and "generator" in inspect.signature(self.scheduler.step).parameters
        ):
            step_kwargs["generator"] = gens
        for t in self.scheduler.timesteps:
            x = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
            out = self.denoiser(
                **{self._latent_name: x},
                # one timestep per row: transformers require it, UNets expand a scalar to it
                timestep=t.expand(x.shape[0]),
                encoder_hidden_states=embeds,
                **self.denoiser_kwargs,
            )
            uncond, text = output_tensor(out).chunk(2)
            guided = uncond + guidance_scale * (text - uncond)
            latents = self.scheduler.step(guided, t, latents, return_dict=False, **step_kwargs)[0]
        return latents


def _device_of(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
