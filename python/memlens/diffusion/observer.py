"""Capture a denoiser's conditional and unconditional predictions with forward hooks.

A pipeline with classifier-free guidance evaluates its denoiser on the same ``x_t`` twice per
step: with the prompt embedding and with the null ("") embedding. diffusers does it in one of
two layouts, and this module recognizes both without knowing the pipeline's code:

- ``"batched"``: one call on ``2B`` rows, ``[uncond; cond]`` (``torch.cat([negative, prompt])``;
  StableDiffusion, TextToVideoSD, AnimateDiff, CogVideoX, and memlens' own bare sampler);
- ``"sequential"``: two calls on ``B`` rows each, on the same ``x_t`` and timestep, the
  conditional one first (Wan, and the "true CFG" transformer pipelines).

The hook only reads the call's inputs and output: it never changes them, draws no random
numbers and keeps no autograd graph, so sampling under observation is bit-for-bit identical.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from typing_extensions import Self

Layout = Literal["auto", "batched", "sequential"]
LAYOUTS: tuple[str, ...] = ("auto", "batched", "sequential")


@dataclass(frozen=True)
class GuidanceStep:
    """One denoising step seen through the hooks.

    ``cond`` and ``uncond`` are the denoiser's outputs (rows = prompts x generations, in the
    order of the batch) in the denoiser's own parametrization (epsilon for Stable Diffusion,
    v for CogVideoX, flow velocity for Wan); ``latents`` is the ``x_t`` both were computed at.
    Outside :attr:`GuidanceObserver.steps` they are views valid only during the callback.
    ``raw_timestep`` is the timestep argument as passed (often a device tensor: reading it as
    a float, :attr:`timestep`, waits for the device, so per-step code should keep it raw).
    """

    index: int
    raw_timestep: torch.Tensor | float
    cond: torch.Tensor
    uncond: torch.Tensor
    latents: torch.Tensor

    @property
    def timestep(self) -> float:
        return timestep_value(self.raw_timestep)


class StopSampling(Exception):
    """Raised from the hook once ``stop_after`` steps were seen; the driver catches it, so the
    pipeline's remaining steps and its VAE decode never run."""


@dataclass
class _Call:
    latents: torch.Tensor
    timestep: torch.Tensor | float
    output: torch.Tensor


def timestep_value(t: torch.Tensor | float) -> float:
    """A timestep argument (a number, or a tensor whose entries all hold the step's t) as a
    float; NaN for an empty tensor."""
    if isinstance(t, torch.Tensor):
        return float(t.detach().flatten()[0]) if t.numel() else float("nan")
    return float(t)


def _same(a: torch.Tensor | float, b: torch.Tensor | float) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return timestep_value(a) == timestep_value(b)


def forward_signature(module: torch.nn.Module) -> inspect.Signature:
    """The signature of ``module``'s own ``forward`` (``self`` first).

    The latent input is its first parameter after ``self`` ("sample" for UNets,
    "hidden_states" for transformers). The class's forward is read, not the instance's:
    offloading hooks replace the latter with a ``(*args, **kwargs)`` wrapper; a
    ``torch.compile`` wrapper is looked through to the module it compiled.
    """
    inner = getattr(module, "_orig_mod", module)
    return inspect.signature(type(inner).forward)


def output_tensor(out: object) -> torch.Tensor:
    """The prediction inside a denoiser's return value (``.sample``, a tuple, or a tensor)."""
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, torch.Tensor):
        return out
    raise TypeError(f"cannot find the prediction tensor in a {type(out).__name__} output")


class GuidanceObserver:
    """Context manager that hooks ``denoiser`` and reports every CFG step.

    ``denoiser`` may be a list of modules that take turns (Wan 2.2's high- and low-noise
    transformers); their calls form one stream of steps.

    ``on_step`` receives each :class:`GuidanceStep` as soon as both halves are known. With
    ``keep=True`` the steps are also cloned into :attr:`steps`. ``rows`` (prompts x
    generations of the batch, when known) lets the layout be decided on the spot; without it,
    ``"auto"`` decides by looking at the next call (same ``x_t`` and timestep: sequential).
    ``stop_after=N`` raises :class:`StopSampling` right after the N-th step's last call.
    """

    def __init__(
        self,
        denoiser: torch.nn.Module | Sequence[torch.nn.Module],
        on_step: Callable[[GuidanceStep], None] | None = None,
        *,
        rows: int | None = None,
        layout: Layout = "auto",
        stop_after: int | None = None,
        keep: bool = False,
    ) -> None:
        modules = [denoiser] if isinstance(denoiser, torch.nn.Module) else list(denoiser)
        if not modules or not all(isinstance(m, torch.nn.Module) for m in modules):
            raise TypeError(f"denoiser must be a torch.nn.Module; got {type(denoiser).__name__}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
            raise ValueError(f"rows must be a positive int or None; got {rows!r}")
        if stop_after is not None and (
            isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1
        ):
            raise ValueError(f"stop_after must be a positive int or None; got {stop_after!r}")
        self.denoisers = modules
        self.on_step = on_step
        self.rows = rows
        self.layout = layout
        self.stop_after = stop_after
        self.keep = keep
        self.steps: list[GuidanceStep] = []
        self.num_steps = 0
        self._pending: _Call | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._signatures = {id(m): forward_signature(m) for m in modules}

    # -- context manager ---------------------------------------------------------------
    def __enter__(self) -> Self:
        if self._handles:
            raise RuntimeError("this GuidanceObserver is already attached")
        self._handles = [
            m.register_forward_hook(self._hook, with_kwargs=True) for m in self.denoisers
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
        pending, self._pending = self._pending, None
        # A lone last call is a batched step; flush it unless the run already failed.
        if pending is not None and (exc_type is None or exc_type is StopSampling):
            self._emit_batched(pending, stop=False)

    # -- hook --------------------------------------------------------------------------
    def _hook(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        signature = self._signatures[id(module)]
        bound = signature.bind_partial(module, *args, **kwargs).arguments
        latent_name = list(signature.parameters)[1]
        latents = bound.get(latent_name)
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"denoiser was called without a tensor {latent_name!r}")
        t = bound.get("timestep")
        if not isinstance(t, (torch.Tensor, int, float)):
            raise TypeError(f"denoiser timestep must be a tensor or a number; got {t!r}")
        call = _Call(latents.detach(), t, output_tensor(out).detach())
        layout = self._layout_of(call)
        if layout == "sequential":
            self._sequential(call)
            return
        if self._pending is not None:  # auto layout: the previous lone call was a batched step
            pending, self._pending = self._pending, None
            self._emit_batched(pending, stop=True)
        if layout == "batched":
            self._emit_batched(call, stop=True)
        else:
            self._pending = call

    def _layout_of(self, call: _Call) -> str:
        """``"batched"``, ``"sequential"`` or ``"unknown"`` (auto without rows: wait and see)."""
        if self.layout != "auto":
            return self.layout
        n = call.output.shape[0]
        if self.rows is not None:
            if n == 2 * self.rows:
                return "batched"
            if n == self.rows:
                return "sequential"
            raise ValueError(
                f"denoiser was called on {n} rows; with classifier-free guidance on {self.rows} "
                f"rows it expects {2 * self.rows} (one call) or {self.rows} (two calls): "
                "is guidance_scale > 1?"
            )
        p = self._pending
        same = (
            p is not None
            and p.latents.shape == call.latents.shape
            and _same(p.timestep, call.timestep)
            and bool(torch.equal(p.latents, call.latents))
        )
        return "sequential" if same else "unknown"

    def _sequential(self, call: _Call) -> None:
        if self._pending is None:
            self._pending = call  # the conditional half; the unconditional one comes next
            return
        cond, self._pending = self._pending, None
        # With known rows the batch size already decided the layout; the value checks are
        # skipped there because reading device tensors would stall the GPU at every step.
        if cond.output.shape != call.output.shape or (
            self.rows is None
            and not (
                _same(cond.timestep, call.timestep) and torch.equal(cond.latents, call.latents)
            )
        ):
            raise ValueError(
                "sequential guidance expects two denoiser calls per step on the same x_t and "
                f"timestep; got shapes {tuple(cond.output.shape)} then {tuple(call.output.shape)}"
            )
        self._emit(call.timestep, cond.output, call.output, call.latents, stop=True)

    def _emit_batched(self, call: _Call, *, stop: bool) -> None:
        n = call.output.shape[0]
        if n % 2:
            raise ValueError(
                f"a batched guidance call needs an even number of rows ([uncond; cond]); got {n}:"
                " is guidance_scale > 1?"
            )
        half = n // 2
        # Guidance evaluates both halves on the same x_t; different halves mean this call is
        # not a [uncond; cond] pair (guidance off, or a pipeline with another layout).
        # (Checked only when rows are unknown: it would stall a GPU at every step.)
        if self.rows is None and not torch.equal(call.latents[:half], call.latents[half:]):
            raise ValueError(
                "the denoiser's two batch halves saw different latents, so the call is not a "
                "classifier-free-guidance pair: is guidance_scale > 1? (or pass layout=)"
            )
        uncond, cond = call.output.chunk(2)
        self._emit(call.timestep, cond, uncond, call.latents[:half], stop=stop)

    def _emit(
        self,
        timestep: torch.Tensor | float,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        latents: torch.Tensor,
        *,
        stop: bool,
    ) -> None:
        step = GuidanceStep(self.num_steps, timestep, cond, uncond, latents)
        self.num_steps += 1
        if self.keep:
            self.steps.append(
                GuidanceStep(step.index, timestep, cond.clone(), uncond.clone(), latents.clone())
            )
        if self.on_step is not None:
            with torch.no_grad():
                self.on_step(step)
        if stop and self.stop_after is not None and self.num_steps >= self.stop_after:
            raise StopSampling
