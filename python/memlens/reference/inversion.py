"""The specification of the fused InvMM inversion step (methods.md §2.2-2.4), in float64 torch.

Every backend of :mod:`memlens.ops.inversion` is tested against these functions. Shapes:
N target images inverted together, B noise samples per image and step, D elements per image
(the data or latent shape, flattened). Per image i the parameters are ``mu[i]`` and
``logvar[i]`` (q = N(mu, exp(logvar)) over the sampler's start noise), per sample (i, b) the
forward coefficients ``a[i, b] = sqrt(abar_t)`` and ``s[i, b] = sqrt(1 - abar_t)`` of its
random timestep.

Noise. The kernels draw eps themselves, from a counter-based generator, so that the update can
regenerate it instead of storing it. Element j of sample row r = i * B + b at noise step
``step`` is one of the four normals of one Philox block (two Box-Muller pairs), so a CPU
kernel pays one block per four elements:

    (x0, x1, x2, x3) = Philox4x32-10(counter = (j >> 2, r, step, 0x6D6C6E73),
                                     key = (seed mod 2^32, seed div 2^32))
    (p, q) = (x0, x1) if (j & 3) < 2 else (x2, x3)
    u1 = (2 * (p >> 9) + 1) * 2^-24           # in (0, 1), exact in float32
    u2 = (q >> 8) * 2^-24                     # in [0, 1)
    eps = sqrt(-2 ln u1) * cos(2 pi u2)       # j & 1 == 0
    eps = sqrt(-2 ln u1) * sin(2 pi u2)       # j & 1 == 1  (Box-Muller's second normal)

(r < 2^32 and j < 2^34).

Objective per image (no sampler is differentiated through):

    n      = mu + eps * exp(logvar / 2)
    x_t    = a * x0 + s * n
    x0_hat = (x_t - s * eps_hat) / a          # eps_hat = the model's prediction at x_t
    p      = mean_{b, j} (x0_hat - x0)^2
    r      = 0.5 * mean_j (mu^2 + exp(logvar) - logvar - 1)     # KL(q || N(0, I)) per dimension
    loss   = p + w * r

Gradients. With g_eps = dp/d eps_hat = -2 s (x0_hat - x0) / (a B D) (the loss kernel's
output) and g_model = the model's vector-Jacobian product J^T g_eps at x_t, the gradient of p
through n of sample b is s * (g_model + dp/dx_t|direct) = s * g_model - g_eps, because
dp/dx_t|direct = 2 (x0_hat - x0) / (a B D) = -g_eps / s. Hence

    dmu     = sum_b (s g_model - g_eps)                       + w * mu / D
    dlogvar = sum_b (s g_model - g_eps) * eps * exp(logvar/2) / 2 + w * (exp(logvar) - 1) / (2 D)

and the parameters take one Adam step exactly as ``torch.optim.Adam`` (no weight decay, no
amsgrad): m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2, p -= lr / (1-b1^t) * m /
(sqrt(v) / sqrt(1-b2^t) + eps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "PHILOX_TAG",
    "AdamSettings",
    "adam_step",
    "kl_per_dim",
    "normal",
    "philox4x32",
    "sample_xt",
    "update",
    "x0_loss",
]

PHILOX_TAG = 0x6D6C6E73  # "mlns": the fourth counter word, separates memlens' streams
_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * b, b an int64 tensor of uint32 values (exact in int64:
    the product of two 32-bit halves split further to stay below 2^63)."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    lo_part = a * b_lo  # < 2^48
    hi_part = a * b_hi  # < 2^48, weight 2^16
    low = (lo_part + ((hi_part & 0xFFFF) << 16)) & _M32
    carry = (lo_part + ((hi_part & 0xFFFF) << 16)) >> 32
    high = ((hi_part >> 16) + carry) & _M32
    return high, low


def philox4x32(
    c: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], seed: int, rounds: int = 10
) -> tuple[torch.Tensor, ...]:
    """Philox4x32 (Salmon et al. 2011) on int64 tensors holding uint32 values."""
    c0, c1, c2, c3 = c
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(_ROUND_A, c0)
        hi1, lo1 = _mulhilo(_ROUND_B, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def normal(rows: torch.Tensor, cols: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """float64 standard normals of the memlens generator at (row, column) pairs (broadcast)."""
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2^64); got {seed}")
    if not 0 <= step < 2**32:
        raise ValueError(f"step must be in [0, 2^32); got {step}")
    rows, cols = torch.broadcast_tensors(rows.to(torch.int64), cols.to(torch.int64))
    c = (cols >> 2, rows & _M32, torch.full_like(rows, step), torch.full_like(rows, PHILOX_TAG))
    x0, x1, x2, x3 = philox4x32(c, seed)
    second = (cols & 2) != 0
    p = torch.where(second, x2, x0)
    q = torch.where(second, x3, x1)
    u1 = (2 * (p >> 9) + 1).double() * 2.0**-24
    u2 = (q >> 8).double() * 2.0**-24
    r = torch.sqrt(-2.0 * torch.log(u1))
    return torch.where(
        (cols & 1) == 0, r * torch.cos(2.0 * math.pi * u2), r * torch.sin(2.0 * math.pi * u2)
    )


def _eps(n: int, b: int, d: int, seed: int, step: int, device: torch.device) -> torch.Tensor:
    rows = torch.arange(n * b, dtype=torch.int64, device=device)[:, None]
    cols = torch.arange(d, dtype=torch.int64, device=device)[None, :]
    return normal(rows, cols, seed, step).view(n, b, d)


def sample_xt(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    x0: torch.Tensor,
    a: torch.Tensor,
    s: torch.Tensor,
    seed: int,
    step: int,
) -> torch.Tensor:
    """x_t (N, B, D) float64 from mu, logvar, x0 (N, D) and a, s (N, B)."""
    n_img, d = mu.shape
    b = a.shape[1]
    eps = _eps(n_img, b, d, seed, step, mu.device)
    n = mu.double()[:, None] + eps * torch.exp(0.5 * logvar.double())[:, None]
    return a.double()[..., None] * x0.double()[:, None] + s.double()[..., None] * n


def x0_loss(
    xt: torch.Tensor, eps_hat: torch.Tensor, x0: torch.Tensor, a: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sse (N, B), g_eps (N, B, D)): the summed squared x0 error of each sample and
    dp/d eps_hat, p = per-image mean over (B, D)."""
    _n_img, b, d = xt.shape
    a64, s64 = a.double()[..., None], s.double()[..., None]
    e = (xt.double() - s64 * eps_hat.double()) / a64 - x0.double()[:, None]
    return (e * e).sum(-1), -2.0 * s64 * e / (a64 * b * d)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """0.5 * mean_j (mu^2 + exp(logvar) - logvar - 1) per image (N,): the InvMM score."""
    mu64, lv64 = mu.double(), logvar.double()
    return 0.5 * (mu64 * mu64 + torch.exp(lv64) - lv64 - 1.0).mean(-1)


@dataclass(frozen=True)
class AdamSettings:
    """torch.optim.Adam's hyperparameters; InvMM uses lr = 0.1 and the defaults otherwise."""

    lr: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


def adam_step(
    p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, g: torch.Tensor, t: int, h: AdamSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam step (t >= 1 counts this step), torch.optim.Adam's formula, new (p, m, v)."""
    m = h.beta1 * m + (1.0 - h.beta1) * g
    v = h.beta2 * v + (1.0 - h.beta2) * g * g
    bc1 = 1.0 - h.beta1**t
    bc2 = 1.0 - h.beta2**t
    denom = torch.sqrt(v) / math.sqrt(bc2) + h.eps
    return p - (h.lr / bc1) * m / denom, m, v


def update(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    x0_shape_d: int,
    g_eps: torch.Tensor,
    g_model: torch.Tensor,
    s: torch.Tensor,
    w: torch.Tensor,
    seed: int,
    step: int,
    adam_t: int,
    h: AdamSettings,
) -> tuple[torch.Tensor, ...]:
    """The gradients (dmu, dlogvar) and the Adam step: returns (mu, logvar, m_mu, v_mu, m_lv,
    v_lv, dmu, dlogvar), all float64. ``moments`` = (m_mu, v_mu, m_lv, v_lv)."""
    n_img, b, d = g_eps.shape
    if d != x0_shape_d:
        raise ValueError(f"g_eps has {d} elements per sample; expected {x0_shape_d}")
    mu64, lv64 = mu.double(), logvar.double()
    eps = _eps(n_img, b, d, seed, step, mu.device)
    gn = s.double()[..., None] * g_model.double() - g_eps.double()
    sigma = torch.exp(0.5 * lv64)
    w64 = w.double()[:, None]
    dmu = gn.sum(1) + w64 * mu64 / d
    dlv = (gn * eps).sum(1) * sigma * 0.5 + w64 * (torch.exp(lv64) - 1.0) / (2 * d)
    m_mu, v_mu, m_lv, v_lv = (x.double() for x in moments)
    mu_new, m_mu, v_mu = adam_step(mu64, m_mu, v_mu, dmu, adam_t, h)
    lv_new, m_lv, v_lv = adam_step(lv64, m_lv, v_lv, dlv, adam_t, h)
    return mu_new, lv_new, m_mu, v_mu, m_lv, v_lv, dmu, dlv
