"""cosine_topk(backend="triton") end to end (dispatch, query blocks, certified reduced precision).

Runs on a GPU, or on the CPU under TRITON_INTERPRET=1 (kept small: the interpreter is slow).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import memlens
from conftest import assert_exact_topk, unit_rows

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
        reason="needs a GPU or TRITON_INTERPRET=1",
    ),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize(("nq", "nr", "d", "k"), [(1, 1, 8, 1), (5, 130, 33, 7), (3, 300, 16, 300)])
def test_triton_backend_is_exact(precision: str, nq: int, nr: int, d: int, k: int) -> None:
    q = torch.from_numpy(unit_rows(nq, d, 1)).to(DEVICE)
    r = torch.from_numpy(unit_rows(nr, d, 2)).to(DEVICE)
    s, i = memlens.cosine_topk(q, r, k, precision=precision, backend="triton")
    assert s.device.type == DEVICE
    assert_exact_topk(s, i, q, r, k)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_triton_certification_widens_the_margin(precision: str) -> None:
    base = unit_rows(1, 32, 3)[0]
    r = torch.from_numpy((base + unit_rows(400, 32, 4) * 1e-3).astype(np.float32)).to(DEVICE)
    q = torch.from_numpy(base[None, :].copy()).to(DEVICE)
    s, i = memlens.cosine_topk(q, r, 20, precision=precision, backend="triton")
    assert_exact_topk(s, i, q, r, 20)


def test_triton_half_precision_strided_refs() -> None:
    g = torch.Generator().manual_seed(0)
    refs = torch.randn(90, 40, generator=g)[:, ::2].to(torch.bfloat16).to(DEVICE)
    q = torch.randn(4, 20, generator=g).to(DEVICE)
    s, i = memlens.cosine_topk(q, refs, 9, backend="triton")
    assert_exact_topk(s, i, q, refs.float(), 9)
