"""Token significance: which prompt tokens drive the text guidance (Wen et al., ICLR 2024;
methods.md §3.3, exact from ``local_sd_pipeline.py get_text_cond_grad``).

At every observed step ``t`` of the ordinary CFG sampling trajectory, with all ``n``
generations of the prompt in one batch::

    L_t(e) = ‖ ε(x_t, t, e) - ε(x_t, t, e_∅) ‖_F        # Frobenius norm over all n samples jointly
    SS_k   = (1/|S|) Σ_{t∈S} ‖ ∂L_t / ∂e_k ‖₂            # e_k: text-encoder OUTPUT at position k

``e`` is the prompt's embedding as the denoiser receives it (after the text encoder), one
tensor shared by all generations (and frames), so ``∂L_t/∂e`` sums over them; the null
prediction is kept out of the gradient. The reference code takes gradient norms of its
``[2n, L, D]`` embedding batch and averages them over the batch, which divides every score by
``2n``: ``reference_scale=True`` reproduces those numbers (rankings are the same).

Trajectory: methods.md §3.3 specifies the ordinary CFG trajectory (the default,
``trajectory="cfg"``: memlens only observes the pipeline). The reference code, at each of its
target steps, feeds ``[e_p; e_∅]`` where the pipeline feeds ``[e_∅; e_p]`` and then steps the
latents with ``ε_p + g·(ε_∅ - ε_p)``, i.e. guidance *away from* the prompt, so with more than
one target step its later ``x_t`` differ. ``trajectory="reference"`` reproduces that (batched
CFG layouts only); the first step is the same either way.

Defaults follow the reference notebook (``examples/token_wise_significance.ipynb``): all
steps, n = 4, seed 0. Scores are reported for the prompt's own tokens (BOS, EOS and padding
excluded), as the notebook plots positions ``1 .. len(tokens)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from memlens.diffusion.driver import denoisers_of, run_guided
from memlens.diffusion.observer import GuidanceStep, output_tensor, timestep_value
from memlens.metrics._embedding_probe import CallRecorder, GuidanceProbe, joint_norm
from memlens.metrics._embedding_probe import prompt_positions as _prompt_positions

if TYPE_CHECKING:
    from typing_extensions import Self

StepSelection = Literal["first", "all"] | int | Sequence[int]
Trajectory = Literal["cfg", "reference"]

__all__ = ["StepSelection", "TokenSignificance", "Trajectory", "token_significance"]


@dataclass(frozen=True)
class TokenSignificance:
    """One prompt's token significances.

    ``tokens``/``token_ids``/``positions``/``scores`` list the prompt's own tokens (special
    tokens and padding excluded), in prompt order; they are empty when no tokenizer is known
    (a bare denoiser with an ``encode`` callable). ``position_scores`` holds ``SS_k`` at every
    embedding position, special ones included. ``losses`` is ``L_t`` per observed step.
    """

    prompt: str
    tokens: list[str]
    token_ids: list[int]
    positions: list[int]
    scores: list[float]
    position_scores: list[float]
    steps: list[int]
    timesteps: list[float]
    losses: list[float]
    generations: int

    def top(self, k: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` most significant tokens (all by default), most significant first."""
        ranked = sorted(zip(self.tokens, self.scores, strict=True), key=lambda p: -p[1])
        return ranked if k is None else ranked[:k]

    def to_record(self) -> dict[str, Any]:
        """A flat ``explain`` record (DESIGN.md §11)."""
        return {
            "prompt": self.prompt,
            "tokens": list(self.tokens),
            "token_ids": list(self.token_ids),
            "positions": list(self.positions),
            "token_significance": list(self.scores),
            "position_significance": list(self.position_scores),
            "steps": list(self.steps),
            "timesteps": list(self.timesteps),
            "loss_steps": list(self.losses),
            "generations": self.generations,
        }


def _step_plan(steps: StepSelection) -> tuple[set[int] | None, int | None]:
    """(the step indices to use or None for all, how many leading steps to run or None)."""
    if steps == "first":
        return {0}, 1
    if steps == "all":
        return None, None
    if isinstance(steps, int) and not isinstance(steps, bool):
        if steps < 1:
            raise ValueError(
                f"steps must be 'first', 'all', a positive int or indices; got {steps}"
            )
        return set(range(steps)), steps
    if isinstance(steps, Sequence) and not isinstance(steps, str):
        idx = list(steps)
        if not idx or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in idx
        ):
            raise ValueError(f"steps indices must be non-empty ints >= 0; got {steps!r}")
        return set(idx), max(idx) + 1
    raise ValueError(f"steps must be 'first', 'all', a positive int or indices; got {steps!r}")


class _ReferenceTrajectory:
    """Forward hooks that swap the halves of a batched ``[uncond; cond]`` prediction, in place,
    at the chosen steps: the pipeline then steps with ``ε_p + g·(ε_∅ - ε_p)``, as the
    reference's ``get_text_cond_grad`` does at its target steps."""

    def __init__(self, denoisers: Sequence[torch.nn.Module], rows: int, wanted: set[int] | None):
        self.denoisers, self.rows, self.wanted = list(denoisers), rows, wanted
        self.step = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Self:
        # Prepended: the pipeline and the driver's observer both see the swapped prediction
        # (the observer's cond/uncond are then exchanged, which no norm here depends on).
        self._handles = [m.register_forward_hook(self._hook, prepend=True) for m in self.denoisers]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], out: Any) -> None:
        pred = output_tensor(out)
        if pred.shape[0] != 2 * self.rows:
            raise ValueError(
                "trajectory='reference' reproduces a quirk of batched [uncond; cond] guidance; "
                f"{type(module).__name__} was called on {pred.shape[0]} rows, not "
                f"{2 * self.rows} (sequential guidance): use trajectory='cfg'"
            )
        if self.wanted is None or self.step in self.wanted:
            uncond, cond = pred.chunk(2)
            pred.copy_(torch.cat([cond, uncond]))
        self.step += 1


def token_significance(
    model: Any,
    prompt: str,
    *,
    steps: StepSelection = "all",
    generations: int = 4,
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    reference_scale: bool = False,
    trajectory: Trajectory = "cfg",
) -> TokenSignificance:
    """Per-token significance of ``prompt`` on ``model`` (a diffusers pipeline with
    classifier-free guidance, image or video, or a :class:`~memlens.diffusion.BareDiffusion`).

    ``steps``: ``"all"`` (default), ``"first"`` (one step at ``x_T``, the loop stops there), an
    int N (the first N) or explicit step indices. The ``generations`` starting noises come from
    one generator seeded ``seed`` (as :func:`~memlens.metrics.magnitude.detect_magnitude` draws
    a first prompt's). ``num_inference_steps``, ``guidance_scale`` default to the pipeline's;
    ``call_kwargs`` go to the pipeline call (``height``, ``num_frames``, ...). ``tokenizer``
    defaults to ``model.tokenizer``. ``reference_scale`` and ``trajectory="reference"``
    reproduce the reference code's numbers (module docstring). Each observed step costs one extra forward and backward
    pass of the denoiser on the step's batch.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str; got {type(prompt).__name__}")
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 1:
        raise ValueError(f"generations must be a positive int; got {generations!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int; got {seed!r}")
    if not isinstance(reference_scale, bool):
        raise TypeError(f"reference_scale must be a bool; got {reference_scale!r}")
    if trajectory not in ("cfg", "reference"):
        raise ValueError(f"trajectory must be 'cfg' or 'reference'; got {trajectory!r}")
    wanted, stop_after = _step_plan(steps)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)

    grad_norms: list[torch.Tensor] = []  # per used step: (L,)
    losses: list[torch.Tensor] = []
    used: list[int] = []
    timesteps: list[torch.Tensor | float] = []
    denoisers = denoisers_of(model)
    recorder = CallRecorder(denoisers)
    swap = (
        _ReferenceTrajectory(denoisers, generations, wanted) if trajectory == "reference" else None
    )

    def on_step(step: GuidanceStep) -> None:
        if wanted is not None and step.index not in wanted:
            return
        probe = GuidanceProbe.from_step(recorder.calls, step)
        # The pipeline samples under no_grad (or inference mode): this step's gradient is
        # taken outside both.
        with torch.inference_mode(False), torch.enable_grad():
            e = probe.initial.clone().requires_grad_(True)
            loss = joint_norm(*probe(e))
            (grad,) = torch.autograd.grad(loss, [e])
        grad_norms.append(torch.linalg.vector_norm(grad[0].to(loss.dtype), dim=-1))
        losses.append(loss.detach())
        used.append(step.index)
        timesteps.append(step.raw_timestep)

    with recorder, swap or contextlib.nullcontext():
        ran = run_guided(
            model,
            [prompt],
            on_step,
            seeds=[seed],
            generations=generations,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            stop_after=stop_after,
            call_kwargs=call_kwargs,
        )
    if wanted is not None and len(used) < len(wanted):
        missing = sorted(wanted - set(used))
        raise ValueError(f"steps asks for step indices {missing}; the sampler ran only {ran}")

    per_position = torch.stack(grad_norms).mean(dim=0).cpu()
    if reference_scale:
        per_position = per_position / (2 * generations)
    position_scores = [float(v) for v in per_position]
    ids: list[int] = []
    positions: list[int] = []
    if tokenizer is not None:
        ids, special = _prompt_positions(tokenizer, prompt, len(position_scores))
        positions = sorted(set(range(len(ids))) - set(special))
    return TokenSignificance(
        prompt=prompt,
        tokens=[str(tokenizer.decode([ids[i]])) for i in positions],
        token_ids=[ids[i] for i in positions],
        positions=positions,
        scores=[position_scores[i] for i in positions],
        position_scores=position_scores,
        steps=used,
        timesteps=[timestep_value(t) for t in timesteps],
        losses=[float(v) for v in losses],
        generations=generations,
    )
