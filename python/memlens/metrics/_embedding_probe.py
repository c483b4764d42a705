"""The guidance difference of one observed step as a differentiable function of the prompt
embedding: the shared machinery of token significance (methods.md §3.3) and inference-time
mitigation (§3.4).

A pipeline runs its own sampling loop under ``torch.no_grad``. :class:`CallRecorder` keeps the
denoiser's last calls (their arguments, untouched); when the driver reports a complete CFG step,
:meth:`GuidanceProbe.from_step` turns them into a probe that re-evaluates the *conditional*
prediction on the same ``x_t``, timestep and every other argument the pipeline passed (rotary
embeddings, ``timestep_cond``, ...), with ``encoder_hidden_states`` replaced by a caller's
embedding. Nothing of the pipeline's code is copied, and the pipeline's own outputs are never
changed, so sampling continues on its ordinary CFG trajectory.

Both diffusers layouts are handled: ``"batched"`` (one call on ``[uncond; cond]`` rows: the
cond half is replaced; the uncond half keeps the pipeline's null embedding) and
``"sequential"`` (the cond call is re-run; the uncond prediction is the one observed). The
unconditional prediction never depends on the probed embedding, as in Wen et al.'s code where
the null row is kept out of the gradient.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch

from memlens.diffusion.observer import GuidanceStep, forward_signature, output_tensor

if TYPE_CHECKING:
    from typing_extensions import Self

EMBEDDING_ARG = "encoder_hidden_states"  # every diffusers denoiser's text-embedding argument


@dataclass(frozen=True)
class DenoiserCall:
    """One denoiser call as the pipeline made it (arguments by reference, not copied)."""

    module: torch.nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    rows: int  # the batch size of its output


class CallRecorder:
    """Forward hooks that remember the denoisers' last two calls (enough for one CFG step in
    either layout). The hooks are prepended, so a call is recorded before the driver's
    :class:`~memlens.diffusion.GuidanceObserver` (registered later) reports its step."""

    def __init__(self, denoisers: Sequence[torch.nn.Module]) -> None:
        self.denoisers = list(denoisers)
        self.calls: collections.deque[DenoiserCall] = collections.deque(maxlen=2)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Self:
        self._handles = [
            m.register_forward_hook(self._hook, with_kwargs=True, prepend=True)
            for m in self.denoisers
        ]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        rows = output_tensor(out).shape[0]
        self.calls.append(DenoiserCall(module, tuple(args), dict(kwargs), rows))


def _embedding_position(call: DenoiserCall) -> int | None:
    """Where the call passed ``encoder_hidden_states``: None for a keyword, else its
    positional index."""
    if EMBEDDING_ARG in call.kwargs:
        return None
    names = list(forward_signature(call.module).parameters)[1:]  # without self
    if EMBEDDING_ARG in names and names.index(EMBEDDING_ARG) < len(call.args):
        return names.index(EMBEDDING_ARG)
    raise TypeError(
        f"{type(call.module).__name__} was called without {EMBEDDING_ARG!r}: token "
        "significance and prompt-embedding optimization need a text-conditioned denoiser"
    )


def embedding_of(call: DenoiserCall) -> torch.Tensor:
    pos = _embedding_position(call)
    value = call.kwargs[EMBEDDING_ARG] if pos is None else call.args[pos]
    if not isinstance(value, torch.Tensor) or value.ndim != 3:
        shape = getattr(value, "shape", type(value).__name__)
        raise TypeError(f"{EMBEDDING_ARG} must be a (rows, L, D) tensor; got {shape}")
    return value


def _usable(value: Any) -> Any:
    """Inference-mode tensors cannot enter autograd; plain copies of them can (made outside
    inference mode, or they would be inference tensors again)."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_usable(v) for v in value)
    if isinstance(value, dict):
        return {k: _usable(v) for k, v in value.items()}
    return value


def rerun(call: DenoiserCall, embedding: torch.Tensor) -> torch.Tensor:
    """The call's prediction with ``encoder_hidden_states`` replaced (gradients as the caller
    enables them: the pipeline's own loop runs under ``no_grad``).

    ``module.forward`` is called rather than ``module``: the forward hooks (the driver's
    observer, the recorder) must not see this extra call as a sampling step.
    """
    pos = _embedding_position(call)
    args, kwargs = list(call.args), dict(call.kwargs)
    if pos is None:
        kwargs[EMBEDDING_ARG] = embedding
    else:
        args[pos] = embedding
    grad = torch.is_grad_enabled()
    # A pipeline (or its caller) may run in inference mode; autograd needs it off. Leaving it
    # turns grad mode on, so the caller's grad mode is restored inside.
    with torch.inference_mode(False), torch.set_grad_enabled(grad):
        out = call.module.forward(*_usable(tuple(args)), **_usable(kwargs))
    return output_tensor(out)


@dataclass
class GuidanceProbe:
    """``probe(e) -> (cond, uncond)`` at one step: ``cond`` depends on the ``(1, L, D)``
    embedding ``e`` (shared by every row: generations, and frames where a pipeline repeats
    the embedding per frame), ``uncond`` is detached."""

    call: DenoiserCall
    layout: str  # "batched" or "sequential"
    initial: torch.Tensor  # the pipeline's conditional embedding, (1, L, D), detached
    cond_rows: int  # embedding rows of the conditional half
    uncond: torch.Tensor | None  # the observed unconditional prediction (sequential only)
    index: int
    raw_timestep: torch.Tensor | float

    @classmethod
    def from_step(cls, calls: Sequence[DenoiserCall], step: GuidanceStep) -> GuidanceProbe:
        if not calls:
            raise RuntimeError("no denoiser call was recorded for this step")
        rows = step.cond.shape[0]
        last = calls[-1]
        if last.rows == 2 * rows:
            call, layout, uncond = last, "batched", None
            emb = embedding_of(call)
            if emb.shape[0] % 2:
                raise ValueError(
                    f"a batched guidance call needs an even number of {EMBEDDING_ARG} rows "
                    f"([uncond; cond]); got {emb.shape[0]}"
                )
            cond_emb = emb[emb.shape[0] // 2 :]
        elif last.rows == rows and len(calls) == 2 and calls[0].rows == rows:
            # The observer reports a sequential step after its second (unconditional) call.
            call, layout = calls[0], "sequential"
            uncond = step.uncond.detach().clone()  # the step's tensors are views of the hook's
            cond_emb = embedding_of(call)
        else:
            raise ValueError(
                f"cannot match the step's {rows} rows to the recorded denoiser calls "
                f"({[c.rows for c in calls]} rows)"
            )
        first = cond_emb[:1].detach()
        # One embedding is probed for all rows: they must all be the prompt's (not, e.g., a
        # per-frame prompt schedule).
        if not torch.equal(cond_emb.detach(), first.expand_as(cond_emb)):
            raise ValueError(
                "the conditional rows of encoder_hidden_states differ; the probe needs one "
                "prompt embedding shared by every generation and frame"
            )
        return cls(
            call=call,
            layout=layout,
            initial=first.clone(),
            cond_rows=cond_emb.shape[0],
            uncond=uncond,
            index=step.index,
            raw_timestep=step.raw_timestep,
        )

    def __call__(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if embedding.shape != self.initial.shape:
            raise ValueError(
                f"embedding must have shape {tuple(self.initial.shape)}; "
                f"got {tuple(embedding.shape)}"
            )
        e = embedding.to(self.initial.dtype).expand(self.cond_rows, -1, -1)
        if self.layout == "sequential":
            assert self.uncond is not None
            return rerun(self.call, e), self.uncond
        null = embedding_of(self.call)[: self.cond_rows].detach()
        uncond, cond = rerun(self.call, torch.cat([null, e])).chunk(2)
        return cond, uncond.detach()


def joint_norm(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """``‖cond - uncond‖_F`` over all rows jointly (Wen et al.'s loss), at least float32."""
    dtype = torch.float64 if cond.dtype == torch.float64 else torch.float32
    return torch.linalg.vector_norm((cond.to(dtype) - uncond.to(dtype)).flatten())


def row_norms(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """Per-row ``‖cond_j - uncond_j‖₂`` (the detection magnitude's m_j), at least float32."""
    dtype = torch.float64 if cond.dtype == torch.float64 else torch.float32
    return torch.linalg.vector_norm((cond.to(dtype) - uncond.to(dtype)).flatten(1), dim=1)


def prompt_positions(tokenizer: Any, prompt: str, length: int) -> tuple[list[int], list[int]]:
    """The prompt's token ids as the pipeline's tokenizer encodes them into ``length``
    positions (truncated, unpadded), and the positions of the special tokens among them
    (BOS, EOS: added by the tokenizer's template, not the user's text)."""
    enc = tokenizer(
        prompt,
        truncation=True,
        max_length=length,
        return_special_tokens_mask=True,
        add_special_tokens=True,
    )
    ids = [int(i) for i in enc["input_ids"]]
    special = [i for i, m in enumerate(enc["special_tokens_mask"]) if m]
    return ids, special
