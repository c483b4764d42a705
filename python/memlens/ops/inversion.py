"""The fused InvMM inversion step (methods.md §2.2-2.4): everything around the model call.

One optimisation step of N images at once, B noise samples each::

    state = InversionState.create(n_images, latent_shape, seed=0)
    xt = sample_xt(state, x0, a, s, dtype=model_dtype)           # once, for the first step
    for step in ...:
        xt.requires_grad_(True)
        eps_hat = model(xt.flatten(0, 1), timesteps, ...).view_as(xt)
        sse, g_eps = x0_loss(xt, eps_hat, x0, a, s)               # pass 1 (no autograd)
        (g_model,) = torch.autograd.grad(eps_hat, xt, g_eps.to(eps_hat.dtype))
        a, s = next_coefficients(...)
        xt = update(state, g_eps, g_model, s_now, w, next_coefs=(a, s))  # pass 2

so a step is two passes over memory outside the model: the loss pass and the update pass, which
also draws the next x_t from the new parameters. The noise is regenerated from (seed, step,
element), never stored. The exact definitions are in :mod:`memlens.reference.inversion`.

For plain autograd use there are two differentiable functions, :func:`reparam_sample` and
:func:`x0_loss_value`, built on the same kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from memlens import _dispatch
from memlens.reference.inversion import AdamSettings, kl_per_dim

__all__ = [
    "AdamSettings",
    "InversionState",
    "reparam_sample",
    "sample_xt",
    "update",
    "x0_loss",
    "x0_loss_value",
]

OP = "inversion_step"
DEFAULT_ADAM = AdamSettings()  # InvMM: Adam(lr=0.1), torch defaults otherwise
MODEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

for _name, _devices, _module, _probe in (
    ("cpu", {"cpu"}, "memlens.backends.inversion_cpu", _dispatch.compiled_cpu_reason),
    ("cuda", {"cuda"}, "memlens.backends.inversion_cuda", _dispatch.compiled_cuda_reason),
    ("triton", {"cuda", "cpu"}, "memlens.backends.inversion_triton", _dispatch.triton_reason),
    ("torch", {"cuda", "cpu"}, "memlens.backends.inversion_torch", _dispatch.always),
):
    _dispatch.register(OP, _dispatch.BackendSpec(_name, frozenset(_devices), _module, _probe))


def _impl(device: torch.device, backend: str | None) -> Any:
    dev = "cuda" if device.type == "cuda" else "cpu"
    return _dispatch.load(OP, _dispatch.select(OP, dev, backend))


@dataclass
class InversionState:
    """q = N(mu, exp(logvar)) per image and its Adam moments (float32, (N, *shape)), the
    noise stream (``seed``; ``noise_step`` numbers the x_t draws) and the Adam step count."""

    mu: torch.Tensor
    logvar: torch.Tensor
    m_mu: torch.Tensor
    v_mu: torch.Tensor
    m_lv: torch.Tensor
    v_lv: torch.Tensor
    seed: int
    noise_step: int = 0
    adam_t: int = 0
    shape: tuple[int, ...] = field(default=())

    @classmethod
    def create(
        cls,
        n: int,
        shape: Sequence[int],
        *,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> InversionState:
        """mu = logvar = 0 (q starts as N(0, I), methods.md §2.2), zero moments."""
        if n < 0:
            raise ValueError(f"n must be >= 0; got {n}")
        shape = tuple(int(x) for x in shape)
        if any(x < 1 for x in shape):
            raise ValueError(f"shape must have positive sizes; got {shape}")
        if not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must be in [0, 2^64); got {seed}")
        d = math.prod(shape)
        z = [torch.zeros((n, d), dtype=torch.float32, device=device) for _ in range(6)]
        return cls(z[0], z[1], z[2], z[3], z[4], z[5], seed=int(seed), shape=shape)

    @property
    def n(self) -> int:
        return int(self.mu.shape[0])

    @property
    def d(self) -> int:
        return int(self.mu.shape[1])

    def score(self) -> torch.Tensor:
        """Per-dimension KL(q || N(0, I)) of each image (float64, (N,)): the InvMM score
        when the inversion succeeded."""
        return kl_per_dim(self.mu, self.logvar)

    def select(self, keep: torch.Tensor) -> InversionState:
        """The images where ``keep`` (bool (N,)) is true, e.g. to drop finished ones.
        Their noise stream changes with their position (element counters), which is fine:
        the draws stay independent."""
        k = keep.to(self.mu.device)
        t = [
            x[k].contiguous()
            for x in (self.mu, self.logvar, self.m_mu, self.v_mu, self.m_lv, self.v_lv)
        ]
        return InversionState(
            t[0], t[1], t[2], t[3], t[4], t[5], seed=self.seed, noise_step=self.noise_step,
            adam_t=self.adam_t, shape=self.shape,
        )  # fmt: skip


# ---------------------------------------------------------------------------- validation


def _coefs(a: Any, name: str, n: int, device: torch.device, check: bool = True) -> torch.Tensor:
    try:
        t = torch.as_tensor(a)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be a numeric array; got {type(a).__name__} ({e})") from e
    if t.ndim != 2 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape (N={n}, B); got {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.float32).contiguous()
    if check and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def _check_ab(a: torch.Tensor, s: torch.Tensor, check: bool = True) -> None:
    if a.shape != s.shape:
        raise ValueError(
            f"a and s must have the same shape; got {tuple(a.shape)} and {tuple(s.shape)}"
        )
    if not check:
        return
    if not bool((a > 0).all()):
        raise ValueError("a (sqrt(alpha_bar_t)) must be > 0")
    if not bool((s > 0).all()):
        raise ValueError("s (sqrt(1 - alpha_bar_t)) must be > 0")


def _x0(x0: Any, n: int, d: int, device: torch.device) -> torch.Tensor:
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch tensor; got {type(x0).__name__}")
    if x0.ndim < 1 or x0.shape[0] != n or x0.numel() != n * d:
        raise ValueError(
            f"x0 must have shape (N={n}, ...) with {d} elements per image; got {tuple(x0.shape)}"
        )
    if not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating tensor; got {x0.dtype}")
    return x0.to(device=device, dtype=torch.float32).reshape(n, d).contiguous()


def _model_tensor(x: Any, name: str, n: int, b: int, d: int, device: torch.device) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor; got {type(x).__name__}")
    if x.dtype not in MODEL_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16; got {x.dtype}")
    if x.numel() != n * b * d or (x.ndim >= 2 and (x.shape[0] != n or x.shape[1] != b)):
        raise ValueError(
            f"{name} must have shape (N={n}, B={b}, ...) with {d} elements per sample; got {tuple(x.shape)}"
        )
    if x.device != device:
        raise ValueError(f"{name} must be on {device}; got {x.device}")
    return x.detach().reshape(n, b, d).contiguous()


def _out(
    out: Any,
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    inputs: Sequence[torch.Tensor],
) -> torch.Tensor:
    """A caller's output buffer (None: a fresh one), checked and flattened to (N, B, D).

    Reusing one buffer across steps matters on the CPU: a fresh tensor of many MiB is a fresh
    mapping whose first write page-faults (about 11 ms per 40 MB on the 2-core test machine,
    as much as the pass itself)."""
    n, b = shape[0], shape[1]
    d = math.prod(shape[2:])
    if out is None:
        return torch.empty((n, b, d), dtype=dtype, device=device)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or None; got {type(out).__name__}")
    if tuple(out.shape) != shape and tuple(out.shape) != (n, b, d):
        raise ValueError(f"{name} must have shape {shape}; got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}; got {out.dtype}")
    if out.device != device:
        raise ValueError(f"{name} must be on {device}; got {out.device}")
    if not out.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if out.requires_grad:
        raise ValueError(f"{name} must not require grad (pass a detached buffer)")
    lo, hi = out.data_ptr(), out.data_ptr() + out.numel() * out.element_size()
    for t in inputs:
        t_lo = t.data_ptr()
        if t.numel() and t_lo < hi and lo < t_lo + t.numel() * t.element_size():
            raise ValueError(f"{name} must not overlap the inputs")
    return out.view(n, b, d)


def _state_shape(state: InversionState, n_b: torch.Tensor) -> tuple[int, int, int]:
    return state.n, int(n_b.shape[1]), state.d


# ------------------------------------------------------------------------------- the passes


def sample_xt(
    state: InversionState,
    x0: torch.Tensor,
    a: Any,
    s: Any,
    *,
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
    check: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """x_t = a x0 + s (mu + eps exp(logvar / 2)) for every sample: (N, B, *shape) in
    ``dtype`` (the model's), drawn at ``state.noise_step``. a, s: (N, B).

    ``out``: a contiguous buffer of that shape and dtype to write into (and return)."""
    dev = state.mu.device
    a_t = _coefs(a, "a", state.n, dev, check)
    s_t = _coefs(s, "s", state.n, dev, check)
    _check_ab(a_t, s_t, check)
    if dtype not in MODEL_DTYPES:
        raise TypeError(f"dtype must be float32, float16 or bfloat16; got {dtype}")
    n, b, d = _state_shape(state, a_t)
    x = _x0(x0, n, d, dev)
    res = _out(out, "out", (n, b, *state.shape), dtype, dev, (state.mu, state.logvar, x))
    _impl(dev, backend).sample(
        state.mu, state.logvar, x, a_t, s_t, state.seed, state.noise_step, res
    )
    return res.view(n, b, *state.shape)


def x0_loss(
    xt: torch.Tensor,
    eps_hat: torch.Tensor,
    x0: torch.Tensor,
    a: Any,
    s: Any,
    *,
    reduce: bool = True,
    out: torch.Tensor | None = None,
    check: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sse, g_eps): per-sample sums of (x0_hat - x0)^2 (float64 (N, B); the image's p is
    sse.sum(1) / (B D)) and dp/d eps_hat (float32, shaped like eps_hat).

    ``reduce=False`` returns, instead of sse, the backend's partial sums (N, B, k), whose sum
    over the last axis is sse: no extra launches per step on a GPU; sum them when needed.
    ``out``: a contiguous float32 buffer shaped like xt for g_eps (reused across steps)."""
    if not isinstance(xt, torch.Tensor):
        raise TypeError(f"xt must be a torch tensor; got {type(xt).__name__}")
    if xt.ndim < 3:
        raise ValueError(f"xt must have shape (N, B, ...); got {tuple(xt.shape)}")
    n, b = int(xt.shape[0]), int(xt.shape[1])
    d = math.prod(int(v) for v in xt.shape[2:])
    dev = xt.device
    a_t = _coefs(a, "a", n, dev, check)
    s_t = _coefs(s, "s", n, dev, check)
    _check_ab(a_t, s_t, check)
    if a_t.shape[1] != b:
        raise ValueError(f"a must have shape (N, B={b}); got {tuple(a_t.shape)}")
    x = _model_tensor(xt, "xt", n, b, d, dev)
    e = _model_tensor(eps_hat, "eps_hat", n, b, d, dev)
    if e.dtype != x.dtype:
        raise TypeError(f"eps_hat must have xt's dtype {x.dtype}; got {e.dtype}")
    x0f = _x0(x0, n, d, dev)
    g_eps = _out(out, "out", tuple(xt.shape), torch.float32, dev, (x, e, x0f))
    part = _impl(dev, backend).loss(x, e, x0f, a_t, s_t, g_eps)
    part = part.view(n, b, part.shape[-1])  # not -1: ambiguous when n * b == 0
    if not reduce:
        return part, g_eps.view(xt.shape)
    sse = part.sum(-1, dtype=torch.float64) if part.shape[-1] != 1 else part[..., 0].double()
    return sse, g_eps.view(xt.shape)


def update(
    state: InversionState,
    g_eps: torch.Tensor,
    g_model: torch.Tensor,
    s: Any,
    w: Any,
    *,
    x0: torch.Tensor | None = None,
    next_coefs: tuple[Any, Any] | None = None,
    adam: AdamSettings = DEFAULT_ADAM,
    out: torch.Tensor | None = None,
    check: bool = True,
    backend: str | None = None,
) -> torch.Tensor | None:
    """One Adam step of mu and logvar in place, from g_eps (x0_loss) and g_model (the model's
    vector-Jacobian product at x_t with g_eps), the KL term weighted by w (float (N,)).

    With ``next_coefs=(a, s)`` (and ``x0``), also returns the next x_t drawn from the new
    parameters (the model's dtype, that of g_model). Advances ``state.adam_t`` and, when a
    next x_t is drawn, ``state.noise_step``. ``out``: a contiguous buffer for that next x_t
    (the model's dtype; it may be the x_t this step's model call consumed, or one of a pair
    alternated across steps).

    ``check=False`` (every pass) skips the value checks of the coefficients and w, which cost
    a device synchronisation each on a GPU: for loops whose inputs come from a scheduler."""
    dev = state.mu.device
    s_t = _coefs(s, "s", state.n, dev, check)
    if check and not bool((s_t > 0).all()):
        raise ValueError("s (sqrt(1 - alpha_bar_t)) must be > 0")
    n, b, d = _state_shape(state, s_t)
    ge = _model_tensor(g_eps, "g_eps", n, b, d, dev).float()
    gm = _model_tensor(g_model, "g_model", n, b, d, dev)
    w_t = torch.as_tensor(w, dtype=torch.float32, device=dev).reshape(-1)
    if w_t.numel() == 1 and n != 1:
        w_t = w_t.expand(n)
    if w_t.numel() != n:
        raise ValueError(f"w must be a number or have N={n} entries; got {w_t.numel()}")
    if check and (not bool(torch.isfinite(w_t).all()) or bool((w_t < 0).any())):
        raise ValueError("w must be finite and >= 0")
    w_t = w_t.contiguous()
    _check_adam(adam)
    nxt = None
    x = None
    if next_coefs is not None:
        if x0 is None:
            raise ValueError("x0 is required with next_coefs")
        a2 = _coefs(next_coefs[0], "next_coefs[0] (a)", n, dev, check)
        s2 = _coefs(next_coefs[1], "next_coefs[1] (s)", n, dev, check)
        _check_ab(a2, s2, check)
        x = _x0(x0, n, d, dev)
        params = (state.mu, state.logvar, state.m_mu, state.v_mu, state.m_lv, state.v_lv)
        buf = _out(out, "out", (n, int(a2.shape[1]), *state.shape), gm.dtype, dev,
                   (ge, gm, x, *params))  # fmt: skip
        nxt = (a2, s2, buf)
    elif out is not None:
        raise ValueError("out is only used with next_coefs")
    state.adam_t += 1
    _impl(dev, backend).update(state, ge, gm, s_t, w_t, adam, x, nxt)
    if nxt is None:
        return None
    state.noise_step += 1
    return nxt[2].view(n, nxt[2].shape[1], *state.shape)


def _check_adam(h: AdamSettings) -> None:
    if not (math.isfinite(h.lr) and h.lr >= 0):
        raise ValueError(f"adam.lr must be finite and >= 0; got {h.lr}")
    for name in ("beta1", "beta2"):
        v = getattr(h, name)
        if not 0 <= v < 1:
            raise ValueError(f"adam.{name} must be in [0, 1); got {v}")
    if not (math.isfinite(h.eps) and h.eps > 0):
        raise ValueError(f"adam.eps must be finite and > 0; got {h.eps}")


# ------------------------------------------------------------------- autograd functions


class _ReparamSample(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        x0: torch.Tensor,
        a: torch.Tensor,
        s: torch.Tensor,
        seed: int,
        step: int,
        backend: str | None,
    ) -> torch.Tensor:
        n, d = mu.shape
        st = InversionState(
            mu.detach(), logvar.detach(), mu, mu, mu, mu, seed=seed, noise_step=step, shape=(d,)
        )
        out = sample_xt(st, x0, a, s, backend=backend).view(n, a.shape[1], d)
        ctx.save_for_backward(mu.detach(), logvar.detach(), s)
        ctx.seed, ctx.step, ctx.backend = seed, step, backend
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        mu, logvar, s = ctx.saved_tensors
        n, d = mu.shape
        b = s.shape[1]
        g = grad.to(torch.float32).reshape(n, b, d).contiguous()
        gmu = torch.empty_like(mu)
        glv = torch.empty_like(logvar)
        _impl(mu.device, ctx.backend).grads(mu, logvar, g, s, ctx.seed, ctx.step, gmu, glv)
        return gmu, glv, None, None, None, None, None, None


def reparam_sample(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    x0: torch.Tensor,
    a: Any,
    s: Any,
    *,
    seed: int,
    step: int = 0,
    backend: str | None = None,
) -> torch.Tensor:
    """Differentiable x_t (N, B, D) float32 from mu, logvar (N, D): the forward kernel, and a
    backward that regenerates eps (no stored noise)."""
    if mu.shape != logvar.shape or mu.ndim != 2:
        raise ValueError(
            f"mu and logvar must both have shape (N, D); got {tuple(mu.shape)}, {tuple(logvar.shape)}"
        )
    if mu.dtype != torch.float32 or logvar.dtype != torch.float32:
        raise TypeError("mu and logvar must be float32")
    a_t = _coefs(a, "a", mu.shape[0], mu.device)
    s_t = _coefs(s, "s", mu.shape[0], mu.device)
    out: torch.Tensor = _ReparamSample.apply(
        mu.contiguous(), logvar.contiguous(), x0, a_t, s_t, int(seed), int(step), backend
    )
    return out


class _X0Loss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        xt: torch.Tensor,
        eps_hat: torch.Tensor,
        x0: torch.Tensor,
        a: torch.Tensor,
        s: torch.Tensor,
        backend: str | None,
    ) -> torch.Tensor:
        sse, g_eps = x0_loss(xt, eps_hat, x0, a, s, backend=backend)
        _n, b = sse.shape
        d = g_eps[0, 0].numel()
        ctx.save_for_backward(g_eps, s)
        ctx.dtypes = (xt.dtype, eps_hat.dtype)
        return (sse.sum(1) / (b * d)).to(torch.float32)

    @staticmethod
    def backward(ctx: Any, go: torch.Tensor) -> tuple[Any, ...]:
        g_eps, s = ctx.saved_tensors
        scale = go.to(torch.float32).view(-1, *([1] * (g_eps.ndim - 1)))
        sv = s.view(*s.shape, *([1] * (g_eps.ndim - 2)))
        g_e = scale * g_eps
        g_x = -g_e / sv  # dp/dx_t|direct = -g_eps / s
        return g_x.to(ctx.dtypes[0]), g_e.to(ctx.dtypes[1]), None, None, None, None


def x0_loss_value(
    xt: torch.Tensor,
    eps_hat: torch.Tensor,
    x0: torch.Tensor,
    a: Any,
    s: Any,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Differentiable p per image (N,): mean over samples and elements of (x0_hat - x0)^2."""
    dev = xt.device
    a_t = _coefs(a, "a", xt.shape[0], dev)
    s_t = _coefs(s, "s", xt.shape[0], dev)
    out: torch.Tensor = _X0Loss.apply(xt, eps_hat, x0, a_t, s_t, backend)
    return out
