"""What this installation can do: compiled backends, SIMD level, threads, Triton."""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any

from memlens import _dispatch


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_info() -> dict[str, Any]:
    """A JSON-serializable description of the build and of the CPU it runs on.

    Keys: ``version``, ``backends`` (name → available on cpu / cuda tensors, and why not),
    ``cpu`` (compiled, ``simd_detected``, ``simd`` = level in use, ``simd_supported``,
    ``openmp``, ``threads``), ``cuda_compiled``, ``triton`` (installed version or None),
    ``torch``, ``ops`` (each op's backends). Triton's version comes from package metadata, so triton is not imported, and
    CUDA is not initialized.
    """
    info: dict[str, Any] = {"version": _version("memlens") or "unknown", "torch": _version("torch")}
    cpu: dict[str, Any] = {"compiled": _dispatch.compiled_cpu_reason("cpu") is None}
    if cpu["compiled"]:
        from memlens import _C
        from memlens.backends import cpu as cpu_backend

        cpu["simd_detected"] = _C.simd_name(_C.detect_simd())
        cpu["simd_supported"] = cpu_backend.supported_simd()
        try:
            cpu["simd"] = _C.simd_name(cpu_backend.resolve_simd())
        except ValueError as e:
            cpu["simd"] = f"invalid: {e}"
        cpu["openmp"] = bool(_C.openmp)
        cpu["threads"] = int(_C.max_threads())
    info["cpu"] = cpu
    info["cuda_compiled"] = _dispatch.compiled_cuda_reason("cuda") is None
    info["triton"] = _version("triton")
    info["triton_interpret"] = os.environ.get("TRITON_INTERPRET") == "1"
    backends: dict[str, dict[str, Any]] = {}
    for name, spec in _dispatch.registered("cosine_topk").items():
        backends[name] = {
            dev: spec.why_unavailable(dev) or "available" for dev in sorted(spec.devices)
        }
    info["backends"] = backends  # of cosine_topk (kept for compatibility)
    info["ops"] = {  # every op's backends
        op: {
            name: {dev: spec.why_unavailable(dev) or "available" for dev in sorted(spec.devices)}
            for name, spec in _dispatch.registered(op).items()
        }
        for op in ("cosine_topk", "flow_similarity")
    }
    return info
