"""Noise-magnitude detection of memorized prompts (methods.md §3.1) and, for video models,
its content/motion split (methods.md §1.6, [RECON]).

Per prompt ``p``, generation ``j`` and observed step ``t``::

    Δ_{j,t} = ε(x_t, p) - ε(x_t, ∅)                # the denoiser's guidance difference
    m_{j,t} = ‖Δ_{j,t}‖₂                           # over the whole latent of one sample
    d(p)    = (1/n) Σ_j (1/|S|) Σ_{t∈S} m_{j,t}

and for a video latent with F frames (frame axis f)::

    content m^c_{j,t} = ‖mean_f Δ_{j,t}‖₂           # the frame-shared part
    motion  m^m_{j,t} = ‖Δ_{j,t} - mean_f Δ_{j,t}‖₂ # the frame-varying remainder

so that ``m² = F·(m^c)² + (m^m)²`` at every step. ε is the denoiser's output in its own
parametrization: epsilon for Stable Diffusion-style models, v for CogVideoX (where
Δε = sqrt(ᾱ_t)·Δv, one factor per step), flow velocity for Wan. The norm is not normalized by size (as in
Wen et al.) and is taken in float32 at least (float64 inputs stay float64).

Defaults follow seed 002: the first step (the paper's headline "first generation step" mode,
one batched call at ``x_T``), 4 generations per prompt (``detect_mem.py``), per-prompt seed
``seed + i`` and the pipeline's own step count and guidance scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from memlens.diffusion.driver import denoiser_of, frame_axis_of, run_guided
from memlens.diffusion.observer import GuidanceStep, timestep_value

StepSet = Literal["first", "all"] | int


@dataclass(frozen=True)
class MagnitudeResult:
    """One prompt's detection scores; ``*_steps`` hold the per-step means over generations."""

    prompt: str
    magnitude: float
    magnitude_steps: list[float]
    timesteps: list[float]
    generations: int
    content_magnitude: float | None = None
    motion_magnitude: float | None = None
    content_steps: list[float] | None = None
    motion_steps: list[float] | None = None

    def to_record(self) -> dict[str, Any]:
        """A flat ``detect`` record (DESIGN.md §11); video keys only for video models."""
        rec = asdict(self)
        if self.content_magnitude is None:
            for key in ("content_magnitude", "motion_magnitude", "content_steps", "motion_steps"):
                rec.pop(key)
        return rec


def guidance_norms(
    cond: torch.Tensor, uncond: torch.Tensor, *, frame_axis: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-row ``(m, content, motion)`` of ``Δ = cond - uncond`` (batched, row axis 0).

    ``frame_axis`` indexes the batched tensor (2 for ``(B, C, F, H, W)``); None for images
    gives ``(m, None, None)``.
    """
    if not isinstance(cond, torch.Tensor) or not isinstance(uncond, torch.Tensor):
        raise TypeError("cond and uncond must be torch tensors")
    if cond.shape != uncond.shape:
        raise ValueError(
            f"cond and uncond must have the same shape; got {tuple(cond.shape)} "
            f"and {tuple(uncond.shape)}"
        )
    if cond.ndim < 2:
        raise ValueError(f"cond must have a batch axis and a latent; got shape {tuple(cond.shape)}")
    if frame_axis is not None and not 1 <= frame_axis < cond.ndim:
        raise ValueError(f"frame_axis must be in [1, {cond.ndim - 1}] or None; got {frame_axis}")
    # Half-precision norms over ~10⁴-10⁶ values lose digits; float64 mocks keep theirs.
    dtype = torch.float64 if cond.dtype == torch.float64 else torch.float32
    delta = cond.to(dtype) - uncond.to(dtype)
    m = torch.linalg.vector_norm(delta.flatten(1), dim=1)
    if frame_axis is None:
        return m, None, None
    shared = delta.mean(dim=frame_axis, keepdim=True)
    content = torch.linalg.vector_norm(shared.flatten(1), dim=1)
    motion = torch.linalg.vector_norm((delta - shared).flatten(1), dim=1)
    return m, content, motion


def steps_to_observe(steps: StepSet) -> int | None:
    """How many leading steps ``steps`` needs (None: all of them)."""
    if steps == "first":
        return 1
    if steps == "all":
        return None
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be 'first', 'all' or a positive int; got {steps!r}")
    return steps


class MagnitudeAccumulator:
    """Collects per-step, per-row norms from :class:`~memlens.diffusion.GuidanceStep` calls
    and turns them into one :class:`MagnitudeResult` per prompt."""

    def __init__(
        self,
        prompts: Sequence[str],
        generations: int,
        *,
        frame_axis: int | Literal["auto"] | None = "auto",
        denoiser: torch.nn.Module | None = None,
    ) -> None:
        self.prompts = list(prompts)
        self.generations = generations
        self.frame_axis = frame_axis
        self.denoiser = denoiser
        self._timesteps: list[torch.Tensor | float] = []
        self._m: list[torch.Tensor] = []  # per step: (rows,)
        self._c: list[torch.Tensor] = []
        self._d: list[torch.Tensor] = []

    def __call__(self, step: GuidanceStep) -> None:
        cond, uncond = step.cond, step.uncond
        rows = len(self.prompts) * self.generations
        if cond.shape[0] != rows:
            raise ValueError(f"expected {rows} rows (prompts x generations); got {cond.shape[0]}")
        if self.frame_axis == "auto":
            module = self.denoiser if self.denoiser is not None else torch.nn.Identity()
            self.frame_axis = frame_axis_of(module, cond.ndim)
        m, c, d = guidance_norms(cond, uncond, frame_axis=self.frame_axis)
        # Kept on the device until results(): a .cpu() or float() per step would make the
        # host wait for the GPU at every denoising step.
        self._timesteps.append(step.raw_timestep)
        self._m.append(m)
        if c is not None and d is not None:
            self._c.append(c)
            self._d.append(d)

    def results(self) -> list[MagnitudeResult]:
        if not self._m:
            raise RuntimeError("no guidance step was observed")
        shape = (len(self._m), len(self.prompts), self.generations)
        # (steps, prompts, generations) -> per prompt per step: mean over generations.
        per_step = torch.stack(self._m).cpu().reshape(shape).mean(dim=2)
        video = bool(self._c)
        c_steps = torch.stack(self._c).cpu().reshape(shape).mean(dim=2) if video else None
        d_steps = torch.stack(self._d).cpu().reshape(shape).mean(dim=2) if video else None
        timesteps = [timestep_value(t) for t in self._timesteps]
        out = []
        for i, prompt in enumerate(self.prompts):
            ms = per_step[:, i].tolist()
            cs = c_steps[:, i].tolist() if c_steps is not None else None
            ds = d_steps[:, i].tolist() if d_steps is not None else None
            out.append(
                MagnitudeResult(
                    prompt=prompt,
                    magnitude=_mean(ms),
                    magnitude_steps=ms,
                    timesteps=list(timesteps),
                    generations=self.generations,
                    content_magnitude=_mean(cs) if cs is not None else None,
                    motion_magnitude=_mean(ds) if ds is not None else None,
                    content_steps=cs,
                    motion_steps=ds,
                )
            )
        return out


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _batches(items: Sequence[str], size: int) -> Iterable[tuple[int, Sequence[str]]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def detect_magnitude(
    model: Any,
    prompts: Sequence[str],
    *,
    steps: StepSet = "first",
    generations: int = 4,
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 8,
    frame_axis: int | Literal["auto"] | None = "auto",
    call_kwargs: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[MagnitudeResult]:
    """Noise-magnitude scores of ``prompts`` on ``model`` (a diffusers pipeline with
    classifier-free guidance, or a :class:`~memlens.diffusion.BareDiffusion`).

    ``steps``: ``"first"`` (one batched denoiser call at ``x_T``, no loop, no decode), an int
    N (the first N steps) or ``"all"``. Prompt ``i`` (position in ``prompts``) samples its
    ``generations`` starting noises from seed ``seed + i``, so a score does not depend on
    ``batch_size`` (prompts per pipeline call). ``frame_axis`` overrides the video frame axis
    of the batched denoiser output (``"auto"``: from the denoiser class). ``progress`` is
    called with the number of prompts finished after each batch.
    """
    stop_after = steps_to_observe(steps)
    for name, value in (("generations", generations), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int; got {seed!r}")
    if frame_axis != "auto" and frame_axis is not None and not isinstance(frame_axis, int):
        raise ValueError(f"frame_axis must be 'auto', None or an int; got {frame_axis!r}")
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a sequence of str")
    if not prompts:
        return []
    denoiser = denoiser_of(model)
    results: list[MagnitudeResult] = []
    for start, batch in _batches(list(prompts), batch_size):
        acc = MagnitudeAccumulator(batch, generations, frame_axis=frame_axis, denoiser=denoiser)
        run_guided(
            model,
            batch,
            acc,
            seeds=[seed + start + i for i in range(len(batch))],
            generations=generations,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            stop_after=stop_after,
            call_kwargs=call_kwargs,
        )
        batch_results = acc.results()
        if stop_after is not None and len(batch_results[0].magnitude_steps) < stop_after:
            raise ValueError(
                f"steps={steps!r} asks for {stop_after} steps; the sampler ran only "
                f"{len(batch_results[0].magnitude_steps)}"
            )
        results += batch_results
        if progress is not None:
            progress(start + len(batch))
    return results
