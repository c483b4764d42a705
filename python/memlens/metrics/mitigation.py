"""Training-time memorization mitigation (Wen et al., ICLR 2024; methods.md §3.5).

The rule, exactly as ``train_text_to_image.py --hard_threshold`` implements it:

- for each sample ``b`` of a batch, at its random timestep ``t_b``, the magnitude
  ``m_b = ‖ε(x_t, t, e_b) - ε(x_t, t, e_"")‖₂`` over the whole flattened prediction, with the
  unconditional pass under ``no_grad`` (:func:`guidance_magnitudes`);
- keep ``b`` iff ``m_b < threshold`` (strict: a magnitude *equal* to the threshold is dropped;
  the README's "Ours" setting is ``threshold = 2``);
- loss = ``F.mse_loss(pred[keep].float(), target[keep].float(), reduction="mean")``, i.e. the
  mean over every element of the kept samples, which equals the mean over kept samples of the
  per-sample MSE (all samples have the same size);
- no sample kept: the reference skips ``backward``, ``optimizer.step()`` and the LR-scheduler
  step. :func:`filtered_training_loss` then returns a zero loss that is still attached to the
  graph (calling ``backward`` on it is legal and gives zero gradients, which is what
  distributed data-parallel needs: every rank must run backward) and ``any_kept = False``, so the
  loop can skip the optimizer step as the reference does (AdamW's weight decay and momentum
  would move the weights even with zero gradients).

Inference-time mitigation (optimizing the prompt embedding) lives elsewhere; this module is
only the training-side filter. ``docs/training_mitigation.md`` shows it in a training loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
import torch.nn.functional as F

# The README's "Ours" run: `--hard_threshold 2` (SD v1.4 fine-tuning, methods.md §3.5).
DEFAULT_HARD_THRESHOLD = 2.0

MagnitudeValues = torch.Tensor | np.ndarray | Sequence[float]
# A callable gets the detached model prediction and returns one magnitude per sample.
MagnitudeSource = MagnitudeValues | Callable[[torch.Tensor], MagnitudeValues]

__all__ = [
    "DEFAULT_HARD_THRESHOLD",
    "FilteredLoss",
    "MagnitudeSource",
    "MagnitudeValues",
    "filtered_training_loss",
    "guidance_magnitudes",
    "training_keep_mask",
]


@dataclass(frozen=True)
class FilteredLoss:
    """What :func:`filtered_training_loss` returns for one batch.

    ``loss`` is a 0-d float32 tensor (zero, still attached to the graph, when nothing is
    kept); ``keep`` is a bool ``(B,)`` mask on the prediction's device; ``magnitudes`` the
    detached float64 ``(B,)`` magnitudes the mask was computed from.
    """

    loss: torch.Tensor
    keep: torch.Tensor
    magnitudes: torch.Tensor

    @property
    def num_kept(self) -> int:
        return int(self.keep.sum().item())

    @property
    def any_kept(self) -> bool:
        """False when the reference would skip backward and the optimizer step."""
        return bool(self.keep.any().item())


def guidance_magnitudes(cond_pred: torch.Tensor, uncond_pred: torch.Tensor) -> torch.Tensor:
    """Per-sample ``‖cond_pred - uncond_pred‖₂`` over all non-batch dimensions.

    Returns a detached float32 ``(B,)`` tensor. The difference is taken in float32 (the
    reference takes it in the training dtype, usually fp16) because an fp16 norm over a
    4x64x64 latent loses precision right where it is compared with the threshold.
    """
    for name, t in (("cond_pred", cond_pred), ("uncond_pred", uncond_pred)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if t.ndim < 1:
            raise ValueError(f"{name} must have a batch dimension; got shape {tuple(t.shape)}")
    if cond_pred.shape != uncond_pred.shape:
        raise ValueError(
            "cond_pred and uncond_pred must have the same shape; got "
            f"{tuple(cond_pred.shape)} and {tuple(uncond_pred.shape)}"
        )
    with torch.no_grad():
        diff = cond_pred.detach().float() - uncond_pred.detach().float()
        return diff.reshape(diff.shape[0], -1).norm(p=2, dim=1)


def _check_threshold(threshold: float) -> float:
    # bool is a Real in Python; `threshold=True` is a bug, not 1.0
    if isinstance(threshold, bool) or not isinstance(threshold, Real):
        raise TypeError(f"threshold must be a real number; got {type(threshold).__name__}")
    value = float(threshold)
    if math.isnan(value):
        raise ValueError("threshold must not be NaN")
    return value


def _as_magnitudes(values: object, batch: int | None, device: torch.device) -> torch.Tensor:
    """Validated float64 ``(batch,)`` magnitudes on ``device``, detached (any length when
    ``batch`` is None)."""
    if isinstance(values, torch.Tensor):
        t = values.detach()
    elif isinstance(values, np.ndarray | Sequence) and not isinstance(values, str | bytes):
        try:
            t = torch.as_tensor(np.asarray(values, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"magnitudes must be numbers; got {values!r:.80}") from exc
    else:
        raise TypeError(
            "magnitudes must be a tensor, numpy array, sequence of floats or a callable; "
            f"got {type(values).__name__}"
        )
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"magnitudes must be real numbers; got dtype {t.dtype}")
    if t.ndim != 1 or (batch is not None and t.shape[0] != batch):
        expected = "B" if batch is None else batch
        raise ValueError(f"magnitudes must have shape ({expected},); got {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.float64)
    nan = torch.isnan(t)
    if bool(nan.any()):
        idx = torch.nonzero(nan).flatten().tolist()
        raise ValueError(f"magnitudes must not be NaN; NaN at index {idx[:10]}")
    return t


def training_keep_mask(
    magnitudes: MagnitudeValues, *, threshold: float = DEFAULT_HARD_THRESHOLD
) -> torch.Tensor:
    """Bool ``(B,)`` mask of the samples to train on: ``magnitudes < threshold`` (strict).

    ``+inf`` magnitudes (an fp16 overflow, say) are dropped; NaN raises ``ValueError``
    because a NaN compares false and would silently drop the sample.
    """
    thr = _check_threshold(threshold)
    device = magnitudes.device if isinstance(magnitudes, torch.Tensor) else torch.device("cpu")
    return _as_magnitudes(magnitudes, None, device) < thr


def _resolve_magnitudes(source: MagnitudeSource, model_pred: torch.Tensor) -> torch.Tensor:
    if callable(source):
        # no_grad: the reference computes the unconditional pass without a graph, and the
        # mask must never become a path for gradients
        with torch.no_grad():
            source = source(model_pred.detach())
    return _as_magnitudes(source, model_pred.shape[0], model_pred.device)


def filtered_training_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    magnitudes: MagnitudeSource,
    *,
    threshold: float = DEFAULT_HARD_THRESHOLD,
    sample_weights: torch.Tensor | None = None,
) -> FilteredLoss:
    """The §3.5 masked MSE of one training batch.

    ``model_pred`` and ``target`` are ``(B, ...)`` (the denoiser output and the noise, or the
    velocity for v-prediction). ``magnitudes`` is one value per sample, or a callable that
    receives the detached ``model_pred`` and returns them (it runs under ``torch.no_grad``).
    ``sample_weights`` (e.g. diffusers' min-SNR weights) multiply the per-sample MSE before
    the mean over kept samples; they are masked together with the samples (the reference's
    ``--snr_gamma`` branch forgets to, and fails on a shape mismatch once a sample is dropped).
    """
    for name, t in (("model_pred", model_pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if model_pred.ndim < 1:
        raise ValueError(f"model_pred must have shape (B, ...); got {tuple(model_pred.shape)}")
    if target.shape != model_pred.shape:
        raise ValueError(
            f"target must have the shape of model_pred {tuple(model_pred.shape)}; "
            f"got {tuple(target.shape)}"
        )
    thr = _check_threshold(threshold)
    mags = _resolve_magnitudes(magnitudes, model_pred)
    keep = mags < thr
    weights = None
    if sample_weights is not None:
        weights = _as_weights(sample_weights, model_pred.shape[0], model_pred.device)
    if not bool(keep.any()):
        # An empty slice's sum is an exact zero that still depends on model_pred, so
        # backward() works (and reaches every parameter with a zero gradient) even when the
        # prediction holds Inf/NaN, where `0 * pred.sum()` would be NaN.
        loss = model_pred.float().reshape(-1)[:0].sum()
        return FilteredLoss(loss=loss, keep=keep, magnitudes=mags)
    pred_k, target_k = model_pred[keep].float(), target[keep].float()
    if weights is None:
        loss = F.mse_loss(pred_k, target_k, reduction="mean")
    else:
        per_sample = F.mse_loss(pred_k, target_k, reduction="none")
        per_sample = per_sample.reshape(per_sample.shape[0], -1).mean(dim=1)
        loss = (per_sample * weights[keep]).mean()
    return FilteredLoss(loss=loss, keep=keep, magnitudes=mags)


def _as_weights(weights: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"sample_weights must be a torch.Tensor; got {type(weights).__name__}")
    if weights.ndim != 1 or weights.shape[0] != batch:
        raise ValueError(f"sample_weights must have shape ({batch},); got {tuple(weights.shape)}")
    w = weights.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("sample_weights must be finite")
    return w
