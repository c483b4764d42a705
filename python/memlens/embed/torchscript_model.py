"""``torchscript:PATH``: a user TorchScript descriptor (e.g. Meta's
``sscd_disc_large.torchscript.pt``), on the CPU or a CUDA GPU.

Default preprocessing is SSCD's official ``small_288``: short edge to 288 (cv2, on the CPU,
before the upload), float NCHW RGB in [0, 1], ImageNet mean/std. ``torch.jit.load`` reads
TorchScript archives with TorchScript's own restricted unpickler (no arbitrary Python
objects), so loading a user file does not run Python code from it (DESIGN.md §9).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from memlens.embed.base import EmbedderSpec
from memlens.embed.onnx_model import IMAGENET_MEAN, IMAGENET_STD, SSCD_DEFAULT_RESIZE
from memlens.embed.preprocess import ResizeRule, check_frames, file_checksum, unit_rows
from memlens.errors import ModelUnavailableError


class TorchScriptEmbedder:
    """A TorchScript model mapping float ``(N, 3, H, W)`` to ``(N, D)`` (or anything that
    flattens to it). ``threads`` sets torch's intra-op threads for the duration of each
    ``embed`` call only (torch's setting is process-wide, so it is restored afterwards)."""

    def __init__(
        self,
        path: str | Path,
        *,
        name: str = "torchscript",
        threads: int | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        resize: ResizeRule | None = None,
        mean: tuple[float, float, float] | None = IMAGENET_MEAN,
        std: tuple[float, float, float] | None = IMAGENET_STD,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TorchScript model file not found: {path}")
        if importlib.util.find_spec("torch") is None:
            raise ModelUnavailableError("torchscript:PATH embedders need torch: pip install torch")
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked but torch.cuda.is_available() is False")
        self._torch = torch
        self._device = torch.device(device)
        try:
            with warnings.catch_warnings():
                # torch >= 2.10 deprecates TorchScript, but the published SSCD models are
                # TorchScript files: loading them is this embedder's whole purpose.
                warnings.filterwarnings(
                    "ignore",
                    message=r".*torch\.jit\.load.* is deprecated",
                    category=DeprecationWarning,
                )
                self._model = torch.jit.load(str(path), map_location=self._device).eval()
        except Exception as e:  # torch raises RuntimeError/ValueError for non-TorchScript files
            raise ValueError(f"cannot load TorchScript model {path}: {e}") from e
        self._threads = threads
        self._batch = batch_size
        self._resize = resize or SSCD_DEFAULT_RESIZE
        self._mean = self._std = None
        if mean is not None and std is not None:
            if min(std) <= 0:
                raise ValueError(f"std must be positive; got {std}")
            self._mean = torch.tensor(mean, dtype=torch.float32, device=self._device)
            self._std = torch.tensor(std, dtype=torch.float32, device=self._device)
        # The output size is not declared in a TorchScript file: learn it from a blank frame.
        side = self._resize.size or 224
        dim = self._run(np.zeros((1, side, side, 3), dtype=np.uint8)).shape[1]
        self._spec = EmbedderSpec(
            name=name,
            dim=int(dim),
            preprocessing={
                "resize": self._resize.describe(),
                "layout": "NCHW",
                "dtype": "float32",
                "scale": "1/255",
                "mean": None if mean is None else list(mean),
                "std": None if std is None else list(std),
                "model_sha256": file_checksum(path),
            },
        )

    @property
    def spec(self) -> EmbedderSpec:
        return self._spec

    def _run(self, frames: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(self._resize.apply(frames)).to(self._device)
        x = x.permute(0, 3, 1, 2).float().div_(255)
        if self._mean is not None and self._std is not None:
            x = (x - self._mean[:, None, None]) / self._std[:, None, None]
        with torch.inference_mode():
            out: Any = self._model(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model must return a tensor; got {type(out).__name__}")
        return out.float().reshape(frames.shape[0], -1).cpu().numpy()

    def embed(self, frames: np.ndarray) -> np.ndarray:
        frames = check_frames(frames)
        n, dim = frames.shape[0], self._spec.dim
        out = np.empty((n, dim), dtype=np.float32)
        previous = self._torch.get_num_threads()
        if self._threads is not None:
            self._torch.set_num_threads(self._threads)
        try:
            for start in range(0, n, self._batch):
                part = self._run(frames[start : start + self._batch])
                if part.shape[1] != dim:
                    raise ValueError(f"the model returned {part.shape[1]}-d rows; expected {dim}")
                out[start : start + part.shape[0]] = part
        finally:
            if self._threads is not None:
                self._torch.set_num_threads(previous)
        return unit_rows(out)

    def __repr__(self) -> str:
        return f"TorchScriptEmbedder(dim={self._spec.dim}, device={str(self._device)!r})"
