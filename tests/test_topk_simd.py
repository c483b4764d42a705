"""Every SIMD level this machine can run gives the exact answer (forced with MEMLENS_SIMD)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import memlens
from conftest import assert_exact_topk, unit_rows
from memlens import _dispatch

pytestmark = pytest.mark.skipif(
    _dispatch.compiled_cpu_reason("cpu") is not None, reason="CPU core not built"
)


def _levels() -> list[str]:
    if _dispatch.compiled_cpu_reason("cpu") is not None:
        return []
    from memlens.backends.cpu import supported_simd

    return supported_simd()


@pytest.mark.parametrize("level", _levels())
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize(
    ("nq", "nr", "d", "k"), [(1, 1, 3, 1), (37, 1031, 129, 64), (9, 4500, 40, 4096)]
)
def test_each_simd_level_is_exact(
    monkeypatch: pytest.MonkeyPatch, level: str, precision: str, nq: int, nr: int, d: int, k: int
) -> None:
    monkeypatch.setenv("MEMLENS_SIMD", level)
    assert memlens.build_info()["cpu"]["simd"] == level
    q = unit_rows(nq, d, 1)
    r = unit_rows(nr, d, 2)
    s, i = memlens.cosine_topk(q, r, k, precision=precision, backend="cpu")
    assert_exact_topk(s, i, q, r, k)


@pytest.mark.parametrize("level", _levels())
def test_each_simd_level_reads_half_precision_and_strides(
    monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    monkeypatch.setenv("MEMLENS_SIMD", level)
    g = torch.Generator().manual_seed(1)
    base = torch.randn(700, 2 * 77, generator=g)
    q = torch.randn(5, 77, generator=g)
    for refs in (base[:, ::2], base.to(torch.float16)[:, 1::2], base.to(torch.bfloat16)[::2, :77]):
        s, i = memlens.cosine_topk(q, refs, 31, backend="cpu")
        assert_exact_topk(s, i, q, refs.float(), 31)


def test_simd_override_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    q = unit_rows(2, 8, 3)
    monkeypatch.setenv("MEMLENS_SIMD", "sse9")
    with pytest.raises(ValueError, match="MEMLENS_SIMD must be one of"):
        memlens.cosine_topk(q, q, 1, backend="cpu")


def test_results_identical_across_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Index sets agree across levels (scores may differ by fp32 summation order only)."""
    q = unit_rows(16, 256, 4)
    r = unit_rows(3000, 256, 5)
    results = {}
    for level in _levels():
        monkeypatch.setenv("MEMLENS_SIMD", level)
        results[level] = memlens.cosine_topk(q, r, 20, backend="cpu")
    base_s, base_i = results["scalar"]
    for s, i in results.values():
        np.testing.assert_allclose(s, base_s, atol=1e-6)
        np.testing.assert_array_equal(np.sort(i, axis=1), np.sort(base_i, axis=1))
