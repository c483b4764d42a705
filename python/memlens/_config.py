"""Run-time settings read from the environment (validated, with the variable's name in errors)."""

from __future__ import annotations

import os

WORKSPACE_ENV = "MEMLENS_WORKSPACE_MB"
DEFAULT_WORKSPACE_MB = 256


def workspace_bytes() -> int:
    """Per-call memory budget of the ops (MEMLENS_WORKSPACE_MB, default 256 MiB)."""
    raw = os.environ.get(WORKSPACE_ENV)
    if not raw:
        return DEFAULT_WORKSPACE_MB << 20
    try:
        mb = int(raw)
    except ValueError:
        raise ValueError(f"{WORKSPACE_ENV} must be an integer number of MiB; got {raw!r}") from None
    if mb < 16:
        raise ValueError(f"{WORKSPACE_ENV} must be at least 16; got {mb}")
    return mb << 20
