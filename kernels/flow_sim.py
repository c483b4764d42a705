# mypy: disable-error-code="no-untyped-def"
"""Triton backend of flow_similarity: one streaming pass from flow fields to the PAIR and FIELD
statistics defined (in float64) by :mod:`memlens.reference.flow`.

Public entry point (called by ``memlens.backends.flow_triton``)::

    flow_similarity(gen, cands, mu_min, gen_affine, cand_affine, *, config=None)
        -> (pair (N, T, 4), gen_field (T, 8), cand_field (N, T, 8)), float64

Design
------
*Grid.* ``(T * n_blocks, chunks)``: a program owns one frame ``t``, a block of ``NB``
candidates (``n_blocks = ceil(N / NB)``) and one chunk of ``group`` tiles of ``BLOCK``
consecutive pixels (flat index ``p = i * W + j``). Programs with consecutive ids share
``(t, chunk)``, so the gen tile they all read is hot in L2. Each step loads the gen tile
``[BLOCK]`` once for the ``[NB, BLOCK]`` candidate tile, so gen is read ``1 / NB`` times per
candidate (the candidates, read exactly once, are the DRAM stream). The gen FIELD statistics
are accumulated once per ``(t, chunk)``, by the programs of candidate block 0, not per
candidate. ``prefetch`` double-buffers the loads in registers (the next tile is in flight
while this one is computed).

*Loads.* Strides (in elements) are passed explicitly; nothing is copied. When a field is laid
out as packed (dx, dy) pairs with packed rows (``stride_c == 1``, ``stride_w == 2``,
``stride_h == 2W``: any contiguous field, or one sliced along N or T) a pixel's pair is one
``[.., 2]`` load that the compiler vectorizes into a float2 / half2 access (checked in the
sm_90 PTX) at offset ``2p`` (``PAIRED_G`` / ``PAIRED_C``). Otherwise ``(i, j) = divmod(p, W)``
give ``i * stride_h + j * stride_w`` and two scalar loads (the second hits the same cache
lines). ``divmod`` uses an exactly corrected float32 quotient (``FAST_DIV``, frames under
2^22 pixels) rather than a ~30-instruction int32 division. In-frame offsets are int32 unless
a frame spans >= 2^31 elements (``OFF64``); frame bases are int64.

*Precision.* Per-pixel arithmetic is float32 (fp16 inputs are widened exactly). Every
statistic is accumulated elementwise in float32 ``[NB, BLOCK]`` registers over the
program's ``group`` tiles, reduced once per program (``tl.sum``, a tree) and written as a
float64 partial; the ``chunks`` partials of a frame are summed in float64 in a fixed order
(``torch.sum``: deterministic). The float32 error of a statistic is thus at most
~``(group + log2(NB * BLOCK)) * 2^-24`` (~1.6e-6 with the GPU defaults) of the sum of the
absolute values of its terms, whatever the frame size; there is no float64 loop state
(registers) and no cross-thread reduction, hence no barrier, in the loop.

*The motion mask is exact.* ``|v| > mu_min`` is decided as the reference decides it: IEEE
sqrt is monotone, so ``sqrt(s) > mu_min <=> s > thr`` with ``thr = sq_threshold(mu_min)``
computed on the host, and the reference's ``s = fl64(vx^2 + vy^2)`` of float32 components
needs no sqrt. The loop tests ``s`` in float32 and flags the vectors whose float32 ``s`` is
within its error bound of the threshold; if a program saw any (rare for real flows), it
redoes its PAIR sums with the test in float64 (one branch per program). COUNT, and the set
of pixels every PAIR sum runs over, are therefore bit-identical to the float64 reference
without affine, and with affine up to float64 rounding of the residual. mu_min = 0 tests
``v != 0`` on the components; thresholds outside [1e-15, 1e15] px use float64 throughout.
Limitation: components above ~1e19 px overflow float32 squares (not real flows).

*Affine subtraction.* ``v = u - (a0 + a1 x + a2 y, b0 + b1 x + b2 y)`` on the normalized
grid ``x_j = (2j + 1) / W - 1``, ``y_i = (2i + 1) / H - 1`` (float32 values for the
cosines and ratios, float64 for the exact test); FIELD statistics always describe the raw
fields, PAIR statistics the residuals, exactly as the reference.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = ["FlowConfig", "flow_similarity", "pick_config", "sq_threshold"]

_I32_MAX = 2**31 - 1
#: tl.fdiv(..., approx=True) is recent (Triton 3.9 has it); older versions divide with `/`
_APPROX_DIV: tl.constexpr = tl.constexpr("approx" in inspect.signature(tl.fdiv).parameters)


# --------------------------------------------------------------------------------------------
# Triton device helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _load_uv(ptrs, mask, stride_c, PAIRED: tl.constexpr):
    """(u_x, u_y) as float32 at ``ptrs`` (pointers to the pixels' dx; any shape)."""
    if PAIRED:
        # one [.., 2] access per pixel: vectorized to float2 / half2 by the compiler
        v = tl.load(
            tl.expand_dims(ptrs, -1) + tl.arange(0, 2),
            mask=tl.expand_dims(mask, -1),
            other=0.0,
        )
        ux, uy = tl.split(v.to(tl.float32))
    else:
        ux = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        uy = tl.load(ptrs + stride_c, mask=mask, other=0.0).to(tl.float32)
    return ux, uy


@triton.jit
def _pixel_offsets(p, i, j, stride_h, stride_w, PAIRED: tl.constexpr, OFF64: tl.constexpr):
    """Element offsets of pixels (i, j) = divmod(p, W) inside one frame."""
    if PAIRED and OFF64:
        off = p.to(tl.int64) * 2
    elif PAIRED:
        off = p * 2
    elif OFF64:
        off = i.to(tl.int64) * stride_h + j.to(tl.int64) * stride_w
    else:
        off = i * stride_h + j * stride_w
    return off


@triton.jit
def _rows_cols(p, W, inv_w32, FAST_DIV: tl.constexpr):
    """divmod(p, W). FAST_DIV (p < 2^22): a float32 estimate of the quotient is off by at most
    one and is corrected exactly; a few instructions instead of a ~30-instruction int32 div."""
    if FAST_DIV:
        i = ((p.to(tl.float32) + 0.5) * inv_w32).to(tl.int32)
        j = p - i * W
        i = i + (j >= W).to(tl.int32) - (j < 0).to(tl.int32)
    else:
        i = p // W
    return i, p - i * W


@triton.jit
def _load_tile(
    p0, end, W, inv_w32, g_frame, r_rows, n_mask,
    sg_h, sg_w, sg_c, sr_h, sr_w, sr_c,
    BLOCK: tl.constexpr, PAIRED_G: tl.constexpr, PAIRED_C: tl.constexpr,
    OFF64: tl.constexpr, FAST_DIV: tl.constexpr,
):  # fmt: skip
    """Pixels [p0, p0 + BLOCK) of the gen frame ([BLOCK]) and of NB candidates ([NB, BLOCK]);
    lanes at or past ``end`` are masked (no memory access)."""
    p = p0 + tl.arange(0, BLOCK)
    p_mask = p < end
    i, j = _rows_cols(p, W, inv_w32, FAST_DIV)
    g_off = _pixel_offsets(p, i, j, sg_h, sg_w, PAIRED_G, OFF64)
    gx, gy = _load_uv(g_frame + g_off, p_mask, sg_c, PAIRED_G)
    r_off = _pixel_offsets(p, i, j, sr_h, sr_w, PAIRED_C, OFF64)
    r_mask = n_mask[:, None] & p_mask[None, :]
    rx, ry = _load_uv(r_rows[:, None] + r_off[None, :], r_mask, sr_c, PAIRED_C)
    return i, j, gx, gy, r_mask, rx, ry


@triton.jit
def _div(a, b, APPROX: tl.constexpr):
    """a / b. APPROX: div.approx.f32 (2 ulp, two instructions instead of ~eight), accurate
    here since every denominator is a normal number >= 1e-30."""
    if APPROX:  # noqa: SIM108 (constexpr branch: the other one is not compiled)
        q = tl.fdiv(a, b, approx=True)
    else:
        q = a / b
    return q


@triton.jit
def _residual(ux, uy, x, y, a0, a1, a2, b0, b1, b2):
    """u - (a0 + a1 x + a2 y, b0 + b1 x + b2 y): the flow left after an affine motion."""
    return ux - (a0 + a1 * x + a2 * y), uy - (b0 + b1 * x + b2 * y)


@triton.jit
def _slack(a0, a1, a2, b0, b1, b2):
    """Bound on the per-component error of a float32 residual (parameters rounded to float32,
    float32 grid, three roundings): 2^-19 * sum |params|."""
    s = tl.abs(a0) + tl.abs(a1) + tl.abs(a2) + tl.abs(b0) + tl.abs(b1) + tl.abs(b2)
    return s.to(tl.float32) * 1.9073486328125e-06


@triton.jit
def _motion(
    ux, uy, x, y, x64, y64, a0, a1, a2, b0, b1, b2, slack, thr, thr32,
    MU_ZERO: tl.constexpr, AFFINE: tl.constexpr, EXACT: tl.constexpr,
):  # fmt: skip
    """The (residual) vector v that PAIR statistics score, as float32, and the test
    ``|v| > mu_min`` -> (vx, vy, |v|^2 (float32), moving, ambiguous).

    Fast path (EXACT False), float32: ``s = fma(vx, vx, vy * vy)`` is within 2^-22 s of the
    exact squared norm and thr32 within 2^-24 thr of the float64 threshold, so the answer is
    certain unless ``|s - thr32| <= 2^-19 thr32``; a float32 residual may be off by
    ``slack`` per component, which widens that band by ``2 slack (|vx| + |vy| + slack)``.
    mu_min = 0 without affine is decided exactly on the components (``v != 0``).

    EXACT: the decision in float64 from the raw float32 components. Their squares are exact in
    float64, so without affine ``s`` is the reference's fl64(ux^2 + uy^2) bit for bit and
    ``s > thr`` is its ``|u| > mu_min``; with affine the float64 residual is within a few
    float64 ulps of the reference's."""
    vx, vy = ux, uy
    if AFFINE:
        vx, vy = _residual(ux, uy, x, y, a0.to(tl.float32), a1.to(tl.float32),
                           a2.to(tl.float32), b0.to(tl.float32), b1.to(tl.float32),
                           b2.to(tl.float32))  # fmt: skip
    s = vx * vx + vy * vy
    if EXACT:
        wx = ux.to(tl.float64)
        wy = uy.to(tl.float64)
        if AFFINE:
            wx, wy = _residual(wx, wy, x64, y64, a0, a1, a2, b0, b1, b2)
        moving = wx * wx + wy * wy > thr
        amb = moving & False
    elif MU_ZERO and not AFFINE:
        moving = (ux != 0.0) | (uy != 0.0)
        amb = moving & False
    else:
        moving = s > thr32
        # 2^-19 thr32 covers the float32 errors: s within 2^-22 s (s <= 2 thr32 here) and
        # thr32 within 2^-24 thr; a constant, so the common case costs one compare
        band = 1.9073486328125e-06 * thr32
        if AFFINE:
            band += 2.0 * slack * (tl.abs(vx) + tl.abs(vy) + slack)
        amb = tl.abs(s - thr32) <= band
    return vx, vy, s, moving, amb


@triton.jit
def _pair_terms(
    i, j, x, y, inv_w, inv_h, gx_raw, gy_raw, rx_raw, ry_raw, r_mask, thr, thr32,
    ga0, ga1, ga2, gb0, gb1, gb2, g_slack, ca0, ca1, ca2, cb0, cb1, cb2, c_slack,
    MU_ZERO: tl.constexpr, HAS_GA: tl.constexpr, HAS_CA: tl.constexpr, EXACT: tl.constexpr,
):  # fmt: skip
    """PAIR terms of one tile: (m, c, ratio, ambiguous), [NB, BLOCK] each."""
    x64 = x
    y64 = y
    if EXACT and (HAS_GA or HAS_CA):
        x64 = (2 * j + 1).to(tl.float64) * inv_w - 1.0
        y64 = (2 * i + 1).to(tl.float64) * inv_h - 1.0
    gx, gy, g2, g_ok, g_amb = _motion(
        gx_raw, gy_raw, x, y, x64, y64, ga0, ga1, ga2, gb0, gb1, gb2, g_slack, thr, thr32,
        MU_ZERO, HAS_GA, EXACT,
    )  # fmt: skip
    rx, ry, r2, r_ok, r_amb = _motion(
        rx_raw, ry_raw, x[None, :], y[None, :], x64[None, :], y64[None, :],
        ca0, ca1, ca2, cb0, cb1, cb2, c_slack, thr, thr32, MU_ZERO, HAS_CA, EXACT,
    )  # fmt: skip
    m = g_ok[None, :] & r_ok & r_mask  # padded pixels of a residual field are not zero
    amb = (g_amb[None, :] | r_amb) & r_mask
    gm = tl.sqrt(g2)[None, :]
    rm = tl.sqrt(r2)
    c = _div(gx[None, :] * rx + gy[None, :] * ry, gm * rm + 1e-8, _APPROX_DIV)
    ratio = _div(tl.minimum(gm, rm), tl.maximum(tl.maximum(gm, rm), 1e-30), _APPROX_DIV)
    return m, c, ratio, amb


@triton.jit
def _flow_sim_kernel(
    G, R, GA, CA, CONSTS,
    PAIR, CFIELD, GFIELD,
    N, T, HW, W, chunk_pixels, n_blocks,
    sg_t, sg_h, sg_w, sg_c,
    sr_n, sr_t, sr_h, sr_w, sr_c,
    NB: tl.constexpr, BLOCK: tl.constexpr,
    PAIRED_G: tl.constexpr, PAIRED_C: tl.constexpr, OFF64: tl.constexpr,
    HAS_GA: tl.constexpr, HAS_CA: tl.constexpr, MU_ZERO: tl.constexpr,
    FAST_DIV: tl.constexpr, PREFETCH: tl.constexpr, EXACT_ONLY: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    nb = pid % n_blocks
    t = pid // n_blocks
    t64 = t.to(tl.int64)
    # float64 scalars (Triton passes Python floats as float32): the exact squared-norm
    # threshold and the grid steps 1/W, 1/H
    thr = tl.load(CONSTS + 0)
    inv_w = tl.load(CONSTS + 1)
    inv_h = tl.load(CONSTS + 2)
    thr32 = thr.to(tl.float32)
    inv_w32 = inv_w.to(tl.float32)
    inv_h32 = inv_h.to(tl.float32)

    offs_n = nb * NB + tl.arange(0, NB)
    n_mask = offs_n < N
    g_frame = G + t64 * sg_t
    r_rows = R + (offs_n.to(tl.int64) * sr_n + t64 * sr_t)  # [NB] frame starts

    # affine parameters (float64; the fast path rounds them to float32)
    z64 = tl.zeros([], tl.float64)
    ga0, ga1, ga2, gb0, gb1, gb2 = z64, z64, z64, z64, z64, z64
    g_slack = tl.zeros([], tl.float32)
    if HAS_GA:
        ga = GA + t64 * 6
        ga0 = tl.load(ga + 0)
        ga1 = tl.load(ga + 1)
        ga2 = tl.load(ga + 2)
        gb0 = tl.load(ga + 3)
        gb1 = tl.load(ga + 4)
        gb2 = tl.load(ga + 5)
        g_slack = _slack(ga0, ga1, ga2, gb0, gb1, gb2)
    ca0, ca1, ca2, cb0, cb1, cb2 = z64, z64, z64, z64, z64, z64
    c_slack = tl.zeros([], tl.float32)
    if HAS_CA:
        ca = CA + (offs_n.to(tl.int64) * T + t64) * 6
        ca0 = tl.load(ca + 0, mask=n_mask, other=0.0)[:, None]
        ca1 = tl.load(ca + 1, mask=n_mask, other=0.0)[:, None]
        ca2 = tl.load(ca + 2, mask=n_mask, other=0.0)[:, None]
        cb0 = tl.load(ca + 3, mask=n_mask, other=0.0)[:, None]
        cb1 = tl.load(ca + 4, mask=n_mask, other=0.0)[:, None]
        cb2 = tl.load(ca + 5, mask=n_mask, other=0.0)[:, None]
        c_slack = _slack(ca0, ca1, ca2, cb0, cb1, cb2)

    # float32 elementwise accumulators over this program's tiles (a bounded number: bounded
    # rounding error), reduced once at the end: no float64 loop-carried state (registers)
    # and no cross-thread reduction, hence no barrier, inside the loop
    z = tl.zeros([NB, BLOCK], tl.float32)
    a_cnt, a_cos, a_rat, a_cr = z, z, z, z
    b_mag, b_sq, b_sx, b_sxx, b_syx, b_sy, b_sxy, b_syy = z, z, z, z, z, z, z, z
    zg = tl.zeros([BLOCK], tl.float32)
    g_mag, g_sq, g_sx, g_sxx, g_syx, g_sy, g_sxy, g_syy = zg, zg, zg, zg, zg, zg, zg, zg
    any_amb = tl.zeros([NB, BLOCK], tl.int32)

    start = chunk * chunk_pixels
    end = tl.minimum(start + chunk_pixels, HW)
    if PREFETCH:  # registers double-buffer the loads: one tile in flight while computing
        nxt = _load_tile(start, end, W, inv_w32, g_frame, r_rows, n_mask,
                         sg_h, sg_w, sg_c, sr_h, sr_w, sr_c,
                         BLOCK, PAIRED_G, PAIRED_C, OFF64, FAST_DIV)  # fmt: skip
    for p0 in range(start, end, BLOCK):
        if PREFETCH:
            i, j, gx_raw, gy_raw, r_mask, rx_raw, ry_raw = nxt
            nxt = _load_tile(p0 + BLOCK, end, W, inv_w32, g_frame, r_rows, n_mask,
                             sg_h, sg_w, sg_c, sr_h, sr_w, sr_c,
                             BLOCK, PAIRED_G, PAIRED_C, OFF64, FAST_DIV)  # fmt: skip
        else:
            i, j, gx_raw, gy_raw, r_mask, rx_raw, ry_raw = _load_tile(
                p0, end, W, inv_w32, g_frame, r_rows, n_mask,
                sg_h, sg_w, sg_c, sr_h, sr_w, sr_c,
                BLOCK, PAIRED_G, PAIRED_C, OFF64, FAST_DIV,
            )  # fmt: skip
        x = (2 * j + 1).to(tl.float32) * inv_w32 - 1.0
        y = (2 * i + 1).to(tl.float32) * inv_h32 - 1.0

        # ---- FIELD statistics of the raw fields (gen: once per (t, chunk), by block 0)
        if nb == 0:
            g2_raw = gx_raw * gx_raw + gy_raw * gy_raw
            g_mag += tl.sqrt(g2_raw)
            g_sq += g2_raw
            g_sx += gx_raw
            g_sxx += x * gx_raw
            g_syx += y * gx_raw
            g_sy += gy_raw
            g_sxy += x * gy_raw
            g_syy += y * gy_raw
        xb = x[None, :]
        yb = y[None, :]
        r2_raw = rx_raw * rx_raw + ry_raw * ry_raw
        b_mag += tl.sqrt(r2_raw)
        b_sq += r2_raw
        b_sx += rx_raw
        b_sxx += xb * rx_raw
        b_syx += yb * rx_raw
        b_sy += ry_raw
        b_sxy += xb * ry_raw
        b_syy += yb * ry_raw

        # ---- PAIR statistics of the (residual) fields, fast threshold test
        m, c, ratio, amb = _pair_terms(
            i, j, x, y, inv_w, inv_h, gx_raw, gy_raw, rx_raw, ry_raw, r_mask, thr, thr32,
            ga0, ga1, ga2, gb0, gb1, gb2, g_slack, ca0, ca1, ca2, cb0, cb1, cb2, c_slack,
            MU_ZERO, HAS_GA, HAS_CA, EXACT_ONLY,
        )  # fmt: skip
        any_amb |= amb.to(tl.int32)
        a_cnt += tl.where(m, 1.0, 0.0)
        a_cos += tl.where(m, c, 0.0)
        a_rat += tl.where(m, ratio, 0.0)
        a_cr += tl.where(m, c * ratio, 0.0)

    # Rare: some vector within float32 rounding of the threshold. Redo this program's PAIR
    # sums with the float64 test (one reduction per program; the fast loop stays float32).
    if (not EXACT_ONLY) and tl.max(tl.max(any_amb, 1), 0) > 0:
        a_cnt, a_cos, a_rat, a_cr = z, z, z, z
        for p0 in range(start, end, BLOCK):
            i, j, gx_raw, gy_raw, r_mask, rx_raw, ry_raw = _load_tile(
                p0, end, W, inv_w32, g_frame, r_rows, n_mask,
                sg_h, sg_w, sg_c, sr_h, sr_w, sr_c,
                BLOCK, PAIRED_G, PAIRED_C, OFF64, FAST_DIV,
            )  # fmt: skip
            x = (2 * j + 1).to(tl.float32) * inv_w32 - 1.0
            y = (2 * i + 1).to(tl.float32) * inv_h32 - 1.0
            m, c, ratio, amb = _pair_terms(
                i, j, x, y, inv_w, inv_h, gx_raw, gy_raw, rx_raw, ry_raw, r_mask, thr, thr32,
                ga0, ga1, ga2, gb0, gb1, gb2, g_slack, ca0, ca1, ca2, cb0, cb1, cb2, c_slack,
                MU_ZERO, HAS_GA, HAS_CA, True,
            )  # fmt: skip
            a_cnt += tl.where(m, 1.0, 0.0)
            a_cos += tl.where(m, c, 0.0)
            a_rat += tl.where(m, ratio, 0.0)
            a_cr += tl.where(m, c * ratio, 0.0)

    # partial outputs [chunks, N, T, 4|8] and [chunks, T, 8] (the outputs when chunks == 1)
    row = (chunk.to(tl.int64) * N + offs_n) * T + t64
    pp = PAIR + row * 4
    tl.store(pp + 0, tl.sum(a_cnt, 1).to(tl.float64), mask=n_mask)
    tl.store(pp + 1, tl.sum(a_cos, 1).to(tl.float64), mask=n_mask)
    tl.store(pp + 2, tl.sum(a_rat, 1).to(tl.float64), mask=n_mask)
    tl.store(pp + 3, tl.sum(a_cr, 1).to(tl.float64), mask=n_mask)
    fp = CFIELD + row * 8
    tl.store(fp + 0, tl.sum(b_mag, 1).to(tl.float64), mask=n_mask)
    tl.store(fp + 1, tl.sum(b_sq, 1).to(tl.float64), mask=n_mask)
    tl.store(fp + 2, tl.sum(b_sx, 1).to(tl.float64), mask=n_mask)
    tl.store(fp + 3, tl.sum(b_sxx, 1).to(tl.float64), mask=n_mask)
    tl.store(fp + 4, tl.sum(b_syx, 1).to(tl.float64), mask=n_mask)
    tl.store(fp + 5, tl.sum(b_sy, 1).to(tl.float64), mask=n_mask)
    tl.store(fp + 6, tl.sum(b_sxy, 1).to(tl.float64), mask=n_mask)
    tl.store(fp + 7, tl.sum(b_syy, 1).to(tl.float64), mask=n_mask)
    if nb == 0:
        gp = GFIELD + (chunk.to(tl.int64) * T + t64) * 8
        tl.store(gp + 0, tl.sum(g_mag, 0).to(tl.float64))
        tl.store(gp + 1, tl.sum(g_sq, 0).to(tl.float64))
        tl.store(gp + 2, tl.sum(g_sx, 0).to(tl.float64))
        tl.store(gp + 3, tl.sum(g_sxx, 0).to(tl.float64))
        tl.store(gp + 4, tl.sum(g_syx, 0).to(tl.float64))
        tl.store(gp + 5, tl.sum(g_sy, 0).to(tl.float64))
        tl.store(gp + 6, tl.sum(g_sxy, 0).to(tl.float64))
        tl.store(gp + 7, tl.sum(g_syy, 0).to(tl.float64))


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowConfig:
    """Launch configuration.

    ``nb``: candidates per program (a power of two; gen is read from L2 ``ceil(N / nb)``
    times); ``block``: pixels per tile (a power of two); ``group``: tiles per program (its
    float32 elementwise sums then cover ``group`` tiles: the float32 error bound grows with
    it); ``prefetch``: load the next tile before computing this one; ``maxnreg``: register
    cap per thread (occupancy). Chosen offline for sm_90 by compiling (no spills at 2
    programs of 8 warps per SM); to be re-tuned on an H100 with benchmarks/gpu_check_flow.py.
    """

    nb: int = 4
    block: int = 256
    group: int = 16
    num_warps: int = 8
    num_stages: int = 1
    prefetch: bool = True
    maxnreg: int | None = 128


#: With affine subtraction the kernel holds more live values: half the candidates per
#: program and no register cap (a cap of 128 spills).
_AFFINE_CONFIG = FlowConfig(nb=2, block=256, group=16, num_warps=4, prefetch=False, maxnreg=None)
#: Interpreter: numpy is slow per element, not per op, but tiny tiles exercise every mask.
_INTERPRET_CONFIG = FlowConfig(nb=2, block=32, group=2, num_warps=1, maxnreg=None)

#: in-frame element offsets beyond this are computed in int64
_OFF64_LIMIT = _I32_MAX
#: exact float32 quotient estimate in _rows_cols (pixel indices incl. a prefetch overrun)
_FAST_DIV_LIMIT = 2**22
#: mu_min range where the float32 threshold test is sound (squares near the threshold are
#: normal float32 numbers); outside it (absurd thresholds) every test is done in float64
_FAST_MU = (1e-15, 1e15)
#: grid axis 1 (pixel chunks) limit on CUDA
_MAX_CHUNKS = 65535


def _interpreting(device: torch.device) -> bool:
    return device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def pick_config(n: int, affine: bool, device: torch.device) -> FlowConfig:
    """The configuration used when none is given (depends only on the problem and the device
    kind, so results are reproducible)."""
    if _interpreting(device):
        return _INTERPRET_CONFIG
    cfg = _AFFINE_CONFIG if affine else FlowConfig()
    nb = min(cfg.nb, 1 << max(0, n - 1).bit_length())  # no all-masked candidate rows
    return dataclasses.replace(cfg, nb=nb)


def _chunking(cfg: FlowConfig, hw: int) -> tuple[int, int]:
    """(chunks, pixels per chunk); a chunk is ``group`` whole tiles (more for huge frames,
    where the grid's second axis would overflow)."""
    tiles = triton.cdiv(hw, cfg.block)
    group = max(cfg.group, triton.cdiv(tiles, _MAX_CHUNKS))
    per = group * cfg.block
    return triton.cdiv(hw, per), per


@functools.lru_cache(maxsize=64)
def _consts(mu_min: float, h: int, w: int, device: torch.device) -> torch.Tensor:
    """float64 kernel scalars (Triton passes Python floats as float32), cached per device so
    a call does no host-to-device copy."""
    v = [sq_threshold(mu_min), 1.0 / w, 1.0 / h]
    return torch.tensor(v, dtype=torch.float64).to(device)


def sq_threshold(mu_min: float) -> float:
    """The largest double ``s`` with ``sqrt(s) <= mu_min``.

    IEEE sqrt is correctly rounded, hence monotone, so for a squared norm ``s`` computed as
    the reference does (``fl64(dx^2 + dy^2)``): ``sqrt(s) > mu_min  <=>  s > sq_threshold``.
    The kernels thus reproduce the reference's mask bit for bit without a float64 sqrt."""
    mu = float(mu_min)
    s = mu * mu
    while s > 0.0 and math.sqrt(s) > mu:
        s = math.nextafter(s, -math.inf)
    while math.sqrt(math.nextafter(s, math.inf)) <= mu:
        s = math.nextafter(s, math.inf)
    return s


def _paired(x: torch.Tensor) -> bool:
    """(dx, dy) packed as pairs with packed rows: one 2-element access per pixel, offset 2p."""
    w = x.shape[-2]
    return (
        x.stride(-1) == 1
        and (x.stride(-2) == 2 or w == 1)
        and (x.stride(-3) == 2 * w or x.shape[-3] == 1)
    )


def _frame_span(x: torch.Tensor) -> int:
    """Largest in-frame element offset + 1."""
    h, w = x.shape[-3], x.shape[-2]
    return (h - 1) * x.stride(-3) + (w - 1) * x.stride(-2) + x.stride(-1) + 1


def _params(a: torch.Tensor | None, dev: torch.device) -> torch.Tensor | None:
    """Affine parameter tables, float64 contiguous (tiny: a copy costs nothing)."""
    return None if a is None else a.to(device=dev, dtype=torch.float64).contiguous()


def flow_similarity(
    gen: torch.Tensor,
    cands: torch.Tensor,
    mu_min: float,
    gen_affine: torch.Tensor | None,
    cand_affine: torch.Tensor | None,
    *,
    config: FlowConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PAIR / FIELD statistics of ``gen`` (T, H, W, 2) against ``cands`` (N, T, H, W, 2),
    float32 or float16, any strides, on one device; affine tensors float64 (T, 6) /
    (N, T, 6) or None. Returns float64 contiguous tensors on that device: ``pair`` (N, T, 4),
    ``gen_field`` (T, 8), ``cand_field`` (N, T, 8) (definitions: memlens.reference.flow).
    Empty inputs (N, T, H or W = 0) give zeros, as memlens.ops.flow documents."""
    if gen.dim() != 4 or cands.dim() != 5 or tuple(cands.shape[1:]) != tuple(gen.shape):
        raise ValueError(
            f"gen must be (T, H, W, 2) and cands (N, T, H, W, 2); got {tuple(gen.shape)} and "
            f"{tuple(cands.shape)}"
        )
    if gen.shape[-1] != 2:
        raise ValueError(f"the last axis must be (dx, dy); got {gen.shape[-1]}")
    for name, x in (("gen", gen), ("cands", cands)):
        if x.dtype not in (torch.float32, torch.float16):
            raise TypeError(f"{name} must be float32 or float16; got {x.dtype}")
    if gen.device != cands.device:
        raise ValueError(f"gen and cands must be on one device; got {gen.device}, {cands.device}")
    n, t, h, w = (int(v) for v in cands.shape[:4])
    dev = gen.device
    hw = h * w
    # every entry is written by the kernel (or by the chunk sum): no memset launches
    alloc = torch.zeros if n == 0 or t == 0 or hw == 0 else torch.empty
    pair = alloc((n, t, 4), dtype=torch.float64, device=dev)
    cfield = alloc((n, t, 8), dtype=torch.float64, device=dev)
    gfield = alloc((t, 8), dtype=torch.float64, device=dev)
    if n == 0 or t == 0 or hw == 0:
        return pair, gfield, cfield
    if hw > _I32_MAX:
        raise ValueError(f"frames must have fewer than 2^31 pixels; got {h} x {w}")

    ga = _params(gen_affine, dev)
    ca = _params(cand_affine, dev)
    cfg = config or pick_config(n, ga is not None or ca is not None, dev)
    n_blocks = triton.cdiv(n, cfg.nb)
    chunks, per = _chunking(cfg, hw)
    if chunks == 1:
        out_p, out_c, out_g = pair, cfield, gfield
    else:
        out_p = torch.empty((chunks, n, t, 4), dtype=torch.float64, device=dev)
        out_c = torch.empty((chunks, n, t, 8), dtype=torch.float64, device=dev)
        out_g = torch.empty((chunks, t, 8), dtype=torch.float64, device=dev)
    off64 = max(_frame_span(gen), _frame_span(cands)) > _OFF64_LIMIT
    grid = (t * n_blocks, chunks)
    extra = {} if cfg.maxnreg is None else {"maxnreg": cfg.maxnreg}
    _flow_sim_kernel[grid](
        gen, cands, ga if ga is not None else pair, ca if ca is not None else pair,
        _consts(float(mu_min), h, w, dev), out_p, out_c, out_g,
        n, t, hw, w, per, n_blocks,
        gen.stride(0), gen.stride(1), gen.stride(2), gen.stride(3),
        cands.stride(0), cands.stride(1), cands.stride(2), cands.stride(3), cands.stride(4),
        NB=cfg.nb, BLOCK=cfg.block,
        PAIRED_G=_paired(gen), PAIRED_C=_paired(cands), OFF64=off64,
        HAS_GA=ga is not None, HAS_CA=ca is not None, MU_ZERO=mu_min == 0,
        FAST_DIV=hw + per < _FAST_DIV_LIMIT, PREFETCH=cfg.prefetch,
        EXACT_ONLY=mu_min != 0 and not _FAST_MU[0] <= mu_min <= _FAST_MU[1],
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=True, **extra,
    )  # fmt: skip
    if chunks > 1:
        # second level: float64, fixed order over the chunk axis (deterministic)
        torch.sum(out_p, dim=0, out=pair)
        torch.sum(out_c, dim=0, out=cfield)
        torch.sum(out_g, dim=0, out=gfield)
    return pair, gfield, cfield
