"""Drive diffusers image and video pipelines and observe their classifier-free guidance.

Importing this package imports neither diffusers nor transformers: they are loaded by the
functions that need them (``load_pipeline``, ``tiny_pipeline``), so ``import memlens`` stays
cheap and works without the ``diffusion`` extra.
"""

from __future__ import annotations

from memlens.diffusion.bare import BareDiffusion
from memlens.diffusion.driver import (
    default_call_value,
    denoiser_of,
    denoisers_of,
    frame_axis_of,
    load_pipeline,
    observe,
    run_guided,
)
from memlens.diffusion.observer import GuidanceObserver, GuidanceStep, StopSampling
from memlens.diffusion.tiny import KINDS, TINY_CALL_KWARGS, tiny_pipeline

__all__ = [
    "KINDS",
    "TINY_CALL_KWARGS",
    "BareDiffusion",
    "GuidanceObserver",
    "GuidanceStep",
    "StopSampling",
    "default_call_value",
    "denoiser_of",
    "denoisers_of",
    "frame_axis_of",
    "load_pipeline",
    "observe",
    "run_guided",
    "tiny_pipeline",
]
