"""``memlens explain`` (token significance of one prompt) and ``memlens mitigate``
(inference-time mitigation of one prompt): thin drivers over memlens.metrics.tokens and
memlens.metrics.mitigate_inference that open the model, write the results and the media."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from memlens.engine.generate import _outputs, _write, to_uint8
from memlens.engine.pipeline import check_call_kwargs, open_pipeline
from memlens.engine.records import atomic_write_text
from memlens.index.atomic import write_bytes_atomic


def run_explain(
    model: str | Path,
    prompt: str,
    *,
    steps: Any = "all",
    generations: int = 4,
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Token significance record of ``prompt`` (methods.md §3.3): tokens and scores."""
    from memlens.metrics.tokens import token_significance

    if not prompt.strip():
        raise ValueError("--prompt must not be empty")
    pipe = open_pipeline(model, device=device)
    kwargs = dict(call_kwargs or {})
    check_call_kwargs(pipe, kwargs)
    sig = token_significance(pipe, prompt, steps=steps, generations=generations, seed=seed,
                             num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, call_kwargs=kwargs)  # fmt: skip
    rec: dict[str, Any] = sig.to_record()
    return rec


def run_mitigate(
    model: str | Path,
    prompt: str,
    out: str | Path,
    *,
    target_loss: float = 3.0,
    iterations: int = 10,
    lr: float = 0.05,
    generations: int = 4,
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    fps: float = 8.0,
    device: str = "auto",
) -> dict[str, Any]:
    """Optimise the prompt embedding until the first-step magnitude <= ``target_loss``
    (methods.md §3.4), generate before/after from the same noise and write to ``out``:
    result.json (magnitudes, losses, iterations), before/ and after/ samples, embedding.npy."""
    from memlens.metrics.mitigate_inference import mitigate_prompt

    if not prompt.strip():
        raise ValueError("--prompt must not be empty")
    run = Path(out)
    if run.exists() and any(run.iterdir()):
        raise ValueError(f"--out: {str(run)!r} exists and is not empty")
    pipe = open_pipeline(model, device=device)
    kwargs = dict(call_kwargs or {})
    check_call_kwargs(pipe, kwargs)
    res = mitigate_prompt(pipe, prompt, target_loss=target_loss, iterations=iterations, lr=lr,
                          generations=generations, seed=seed,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          call_kwargs=kwargs, output_type="np")  # fmt: skip
    run.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    for name, output in (("before", res.original_output), ("after", res.output)):
        if output is None:
            continue
        samples = _samples(output)
        (run / name).mkdir(exist_ok=True)
        files[name] = []
        for j, sample in enumerate(samples):
            rel = f"{name}/{j:03d}.{'png' if sample.ndim == 3 else 'mp4'}"
            _write(run / rel, sample, fps)
            files[name].append(rel)
    buf = _npy(res.embedding.detach().float().cpu().numpy())
    write_bytes_atomic(run / "embedding.npy", buf)
    record = {"prompt": prompt, **res.to_record(), "files": files, "embedding": "embedding.npy"}
    atomic_write_text(run / "result.json", json.dumps(record, indent=2, default=_json) + "\n")
    return record


def _samples(output: Any) -> np.ndarray:
    """(n, H, W, 3) images or (n, F, H, W, 3) videos, uint8, from a pipeline output object or
    the bare array mitigate_prompt returns."""
    if hasattr(output, "images") or hasattr(output, "frames"):
        return _outputs(output)
    arr = to_uint8(output)
    if arr.ndim not in (4, 5) or arr.shape[-1] != 3:
        raise ValueError(f"unexpected generated output of shape {arr.shape}")
    return arr


def _npy(a: np.ndarray) -> bytes:
    import io

    f = io.BytesIO()
    np.save(f, a, allow_pickle=False)
    return f.getvalue()


def _json(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
