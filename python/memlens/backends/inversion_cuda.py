# mypy: disable-error-code="no-untyped-def"
"""The ``cuda`` backend of the inversion step: CUDA C++ kernels in memlens._cuda, launched on
the current stream. memlens.ops.inversion has validated and made every tensor contiguous."""

from __future__ import annotations

import torch

from memlens import _cuda
from memlens._arrays import DTYPE_CODES
from memlens.reference.inversion import AdamSettings


def _p(t: torch.Tensor | None) -> int:
    return 0 if t is None else int(t.data_ptr())


def _stream(t: torch.Tensor) -> int:
    return int(torch.cuda.current_stream(t.device).cuda_stream)


def sample(mu, logvar, x0, a, s, seed: int, step: int, out: torch.Tensor) -> None:
    n, b, d = out.shape
    with torch.cuda.device(out.device):
        _cuda.inversion_sample(_p(mu), _p(logvar), _p(x0), _p(a), _p(s), n, b, d, seed, step,
                               _p(out), DTYPE_CODES[out.dtype], _stream(out))  # fmt: skip


def loss(xt, eps_hat, x0, a, s, g_eps: torch.Tensor) -> torch.Tensor:
    """Returns the float32 per-block partial sums (N*B, blocks): one launch."""
    n, b, d = xt.shape
    if n * b == 0 or d == 0:
        return torch.zeros((n * b, 1), dtype=torch.float64, device=xt.device)
    part = torch.empty(
        (n * b, int(_cuda.inversion_loss_blocks(d))), dtype=torch.float32, device=xt.device
    )
    with torch.cuda.device(xt.device):
        _cuda.inversion_loss(_p(xt), _p(eps_hat), DTYPE_CODES[xt.dtype], _p(x0), _p(a), _p(s),
                             n, b, d, _p(part), _p(g_eps), _stream(xt))  # fmt: skip
    return part


def update(state, g_eps, g_model, s, w, adam: AdamSettings, x0, nxt) -> None:
    n, b, d = g_model.shape
    a2, s2, out = nxt if nxt is not None else (None, None, None)
    with torch.cuda.device(g_model.device):
        _cuda.inversion_update(
            _p(state.mu), _p(state.logvar), _p(state.m_mu), _p(state.v_mu), _p(state.m_lv),
            _p(state.v_lv), _p(x0), _p(g_eps), _p(g_model), DTYPE_CODES[g_model.dtype], _p(s),
            _p(w), n, b, d, state.seed, state.noise_step, adam.lr, adam.beta1, adam.beta2,
            adam.eps, state.adam_t, 0, 0, _p(out), _p(a2), _p(s2), state.seed,
            state.noise_step + 1, _stream(g_model),
        )  # fmt: skip


def grads(mu, logvar, g_xt, s, seed: int, step: int, gmu, glv) -> None:
    n, b, d = g_xt.shape
    with torch.cuda.device(g_xt.device):
        _cuda.inversion_update(
            _p(mu), _p(logvar), 0, 0, 0, 0, 0, 0, _p(g_xt), 0, _p(s), 0, n, b, d, seed, step,
            0.0, 0.0, 0.0, 1.0, 1, _p(gmu), _p(glv), 0, 0, 0, 0, 0, _stream(g_xt),
        )  # fmt: skip
