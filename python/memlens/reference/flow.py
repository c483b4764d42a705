"""Flow-field similarity statistics: the float64 torch reference (the executable spec).

One generated flow field ``gen`` (T, H, W, 2) and N candidate fields ``cands`` (N, T, H, W, 2)
(float32 or float16; the last axis is (dx, dy) in pixels) are reduced, in one pass, to the
sufficient statistics from which OFS-k, its magnitude-aware variant, static detection and the
global-affine (camera motion) filter of methods.md §1.4 follow without touching the pixels
again. With ``g = gen[t, i, j]``, ``r = cands[n, t, i, j]``, ``|.|`` the Euclidean norm:

PAIR statistics, ``pair[n, t, :]`` (float64, (N, T, 4)):
    0 COUNT          sum of m,  m = 1[|g| > mu_min and |r| > mu_min]
    1 COS_SUM        sum of m * c,            c = (g . r) / (|g| |r| + 1e-8)
    2 RATIO_SUM      sum of m * min(|g|,|r|) / max(|g|,|r|)
    3 COS_RATIO_SUM  sum of m * c * min(|g|,|r|) / max(|g|,|r|)

FIELD statistics, ``gen_field[t, :]`` (T, 8) and ``cand_field[n, t, :]`` (N, T, 8), of a field
u = (u_x, u_y) on the pixel grid with centred, normalized coordinates
``x_j = (2j + 1) / W - 1`` and ``y_i = (2i + 1) / H - 1`` (so sum x = sum y = sum x*y = 0 and the
least-squares fit of u ~ a0 + a1 x + a2 y decouples per coefficient):
    0 MAG_SUM   sum of |u|
    1 SQ_SUM    sum of |u|^2
    2 SU_X      sum of u_x           5 SU_Y    sum of u_y
    3 SXU_X     sum of x * u_x       6 SXU_Y   sum of x * u_y
    4 SYU_X     sum of y * u_x       7 SYU_Y   sum of y * u_y

Optional ``gen_affine`` (T, 6) / ``cand_affine`` (N, T, 6): per-frame affine flows
``(a0, a1, a2, b0, b1, b2)`` (u_x = a0 + a1 x + a2 y, u_y = b0 + b1 x + b2 y) subtracted from
the fields before the PAIR statistics (scoring the residual flow after camera motion is
removed); FIELD statistics always describe the fields as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

PAIR_STATS = ("count", "cos_sum", "ratio_sum", "cos_ratio_sum")
FIELD_STATS = ("mag_sum", "sq_sum", "su_x", "sxu_x", "syu_x", "su_y", "sxu_y", "syu_y")
COS_EPS = 1e-8


@dataclass(frozen=True)
class FlowStats:
    """Output of flow_similarity: float64 torch tensors on the inputs' device (numpy arrays
    when ``memlens.flow_similarity`` was given numpy arrays)."""

    pair: Any  # (N, T, 4)
    gen_field: Any  # (T, 8)
    cand_field: Any  # (N, T, 8)
    height: int
    width: int


def grid(
    h: int, w: int, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred normalized pixel coordinates, (H, 1) and (1, W)."""
    y = (2 * torch.arange(h, dtype=dtype, device=device) + 1) / h - 1
    x = (2 * torch.arange(w, dtype=dtype, device=device) + 1) / w - 1
    return y[:, None], x[None, :]


def affine_field(affine: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(..., 6) affine parameters -> (..., H, W, 2) flow on the normalized grid."""
    y, x = grid(h, w, affine.dtype, affine.device)
    a = affine[..., None, None, :]
    ux = a[..., 0] + a[..., 1] * x + a[..., 2] * y
    uy = a[..., 3] + a[..., 4] * x + a[..., 5] * y
    return torch.stack([ux, uy], dim=-1)


def field_stats(u: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 2) -> (..., 8) FIELD statistics, float64."""
    u = u.to(torch.float64)
    h, w = u.shape[-3], u.shape[-2]
    y, x = grid(h, w, device=u.device)
    ux, uy = u[..., 0], u[..., 1]
    sq = ux * ux + uy * uy
    s = lambda v: v.sum(dim=(-2, -1))
    return torch.stack(
        [s(sq.sqrt()), s(sq), s(ux), s(x * ux), s(y * ux), s(uy), s(x * uy), s(y * uy)], dim=-1
    )


def flow_similarity(
    gen: torch.Tensor,
    cands: torch.Tensor,
    *,
    mu_min: float = 0.5,
    gen_affine: torch.Tensor | None = None,
    cand_affine: torch.Tensor | None = None,
) -> FlowStats:
    """The statistics of the module docstring, computed plainly in float64."""
    g = gen.to(torch.float64)
    r = cands.to(torch.float64)
    gen_field = field_stats(g)
    cand_field = field_stats(r)
    h, w = g.shape[-3], g.shape[-2]
    if gen_affine is not None:
        g = g - affine_field(gen_affine.to(torch.float64), h, w)
    if cand_affine is not None:
        r = r - affine_field(cand_affine.to(torch.float64), h, w)
    g = g[None]  # broadcast over candidates
    gm = g.norm(dim=-1)
    rm = r.norm(dim=-1)
    m = ((gm > mu_min) & (rm > mu_min)).to(torch.float64)
    c = (g * r).sum(dim=-1) / (gm * rm + COS_EPS)
    ratio = torch.where(m > 0, torch.minimum(gm, rm) / torch.maximum(gm, rm).clamp_min(1e-300), 0.0)
    s = lambda v: v.sum(dim=(-2, -1))
    pair = torch.stack([s(m), s(m * c), s(m * ratio), s(m * c * ratio)], dim=-1)
    return FlowStats(pair=pair, gen_field=gen_field, cand_field=cand_field, height=h, width=w)
