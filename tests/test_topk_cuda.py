"""cosine_topk(backend="cuda") end to end; needs a GPU and a build with MEMLENS_CUDA=ON."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import memlens
from conftest import assert_exact_topk, unit_rows
from memlens import _dispatch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        _dispatch.compiled_cuda_reason("cuda") is not None, reason="built without the CUDA backend"
    ),
]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize(
    ("nq", "nr", "d", "k"),
    [(1, 1, 8, 1), (7, 257, 129, 10), (33, 5000, 512, 100), (2, 5000, 64, 4096), (4, 300, 16, 300)],
)
def test_cuda_backend_is_exact(precision: str, nq: int, nr: int, d: int, k: int) -> None:
    q = torch.from_numpy(unit_rows(nq, d, 1)).cuda()
    r = torch.from_numpy(unit_rows(nr, d, 2)).cuda()
    s, i = memlens.cosine_topk(q, r, k, precision=precision, backend="cuda")
    assert s.is_cuda
    assert i.is_cuda
    assert_exact_topk(s, i, q, r, k)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_inputs_and_views(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    refs = torch.randn(3000, 2 * 96, generator=g)[:, ::2].to(dtype).cuda()
    q = torch.randn(9, 96, generator=g).to(dtype).cuda()
    s, i = memlens.cosine_topk(q, refs, 50, backend="cuda")
    assert_exact_topk(s, i, q.float(), refs.float(), 50)


def test_cuda_matches_cpu_on_duplicates() -> None:
    row = unit_rows(1, 64, 5)
    r = np.concatenate([unit_rows(100, 64, 6), row, row, unit_rows(50, 64, 7), row])
    _s, i = memlens.cosine_topk(
        torch.from_numpy(row).cuda(), torch.from_numpy(r).cuda(), 3, backend="cuda"
    )
    assert i.cpu().tolist() == [[100, 101, 152]]
