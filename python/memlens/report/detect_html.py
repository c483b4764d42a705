"""``report.html`` of a ``memlens detect`` run: summary, score histograms per label, ROC curves
with AUC/ACC/TPR@1%FPR (when labelled), the top prompts, and token significance where rows
carry it. Self-contained (inline SVG); every string from a user (prompts, paths) is escaped.

The report only reads the run's files (DESIGN.md §3): ``run.json`` and ``results.jsonl``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memlens.engine.records import RESULTS, RUN, atomic_write_text, read_results
from memlens.report.html import _STYLE, REPORT, _e

# label -> (legend, colour); None = a prompt the labels file lacks (or no labels at all)
_GROUPS: tuple[tuple[int | None, str, str], ...] = (
    (1, "memorized (label 1)", "#c0392b"),
    (0, "not memorized (label 0)", "#2e6fb0"),
    (None, "unlabelled", "#888"),
)
_TITLES = {
    "magnitude": "Text-guidance magnitude",
    "content_magnitude": "Content magnitude d_c (frame-shared part)",
    "motion_magnitude": "Motion magnitude d_m (frame-varying part)",
}
_EXTRA_STYLE = ".bar{display:inline-block;height:10px;background:#c0392b;vertical-align:middle}"


def _finite(rows: Sequence[Mapping[str, Any]], key: str) -> list[tuple[Any, float]]:
    out = []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append((r.get("label"), float(v)))
    return out


def histogram_by_label(
    rows: Sequence[Mapping[str, Any]], key: str, *, bins: int = 30, width: int = 640,
    height: int = 200,
) -> str:  # fmt: skip
    """Overlaid outline histograms of ``key``, one per label group, on shared bins."""
    pairs = _finite(rows, key)
    if not pairs:
        return "<p>No finite scores.</p>"
    values = np.asarray([v for _, v in pairs])
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    groups = [(g, name, colour, np.asarray([v for lab, v in pairs if lab == g]))
              for g, name, colour in _GROUPS]  # fmt: skip
    groups = [x for x in groups if x[3].size]
    hists = [np.histogram(v, bins=edges)[0] for *_, v in groups]
    top = max(int(max(h.max() for h in hists)), 1)
    pad, w, h = 40, width - 60, height - 50
    bw = w / bins
    shapes = []
    for (_, name, colour, _), counts in zip(groups, hists, strict=True):
        pts = [f"{pad:.1f},{10 + h:.1f}"]
        for i, c in enumerate(counts.tolist()):
            y = 10 + h - c / top * h
            pts += [f"{pad + i * bw:.1f},{y:.1f}", f"{pad + (i + 1) * bw:.1f},{y:.1f}"]
        pts.append(f"{pad + w:.1f},{10 + h:.1f}")
        shapes.append(
            f'<polygon points="{" ".join(pts)}" fill="{colour}" fill-opacity="0.25" '
            f'stroke="{colour}" stroke-width="1.5"><title>{_e(name)}: {int(counts.sum())}'
            "</title></polygon>"
        )
    legend = "".join(
        f'<rect x="{pad + 10 + k * 190}" y="{height - 14}" width="10" height="10" '
        f'fill="{colour}"/><text x="{pad + 24 + k * 190}" y="{height - 5}" font-size="11">'
        f"{_e(name)} ({len(v)})</text>"
        for k, (_, name, colour, v) in enumerate(groups)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(key)} histogram per label">{"".join(shapes)}'
        f'<line x1="{pad}" y1="{10 + h}" x2="{pad + w}" y2="{10 + h}" stroke="#333"/>'
        f'<text x="{pad}" y="{h + 24}" font-size="11">{lo:.4g}</text>'
        f'<text x="{pad + w - 30}" y="{h + 24}" font-size="11">{hi:.4g}</text>'
        f'<text x="{pad + w / 2 - 30:.0f}" y="{h + 24}" font-size="11">{_e(key)}</text>'
        f'<text x="2" y="18" font-size="11">{top}</text>{legend}</svg>'
    )


def roc_svg(labels: Sequence[int], scores: Sequence[float], *, size: int = 240) -> str:
    """The ROC curve (FPR on x, TPR on y) with the chance diagonal."""
    from memlens.metrics.roc import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    pad, s = 30, size - 40
    pts = " ".join(
        f"{pad + x * s:.1f},{10 + (1 - y) * s:.1f}" for x, y in zip(fpr, tpr, strict=True)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img" '
        f'aria-label="ROC curve"><rect x="{pad}" y="10" width="{s}" height="{s}" fill="none" '
        f'stroke="#333"/><line x1="{pad}" y1="{10 + s}" x2="{pad + s}" y2="10" stroke="#aaa" '
        f'stroke-dasharray="4 3"/><polyline points="{pts}" fill="none" stroke="#c0392b" '
        f'stroke-width="2"/><text x="{pad}" y="{size - 12}" font-size="11">0</text>'
        f'<text x="{pad + s - 6}" y="{size - 12}" font-size="11">1</text>'
        f'<text x="{pad + s / 2 - 10:.0f}" y="{size - 12}" font-size="11">FPR</text>'
        f'<text x="4" y="{10 + s / 2:.0f}" font-size="11">TPR</text></svg>'
    )


def _sparkline(values: Sequence[float], width: int = 120, height: int = 24) -> str:
    if len(values) < 2:
        return ""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo if hi > lo else 1.0
    pts = " ".join(f"{i * width / (len(v) - 1):.1f},{height - 2 - (x - lo) / span * (height - 4):.1f}"
                   for i, x in enumerate(v.tolist()))  # fmt: skip
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="per-step magnitude">'
            f'<polyline points="{pts}" fill="none" stroke="#2e6fb0"/></svg>')  # fmt: skip


def _roc_section(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    from memlens.metrics.roc import detection_report

    labelled = [r for r in rows if r.get("label") in (0, 1)]
    labels = [int(r["label"]) for r in labelled]
    if not labelled:
        return ["<p>No labels: pass <code>--labels FILE</code> for ROC curves and AUC.</p>"]
    if len(set(labels)) < 2:
        return [
            f"<p>All {len(labels)} labelled prompts have label {labels[0]}: ROC needs both.</p>"
        ]
    out = [("<h2>Detection (labelled prompts)</h2><table><tr><th>score</th><th>ROC</th>"
           "<th class='num'>AUC</th><th class='num'>ACC</th><th class='num'>TPR@1%FPR</th>"
           "<th class='num'>TPR@1%FPR (closest)</th></tr>")]  # fmt: skip
    for key in keys:
        scores = [float(r[key]) for r in labelled]
        if any(math.isnan(s) for s in scores):
            continue
        rep = detection_report(labels, scores)
        out.append(
            f"<tr><td>{_e(key)}</td><td>{roc_svg(labels, scores)}</td>"
            f"<td class='num'><b>{rep.auc:.3f}</b></td><td class='num'>{rep.acc:.3f}</td>"
            f"<td class='num'>{rep.tpr_at_1fpr:.3f}</td>"
            f"<td class='num'>{rep.tpr_at_1fpr_closest:.3f}</td></tr>"
        )
    out.append(f"</table><p>{labels.count(1)} memorized, {labels.count(0)} not; "
               f"{len(rows) - len(labelled)} unlabelled.</p>")  # fmt: skip
    return out


def _tokens_section(rows: Sequence[Mapping[str, Any]], top: int) -> list[str]:
    """Token significance bars (the ``tokens`` and ``token_significance`` keys, parallel
    lists), for the rows that carry them; a pointer to ``memlens explain`` otherwise."""
    with_tokens = [r for r in rows if isinstance(r.get("tokens"), list) and r["tokens"]
                   and len(r.get("token_significance") or []) == len(r["tokens"])]  # fmt: skip
    if not with_tokens:
        return [("<h2>Token significance</h2><p>Not computed in this run: "
                "<code>memlens explain --model M --prompt TEXT</code> shows which tokens drive "
                "a prompt's magnitude.</p>")]  # fmt: skip
    out = ["<h2>Token significance</h2>"]
    ranked = sorted(with_tokens, key=lambda r: -float(r.get("magnitude") or 0.0))[:top]
    for r in ranked:
        pairs = [
            (str(t), float(v)) for t, v in zip(r["tokens"], r["token_significance"], strict=True)
        ]
        peak = max((v for _, v in pairs), default=0.0) or 1.0
        out.append(f"<p><b>{_e(r['prompt'])}</b></p><table>")
        out += [
            f"<tr><td>{_e(t)}</td><td><span class='bar' style='width:{max(v, 0) / peak * 200:.0f}px'>"
            f"</span></td><td class='num'>{v:.4g}</td></tr>"
            for t, v in pairs
        ]
        out.append("</table>")
    return out


def _fmt(x: object) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) and not isinstance(x, bool) else ""


def render(run_dir: str | Path, *, top: int = 50) -> Path:
    """Write ``run_dir/report.html`` from the run's results and return its path."""
    run = Path(run_dir)
    meta: dict[str, Any] = json.loads((run / RUN).read_text()) if (run / RUN).exists() else {}
    settings = meta.get("settings", {})
    rows = sorted(read_results(run / RESULTS), key=lambda r: r.get("index", 0))
    keys = [k for k in ("magnitude", "content_magnitude", "motion_magnitude")
            if rows and all(isinstance(r.get(k), (int, float)) for r in rows)]  # fmt: skip
    video = "content_magnitude" in keys
    rate = meta.get("summary", {}).get("prompts_per_second")
    parts = [
        (
            "<!doctype html><html><head><meta charset='utf-8'><title>memlens detect report</title>"
            f"<style>{_STYLE}{_EXTRA_STYLE}</style></head><body><h1>memlens detect report</h1>"
        ),
        f"<p>{len(rows)} prompts scored on <code>{_e(settings.get('model', '?'))}</code>: "
        f"steps <code>{_e(settings.get('steps', '?'))}</code>, "
        f"{_e(settings.get('generations', '?'))} generations per prompt, seed "
        f"{_e(settings.get('seed', '?'))}"
        + (f"; {rate:.2f} prompts/s" if isinstance(rate, (int, float)) and rate > 0 else "")
        + ".</p>",
    ]
    for key in keys:
        parts += [f"<h2>{_e(_TITLES[key])}</h2>", histogram_by_label(rows, key, height=220)]
    parts += _roc_section(rows, keys)
    has_labels = any("label" in r for r in rows)
    head = "<th>#</th><th>prompt</th>" + ("<th>label</th>" if has_labels else "")
    head += "".join(f"<th class='num'>{_e(k)}</th>" for k in keys) + "<th>per step</th>"
    parts.append(f"<h2>Top prompts by magnitude (up to {top})</h2><table><tr>{head}</tr>")
    ranked = sorted(rows, key=lambda r: -float(r.get("magnitude") or 0.0))[:top]
    for n, r in enumerate(ranked, 1):
        label = r.get("label")
        cls = " class='mem'" if label == 1 else ""
        cells = f"<td>{n}</td><td>{_e(r.get('prompt', ''))}</td>"
        if has_labels:
            cells += f"<td{cls}>{'' if label is None else _e(label)}</td>"
        cells += "".join(f"<td class='num'>{_fmt(r.get(k))}</td>" for k in keys)
        cells += f"<td>{_sparkline(r.get('magnitude_steps') or [])}</td>"
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    if video:
        parts.append("<p>Video model: m² = F·d_c² + d_m² at every step (F frames).</p>")
    parts += _tokens_section(rows, 10)
    parts.append("</body></html>\n")
    path = run / REPORT
    atomic_write_text(path, "".join(parts))
    return path
