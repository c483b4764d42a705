"""The ``cpu`` backend of cosine_topk: the compiled C++/OpenMP core (memlens._C)."""

from __future__ import annotations

import os

import torch

from memlens import _C
from memlens._arrays import Matrix
from memlens._config import workspace_bytes

SIMD_ENV = "MEMLENS_SIMD"
SIMD_NAMES = ("scalar", "avx2", "avx512", "avx512_bf16", "amx")
_PRECISION_CODES = {"bf16": 1, "int8": 2}


def supported_simd() -> list[str]:
    """SIMD levels this CPU and build can run, lowest first."""
    return [SIMD_NAMES[i] for i in range(_C.detect_simd() + 1) if _C.simd_compiled(i)]


def resolve_simd() -> int:
    """The level to use: the best supported, or a lower one forced by MEMLENS_SIMD."""
    detected = int(_C.detect_simd())
    forced = os.environ.get(SIMD_ENV)
    if not forced:
        return detected
    if forced not in SIMD_NAMES:
        raise ValueError(f"{SIMD_ENV} must be one of {SIMD_NAMES}; got {forced!r}")
    level = SIMD_NAMES.index(forced)
    if level > detected or not _C.simd_compiled(level):
        raise ValueError(
            f"{SIMD_ENV}={forced} is not supported here; this CPU and build run: "
            f"{', '.join(supported_simd())}"
        )
    return level


def native_precision(precision: str) -> bool:
    """Whether this CPU computes ``precision`` faster than fp32 (else the caller runs fp32).

    bf16 needs AVX512_BF16 (below it, bf16 values would be widened to fp32: no faster, and
    the certificate would only add work; with AMX it runs on the tile unit); int8 needs at
    least AVX2's vpmaddwd.
    """
    level = resolve_simd()
    if precision == "bf16":
        return level >= SIMD_NAMES.index("avx512_bf16")
    return precision == "int8" and level >= SIMD_NAMES.index("avx2")


def _state_bytes() -> int:
    """The kernel's selection state gets half the workspace; candidate lists the other half
    (ops._certify sizes its query groups for that)."""
    return workspace_bytes() // 2


def exact(
    q: torch.Tensor, refs: Matrix, k: int, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    nq = q.shape[0]
    scores = torch.empty((nq, k), dtype=torch.float32)
    idx = torch.empty((nq, k), dtype=torch.int64)
    _C.topk_fp32(
        *refs.kernel_args(q), normalize, k, scores.data_ptr(), idx.data_ptr(), 0, resolve_simd(),
        _state_bytes(),
    )  # fmt: skip
    return scores, idx


def candidates(
    q: torch.Tensor, refs: Matrix, kc: int, normalize: bool, precision: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    nq = q.shape[0]
    approx = torch.empty((nq, kc), dtype=torch.float32)
    idx = torch.empty((nq, kc), dtype=torch.int64)
    err = torch.empty((nq,), dtype=torch.float32)
    _C.topk_candidates(
        *refs.kernel_args(q), normalize, _PRECISION_CODES[precision], kc,
        approx.data_ptr(), idx.data_ptr(), err.data_ptr(), 0, resolve_simd(), _state_bytes(),
    )  # fmt: skip
    return approx, idx, err


def rerank(q: torch.Tensor, refs: Matrix, idx: torch.Tensor, normalize: bool) -> torch.Tensor:
    idx = idx.contiguous()
    scores = torch.empty(idx.shape, dtype=torch.float32)
    _C.rerank_fp32(
        *refs.kernel_args(q),
        normalize,
        idx.data_ptr(),
        idx.shape[1],
        scores.data_ptr(),
        0,
        resolve_simd(),
    )
    return scores
