"""Render a ``memlens bench search --json`` result as the markdown table of benchmarks/README.md.

python benchmarks/table.py bench-results/search.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def render(result: dict) -> str:
    m = result["machine"]
    cpu = m["memlens"]["cpu"]
    lines = [
        (
            f"Machine: {m['cpu']}, {m['cores']} cores, SIMD level `{cpu.get('simd')}`, "
            f"commit `{(m.get('commit') or '?')[:10]}`, faiss {m['libraries'].get('faiss')}, "
            f"torch {m['libraries']['torch']}, numpy {m['libraries']['numpy']}; {m['time']}."
        ),
        "",
        "| nr | k | method | pairs/s | GFLOP/s | x faiss | x sgemm | recall |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        vs_faiss = f"{r['vs_faiss']:.2f}" if r["vs_faiss"] else "-"
        recall = f"{r['recall']:.4f}" if r["recall"] is not None else "-"
        lines.append(
            f"| {r['nr']:.0e} | {r['k']} | {r['method']} | {r['pairs_per_s']:.3g} | "
            f"{r['gflops']:.0f} | {vs_faiss} | {r['vs_sgemm']:.2f} | {recall} |"
        )
    sg = m.get("sgemm_gflops", {})
    lines.append("")
    lines.append(
        "Same-run sgemm, (nq x d) @ (d x 16384): "
        + "; ".join(
            f"nr={nr}: numpy {v['numpy']:.0f}, torch {v['torch']:.0f} GFLOP/s"
            for nr, v in sg.items()
        )
    )
    memory = result.get("memory") or []
    for mem in memory if isinstance(memory, list) else [memory]:
        lines.append(
            f"Peak resident memory (fresh process, nr={mem['nr']:.0e}, k={mem['k']}, "
            f"{mem.get('precision', 'fp32')}): +{mem['peak_over_inputs_mb']:.0f} MB over "
            f"{mem['inputs_mb']:.0f} MB of inputs."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text())))
