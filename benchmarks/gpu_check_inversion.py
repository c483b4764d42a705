"""One-shot GPU check of the fused inversion step (CUDA C++ and Triton backends): the test file
on the GPU, kernel launches per step outside the model, and `memlens bench invert` timings
against eager torch, Adam(fused=True) and torch.compile, with the device copy bandwidth.

    python3 benchmarks/gpu_check_inversion.py --json $OUT/inversion-gpu.json

Prints one JSON object per line and the bench tables; exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from memlens.bench import invert

ROOT = Path(__file__).resolve().parents[1]


def launches(backend: str) -> int:
    """CUDA kernels launched by the two passes of one step (model excluded)."""
    from torch.profiler import ProfilerActivity, profile

    c = invert.Case("launch", 2, 4, 4096)
    p = invert._problem(c, "cuda")
    _, passes = invert.memlens_step(c, p, backend)
    passes()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        passes()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--no-pytest", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0)}
    failures = []
    if not args.no_pytest:
        import pytest

        rc = int(
            pytest.main(
                ["-q", "-p", "no:cacheprovider", "-rs", str(ROOT / "tests/test_inversion_step.py")]
            )
        )
        out["pytest_rc"] = rc
        if rc != 0:
            failures.append("pytest")
    for be in ("cuda", "triton"):
        n = launches(be)
        out[f"launches_{be}"] = n
        print(json.dumps({"backend": be, "launches_per_step": n}), flush=True)
        if n > 2:
            failures.append(f"{be}: {n} launches per step")
    # torch.compile's baseline does not depend on the backend: compiled once, with cuda
    big = [invert.Case("1e8", 1, 1, 100_000_000)]
    out["bench_cuda"] = invert.run(backend="cuda", cases=invert.FULL, repeat=20, compiled=True)
    out["bench_triton"] = invert.run(backend="triton", cases=invert.FULL, repeat=20, compiled=False)
    out["bench_cuda_1e8"] = invert.run(backend="cuda", cases=big, repeat=10, compiled=False)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if failures:
        sys.exit(f"FAILED: {failures}")
    print("all ok")


if __name__ == "__main__":
    main()
