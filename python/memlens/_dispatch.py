"""The single backend registry.

Every op (``"cosine_topk"``, later ``"flow_similarity"``, ...) registers its backends here.
Choice order: explicit ``backend=`` argument > ``MEMLENS_BACKEND`` environment variable >
automatic (CUDA tensors: cuda, triton, torch; CPU tensors: cpu, torch).

Nothing here imports triton or touches CUDA: availability checks look for modules with
``importlib.util.find_spec`` and backends are loaded lazily on first use.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BACKENDS = ("cuda", "triton", "cpu", "torch")
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}
ENV_VAR = "MEMLENS_BACKEND"


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here."""


@dataclass(frozen=True)
class BackendSpec:
    name: str
    devices: frozenset[str]
    module: str  # import path of the implementation module, loaded on first use
    why_unavailable: Callable[[str], str | None]  # device -> None if usable, else the reason


_REGISTRY: dict[str, dict[str, BackendSpec]] = {}


def register(op: str, spec: BackendSpec) -> None:
    if spec.name not in BACKENDS:
        raise ValueError(f"unknown backend name {spec.name!r}; expected one of {BACKENDS}")
    _REGISTRY.setdefault(op, {})[spec.name] = spec


def registered(op: str) -> dict[str, BackendSpec]:
    return dict(_REGISTRY.get(op, {}))


def available(op: str, device: str) -> list[str]:
    """Backends of ``op`` that can run on tensors of ``device`` ("cpu" or "cuda") here."""
    specs = _REGISTRY.get(op, {})
    return [
        name
        for name in BACKENDS
        if name in specs
        and device in specs[name].devices
        and specs[name].why_unavailable(device) is None
    ]


def select(op: str, device: str, backend: str | None) -> str:
    """Resolve the backend name for one call."""
    requested = backend if backend is not None else (os.environ.get(ENV_VAR) or None)
    source = "backend" if backend is not None else ENV_VAR
    specs = _REGISTRY.get(op, {})
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"{source} must be one of {BACKENDS}; got {requested!r}")
        spec = specs.get(requested)
        reason: str | None
        if spec is None:
            reason = f"no {requested} implementation of {op}"
        elif device not in spec.devices:
            reason = f"it does not run on {device} tensors"
        else:
            reason = spec.why_unavailable(device)
        if reason is not None:
            raise BackendUnavailableError(
                f"{source}={requested!r} is not available for {op} on {device} tensors: {reason}; "
                f"available here: {', '.join(available(op, device)) or 'none'}"
            )
        return requested
    for name in AUTO_ORDER.get(device, ()):
        spec = specs.get(name)
        if spec is not None and device in spec.devices and spec.why_unavailable(device) is None:
            return name
    raise BackendUnavailableError(f"no backend of {op} can run on {device} tensors")


def load(op: str, name: str) -> Any:
    return importlib.import_module(_REGISTRY[op][name].module)


# ---------------------------------------------------------------- availability probes


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def compiled_cpu_reason(device: str) -> str | None:
    # Importing the CPU core is cheap and touches neither triton nor CUDA; a broken build
    # (e.g. an extension compiled for another Python) is reported instead of crashing later.
    try:
        importlib.import_module("memlens._C")
    except ImportError as e:
        return f"the compiled CPU core memlens._C cannot be imported ({e})"
    return None


def compiled_cuda_reason(device: str) -> str | None:
    if not _has_module("memlens._cuda"):
        return "memlens was built without CUDA (MEMLENS_CUDA=OFF or no nvcc at build time)"
    return None


def triton_reason(device: str) -> str | None:
    if not _has_module("triton"):
        return "triton is not installed (pip install 'memlens[triton]')"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs on CPU tensors only under TRITON_INTERPRET=1"
    return None


def always(device: str) -> str | None:
    return None
