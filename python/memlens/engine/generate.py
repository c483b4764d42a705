"""``memlens generate``: samples of a local diffusers pipeline, each traceable to its settings.

Output directory::

    samples/p<prompt index>_g<generation>.png   images (image pipelines)
    samples/p<prompt index>_g<generation>.mp4   videos (video pipelines; mp4v, --fps)
    results.jsonl    one row per sample, appended once its file is written (resumable)
    results.parquet  the same rows as a table
    run.json         settings, model, versions

Row keys: ``prompt_index``, ``prompt``, ``generation``, ``seed``, ``file`` (relative to the
output directory), ``kind`` (``image``/``video``), ``height``, ``width``, ``frames`` and
``fps`` (videos), ``num_inference_steps``, ``guidance_scale``, ``model``.

Seeding matches ``memlens detect`` (and :func:`memlens.diffusion.run_guided`): prompt ``i``'s
starting noises are consecutive draws of one CPU ``torch.Generator`` seeded ``seed + i``, and
generation ``j`` is draw ``j``. So sample (i, j) starts from the very ``x_T`` that
``memlens detect --seed s`` scores as generation ``j`` of prompt ``i``, whatever the batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memlens.engine.pipeline import check_call_kwargs, check_resumable, open_pipeline
from memlens.engine.progress import Progress
from memlens.engine.records import (
    PARQUET,
    RESULTS,
    ResultWriter,
    read_results,
    write_parquet,
    write_run_json,
)

SAMPLES = "samples"


@dataclass(frozen=True)
class GenerateSettings:
    generations: int = 1
    seed: int = 0
    num_inference_steps: int | None = None  # None: the pipeline's default
    guidance_scale: float | None = None  # None: the pipeline's default
    call_kwargs: dict[str, Any] = field(default_factory=dict)  # height, width, num_frames
    fps: float = 8.0  # frame rate written into videos


@dataclass(frozen=True)
class GenerateSummary:
    rows: list[dict[str, Any]]  # every sample's row, in (prompt, generation) order
    generated: int  # samples written by this invocation
    skipped: int  # samples already there (--resume)
    seconds: float  # sampling + writing time of this invocation (model loading excluded)


def to_uint8(x: Any) -> np.ndarray:
    """A pipeline's ``output_type="np"`` result in [0, 1] (array, tensor or list of PIL
    images) -> uint8, rounded."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x if isinstance(x, np.ndarray) else [np.asarray(v) for v in x])
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _outputs(out: Any) -> np.ndarray:
    """(rows, H, W, 3) images or (rows, F, H, W, 3) videos as uint8."""
    for name in ("images", "frames"):
        value = getattr(out, name, None)
        if value is not None:
            arr = to_uint8(value)
            if arr.ndim in (4, 5) and arr.shape[-1] == 3:
                return arr
            raise ValueError(f"unexpected pipeline output {name} of shape {arr.shape}")
    raise ValueError(f"{type(out).__name__} has neither images nor frames")


def _call_value(pipe: Any, name: str, given: Any) -> Any:
    from memlens.diffusion import default_call_value

    return given if given is not None else default_call_value(pipe, name)


def _write(path: Path, sample: np.ndarray, fps: float) -> None:
    from memlens.datasets.clips import write_image, write_video

    if sample.ndim == 3:
        write_image(path, sample)
    else:
        write_video(path, sample, fps=fps)


def run_generate(
    model: str | Path,
    prompts: Sequence[str],
    out: str | Path,
    *,
    settings: GenerateSettings | None = None,
    batch_size: int = 4,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    command: str = "generate",
) -> GenerateSummary:
    """Generate ``settings.generations`` samples of every prompt into ``out``."""
    import torch

    settings = settings or GenerateSettings()
    if settings.generations < 1:
        raise ValueError(f"--generations must be >= 1; got {settings.generations}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {batch_size}")
    if not prompts:
        raise ValueError("--prompts: no prompt to generate")
    run = Path(out)
    record = {**asdict(settings), "model": str(model)}
    check_resumable(run, record, resume)
    pipe = open_pipeline(model, device=device)
    check_call_kwargs(pipe, settings.call_kwargs)
    steps = _call_value(pipe, "num_inference_steps", settings.num_inference_steps)
    guidance = _call_value(pipe, "guidance_scale", settings.guidance_scale)
    (run / SAMPLES).mkdir(parents=True, exist_ok=True)
    g = settings.generations
    earlier = [r for r in read_results(run / RESULTS)
               if r.get("prompt_index", -1) < len(prompts)
               and prompts[r["prompt_index"]] == r.get("prompt")]  # fmt: skip
    done = {(r["prompt_index"], r["generation"]): r for r in earlier if r["generation"] < g}
    # a prompt missing any generation runs again whole: draw j needs draws 0..j-1 anyway
    todo = [i for i in range(len(prompts)) if any((i, j) not in done for j in range(g))]
    write_run_json(run, command, {**record, "batch_size": batch_size})
    bar = Progress(len(todo) * g, "generate", enabled=progress)
    new: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with ResultWriter(run) as w:
        for b in range(0, len(todo), batch_size):
            chunk = todo[b : b + batch_size]
            generators = []
            for i in chunk:  # one generator per prompt, shared by its rows: draw j = sample j
                generators += [torch.Generator().manual_seed(settings.seed + i)] * g
            result = pipe(
                prompt=[prompts[i] for i in chunk for _ in range(g)],
                generator=generators,
                num_inference_steps=steps,
                guidance_scale=float(guidance),
                output_type="np",
                **settings.call_kwargs,
            )
            samples = _outputs(result)
            for k, sample in enumerate(samples):
                i, j = chunk[k // g], k % g
                if (i, j) in done:
                    continue
                video = sample.ndim == 4
                name = f"{SAMPLES}/p{i:06d}_g{j:03d}.{'mp4' if video else 'png'}"
                _write(run / name, sample, settings.fps)
                row: dict[str, Any] = {
                    "prompt_index": i, "prompt": prompts[i], "generation": j,
                    "seed": settings.seed + i, "file": name,
                    "kind": "video" if video else "image",
                    "height": int(sample.shape[-3]), "width": int(sample.shape[-2]),
                }  # fmt: skip
                if video:
                    row |= {"frames": int(sample.shape[0]), "fps": settings.fps}
                row |= {"num_inference_steps": steps, "guidance_scale": float(guidance),
                        "model": str(model)}  # fmt: skip
                w.write(row)  # after the file: a row always points at a complete sample
                new.append(row)
            bar.update(len(chunk) * g, frames=sum(int(s.shape[0]) if s.ndim == 4 else 1
                                                  for s in samples))  # fmt: skip
    seconds = time.perf_counter() - t0
    rows = sorted([*done.values(), *new], key=lambda r: (r["prompt_index"], r["generation"]))
    write_parquet(rows, run / PARQUET)
    return GenerateSummary(rows=rows, generated=len(new), skipped=len(done), seconds=seconds)
