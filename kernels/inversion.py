# mypy: disable-error-code="no-untyped-def"
"""Triton kernels of the fused InvMM inversion step (the ``triton`` backend).

The same three passes as the C++ core (csrc/cpu/inversion_kernel.h) with the same generator
and polynomials (csrc/include/memlens/inversion_math.h), so the backends agree to float32
rounding; the specification is python/memlens/reference/inversion.py.

- sample: grid (N*B rows, D blocks); x_t = a x0 + s (mu + eps exp(logvar / 2)).
- loss:   grid (N*B rows, D blocks); e = (x_t - s eps_hat) / a - x0, g_eps = -2 s e / (a B D),
          one float32 partial sum of e^2 per program (summed in float64 by the caller).
- update: grid (N, D blocks), each program loops over the B samples of its elements
          (regenerating eps), then the KL gradient, the Adam step in place and, optionally,
          the next x_t from the new parameters: one pass over the parameters.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

PHILOX_TAG = tl.constexpr(0x6D6C6E73)  # "mlns", the fourth counter word
BLOCK = 1024


@triton.jit
def _philox4(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 blocks: the four output words."""
    for _ in tl.static_range(10):
        a_c0 = c0
        b_c2 = c2
        c0 = tl.umulhi(b_c2, 0xCD9E8D57) ^ c1 ^ k0
        c2 = tl.umulhi(a_c0, 0xD2511F53) ^ c3 ^ k1
        c1 = b_c2 * 0xCD9E8D57
        c3 = a_c0 * 0xD2511F53
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _log_pos(u):
    bits = u.to(tl.uint32, bitcast=True)
    e = (bits >> 23).to(tl.int32) - 127
    m = ((bits & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = m > 1.41421356
    m = tl.where(big, 0.5 * m, m)
    e = tl.where(big, e + 1, e)
    t = (m - 1.0) / (m + 1.0)
    t2 = t * t
    p = 2.0 + t2 * (0.66666667 + t2 * (0.4 + t2 * (0.28571429 + t2 * 0.22222222)))
    ef = e.to(tl.float32)
    return ef * 0.693145751953125 + (ef * 1.428606765330187e-06 + t * p)


@triton.jit
def _cos_2pi(u):
    y = tl.where(u >= 0.5, u - 1.0, u)
    a = tl.abs(y)
    flip = a > 0.25
    a = tl.where(flip, 0.5 - a, a)
    x = 6.2831853071795865 * a
    z = x * x
    c = 1.0 + z * (-0.5 + z * (4.1666667e-2 + z * (-1.3888889e-3 + z * (2.4801587e-5
        + z * (-2.7557319e-7 + z * 2.0876757e-9)))))  # fmt: skip
    return tl.where(flip, -c, c)


@triton.jit
def _exp(x):
    x = tl.minimum(tl.maximum(x, -87.0), 88.0)
    t = x * 1.44269504088896341
    kf = (t + tl.where(t < 0.0, -0.5, 0.5)).to(tl.int32).to(tl.float32)
    f = (x - kf * 0.693145751953125) - kf * 1.428606765330187e-06
    p = 1.0 + f * (1.0 + f * (0.5 + f * (0.16666667 + f * (4.1666668e-2
        + f * (8.3333338e-3 + f * 1.3888889e-3)))))  # fmt: skip
    scale = ((kf.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)
    return p * scale


@triton.jit
def _normal(row, j, step, k0, k1):
    """The memlens normal of sample row ``row`` (scalar) at columns ``j`` (int64 block): normal
    (j & 3) of the Philox block (j >> 2, row, step, tag); see the reference."""
    g = (j >> 2).to(tl.uint32)
    c1 = tl.zeros_like(g) + row.to(tl.uint32)
    c2 = tl.zeros_like(g) + step.to(tl.uint32)
    c3 = tl.zeros_like(g) + PHILOX_TAG
    # keys arrive as int32 or int64 scalars (by value): their low 32 bits are the key words
    x0, x1, x2, x3 = _philox4(g, c1, c2, c3, k0.to(tl.uint32), k1.to(tl.uint32))
    second = (j & 2) != 0
    p = tl.where(second, x2, x0)
    q = tl.where(second, x3, x1)
    u1 = (2 * (p >> 9) + 1).to(tl.float32) * 5.9604644775390625e-08
    u2 = (q >> 8).to(tl.float32) * 5.9604644775390625e-08
    u2 = tl.where((j & 1) != 0, u2 - 0.25, u2)  # sin(2 pi u) = cos(2 pi (u - 1/4))
    return tl.sqrt(-2.0 * _log_pos(u1)) * _cos_2pi(u2)


# seeds and steps take any value, 1 included: never specialized into the compiled kernel
@triton.jit(do_not_specialize=["k0", "k1", "step"])
def _sample_kernel(MU, LV, X0, A, S, OUT, B, D, k0, k1, step, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    i = row // B
    pofs = i.to(tl.int64) * D + offs
    mu = tl.load(MU + pofs, mask=mask, other=0.0)
    lv = tl.load(LV + pofs, mask=mask, other=0.0)
    x0 = tl.load(X0 + pofs, mask=mask, other=0.0)
    a = tl.load(A + row)
    s = tl.load(S + row)
    L = row.to(tl.int64) * D + offs
    e = _normal(row, offs.to(tl.int64), step, k0, k1)
    xt = a * x0 + s * (mu + _exp(0.5 * lv) * e)
    tl.store(OUT + L, xt.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _loss_kernel(XT, EH, X0, A, S, PART, GE, B, D, n_blocks, inv_bd, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    i = row // B
    L = row.to(tl.int64) * D + offs
    xt = tl.load(XT + L, mask=mask, other=0.0).to(tl.float32)
    eh = tl.load(EH + L, mask=mask, other=0.0).to(tl.float32)
    x0 = tl.load(X0 + i.to(tl.int64) * D + offs, mask=mask, other=0.0)
    a = tl.load(A + row)
    s = tl.load(S + row)
    inv_a = 1.0 / a
    e = (xt - s * eh) * inv_a - x0
    e = tl.where(mask, e, 0.0)
    tl.store(GE + L, (-2.0 * s * inv_a * inv_bd) * e, mask=mask)
    tl.store(PART + row.to(tl.int64) * n_blocks + blk, tl.sum(e * e, axis=0))


@triton.jit(do_not_specialize=["k0", "k1", "step", "step2"])
def _update_kernel(
    MU, LV, MM, VM, ML, VL, X0, GE, GM, S, W, XN, A2, S2, GMU, GLV,
    B, D, k0, k1, step, step2, inv_d, lr_bc1, b1, b2, inv_bc2s, aeps,
    HAS_GE: tl.constexpr, HAS_W: tl.constexpr, GRAD_MODE: tl.constexpr, HAS_NEXT: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    pofs = i.to(tl.int64) * D + offs
    gmu = tl.zeros([BLOCK], tl.float32)
    glv = tl.zeros([BLOCK], tl.float32)
    for b in range(B):
        row = i * B + b
        s = tl.load(S + row)
        L = row.to(tl.int64) * D + offs
        e = _normal(row, offs.to(tl.int64), step, k0, k1)
        gn = s * tl.load(GM + L, mask=mask, other=0.0).to(tl.float32)
        if HAS_GE:
            gn -= tl.load(GE + L, mask=mask, other=0.0)
        gmu += gn
        glv += gn * e
    mu = tl.load(MU + pofs, mask=mask, other=0.0)
    lv = tl.load(LV + pofs, mask=mask, other=0.0)
    sig = _exp(0.5 * lv)
    wi = tl.load(W + i) * inv_d if HAS_W else 0.0
    dmu = gmu + wi * mu
    dlv = 0.5 * sig * glv + 0.5 * wi * (sig * sig - 1.0)
    if GRAD_MODE:
        tl.store(GMU + pofs, dmu, mask=mask)
        tl.store(GLV + pofs, dlv, mask=mask)
    else:
        m1 = b1 * tl.load(MM + pofs, mask=mask, other=0.0) + (1.0 - b1) * dmu
        v1 = b2 * tl.load(VM + pofs, mask=mask, other=0.0) + (1.0 - b2) * dmu * dmu
        m2 = b1 * tl.load(ML + pofs, mask=mask, other=0.0) + (1.0 - b1) * dlv
        v2 = b2 * tl.load(VL + pofs, mask=mask, other=0.0) + (1.0 - b2) * dlv * dlv
        mu = mu - lr_bc1 * m1 / (tl.sqrt(v1) * inv_bc2s + aeps)
        lv = lv - lr_bc1 * m2 / (tl.sqrt(v2) * inv_bc2s + aeps)
        tl.store(MM + pofs, m1, mask=mask)
        tl.store(VM + pofs, v1, mask=mask)
        tl.store(ML + pofs, m2, mask=mask)
        tl.store(VL + pofs, v2, mask=mask)
        tl.store(MU + pofs, mu, mask=mask)
        tl.store(LV + pofs, lv, mask=mask)
        if HAS_NEXT:
            sig = _exp(0.5 * lv)
            x0 = tl.load(X0 + pofs, mask=mask, other=0.0)
            for b in range(B):
                row = i * B + b
                a2 = tl.load(A2 + row)
                s2 = tl.load(S2 + row)
                L = row.to(tl.int64) * D + offs
                e = _normal(row, offs.to(tl.int64), step2, k0, k1)
                xt = a2 * x0 + s2 * (mu + sig * e)
                tl.store(XN + L, xt.to(XN.dtype.element_ty), mask=mask)


def _keys(seed: int) -> tuple[int, int]:
    return seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF


def _block(d: int) -> int:
    return min(BLOCK, triton.next_power_of_2(max(d, 16)))


def sample(mu, logvar, x0, a, s, seed: int, step: int, out: torch.Tensor) -> None:
    n, b, d = out.shape
    if out.numel() == 0:
        return
    k0, k1 = _keys(seed)
    blk = _block(d)
    _sample_kernel[(n * b, triton.cdiv(d, blk))](
        mu, logvar, x0, a, s, out, b, d, k0, k1, step, BLOCK=blk, num_warps=4
    )


def loss(xt, eps_hat, x0, a, s, g_eps: torch.Tensor) -> torch.Tensor:
    """Returns the float32 per-program partial sums (N*B, blocks): one launch."""
    n, b, d = xt.shape
    if n * b == 0 or d == 0:
        return torch.zeros((n * b, 1), dtype=torch.float64, device=xt.device)
    blk = _block(d)
    nb = triton.cdiv(d, blk)
    part = torch.empty((n * b, nb), dtype=torch.float32, device=xt.device)
    _loss_kernel[(n * b, nb)](
        xt, eps_hat, x0, a, s, part, g_eps, b, d, nb, 1.0 / (b * d), BLOCK=blk, num_warps=4
    )
    return part


def _launch_update(mu, logvar, moments, x0, ge, gm, s, w, nxt, grads_out, seed, step, adam, t):
    n, b, d = gm.shape
    if n == 0 or d == 0:
        return
    k0, k1 = _keys(seed)
    blk = _block(d)
    bc1 = 1.0 - adam.beta1**t
    bc2 = 1.0 - adam.beta2**t
    a2, s2, xn = nxt if nxt is not None else (mu, mu, mu)
    dummy = mu
    gmu, glv = grads_out if grads_out is not None else (dummy, dummy)
    mm, vm, ml, vl = moments if moments is not None else (dummy,) * 4
    _update_kernel[(n, triton.cdiv(d, blk))](
        mu, logvar, mm, vm, ml, vl, x0 if x0 is not None else dummy,
        ge if ge is not None else dummy, gm, s, w if w is not None else dummy, xn, a2, s2, gmu, glv,
        b, d, k0, k1, step, step + 1, 1.0 / d, adam.lr / bc1, adam.beta1, adam.beta2,
        1.0 / bc2**0.5, adam.eps,
        HAS_GE=ge is not None, HAS_W=w is not None, GRAD_MODE=grads_out is not None,
        HAS_NEXT=nxt is not None, BLOCK=blk, num_warps=4,
    )  # fmt: skip


def update(state, g_eps, g_model, s, w, adam, x0, nxt) -> None:
    moments = (state.m_mu, state.v_mu, state.m_lv, state.v_lv)
    _launch_update(state.mu, state.logvar, moments, x0, g_eps, g_model, s, w, nxt, None,
                   state.seed, state.noise_step, adam, state.adam_t)  # fmt: skip


def grads(mu, logvar, g_xt, s, seed: int, step: int, gmu, glv) -> None:
    from memlens.reference.inversion import AdamSettings

    _launch_update(mu, logvar, None, None, None, g_xt, s, None, None, (gmu, glv), seed, step,
                   AdamSettings(), 1)  # fmt: skip
