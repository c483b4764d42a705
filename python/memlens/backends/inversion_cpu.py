# mypy: disable-error-code="no-untyped-def"
"""The ``cpu`` backend of the inversion step: the compiled C++/OpenMP core (memlens._C).

memlens.ops.inversion has validated shapes and dtypes and made every tensor contiguous."""

from __future__ import annotations

import torch

from memlens import _C
from memlens._arrays import DTYPE_CODES
from memlens.backends.cpu import resolve_simd
from memlens.reference.inversion import AdamSettings

num_threads = 0  # 0: OpenMP's default; for tests and benchmarks


def _p(t: torch.Tensor | None) -> int:
    return 0 if t is None else int(t.data_ptr())


def sample(mu, logvar, x0, a, s, seed: int, step: int, out: torch.Tensor) -> None:
    n, b, d = out.shape
    _C.inversion_sample(
        _p(mu), _p(logvar), _p(x0), _p(a), _p(s), n, b, d, seed, step, _p(out),
        DTYPE_CODES[out.dtype], num_threads, resolve_simd(),
    )  # fmt: skip


def loss(xt, eps_hat, x0, a, s, g_eps: torch.Tensor) -> torch.Tensor:
    """Returns the per-sample sums (N*B, 1) float64 (the core reduces in a fixed order)."""
    n, b, d = xt.shape
    sse = torch.empty((n * b, 1), dtype=torch.float64)
    _C.inversion_loss(
        _p(xt), _p(eps_hat), DTYPE_CODES[xt.dtype], _p(x0), _p(a), _p(s), n, b, d, _p(sse),
        _p(g_eps), num_threads, resolve_simd(),
    )  # fmt: skip
    return sse


def update(state, g_eps, g_model, s, w, adam: AdamSettings, x0, nxt) -> None:
    n, b, d = g_model.shape
    a2, s2, out = nxt if nxt is not None else (None, None, None)
    _C.inversion_update(
        _p(state.mu), _p(state.logvar), _p(state.m_mu), _p(state.v_mu), _p(state.m_lv),
        _p(state.v_lv), _p(x0), _p(g_eps), _p(g_model), DTYPE_CODES[g_model.dtype], _p(s), _p(w),
        n, b, d, state.seed, state.noise_step, adam.lr, adam.beta1, adam.beta2, adam.eps,
        state.adam_t, 0, 0, _p(out), _p(a2), _p(s2), state.seed, state.noise_step + 1,
        num_threads, resolve_simd(),
    )  # fmt: skip


def grads(mu, logvar, g_xt, s, seed: int, step: int, gmu, glv) -> None:
    n, b, d = g_xt.shape
    _C.inversion_update(
        _p(mu), _p(logvar), 0, 0, 0, 0, 0, 0, _p(g_xt), 0, _p(s), 0, n, b, d, seed, step,
        0.0, 0.0, 0.0, 1.0, 1, _p(gmu), _p(glv), 0, 0, 0, 0, 0, num_threads, resolve_simd(),
    )  # fmt: skip
