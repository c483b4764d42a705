"""Boundary checks and conversions for array arguments (numpy arrays or torch tensors).

Errors name the argument and show expected vs actual, and are raised before any kernel runs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

# dtype codes of the compiled core (csrc/include/memlens/types.h)
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
NUMPY_FLOATS = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}

# Finite checks and norm scans stream through inputs in blocks of this many bytes, so a
# memory-mapped reference set larger than RAM never needs a temporary of its size.
SCAN_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class Matrix:
    """A validated 2-D float input, kept in its own container (no copy)."""

    data: ArrayLike
    name: str
    rows: int
    cols: int
    dtype: torch.dtype  # element type as a torch dtype (numpy float16 -> torch.float16)
    device: str  # "cpu" or "cuda"

    @property
    def is_numpy(self) -> bool:
        return isinstance(self.data, np.ndarray)

    def strides(self) -> tuple[int, int]:
        """Strides in elements."""
        if isinstance(self.data, np.ndarray):
            item = self.data.itemsize
            return self.data.strides[0] // item, self.data.strides[1] // item
        s = self.data.stride()
        return int(s[0]), int(s[1])

    def data_ptr(self) -> int:
        if isinstance(self.data, np.ndarray):
            return int(self.data.ctypes.data)
        return int(self.data.data_ptr())

    def kernel_args(self, q: torch.Tensor) -> tuple[int, int, int, int, int, int, int, int]:
        """Leading arguments of the compiled top-k entry points: queries, then these refs."""
        rs, cs = self.strides()
        return (
            q.data_ptr(),
            q.shape[0],
            q.shape[1],
            self.data_ptr(),
            self.rows,
            rs,
            cs,
            DTYPE_CODES[self.dtype],
        )

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as a torch tensor on the matrix's device (copied from numpy)."""
        if isinstance(self.data, np.ndarray):
            return torch.from_numpy(np.array(self.data[start:stop], copy=True))
        return self.data[start:stop]

    def read_block(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as a tensor that shares the numpy memory (no copy), to be read
        and never written: a validation pass over 1e5 x 512 rows spent 24 ms copying."""
        if isinstance(self.data, np.ndarray):
            v = np.ascontiguousarray(self.data[start:stop])
            if any(st % v.itemsize for st in v.strides):  # numpy calls a 1-row view with
                v = v.copy()  # any strides contiguous; torch refuses odd ones
            with warnings.catch_warnings():  # read-only memmaps: torch warns, we only read
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(v)
        return self.data[start:stop]

    def every(self, step: int) -> Matrix:
        """Every ``step``-th row, as a view (no copy)."""
        data = self.data[::step]
        return Matrix(data, self.name, int(data.shape[0]), self.cols, self.dtype, self.device)

    def rows_per_block(self, budget: int = SCAN_BLOCK_BYTES) -> int:
        return max(1, budget // max(1, self.cols * 8))


def as_matrix(x: Any, name: str) -> Matrix:
    if isinstance(x, np.ndarray):
        if x.dtype not in NUMPY_FLOATS:
            raise TypeError(f"{name} must be float32 or float16; got numpy dtype {x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"{name} must have shape (N, D); got {tuple(x.shape)}")
        if any(s % x.itemsize for s in x.strides) or any(s < 0 for s in x.strides):
            x = np.ascontiguousarray(x)  # byte strides the kernels cannot express
        return Matrix(x, name, int(x.shape[0]), int(x.shape[1]), NUMPY_FLOATS[x.dtype], "cpu")
    if isinstance(x, torch.Tensor):
        if x.dtype not in DTYPE_CODES:
            raise TypeError(
                f"{name} must be float32, float16 or bfloat16; got torch dtype {x.dtype}"
            )
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape (N, D); got {tuple(x.shape)}")
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name} must be on cpu or cuda; got device {x.device}")
        if x.requires_grad:
            x = x.detach()
        if any(s < 0 for s in x.stride()):
            x = x.contiguous()
        return Matrix(x, name, int(x.shape[0]), int(x.shape[1]), x.dtype, x.device.type)
    raise TypeError(f"{name} must be a numpy array or a torch tensor; got {type(x).__name__}")


def check_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    v = int(value)
    if not low <= v <= high:
        raise ValueError(f"{name} must be in [{low}, {high}]; got {v}")
    return v


def scan_rows(m: Matrix, *, check_finite: bool, want_norm: bool) -> float:
    """One streaming pass over ``m``: raise on NaN/Inf (if asked) and return an upper bound on
    the max row L2 norm (above it by at most about (D + 3) 2^-24 relative).

    Returns 0.0 when neither is asked (no pass at all).
    """
    if not (check_finite or want_norm) or m.rows == 0:
        return 0.0
    step = m.rows_per_block()
    max_norm = 0.0
    for start in range(0, m.rows, step):
        blk = m.read_block(start, min(m.rows, start + step))
        if check_finite and not _all_finite(blk):
            bad = torch.nonzero(~torch.isfinite(blk))[0].tolist()
            raise ValueError(
                f"{m.name} must be finite; found NaN/Inf at row {start + bad[0]}, column {bad[1]}"
            )
        if want_norm and blk.numel():
            max_norm = max(max_norm, _max_row_norm(blk))
    return max_norm


def _all_finite(blk: torch.Tensor) -> bool:
    """Whether every element is finite. A NaN or an infinity makes any IEEE sum NaN or
    infinite, so a finite sum proves the block finite in one read at memory speed (6-13x
    faster than ``isfinite(blk).all()``, which writes a mask); a non-finite sum can also be
    an overflow of large finite values, and the elementwise test settles it."""
    if bool(torch.isfinite(blk.sum(dtype=torch.float32))):
        return True
    return bool(torch.isfinite(blk).all())


def _max_row_norm(blk: torch.Tensor) -> float:
    """An upper bound on the largest row L2 norm of a finite block.

    The norms run in float32 (a fused reduction: 20x faster than squaring a float64 copy, and
    never TF32) and are inflated by their worst-case rounding: the sum of squares is off by at
    most gamma_{d+1} = (d + 1) u / (1 - (d + 1) u) relative and the square root by u, so
    (1 + gamma_{d+3}) covers both, plus 2^-70 absolute for squares below float32's normal
    range. The float64 path answers when a square overflows or when the largest norm is tiny
    (< 1e-15), where that allowance would dominate."""
    x = blk if blk.dtype == torch.float32 else blk.float()
    n = float(torch.linalg.vector_norm(x, dim=1).max())
    if not math.isfinite(n) or n < 1e-15:
        return float(blk.to(torch.float64).square().sum(dim=1).max()) ** 0.5
    d = int(blk.shape[1])
    u = 2.0**-24
    gamma = (d + 3) * u / (1 - (d + 3) * u)
    return math.nextafter(n * (1 + gamma) + 2.0**-70, math.inf)


def normalized_queries(block: torch.Tensor, normalize: bool) -> torch.Tensor:
    """fp32 contiguous copy of a query block, unit-normalized in float64 when asked."""
    if normalize:
        b64 = block.to(torch.float64)
        b64 = b64 / b64.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return b64.to(torch.float32).contiguous()
    return block.to(torch.float32).contiguous()
