"""Machine and library metadata recorded with every benchmark result."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def thread_pools() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("internal_api", "num_threads", "version", "architecture", "filepath")
    return [{k: p.get(k) for k in keep} for p in threadpool_info()]


def metadata() -> dict[str, Any]:
    import numpy as np
    import torch

    import memlens

    libs: dict[str, Any] = {"numpy": np.__version__, "torch": torch.__version__}
    try:
        import faiss

        libs["faiss"] = faiss.__version__
    except ImportError:
        libs["faiss"] = None
    return {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": libs,
        "memlens": memlens.build_info(),
        "thread_pools": thread_pools(),
        "env": {
            k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "MEMLENS_SIMD")
        },
    }
