"""Drive a diffusers pipeline (or a :class:`BareDiffusion`) and observe its guidance.

Two entry points:

- :func:`observe` attaches the hooks to a pipeline the caller runs itself; the pipeline's
  output is unchanged bit for bit.
- :func:`run_guided` runs the pipeline for a batch of prompts with memlens' seeding (one
  generator per prompt, ``generations`` samples each) and stops it as soon as the requested
  steps were seen: the first-step mode costs one batched denoiser call at ``x_T`` (plus the text
  encoder), with no sampling loop and no VAE decode.

Nothing here copies a pipeline's code: the pipeline prepares ``x_T``, the timesteps and the
embeddings exactly as it would for a normal call; memlens only reads the denoiser's outputs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from memlens.diffusion._imports import require_diffusers
from memlens.diffusion.observer import GuidanceObserver, GuidanceStep, Layout, StopSampling
from memlens.errors import ModelUnavailableError

# Video denoisers whose outputs are (B, F, C, H, W); diffusers' other video denoisers
# (UNet3DConditionModel, UNetMotionModel, Wan, Mochi, HunyuanVideo, ...) use (B, C, F, H, W).
_FRAMES_FIRST = ("CogVideoXTransformer3DModel", "UNetSpatioTemporalConditionModel")


def load_pipeline(
    path: str | Path,
    *,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> Any:
    """Load a local diffusers pipeline directory (never the hub: ``local_files_only=True``).

    Raises :class:`~memlens.errors.ModelUnavailableError` naming ``path`` when it is not a
    directory holding a ``model_index.json``.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path; got {type(path).__name__}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelUnavailableError(
            f"model directory {str(root)!r} does not exist: memlens loads local diffusers "
            "directories only (save one with pipe.save_pretrained(DIR)); it never downloads"
        )
    if not (root / "model_index.json").is_file():
        raise ModelUnavailableError(
            f"{str(root)!r} is not a diffusers pipeline directory (no model_index.json)"
        )
    require_diffusers()
    from diffusers import DiffusionPipeline

    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    pipe = DiffusionPipeline.from_pretrained(str(root), local_files_only=True, **kwargs)
    if device is not None:
        pipe = pipe.to(device)
    return pipe


def denoiser_of(model: Any) -> torch.nn.Module:
    """The module that predicts noise: ``pipe.unet``, ``pipe.transformer`` or a bare model's."""
    return denoisers_of(model)[0]


def denoisers_of(model: Any) -> list[torch.nn.Module]:
    """Every module that predicts noise, in order: the denoiser, plus ``transformer_2`` /
    ``unet_2`` where a pipeline hands later steps to a second model (Wan 2.2)."""
    for name in ("denoiser", "unet", "transformer"):
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            second = getattr(model, f"{name}_2", None)
            return [module] + ([second] if isinstance(second, torch.nn.Module) else [])
    raise TypeError(
        f"model must be a diffusers pipeline with a unet or transformer, or a BareDiffusion; "
        f"got {type(model).__name__}"
    )


def frame_axis_of(denoiser: torch.nn.Module, ndim: int) -> int | None:
    """The frame axis of the denoiser's ``ndim``-D batched output, or None for images."""
    if ndim == 4:
        return None
    if ndim != 5:
        raise ValueError(
            f"denoiser outputs must be 4-D (images) or 5-D (videos); got {ndim}-D: pass frame_axis"
        )
    return 1 if type(denoiser).__name__ in _FRAMES_FIRST else 2


def observe(
    model: Any,
    on_step: Callable[[GuidanceStep], None] | None = None,
    *,
    keep: bool = False,
    rows: int | None = None,
    layout: Layout = "auto",
) -> GuidanceObserver:
    """Hooks on ``model``'s denoiser, as a context manager::

    with observe(pipe, keep=True) as obs:
        out = pipe("a prompt", generator=g)   # the pipeline's own output, unchanged
    obs.steps[0].cond, obs.steps[0].uncond    # eps(x_T, prompt), eps(x_T, "")
    """
    return GuidanceObserver(denoisers_of(model), on_step, rows=rows, layout=layout, keep=keep)


def default_call_value(model: Any, name: str) -> Any:
    """The default of ``model.__call__``'s parameter ``name`` (e.g. its guidance scale)."""
    param = inspect.signature(model.__call__).parameters.get(name)
    if param is None or param.default is inspect.Parameter.empty:
        raise ValueError(f"{type(model).__name__}.__call__ has no default {name}; pass {name}")
    return param.default


def _check_positive_int(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def run_guided(
    model: Any,
    prompts: Sequence[str],
    on_step: Callable[[GuidanceStep], None],
    *,
    seeds: Sequence[int],
    generations: int = 1,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    stop_after: int | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
) -> int:
    """Run ``model`` on ``prompts`` (``generations`` samples each) and report every CFG step.

    Rows are prompt-major (prompt ``i``'s generations are rows ``i*generations ...``); prompt
    ``i``'s ``x_T`` come from one generator seeded ``seeds[i]``, so a prompt's samples do not
    depend on the batch it runs in. ``stop_after=N`` stops the pipeline after N steps (the
    rest of the loop and the VAE decode never run); otherwise the pipeline runs to the end
    with ``output_type="latent"``. ``num_inference_steps`` and ``guidance_scale`` default to
    the pipeline's own defaults; ``call_kwargs`` go to the pipeline call unchanged
    (``height``, ``num_frames``, ...). Returns the number of steps observed.
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a sequence of str")
    if not prompts:
        raise ValueError("prompts must not be empty")
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds must have one entry per prompt ({len(prompts)}); got {len(seeds)}")
    _check_positive_int("generations", generations)
    _check_positive_int("num_inference_steps", num_inference_steps, allow_none=True)
    _check_positive_int("stop_after", stop_after, allow_none=True)
    if guidance_scale is None:
        guidance_scale = default_call_value(model, "guidance_scale")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise TypeError(f"guidance_scale must be a number; got {guidance_scale!r}")
    if not guidance_scale > 1:
        raise ValueError(
            f"guidance_scale must be > 1 (classifier-free guidance on); got {guidance_scale!r}"
        )
    kwargs = dict(call_kwargs or {})
    reserved = {"prompt", "generator", "guidance_scale", "num_inference_steps", "output_type"}
    if clash := reserved & kwargs.keys():
        raise ValueError(f"call_kwargs must not set {sorted(clash)}: memlens sets them")
    if num_inference_steps is not None:
        kwargs["num_inference_steps"] = num_inference_steps
    rows = [p for p in prompts for _ in range(generations)]
    generators: list[torch.Generator] = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        # The same generator object per row of one prompt: consecutive draws are its samples.
        generators += [g] * generations
    observer = GuidanceObserver(denoisers_of(model), on_step, rows=len(rows), stop_after=stop_after)
    try:
        with observer:
            model(
                prompt=rows,
                generator=generators,
                guidance_scale=float(guidance_scale),
                output_type="latent",
                **kwargs,
            )
    except StopSampling:
        pass
    if observer.num_steps == 0:
        raise RuntimeError(f"{type(model).__name__} never called its denoiser with guidance")
    return observer.num_steps
