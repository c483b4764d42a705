"""Inference-time memorization mitigation (Wen et al., ICLR 2024; methods.md §3.4, exact from
``local_sd_pipeline.py aug_prompt`` and ``inference_mem.py``).

The prompt's text-encoder output ``e*`` (``1 x L x D``) is optimized so that the text guidance
at the first step shrinks, then the pipeline generates from ``e*`` through its own
``prompt_embeds`` argument, from the same seeded ``x_T``::

    opt ← AdamW([e*], lr=0.05)                   # weight_decay 0.01, betas (0.9, 0.999)
    for j in range(10):
        L = ‖ε(x_T, T, e*) - ε(x_T, T, e_∅)‖_F     # all n generations jointly
        if L ≤ target: break                      # checked BEFORE the update
        g = ∂L/∂e*;  g[:, BOS] = 0                  # the BOS row gets no gradient ...
        opt.step()                                 # ... but AdamW's decay still shrinks it

``target`` is 3 in the reference README (SD v1.4, epsilon prediction): it is on the scale of
the model's own prediction, so other models need their own. The optional L2 budget
(``epsilon``, ``alpha``) is the reference's ``optim_epsilon``: when the mean per-position
distance ``mean_k ‖e*_k - e_k‖₂`` over the unfrozen positions exceeds ``epsilon``, the
objective becomes ``alpha·L + (1-alpha)·distance`` (the stopping check still reads ``L``).

BOS: CLIP's position-0 output is the same for every prompt (causal attention), which is why
the reference freezes it. memlens freezes position 0 when the pipeline's tokenizer puts a
special token there (CLIP); T5-style encoders (CogVideoX, Wan) have no BOS and nothing is
frozen; without a tokenizer position 0 is frozen, as in the reference.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch

from memlens.diffusion.bare import BareDiffusion
from memlens.diffusion.driver import default_call_value, denoisers_of, run_guided
from memlens.diffusion.observer import GuidanceObserver, GuidanceStep
from memlens.metrics._embedding_probe import (
    EMBEDDING_ARG,
    CallRecorder,
    GuidanceProbe,
    joint_norm,
    prompt_positions,
    row_norms,
)
from memlens.metrics.magnitude import MagnitudeAccumulator

# Reference defaults: inference_mem.py (lr, iterations) and the README command (target loss).
DEFAULT_LR = 0.05
DEFAULT_ITERATIONS = 10
DEFAULT_TARGET_LOSS = 3.0
DEFAULT_WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default, which the reference keeps

__all__ = [
    "DEFAULT_ITERATIONS",
    "DEFAULT_LR",
    "DEFAULT_TARGET_LOSS",
    "DEFAULT_WEIGHT_DECAY",
    "EmbeddingOptimization",
    "InferenceMitigation",
    "mitigate_prompt",
    "optimize_embedding",
]


@dataclass(frozen=True)
class EmbeddingOptimization:
    """What :func:`optimize_embedding` returns.

    ``losses`` holds ``L`` at every check, in order; ``iterations`` the optimizer updates made
    (``len(losses) - 1`` when it stopped on the target, ``len(losses)`` otherwise);
    ``final_loss`` is ``L`` at the returned embedding.
    """

    embedding: torch.Tensor
    losses: list[float]
    iterations: int
    converged: bool
    final_loss: float


def _real(name: str, value: object, *, positive: bool = False, unit: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0) or (unit and not 0 <= v <= 1):
        want = "in [0, 1]" if unit else "positive and finite" if positive else "finite"
        raise ValueError(f"{name} must be {want}; got {value!r}")
    return v


def _iterations(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"iterations must be an int >= 0; got {value!r}")
    return value


def _loop_options(
    lr: object,
    iterations: object,
    target_loss: object,
    weight_decay: object,
    epsilon: object,
    alpha: object,
) -> tuple[float, int, float | None, float, float | None, float]:
    """The loop's options, validated (shared by both entry points, so that
    :func:`mitigate_prompt` rejects them before any model call)."""
    decay = _real("weight_decay", weight_decay)
    if decay < 0:
        raise ValueError(f"weight_decay must be >= 0; got {weight_decay!r}")
    return (
        _real("lr", lr, positive=True),
        _iterations(iterations),
        None if target_loss is None else _real("target_loss", target_loss),
        decay,
        None if epsilon is None else _real("epsilon", epsilon),
        _real("alpha", alpha, unit=True),
    )


def optimize_embedding(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    embedding: torch.Tensor,
    *,
    lr: float = DEFAULT_LR,
    iterations: int = DEFAULT_ITERATIONS,
    target_loss: float | None = DEFAULT_TARGET_LOSS,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    frozen_positions: Sequence[int] = (0,),
    epsilon: float | None = None,
    alpha: float = 0.5,
) -> EmbeddingOptimization:
    """The §3.4 loop on any differentiable ``loss_fn(e) -> 0-d tensor`` of a ``(1, L, D)``
    embedding. ``target_loss=None`` never stops early (the reference without
    ``--optim_target_loss``). ``frozen_positions`` get a zero gradient (weight decay still
    applies to them, as in the reference)."""
    if not isinstance(embedding, torch.Tensor):
        raise TypeError(f"embedding must be a torch.Tensor; got {type(embedding).__name__}")
    if embedding.ndim != 3 or embedding.shape[0] != 1 or embedding.numel() == 0:
        raise ValueError(f"embedding must have shape (1, L, D); got {tuple(embedding.shape)}")
    if not embedding.is_floating_point():
        raise TypeError(f"embedding must be floating point; got {embedding.dtype}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable; got {type(loss_fn).__name__}")
    lr, iterations, target, weight_decay, eps, alpha = _loop_options(
        lr, iterations, target_loss, weight_decay, epsilon, alpha
    )
    length = embedding.shape[1]
    frozen = sorted(set(frozen_positions))
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < length for p in frozen):
        raise ValueError(
            f"frozen_positions must be ints in [0, {length}); got {frozen_positions!r}"
        )
    learnable = [p for p in range(length) if p not in set(frozen)]

    init = embedding.detach().clone()
    e = init.clone().requires_grad_(True)
    opt = torch.optim.AdamW([e], lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    converged = False
    for _ in range(iterations):
        with torch.enable_grad():
            loss = loss_fn(e)
            value = float(loss.detach())
            losses.append(value)
            if target is not None and value <= target:
                converged = True
                break
            objective = loss
            if eps is not None and learnable:
                dist = torch.linalg.vector_norm(e[:, learnable] - init[:, learnable], dim=-1)
                if float(dist.detach().mean()) > eps:
                    objective = alpha * loss + (1 - alpha) * dist.mean()
            (grad,) = torch.autograd.grad(objective, [e])
        grad[:, frozen] = 0
        e.grad = grad
        opt.step()
        opt.zero_grad(set_to_none=True)
    if converged:
        final = losses[-1]
    else:  # the loop ran out of updates: measure where it ended
        with torch.no_grad():
            final = float(loss_fn(e))
    return EmbeddingOptimization(
        embedding=e.detach(),
        losses=losses,
        iterations=len(losses) - 1 if converged else len(losses),
        converged=converged,
        final_loss=final,
    )


@dataclass(frozen=True)
class InferenceMitigation:
    """The result of :func:`mitigate_prompt`.

    ``loss_*`` are the joint first-step losses ``L`` (all generations); ``magnitude_*`` the
    first-step detection magnitudes (mean over generations of each one's ``‖Δ‖₂``, as
    ``detect_magnitude(steps="first")``); ``generation_magnitude_*`` the all-steps
    magnitudes seen while generating (None when not generated). ``output`` and
    ``original_output`` are the pipeline's images or video frames (``.images`` /
    ``.frames``; final latents for a bare denoiser).
    """

    prompt: str
    embedding: torch.Tensor
    initial_embedding: torch.Tensor
    losses: list[float]
    iterations: int
    converged: bool
    target_loss: float | None
    frozen_positions: list[int]
    loss_before: float
    loss_after: float
    magnitude_before: float
    magnitude_after: float
    generations: int
    seed: int
    generation_magnitude_before: float | None = None
    generation_magnitude_after: float | None = None
    output: Any = None
    original_output: Any = None
    content_before: float | None = None
    content_after: float | None = None

    def to_record(self) -> dict[str, Any]:
        """A flat ``mitigate`` record (no tensors, no media)."""
        skip = {"embedding", "initial_embedding", "output", "original_output"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def _bos_positions(model: Any, tokenizer: Any, prompt: str, length: int) -> list[int]:
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        return [0]  # the reference's rule: position 0 is frozen
    ids, special = prompt_positions(tok, prompt, length)
    return [0] if ids and 0 in special and len(ids) > 1 else []


def _media(out: Any) -> Any:
    for name in ("images", "frames"):
        if hasattr(out, name):
            return getattr(out, name)
    if isinstance(out, tuple) and out:
        return out[0]
    return out


def _substitute_embedding(embedding: torch.Tensor) -> Callable[..., Any]:
    """A forward pre-hook that swaps the conditional half of a batched ``[uncond; cond]``
    call for ``embedding`` (for a bare denoiser, which has no ``prompt_embeds`` argument)."""

    def hook(
        module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        ehs = kwargs[EMBEDDING_ARG]
        half = ehs.shape[0] // 2
        cond = embedding.to(ehs.dtype).expand(half, -1, -1)
        return args, {**kwargs, EMBEDDING_ARG: torch.cat([ehs[:half], cond])}

    return hook


def _generate(
    model: Any,
    prompt: str,
    embedding: torch.Tensor | None,
    *,
    generations: int,
    seed: int,
    guidance_scale: float,
    kwargs: Mapping[str, Any],
) -> tuple[Any, float]:
    """One pipeline run of ``generations`` samples from seed ``seed`` (the same ``x_T`` the
    optimization saw), from ``prompt`` or, when given, from ``embedding``; returns the output
    and the all-steps detection magnitude observed on the way."""
    g = torch.Generator().manual_seed(seed)
    call: dict[str, Any] = {
        "generator": [g] * generations,
        "guidance_scale": guidance_scale,
        **kwargs,
    }
    denoisers = denoisers_of(model)
    acc = MagnitudeAccumulator([prompt], generations, denoiser=denoisers[0])
    handles = []
    if embedding is None:
        call["prompt"] = [prompt] * generations
    elif "prompt_embeds" in inspect.signature(model.__call__).parameters:
        call["prompt_embeds"] = embedding.expand(generations, -1, -1).clone()
    elif isinstance(model, BareDiffusion):
        call["prompt"] = [prompt] * generations
        hook = _substitute_embedding(embedding)
        handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in denoisers]
    else:
        raise TypeError(
            f"model must accept prompt_embeds (a diffusers pipeline) or be a BareDiffusion; "
            f"got {type(model).__name__}"
        )
    try:
        with GuidanceObserver(denoisers, acc, rows=generations):
            out = model(**call)
    finally:
        for handle in handles:
            handle.remove()
    return _media(out), acc.results()[0].magnitude


def mitigate_prompt(
    model: Any,
    prompt: str,
    *,
    target_loss: float | None = DEFAULT_TARGET_LOSS,
    lr: float = DEFAULT_LR,
    iterations: int = DEFAULT_ITERATIONS,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    freeze_bos: bool = True,
    epsilon: float | None = None,
    alpha: float = 0.5,
    generations: int = 4,
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    output_type: str | None = None,
    generate: bool = True,
    generate_original: bool = True,
    content_score: Callable[[Any], float] | None = None,
    tokenizer: Any = None,
) -> InferenceMitigation:
    """Optimize ``prompt``'s embedding on ``model`` (§3.4) and generate from it.

    ``model`` is a diffusers pipeline with classifier-free guidance and a ``prompt_embeds``
    argument (image or video), or a :class:`~memlens.diffusion.BareDiffusion`. The loss is
    evaluated at the first step's ``x_T`` of ``generations`` samples seeded ``seed``; the
    final generation uses the same seed, so it starts from the same ``x_T``.
    ``generate=False`` stops after the optimization; ``generate_original`` also generates
    from the unmodified prompt (the "before" images). ``content_score(output) -> float``
    (e.g. a memlens content score of the frames against a reference index) is applied to
    both outputs. ``call_kwargs`` go to every pipeline call (``height``, ``num_frames``...);
    ``output_type`` only to the generations.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str; got {type(prompt).__name__}")
    for name, flag in (
        ("freeze_bos", freeze_bos),
        ("generate", generate),
        ("generate_original", generate_original),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool; got {flag!r}")
    if content_score is not None and not callable(content_score):
        raise TypeError(f"content_score must be callable; got {type(content_score).__name__}")
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 1:
        raise ValueError(f"generations must be a positive int; got {generations!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int; got {seed!r}")
    if output_type is not None and not isinstance(output_type, str):
        raise TypeError(f"output_type must be a str or None; got {output_type!r}")
    _loop_options(lr, iterations, target_loss, weight_decay, epsilon, alpha)
    recorder = CallRecorder(denoisers_of(model))  # (a model without a denoiser fails here)
    if guidance_scale is None:  # resolved once: the generations use the same scale
        guidance_scale = float(default_call_value(model, "guidance_scale"))

    probes: list[GuidanceProbe] = []

    def on_step(step: GuidanceStep) -> None:
        probes.append(GuidanceProbe.from_step(recorder.calls, step))

    with recorder:  # one denoiser call at x_T: the pipeline stops there
        run_guided(
            model,
            [prompt],
            on_step,
            seeds=[seed],
            generations=generations,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            stop_after=1,
            call_kwargs=call_kwargs,
        )
    probe = probes[0]
    length = probe.initial.shape[1]
    frozen = _bos_positions(model, tokenizer, prompt, length) if freeze_bos else []

    def loss_fn(e: torch.Tensor) -> torch.Tensor:
        return joint_norm(*probe(e))

    with torch.inference_mode(False):  # autograd, even for a caller in inference mode
        opt = optimize_embedding(
            loss_fn,
            probe.initial,
            lr=lr,
            iterations=iterations,
            target_loss=target_loss,
            weight_decay=weight_decay,
            frozen_positions=frozen,
            epsilon=epsilon,
            alpha=alpha,
        )
    with torch.no_grad():
        before = probe(probe.initial)
        after = probe(opt.embedding)
    fields: dict[str, Any] = {}
    if generate:
        kwargs = dict(call_kwargs or {})
        if num_inference_steps is not None:
            kwargs["num_inference_steps"] = num_inference_steps
        if output_type is not None:
            kwargs["output_type"] = output_type
        common: dict[str, Any] = {
            "generations": generations,
            "seed": seed,
            "guidance_scale": guidance_scale,
            "kwargs": kwargs,
        }
        out, mag = _generate(model, prompt, opt.embedding, **common)
        fields.update(output=out, generation_magnitude_after=mag)
        if content_score is not None:
            fields["content_after"] = float(content_score(out))
        if generate_original:
            orig, mag0 = _generate(model, prompt, None, **common)
            fields.update(original_output=orig, generation_magnitude_before=mag0)
            if content_score is not None:
                fields["content_before"] = float(content_score(orig))
    return InferenceMitigation(
        prompt=prompt,
        embedding=opt.embedding,
        initial_embedding=probe.initial,
        losses=opt.losses,
        iterations=opt.iterations,
        converged=opt.converged,
        target_loss=target_loss,
        frozen_positions=frozen,
        loss_before=float(joint_norm(*before)),
        loss_after=opt.final_loss,
        magnitude_before=float(row_norms(*before).mean()),
        magnitude_after=float(row_norms(*after).mean()),
        generations=generations,
        seed=seed,
        **fields,
    )
