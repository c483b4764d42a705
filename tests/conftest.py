from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch


def unit_rows(n: int, d: int, seed: int, dtype: type = np.float32) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def true_scores(queries: np.ndarray, refs: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Full float64 score matrix (test sizes only)."""
    q = np.asarray(queries, dtype=np.float64)
    r = np.asarray(refs, dtype=np.float64)
    if normalize:
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    return q @ r.T


def assert_exact_topk(scores, indices, queries, refs, k, normalize=True, tie=1e-6) -> None:
    """The float64 definition of an exact top-k, allowing only ties within ``tie``."""
    s = scores.cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    i = indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
    if isinstance(queries, torch.Tensor):
        queries = queries.cpu().float().numpy()
    if isinstance(refs, torch.Tensor):
        refs = refs.cpu().float().numpy()
    full = true_scores(queries, refs, normalize)
    nq = full.shape[0]
    assert s.shape == (nq, k)
    assert i.shape == (nq, k)
    assert s.dtype == np.float32
    assert i.dtype == np.int64
    for row in range(nq):
        assert len(set(i[row].tolist())) == k, "duplicate indices"
        assert np.all(np.diff(s[row]) <= 0), "scores not sorted descending"
        got = full[row, i[row]]
        # fp32 accumulation: absolute error for unit vectors, relative for raw inner products
        np.testing.assert_allclose(s[row], got, atol=2e-5, rtol=2e-6)
        kth = np.sort(full[row])[::-1][k - 1]
        must = set(np.nonzero(full[row] > kth + tie)[0].tolist())
        assert must <= set(i[row].tolist()), "missed a true neighbour (recall < 1)"
        assert got.min() >= kth - tie, "returned a non-neighbour"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def compile_for_sm90(script: str, *argv: str) -> None:
    """Run ``script`` (which compiles Triton kernels for sm_90 with triton.compile and prints
    "compiled") in a fresh interpreter without TRITON_INTERPRET: GPU-only compile errors show
    up on a CPU machine. Skips where Triton's bundled ptxas is missing."""
    import os
    import subprocess
    import sys

    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("triton's bundled ptxas is not available")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
        timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    assert "compiled" in out.stdout


@pytest.fixture(scope="module")
def one_torch_thread():  # type: ignore[no-untyped-def]
    """Tiny diffusion models gain nothing from torch's intra-op threads, and on a busy 2-core
    machine those threads contend so badly that a 0.2 s call takes 10 s: one thread while a
    module that uses it runs (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny in-process "sd" (image) and "t2v" (video) pipelines saved once per session,
    for commands that load a model by path."""
    from memlens.diffusion import tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-models")
    for kind in ("sd", "t2v"):
        tiny_pipeline(kind).save_pretrained(root / kind)
    return {kind: root / kind for kind in ("sd", "t2v")}


# -- memlens audit on the tiny t2v pipeline (tests/test_audit.py, tests/test_report_browser.py) --
def audit_settings() -> Any:
    from memlens.diffusion.tiny import TINY_CALL_KWARGS
    from memlens.engine.audit import AuditSettings

    return AuditSettings(
        num_inference_steps=2,
        call_kwargs=dict(TINY_CALL_KWARGS["t2v"]),
        embedder="builtin",
        index_frames=2,
        flow_frames=4,
        flow_short_side=64,
        detect_generations=2,
        explain_top=1,
        invert_items=2,
        invert={"steps": 3, "samples": 2, "check_every": 2, "check_noises": 1, "ddim_steps": 2,
                "guidance_scales": (1.0,), "soft_prompt_tokens": 4},
    )  # fmt: skip


AUDIT_PROMPTS = [
    {"prompt": "a <i>cat</i> & a dog", "label": 1, "content_label": 1, "motion_label": 0},
    {"prompt": "a pan over bricks", "label": 0, "content_label": 0, "motion_label": 1},
    {"prompt": "a zoom into coins", "label": 1, "content_label": 0, "motion_label": 1},
    {"prompt": "fresh: a red boat", "label": 0, "content_label": 1, "motion_label": 0},
]


@pytest.fixture(scope="session")
def audit_training_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from memlens.datasets.clips import pan_clip, write_video, zoom_clip
    from memlens.datasets.photos import real_photographs

    photos = real_photographs()
    root = tmp_path_factory.mktemp("audit-train")
    rows = []
    for n, name in enumerate(("astronaut", "brick", "coins", "coffee", "rocket")):
        clip = (pan_clip if n % 2 else zoom_clip)(photos[name], frames=4, size=(32, 32))
        write_video(root / f"{name}.mp4", clip)
        rows.append({"file": f"{name}.mp4", "caption": f"a clip of {name}", "label": n % 2})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="session")
def audited(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dirs: dict[str, Path],
    audit_training_dir: Path,
) -> tuple[Path, Any]:
    """A small audit of the tiny t2v pipeline (test_audit.py and the browser test share it)."""
    run = tmp_path_factory.mktemp("audit") / "run"
    prompts = [p["prompt"] for p in AUDIT_PROMPTS]
    labels = {p["prompt"]: {k: v for k, v in p.items() if k != "prompt"} for p in AUDIT_PROMPTS}
    from memlens.engine.audit import run_audit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_audit(tiny_model_dirs["t2v"], [audit_training_dir], run, prompts=prompts,
                            labels=labels, settings=audit_settings(), progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return run, summary
