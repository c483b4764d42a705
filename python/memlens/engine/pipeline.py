"""Shared pieces of the prompt-side commands (detect, generate, prompts mine): opening a user's
local diffusers pipeline (path checks that name the option, device choice, quiet loading),
its size options, and the resume check of a run directory."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def device_of(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def _no_load_bars() -> Iterator[None]:
    """diffusers' and transformers' loading bars and warnings off while loading (memlens
    draws its own progress); each library's settings are restored afterwards."""
    from diffusers.utils import logging as dlog

    try:
        from transformers.utils import logging as tlog
    except ImportError:  # a pipeline without a text encoder does not need transformers
        tlog = None  # type: ignore[assignment]
    restore = []
    levels = []
    for lib in (dlog, tlog):
        if lib is None:
            continue
        if lib.is_progress_bar_enabled():
            lib.disable_progress_bar()
            restore.append(lib)
        # loading-time advice (install accelerate, deprecated pipeline class) is not the
        # user's concern while memlens loads a model
        levels.append((lib, lib.get_verbosity()))
        lib.set_verbosity_error()
    try:
        yield
    finally:
        for lib in restore:
            lib.enable_progress_bar()
        for lib, level in levels:
            lib.set_verbosity(level)


def open_pipeline(path: str | Path, *, device: str = "auto") -> Any:
    """The diffusers pipeline in the local directory ``path`` on ``device``, eval mode, its own
    progress bar off. A missing or non-pipeline directory is a ``ValueError`` naming --model."""
    from memlens.diffusion import load_pipeline
    from memlens.diffusion._imports import require_diffusers

    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(
            f"--model: {str(p)!r} is not a directory (a local diffusers pipeline; "
            "memlens never downloads models)"
        )
    if not (p / "model_index.json").is_file():
        raise ValueError(f"--model: {str(p)!r} has no model_index.json (not a diffusers pipeline)")
    require_diffusers()
    with _no_load_bars():
        pipe = load_pipeline(p, device=device_of(device))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_call_kwargs(pipe: Any, kwargs: Mapping[str, Any]) -> None:
    """Refuse size options (``height``, ``width``, ``num_frames``) the pipeline does not take,
    naming the command-line flag, before any sampling runs."""
    import inspect

    params = inspect.signature(pipe.__call__).parameters
    for name in kwargs:
        if name not in params:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag}: {type(pipe).__name__} takes no {name}")


def check_resumable(run: Path, settings: dict[str, Any], resume: bool) -> None:
    """Refuse to append to an existing run without ``resume``, or with other ``settings``
    than those in its run.json (its rows would not be comparable with the new ones)."""
    from memlens.engine.records import RESULTS, RUN

    if not (run / RESULTS).exists():
        return
    if not resume:
        raise ValueError(f"--out: {str(run)!r} holds a run; pass --resume to continue it")
    try:
        before = json.loads((run / RUN).read_text(encoding="utf-8")).get("settings", {})
    except (OSError, json.JSONDecodeError):
        return  # no readable run.json: the rows themselves are all there is to go on
    for key, value in settings.items():
        if key != "model" and key in before and before[key] != value:
            raise ValueError(
                f"--resume: the run in {str(run)!r} used {key}={before[key]!r}; now {value!r} "
                "(scores would not be comparable: use a new --out)"
            )
