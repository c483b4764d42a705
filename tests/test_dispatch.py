from __future__ import annotations

import numpy as np
import pytest

import memlens
from memlens import _dispatch


def test_automatic_cpu_prefers_compiled_core() -> None:
    expected = "cpu" if _dispatch.compiled_cpu_reason("cpu") is None else "torch"
    assert _dispatch.select("cosine_topk", "cpu", None) == expected


def test_env_var_then_explicit_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMLENS_BACKEND", "torch")
    assert _dispatch.select("cosine_topk", "cpu", None) == "torch"
    if _dispatch.compiled_cpu_reason("cpu") is None:
        assert _dispatch.select("cosine_topk", "cpu", "cpu") == "cpu"


def test_bad_env_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMLENS_BACKEND", "gpu")
    with pytest.raises(ValueError, match="MEMLENS_BACKEND must be one of"):
        memlens.cosine_topk(np.ones((1, 4), np.float32), np.ones((2, 4), np.float32), 1)


def test_unavailable_backend_names_what_is_available(monkeypatch: pytest.MonkeyPatch) -> None:
    q = np.ones((1, 4), np.float32)
    with pytest.raises(
        memlens.BackendUnavailableError, match=r"backend='cuda'.*available here: .*torch"
    ):
        memlens.cosine_topk(q, q, 1, backend="cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(memlens.BackendUnavailableError, match="TRITON_INTERPRET"):
        memlens.cosine_topk(q, q, 1, backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        memlens.cosine_topk(q, q, 1, backend="faiss")


def test_build_info_reports_cpu_core() -> None:
    info = memlens.build_info()
    if info["cpu"]["compiled"]:
        assert info["cpu"]["simd"] in info["cpu"]["simd_supported"]
        assert info["cpu"]["simd_supported"][0] == "scalar"
        assert info["cpu"]["threads"] >= 1
    assert info["triton"] is None or isinstance(info["triton"], str)
