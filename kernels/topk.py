# mypy: disable-error-code="no-untyped-def"
"""Triton backend of the exact cosine top-k search (and its reduced-precision candidate stage).

Public entry points (called by ``memlens.backends.triton``)::

    topk_exact(queries, refs, k, normalize_refs) -> (scores f32 (nq,k), indices i64 (nq,k))
    topk_candidates(queries, refs, kc, normalize_refs, precision) -> (approx, indices, err)

Design
------
*Packed keys.* A score and its reference index travel together as one int64 key::

    key = (ordered_int32(score) << 32) | (0xFFFFFFFF - index)

``ordered_int32`` is the usual order-preserving map of an fp32 bit pattern onto int32
(negative floats get their 31 low bits flipped; -0.0 is folded onto +0.0). Ordering keys as
integers orders by score first and, on equal scores, by the *lower* index first, so every
sort / top-k / merge below is exact and deterministic and resolves ties the way the contract
asks. Invalid slots hold ``_NEG_KEY``, which is below the key of every finite score.

*Fused path* (``kp = next_pow2(k) <= FUSED_KP_MAX``): grid = (query tiles, ref splits).
Each program streams its slice of the references in ``BLOCK_R`` tiles, computes the
``BLOCK_Q x BLOCK_R`` score tile with ``tl.dot`` (looping over d in ``BLOCK_D`` chunks; the
refs are read in place with arbitrary strides and any of fp32/fp16/bf16) and keeps a
running, unordered per-query list of ``kp`` packed keys in registers together with its
minimum (the row's threshold key) and that key's score. Per tile:

1. fp32 pre-filter ``score >= threshold score``; a tile with no candidate in any row (the
   common case once the list has warmed up) costs one compare and one reduction;
2. otherwise the tile's keys are packed and merged, by one of (``_Config.sort_min_hits``):
   - *insert*: while some row has a tile key above its threshold, move each row's largest
     tile key into the slot of the row's minimum. Cost ~ (max new entries per row) x tile,
     few registers. GPU default.
   - *bitonic network*: ``topk(tile, kp)`` then ``topk(join(best, tile), kp)``
     (``tl.topk``; under the interpreter an equivalent min/max network, since the
     interpreter evaluates ``tl.topk``'s xor-reduction element by element). Cost independent
     of the number of entries but high register pressure (spills on sm_90).
   - *hybrid*: network when some row has >= ``sort_min_hits`` new entries, else insert.
   The sentinels of empty slots are distinct (``_NEG_KEY + slot``) so that a row's minimum
   is always one unique slot.

Each program writes its ``kp`` keys to a workspace ``(nq, splits, kp)``; ``torch.topk``
over the ``splits * kp`` packed keys of each query gives the final answer (keys are unique,
so torch's tie handling does not matter). The workspace is bounded by ``_WORKSPACE_BYTES``
(queries are processed in chunks).

*Streaming fallback* (``kp > FUSED_KP_MAX``, i.e. k > 256, up to nr): a Triton kernel writes
the packed keys of one bounded ``(query chunk x ref chunk)`` block to a scratch buffer and
``torch.topk`` merges it with the running top-k of that query chunk. Exact, O(chunk)
memory, but unfused (throughput bounded by torch.topk, see performance.md §1.5).

*Reference statistics pre-pass* (``_ref_stats_kernel``): one streaming pass over the refs
(two reads of each row block, the second from cache) that writes the per-row fp32 factors
the main kernel needs -- ``inv = 1 / max(||r||, 1e-12)`` (accumulated in fp64), and for the
candidate precisions the quantization multiplier ``c`` and dequantization scale ``s`` -- and,
per program, the maxima needed by the error bound, computed in fp64 from exactly the same
fp32 quantization the main kernel performs.

*Precisions.*
- exact: fp32 operands, ``tl.dot(..., input_precision="ieee")`` (no TF32), score = acc * inv.
- bf16: ref tile ``r~ = bf16_rtne(r * c)`` with ``c = inv`` (or 1), query ``q~ = bf16(q)``,
  fp32 accumulation. Rounding to bf16 is done with integer bit operations (round to nearest
  even, identical on GPU and in the interpreter, whose own fp32->bf16 cast truncates).
  Under the interpreter the dot runs on the bf16-valued fp32 operands (its bf16 dot is
  broken), which is the same mathematical operation.
- int8: per-row symmetric scales. Ref: ``c = 127 / max|r|``, ``q_r = round(r * c)`` (clamped
  to +-127), ``s = max|r| * inv / 127``; query likewise (done in torch). int8 ``tl.dot`` to
  int32 (exact), score = acc * s_q * s_r.
Kernels doing quantization are launched with ``enable_fp_fusion=False`` so that the
pre-pass and the main kernel round bit-identically (no mul+add contraction).

*Error bound* (candidates): with q~, r~ the dequantized operands and r^ the real normalized
row, ``approx - exact = q~.(r~ - r^) + (q~ - q).r^ + accumulation error``, hence

    err[q] = ||q~|| max_r ||r~ - r^|| + ||q~ - q|| max_r ||r^|| + slack ||q~|| max_r ||r~||

where the norms are measured in fp64 (pre-pass for refs, torch for queries) and ``slack`` is
``(d + 32) 2^-22`` for bf16 (fp32 tensor-core accumulation, truncating adders allowed) and
``2^-20`` for int8 (exact integer accumulation, three fp32 roundings). The result is inflated by
``1 + 2^-20`` plus ``1e-30`` absolute to cover the fp64/fp32 roundings of the bound itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

__all__ = ["FUSED_KP_MAX", "topk_candidates", "topk_exact"]

#: Largest power-of-two list length kept in registers by the fused kernel.
FUSED_KP_MAX = 256
#: Budget for temporary buffers (per-split partial lists, fallback score blocks).
_WORKSPACE_BYTES = 128 << 20
#: Sentinel key: below the key of every finite (and infinite) score.
_NEG_KEY: tl.constexpr = tl.constexpr(-(2**63) + 1)
#: Every key of a real score (even -inf) is >= this; sentinels are below.
_MIN_VALID_KEY: tl.constexpr = tl.constexpr(-(2**63) + 2**32)
_NEVER_HITS = 1 << 30  # sort_min_hits value: never use the bitonic network
_NEVER: tl.constexpr = tl.constexpr(_NEVER_HITS)
# Triton 3.6 crashes (TritonGPURemoveLayoutConversions, sm_90) on the kernel with the hybrid
# merge (both merges in one loop); 3.9 compiles it. Older compilers get the one-at-a-time merge.
_HYBRID_COMPILES = tuple(int(x) for x in triton.__version__.split(".")[:2]) >= (3, 7)
_MAX_ROWS = 2**32 - 1  # indices are stored in 32 bits of the packed key

_MODE = {"exact": 0, "bf16": 1, "int8": 2}


# --------------------------------------------------------------------------------------------
# Triton device helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _pack_keys(score, idx):
    """int64 keys ordered by (score, -idx): descending key order = descending score, lower idx."""
    bits = score.to(tl.int32, bitcast=True)
    bits = tl.where((bits << 1) == 0, 0, bits)  # -0.0 -> +0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    low = tl.full([], 4294967295, tl.int64) - idx.to(tl.int64)
    return (ordered.to(tl.int64) << 32) | low


@triton.constexpr_function
def _log2(n):
    return int(n).bit_length() - 1


@triton.jit
def _indicator(n_dims: tl.constexpr, j: tl.constexpr):
    ar = tl.arange(0, 2)
    return tl.reshape(ar, [1] * (n_dims - j - 1) + [2] + [1] * j)


@triton.jit
def _cas(h, flip, i: tl.constexpr):
    """Compare-and-swap along the i-th innermost axis of a [2]*n hypercube via min/max.
    Same result as tl.standard._compare_and_swap (which the interpreter runs per element)."""
    n_dims: tl.constexpr = _log2(h.numel)
    lo = tl.min(h, axis=n_dims - 1 - i, keep_dims=True)
    hi = tl.max(h, axis=n_dims - 1 - i, keep_dims=True)
    right = (flip ^ _indicator(n_dims, i)).to(tl.int1)
    return tl.where(right, hi, lo)


@triton.jit
def _merge_hypercube(h, stage: tl.constexpr, order: tl.constexpr):
    if order == 2:  # noqa: SIM108 (constexpr branch)
        flip = _indicator(_log2(h.numel), stage)
    else:
        flip = tl.full([], order, tl.int32)
    for i in tl.static_range(stage):
        h = _cas(h, flip, stage - 1 - i)
    return h


@triton.jit
def _topk_last(x, K: tl.constexpr, NATIVE: tl.constexpr):
    """Top-K (descending, sorted) along the last axis of a 2-D tensor, K a power of two.

    NATIVE: ``tl.topk`` (GPU). Otherwise the same bitonic network written with min/max
    reductions, which the interpreter evaluates with numpy instead of per element."""
    if NATIVE:
        out = tl.topk(x, K)
    else:
        N: tl.constexpr = x.shape[1]
        log_n: tl.constexpr = _log2(N)
        log_k: tl.constexpr = _log2(K)
        if log_k == 0:
            out = tl.max(x, axis=1, keep_dims=True)
        else:
            n_dims: tl.constexpr = _log2(x.numel)
            h = tl.reshape(x, [2] * n_dims)
            for i in tl.static_range(1, log_k + 1):
                h = _merge_hypercube(h, i, 2 if i < log_n else 1)
            for i in tl.static_range(log_k + 1, log_n + 1):
                h = tl.max(h, axis=_log2(h.numel) - 1 - log_k)
                h = _merge_hypercube(h, log_k, 2 if i < log_n else 1)
            out = tl.reshape(h, [x.shape[0], K])
    return out


@triton.jit
def _key_score(key):
    """fp32 score of a packed key; -inf for the sentinels."""
    hi = (key >> 32).to(tl.int32)
    bits = hi ^ ((hi >> 31) & 0x7FFFFFFF)
    return tl.where(key < _MIN_VALID_KEY, float("-inf"), bits.to(tl.float32, bitcast=True))


@triton.jit
def _round_bf16(x):
    """fp32 -> fp32 value representable in bf16, round to nearest even (bit exact, portable)."""
    b = x.to(tl.int32, bitcast=True)
    b = b + (0x7FFF + ((b >> 16) & 1))
    b = b & -65536  # 0xFFFF0000
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _round_int8(y):
    """Round to the nearest integer (ties toward zero), clamp to [-127, 127]; returns int32."""
    t = y.to(tl.int32)  # truncation toward zero
    f = y - t.to(tl.float32)  # exact
    t = t + (f > 0.5).to(tl.int32) - (f < -0.5).to(tl.int32)
    return tl.minimum(tl.maximum(t, -127), 127)


@triton.jit
def _ref_operand(r, c, MODE: tl.constexpr, HAS_RC: tl.constexpr, DOT_LOWP: tl.constexpr):
    """fp32 ref tile -> the dot operand (c broadcast to r's shape)."""
    if MODE == 0:
        out = r
    elif MODE == 1:
        if HAS_RC:
            r = r * c
        out = _round_bf16(r)
        if DOT_LOWP:
            out = out.to(tl.bfloat16)  # exact: the value is already a bf16 number
    else:
        out = _round_int8(r * c).to(tl.int8)
    return out


@triton.jit
def _query_operand(q, MODE: tl.constexpr, DOT_LOWP: tl.constexpr):
    if MODE == 1 and DOT_LOWP:
        q = q.to(tl.bfloat16)  # exact: the host rounded the queries to bf16
    return q


@triton.jit
def _dot(a, b, acc, MODE: tl.constexpr, DOT_LOWP: tl.constexpr):
    if MODE == 0 or (MODE == 1 and not DOT_LOWP):
        acc = tl.dot(a, b, acc, input_precision="ieee")
    elif MODE == 2 and DOT_LOWP:
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)  # named: Triton < 3.7 does not infer it
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _score_tile(
    Q, R, RC, RS, QS,
    offs_q, offs_r, nq, nr, d,
    stride_qm, stride_qd, stride_rn, stride_rd,
    MODE: tl.constexpr, HAS_RC: tl.constexpr, HAS_RS: tl.constexpr, DOT_LOWP: tl.constexpr,
    REFS_AS_A: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """fp32 scores of a BLOCK_Q x BLOCK_R tile (rows/cols outside the matrix are garbage).

    REFS_AS_A computes the transposed tile R Q^T: the ref tile, which is transformed in
    registers (quantization), is then the A operand (Hopper wgmma may take A from registers,
    B must come from shared memory); the tile is transposed back at the end."""
    q_mask = offs_q < nq
    r_mask = offs_r < nr
    oq = offs_q.to(tl.int64)
    orr = offs_r.to(tl.int64)
    if HAS_RC:
        c = tl.load(RC + offs_r, mask=r_mask, other=0.0)
    else:
        c = tl.full([BLOCK_R], 1.0, tl.float32)
    ACC_M: tl.constexpr = BLOCK_R if REFS_AS_A else BLOCK_Q
    ACC_N: tl.constexpr = BLOCK_Q if REFS_AS_A else BLOCK_R
    if MODE == 2:
        acc = tl.zeros([ACC_M, ACC_N], dtype=tl.int32)
    else:
        acc = tl.zeros([ACC_M, ACC_N], dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < d
        od = offs_d.to(tl.int64)
        if REFS_AS_A:
            q = tl.load(
                Q + oq[None, :] * stride_qm + od[:, None] * stride_qd,
                mask=d_mask[:, None] & q_mask[None, :],
                other=0,
            )
            r = tl.load(
                R + orr[:, None] * stride_rn + od[None, :] * stride_rd,
                mask=r_mask[:, None] & d_mask[None, :],
                other=0,
            ).to(tl.float32)
            a = _ref_operand(r, c[:, None], MODE, HAS_RC, DOT_LOWP)
            acc = _dot(a, _query_operand(q, MODE, DOT_LOWP), acc, MODE, DOT_LOWP)
        else:
            q = tl.load(
                Q + oq[:, None] * stride_qm + od[None, :] * stride_qd,
                mask=q_mask[:, None] & d_mask[None, :],
                other=0,
            )
            r = tl.load(
                R + orr[None, :] * stride_rn + od[:, None] * stride_rd,
                mask=d_mask[:, None] & r_mask[None, :],
                other=0,
            ).to(tl.float32)
            b = _ref_operand(r, c[None, :], MODE, HAS_RC, DOT_LOWP)
            acc = _dot(_query_operand(q, MODE, DOT_LOWP), b, acc, MODE, DOT_LOWP)
    if REFS_AS_A:
        acc = tl.trans(acc)
    if MODE == 2:
        qs = tl.load(QS + offs_q, mask=q_mask, other=0.0)
        rs = tl.load(RS + offs_r, mask=r_mask, other=0.0)
        score = (acc.to(tl.float32) * qs[:, None]) * rs[None, :]
    else:
        score = acc
        if HAS_RS:
            rs = tl.load(RS + offs_r, mask=r_mask, other=0.0)
            score = score * rs[None, :]
    return score


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _merge_network(best, keys, KP: tl.constexpr, NATIVE_TOPK: tl.constexpr):
    """Bitonic merge of the tile's top-KP with the running list (any number of entries)."""
    BLOCK_Q: tl.constexpr = keys.shape[0]
    BLOCK_R: tl.constexpr = keys.shape[1]
    if BLOCK_R > KP:  # noqa: SIM108
        tile = _topk_last(keys, KP, NATIVE_TOPK)
    else:
        tile = keys
    merged = tl.reshape(tl.join(best, tile), [BLOCK_Q, 2 * KP])
    best = _topk_last(merged, KP, NATIVE_TOPK)
    # keep sentinels distinct (the one-at-a-time path relies on unique slots)
    sentinel = (tl.arange(0, KP).to(tl.int64) + _NEG_KEY)[None, :]
    best = tl.where(best < _MIN_VALID_KEY, sentinel, best)
    return best, tl.min(best, 1)


@triton.jit
def _merge_insert(best, keys, thresh):
    """Move the tile's row maxima in one at a time, each replacing the row's current minimum
    (a unique slot: all keys are distinct). Cheap when few keys beat the threshold."""
    m = tl.max(keys, 1)
    while tl.max(tl.where(m > thresh, 1, 0), 0) > 0:
        ins = m > thresh
        best = tl.where(ins[:, None] & (best == thresh[:, None]), m[:, None], best)
        keys = tl.where(keys == m[:, None], _NEG_KEY, keys)
        thresh = tl.min(best, 1)
        m = tl.max(keys, 1)
    return best, thresh


@triton.jit
def _fused_topk_kernel(
    Q, R, RC, RS, QS, WS,
    nq, nr, d,
    stride_qm, stride_qd, stride_rn, stride_rd,
    rows_per_split, n_splits,
    MODE: tl.constexpr, HAS_RC: tl.constexpr, HAS_RS: tl.constexpr, DOT_LOWP: tl.constexpr,
    REFS_AS_A: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, KP: tl.constexpr,
    NATIVE_TOPK: tl.constexpr, SORT_MIN_HITS: tl.constexpr,
):  # fmt: skip
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    r_lo = pid_s * rows_per_split
    r_hi = tl.minimum(r_lo + rows_per_split, nr)

    offs_k = tl.arange(0, KP)
    # running list, unordered; distinct sentinels so that its minimum is a unique slot
    best = tl.zeros([BLOCK_Q, KP], tl.int64) + (offs_k.to(tl.int64) + _NEG_KEY)[None, :]
    thresh = tl.min(best, 1)  # the KP-th best key of each row
    tscore = tl.full([BLOCK_Q], float("-inf"), tl.float32)  # its score (cheap pre-filter)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        score = _score_tile(
            Q, R, RC, RS, QS, offs_q, offs_r, nq, nr, d,
            stride_qm, stride_qd, stride_rn, stride_rd,
            MODE, HAS_RC, HAS_RS, DOT_LOWP, REFS_AS_A, BLOCK_Q, BLOCK_R, BLOCK_D,
        )  # fmt: skip
        valid = (offs_r < r_hi)[None, :]
        # fp32 filter first (>=: an equal score with a lower index may still enter)
        pre = tl.where((score >= tscore[:, None]) & valid, 1, 0)
        if tl.max(tl.max(pre, 1), 0) > 0:
            keys = _pack_keys(score, offs_r)
            keys = tl.where(valid & (keys > thresh[:, None]), keys, _NEG_KEY)
            if SORT_MIN_HITS == 0:
                best, thresh = _merge_network(best, keys, KP, NATIVE_TOPK)
            elif SORT_MIN_HITS >= _NEVER:
                best, thresh = _merge_insert(best, keys, thresh)
            else:
                n_hits = tl.max(tl.sum(tl.where(keys > thresh[:, None], 1, 0), 1), 0)
                if n_hits >= SORT_MIN_HITS:
                    best, thresh = _merge_network(best, keys, KP, NATIVE_TOPK)
                else:
                    best, thresh = _merge_insert(best, keys, thresh)
            tscore = _key_score(thresh)

    out = WS + offs_q.to(tl.int64)[:, None] * (n_splits * KP) + pid_s * KP + offs_k[None, :]
    tl.store(out, best, mask=(offs_q < nq)[:, None])


@triton.jit
def _score_keys_kernel(
    Q, R, RC, RS, QS, OUT,
    nq, nr, d,
    stride_qm, stride_qd, stride_rn, stride_rd, stride_om,
    MODE: tl.constexpr, HAS_RC: tl.constexpr, HAS_RS: tl.constexpr, DOT_LOWP: tl.constexpr,
    REFS_AS_A: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Packed keys of a (nq x nr) block (R already offset to the block's first row)."""
    offs_q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    score = _score_tile(
        Q, R, RC, RS, QS, offs_q, offs_r, nq, nr, d,
        stride_qm, stride_qd, stride_rn, stride_rd,
        MODE, HAS_RC, HAS_RS, DOT_LOWP, REFS_AS_A, BLOCK_Q, BLOCK_R, BLOCK_D,
    )  # fmt: skip
    keys = _pack_keys(score, offs_r)  # block-local index; the host adds the block offset
    out = OUT + offs_q.to(tl.int64)[:, None] * stride_om + offs_r[None, :]
    tl.store(out, keys, mask=(offs_q < nq)[:, None] & (offs_r < nr)[None, :])


@triton.jit
def _ref_stats_kernel(
    R, C, S, PMAX,
    nr, d, stride_rn, stride_rd, n_prog,
    MODE: tl.constexpr, NORMALIZE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Per-row factors (C: quantization multiplier, S: inverse norm / dequantization scale) and
    per-program maxima PMAX[0:3, pid] = (||r~ - r^||, ||r^||, ||r~||), all measured in fp64."""
    pid = tl.program_id(0)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < nr
    r_base = R + offs_r.to(tl.int64)[:, None] * stride_rn

    ss = tl.zeros([BLOCK_R], dtype=tl.float64)
    amax = tl.zeros([BLOCK_R], dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        m = r_mask[:, None] & (offs_d < d)[None, :]
        x = tl.load(r_base + offs_d.to(tl.int64)[None, :] * stride_rd, mask=m, other=0).to(
            tl.float32
        )
        xd = x.to(tl.float64)
        ss += tl.sum(xd * xd, 1)
        amax = tl.maximum(amax, tl.max(tl.abs(x), 1))
    nrm = tl.sqrt(ss)
    if NORMALIZE:  # noqa: SIM108
        inv = 1.0 / tl.maximum(nrm, 1e-12)
    else:
        inv = tl.full([BLOCK_R], 1.0, tl.float64)

    if MODE == 0:
        tl.store(S + offs_r, inv.to(tl.float32), mask=r_mask)
    else:
        if MODE == 1:
            c = inv.to(tl.float32)
            s = tl.full([BLOCK_R], 1.0, tl.float32)
        else:
            am = amax.to(tl.float64)
            pos = am > 0
            c64 = tl.where(pos, 127.0 / tl.where(pos, am, 1.0), 0.0)
            c = tl.minimum(c64, 3.0e38).to(tl.float32)
            s = (am * inv / 127.0).to(tl.float32)
        tl.store(C + offs_r, c, mask=r_mask)
        tl.store(S + offs_r, s, mask=r_mask)
        s64 = s.to(tl.float64)
        e2 = tl.zeros([BLOCK_R], dtype=tl.float64)
        t2 = tl.zeros([BLOCK_R], dtype=tl.float64)
        for d0 in range(0, d, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            m = r_mask[:, None] & (offs_d < d)[None, :]
            x = tl.load(r_base + offs_d.to(tl.int64)[None, :] * stride_rd, mask=m, other=0)
            x = x.to(tl.float32)
            if MODE == 1:
                rt = _round_bf16(x * c[:, None]).to(tl.float64)
            else:
                rt = _round_int8(x * c[:, None]).to(tl.float64) * s64[:, None]
            e = rt - x.to(tl.float64) * inv[:, None]
            e2 += tl.sum(e * e, 1)
            t2 += tl.sum(rt * rt, 1)
        err = tl.where(r_mask, tl.sqrt(e2), 0.0)
        rhat = tl.where(r_mask, nrm * inv, 0.0)
        rtil = tl.where(r_mask, tl.sqrt(t2), 0.0)
        tl.store(PMAX + pid, tl.max(err, 0))
        tl.store(PMAX + n_prog + pid, tl.max(rhat, 0))
        tl.store(PMAX + 2 * n_prog + pid, tl.max(rtil, 0))


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    """Launch configuration (tile sizes, warps, pipeline stages, operand order)."""

    block_q: int
    block_r: int
    block_d: int
    num_warps: int
    num_stages: int
    refs_as_a: bool = False
    #: merge a tile by the bitonic network when some row has at least this many new
    #: entries, else insert them one at a time (0: always the network)
    sort_min_hits: int = 8


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _interpreting(device: torch.device) -> bool:
    return device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _pick_config(mode: int, kp: int, d: int, interpret: bool, fused: bool) -> _Config:
    """Tile sizes. Interpreter: tiny tiles (numpy is slow per element, not per op).
    GPU (H100 defaults, to be tuned on hardware): the running list BLOCK_Q x KP int64 lives
    in registers, so BLOCK_Q shrinks as KP grows."""
    if interpret:
        bd = 16 if d <= 16 else 32
        br = max(32, kp) if fused else 64
        return _Config(16, br, bd, 1, 1)
    min_d = 32 if mode == 2 else 16
    bd = {0: 32, 1: 64, 2: 128}[mode]
    bd = max(min_d, min(bd, _next_pow2(d)))
    if not fused:
        if mode == 0:
            return _Config(64, 64, bd, 4, 2)
        return _Config(64, 128, bd, 8, 3, refs_as_a=mode == 2)
    # Chosen by compiling for sm_90 offline and minimizing register spills (ptxas STACK);
    # the one-at-a-time merge only (the bitonic network adds most of the spills). To be
    # re-tuned by timing on an H100.
    if mode == 0:
        bq = 64 if kp <= 32 else 32 if kp <= 64 else 16
        return _Config(bq, max(64, kp), bd, 4, 2, sort_min_hits=_NEVER_HITS)
    bq = 64 if kp <= 128 else 32
    if mode == 1:
        return _Config(bq, max(128, kp), bd, 8, 3, refs_as_a=False, sort_min_hits=_NEVER_HITS)
    return _Config(bq, max(64, kp), bd, 8, 3, refs_as_a=True, sort_min_hits=_NEVER_HITS)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 1


def _unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hi = (keys >> 32).to(torch.int32)
    bits = hi ^ ((hi >> 31) & 0x7FFFFFFF)
    scores = bits.view(torch.float32)
    idx = 0xFFFFFFFF - (keys & 0xFFFFFFFF)
    return scores, idx


@dataclass
class _Prepared:
    """Kernel operands: the (possibly quantized) queries and the per-row factors."""

    mode: int
    q: torch.Tensor
    qs: torch.Tensor | None
    rc: torch.Tensor | None
    rs: torch.Tensor | None
    err: torch.Tensor | None


def _check(queries: torch.Tensor, refs: torch.Tensor, k: int, name: str) -> None:
    if queries.dim() != 2 or refs.dim() != 2:
        raise ValueError(
            f"queries and refs must be 2-D; got {tuple(queries.shape)} and {tuple(refs.shape)}"
        )
    if queries.dtype != torch.float32:
        raise TypeError(f"queries must be float32; got {queries.dtype}")
    if refs.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"refs must be float32, float16 or bfloat16; got {refs.dtype}")
    if queries.shape[1] != refs.shape[1]:
        raise ValueError(
            f"queries and refs must have the same dimension; got {queries.shape[1]} and "
            f"{refs.shape[1]}"
        )
    if queries.device != refs.device:
        raise ValueError(
            f"queries and refs must be on one device; got {queries.device}, {refs.device}"
        )
    nr = refs.shape[0]
    if not 1 <= k <= nr:
        raise ValueError(f"{name} must be in [1, {nr}] (the number of refs); got {k}")
    if nr > _MAX_ROWS:
        raise ValueError(f"refs must have at most {_MAX_ROWS} rows; got {nr}")
    if refs.shape[1] < 1:
        raise ValueError("refs must have at least one column")


def _prepare(queries: torch.Tensor, refs: torch.Tensor, mode: int, normalize: bool) -> _Prepared:
    nr, d = refs.shape
    dev = refs.device
    q = queries if queries.stride(1) == 1 else queries.contiguous()
    if mode == 0 and not normalize:
        return _Prepared(0, q, None, None, None, None)

    stats_br, stats_bd = (16, 32) if _interpreting(dev) else (16, min(64, max(16, _next_pow2(d))))
    n_prog = triton.cdiv(nr, stats_br)
    c = torch.empty(nr, dtype=torch.float32, device=dev) if mode else None
    s = torch.empty(nr, dtype=torch.float32, device=dev)
    pmax = torch.zeros(3 * n_prog, dtype=torch.float64, device=dev) if mode else None
    _ref_stats_kernel[(n_prog,)](
        refs, c if c is not None else s, s, pmax if pmax is not None else s,
        nr, d, refs.stride(0), refs.stride(1), n_prog,
        MODE=mode, NORMALIZE=normalize, BLOCK_R=stats_br, BLOCK_D=stats_bd,
        num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip
    if mode == 0:
        return _Prepared(0, q, None, None, s, None)

    assert pmax is not None
    e_ref, h_ref, t_ref = (float(v) for v in pmax.view(3, n_prog).max(dim=1).values.tolist())
    q64 = q.double()
    if mode == 1:
        qt = q.to(torch.bfloat16).to(torch.float32)  # round to nearest even
        qt64 = qt.double()
        qs = None
        slack = (d + 32) * 2.0**-22
    else:
        amax = q.abs().amax(dim=1)
        cq = torch.where(amax > 0, 127.0 / amax.double().clamp_min(1e-300), 0.0)
        cq = cq.clamp(max=3.0e38).float()
        qi = torch.round(q * cq[:, None]).clamp_(-127, 127)
        sq = (amax.double() / 127.0).float()
        qt = qi.to(torch.int8).contiguous()
        qt64 = qi.double() * sq.double()[:, None]
        qs = sq.contiguous()
        slack = 2.0**-20
    qt_norm = qt64.norm(dim=1)
    dq_norm = (qt64 - q64).norm(dim=1)
    err = qt_norm * e_ref + dq_norm * h_ref + slack * qt_norm * t_ref
    err = (err * (1.0 + 2.0**-20) + 1e-30).float()
    rs = s if mode == 2 else None
    rc = c if (mode == 2 or normalize) else None
    return _Prepared(mode, qt.contiguous(), qs, rc, rs, err)


def _launch_args(p: _Prepared, refs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    dummy = p.q
    return (
        p.rc if p.rc is not None else dummy,
        p.rs if p.rs is not None else dummy,
        p.qs if p.qs is not None else dummy,
    )


def _fused(
    p: _Prepared,
    refs: torch.Tensor,
    k: int,
    *,
    splits: int | None,
    config: _Config | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    q = p.q
    nq, d = q.shape
    nr = refs.shape[0]
    dev = refs.device
    kp = _next_pow2(k)
    interp = _interpreting(dev)
    cfg = config or _pick_config(p.mode, kp, d, interp, fused=True)
    if not interp and 0 < cfg.sort_min_hits < _NEVER_HITS and not _HYBRID_COMPILES:
        cfg = replace(cfg, sort_min_hits=_NEVER_HITS)
    block_r = max(cfg.block_r, kp)
    n_rt = triton.cdiv(nr, block_r)
    if splits is None:
        if interp:
            splits = min(2, n_rt)
        else:
            n_qt = triton.cdiv(nq, cfg.block_q)
            splits = triton.cdiv(4 * _num_sms(dev), n_qt)
            splits = min(splits, triton.cdiv(n_rt, 8))  # >= 8 tiles per split
    splits = max(1, min(int(splits), n_rt))
    rows_per_split = triton.cdiv(n_rt, splits) * block_r
    splits = triton.cdiv(nr, rows_per_split)

    # query chunk so that the (chunk, splits, kp) int64 workspace fits the budget
    q_chunk = max(cfg.block_q, _WORKSPACE_BYTES // (splits * kp * 8))
    q_chunk = min(nq, q_chunk // cfg.block_q * cfg.block_q)
    ws = torch.empty((q_chunk, splits, kp), dtype=torch.int64, device=dev)
    rc, rs, qs = _launch_args(p, refs)
    out_s = torch.empty((nq, k), dtype=torch.float32, device=dev)
    out_i = torch.empty((nq, k), dtype=torch.int64, device=dev)
    for q0 in range(0, nq, q_chunk):
        m = min(q_chunk, nq - q0)
        qc = q[q0 : q0 + m]
        qsc = qs[q0 : q0 + m] if p.qs is not None else qs
        grid = (triton.cdiv(m, cfg.block_q), splits)
        _fused_topk_kernel[grid](
            qc, refs, rc, rs, qsc, ws,
            m, nr, d,
            qc.stride(0), qc.stride(1), refs.stride(0), refs.stride(1),
            rows_per_split, splits,
            MODE=p.mode, HAS_RC=p.rc is not None, HAS_RS=p.rs is not None, DOT_LOWP=not interp,
            REFS_AS_A=cfg.refs_as_a,
            BLOCK_Q=cfg.block_q, BLOCK_R=block_r, BLOCK_D=cfg.block_d, KP=kp, NATIVE_TOPK=not interp,
            SORT_MIN_HITS=cfg.sort_min_hits,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=False,
        )  # fmt: skip
        keys = ws[:m].view(m, splits * kp)
        top = torch.topk(keys, k, dim=1, largest=True, sorted=True).values
        out_s[q0 : q0 + m], out_i[q0 : q0 + m] = _unpack_keys(top)
    return out_s, out_i


def _streaming(
    p: _Prepared,
    refs: torch.Tensor,
    k: int,
    *,
    config: _Config | None,
    ref_chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k for large k: bounded score blocks of packed keys + torch.topk merges."""
    q = p.q
    nq, d = q.shape
    nr = refs.shape[0]
    dev = refs.device
    interp = _interpreting(dev)
    cfg = config or _pick_config(p.mode, _next_pow2(k), d, interp, fused=False)
    cr = ref_chunk or max(2 * k, 8192)
    cr = min(nr, triton.cdiv(cr, cfg.block_r) * cfg.block_r)
    # scratch: keys (cq, cr) + concatenation (cq, k + cr) + topk output: ~ 3 (k + cr) int64 / query
    cq = max(1, min(nq, _WORKSPACE_BYTES // (3 * 8 * (k + cr))))
    scratch = torch.empty((cq, cr), dtype=torch.int64, device=dev)
    rc, rs, qs = _launch_args(p, refs)
    out_s = torch.empty((nq, k), dtype=torch.float32, device=dev)
    out_i = torch.empty((nq, k), dtype=torch.int64, device=dev)
    for q0 in range(0, nq, cq):
        m = min(cq, nq - q0)
        qc = q[q0 : q0 + m]
        qsc = qs[q0 : q0 + m] if p.qs is not None else qs
        running: torch.Tensor | None = None
        for r0 in range(0, nr, cr):
            n = min(cr, nr - r0)
            blk = scratch[:m, :n]
            grid = (triton.cdiv(m, cfg.block_q), triton.cdiv(n, cfg.block_r))
            _score_keys_kernel[grid](
                qc, refs[r0 : r0 + n], rc[r0 : r0 + n] if p.rc is not None else rc,
                rs[r0 : r0 + n] if p.rs is not None else rs, qsc, blk,
                m, n, d,
                qc.stride(0), qc.stride(1), refs.stride(0), refs.stride(1), scratch.stride(0),
                MODE=p.mode, HAS_RC=p.rc is not None, HAS_RS=p.rs is not None,
                DOT_LOWP=not interp, REFS_AS_A=cfg.refs_as_a,
                BLOCK_Q=cfg.block_q, BLOCK_R=cfg.block_r, BLOCK_D=cfg.block_d,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=False,
            )  # fmt: skip
            # the kernel packed block-local indices: shift the (inverted) index part
            keys = blk.sub_(r0)
            cand = keys if running is None else torch.cat([running, keys], dim=1)
            running = torch.topk(cand, min(k, cand.shape[1]), dim=1, sorted=True).values
        assert running is not None
        out_s[q0 : q0 + m], out_i[q0 : q0 + m] = _unpack_keys(running)
    return out_s, out_i


def _run(
    p: _Prepared,
    refs: torch.Tensor,
    k: int,
    splits: int | None,
    config: _Config | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if _next_pow2(k) <= FUSED_KP_MAX:
        return _fused(p, refs, k, splits=splits, config=config)
    return _streaming(p, refs, k, config=config)


def topk_exact(
    queries: torch.Tensor,
    refs: torch.Tensor,
    k: int,
    normalize_refs: bool,
    *,
    splits: int | None = None,
    config: _Config | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (fp32) inner-product top-k of ``queries`` (nq, d) against ``refs`` (nr, d).

    Returns ``(scores, indices)``: float32 (nq, k) sorted descending and int64 (nq, k), ties
    broken by the lower index. With ``normalize_refs`` each ref row is scored as
    ``r / max(||r||, 1e-12)``. ``splits`` / ``config`` override the tuning heuristics.
    """
    _check(queries, refs, k, "k")
    nq = queries.shape[0]
    if nq == 0:
        return (
            torch.empty((0, k), dtype=torch.float32, device=queries.device),
            torch.empty((0, k), dtype=torch.int64, device=queries.device),
        )
    p = _prepare(queries, refs, 0, normalize_refs)
    return _run(p, refs, k, splits, config)


def topk_candidates(
    queries: torch.Tensor,
    refs: torch.Tensor,
    kc: int,
    normalize_refs: bool,
    precision: str,
    *,
    splits: int | None = None,
    config: _Config | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``kc`` best refs by a reduced-precision score (``precision`` "bf16" or "int8").

    Returns ``(approx, indices, err)``: approximate scores float32 (nq, kc) sorted descending
    (ties by lower index), their int64 indices, and ``err`` float32 (nq,) with
    ``|approx(q, r) - exact(q, r)| <= err[q]`` for every ref row r (exact: real-arithmetic dot
    of the query with the normalized ref row).
    """
    if precision not in ("bf16", "int8"):
        raise ValueError(f"precision must be 'bf16' or 'int8'; got {precision!r}")
    _check(queries, refs, kc, "kc")
    nq = queries.shape[0]
    dev = queries.device
    if nq == 0:
        return (
            torch.empty((0, kc), dtype=torch.float32, device=dev),
            torch.empty((0, kc), dtype=torch.int64, device=dev),
            torch.empty((0,), dtype=torch.float32, device=dev),
        )
    p = _prepare(queries, refs, _MODE[precision], normalize_refs)
    assert p.err is not None
    s, i = _run(p, refs, kc, splits, config)
    return s, i, p.err
