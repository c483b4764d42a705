# mypy: disable-error-code="no-untyped-def"
"""The ``torch`` backend of the inversion step: the float64 reference, cast to the outputs.
Runs on any device; slow (the generator runs as int64 tensor arithmetic)."""

from __future__ import annotations

import torch

from memlens.reference import inversion as ref


def sample(mu, logvar, x0, a, s, seed: int, step: int, out: torch.Tensor) -> None:
    out.copy_(ref.sample_xt(mu, logvar, x0, a, s, seed, step))


def loss(xt, eps_hat, x0, a, s, g_eps: torch.Tensor) -> torch.Tensor:
    v, g = ref.x0_loss(xt, eps_hat, x0, a, s)
    g_eps.copy_(g)
    return v.reshape(-1, 1)


def update(state, g_eps, g_model, s, w, adam: ref.AdamSettings, x0, nxt) -> None:
    moments = (state.m_mu, state.v_mu, state.m_lv, state.v_lv)
    new = ref.update(
        state.mu, state.logvar, moments, state.d, g_eps, g_model, s, w, state.seed,
        state.noise_step, state.adam_t, adam,
    )  # fmt: skip
    for dst, src in zip((state.mu, state.logvar, *moments), new[:6], strict=True):
        dst.copy_(src)
    if nxt is not None:
        a2, s2, out = nxt
        out.copy_(
            ref.sample_xt(state.mu, state.logvar, x0, a2, s2, state.seed, state.noise_step + 1)
        )


def grads(mu, logvar, g_xt, s, seed: int, step: int, gmu, glv) -> None:
    zeros = torch.zeros_like(g_xt)
    w = torch.zeros(mu.shape[0], dtype=torch.float64, device=mu.device)
    z = torch.zeros_like(mu)
    new = ref.update(
        mu, logvar, (z, z, z, z), mu.shape[1], zeros, g_xt, s, w, seed, step, 1, ref.AdamSettings()
    )
    gmu.copy_(new[6])
    glv.copy_(new[7])
