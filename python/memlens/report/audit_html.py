"""``report.html`` of a ``memlens audit`` run: one self-contained page over every stage.

Sections: the run (model, training set, stages and their time), how well each detector
separates the labelled prompts and training items (AUC and ROC curves, when labels exist),
the prompts ranked by their most memorized sample (generated frame beside its training match,
content and motion scores, noise magnitude), token significance of the top prompts, motion
matches (flow pictures), and InvMM of the sampled training items. Images are inline JPEG/PNG,
plots inline SVG; every string from a user (prompts, file names, item ids) is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from memlens.engine.records import atomic_write_text
from memlens.report.detect_html import _EXTRA_STYLE, _tokens_section, roc_svg
from memlens.report.html import _STYLE, REPORT, _e, _img, _png, _thumbnail, histogram_svg

_LABEL_STYLE = ".tag{font-size:.75em;padding:1px 4px;border-radius:3px;background:#eee}"
_SECTIONS = (("scan", "content and motion scan"), ("detect", "prompt-side detection"),
             ("invert", "InvMM"))  # fmt: skip


def _num(x: object, fmt: str = ".3f") -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return ""
    return format(x, fmt)


def _labels(r: Mapping[str, Any]) -> str:
    keys = (("label", "memorized"), ("content_label", "content"), ("motion_label", "motion"))
    tags = [name for key, name in keys if r.get(key) == 1]
    if not tags and any(r.get(k) == 0 for k, _ in keys):
        tags = ["none"]
    return " ".join(f"<span class='tag'>{_e(t)}</span>" for t in tags)


def _evaluation(
    prompts: Sequence[Mapping[str, Any]],
    invert: Sequence[Mapping[str, Any]],
    evaluation: Mapping[str, Mapping[str, float]],
) -> list[str]:
    from memlens.engine.audit import detector_scores

    if not evaluation:
        return [
            (
                "<h2>Detectors</h2><p>No labels: give a JSON Lines <code>--prompts</code> file "
                "with <code>label</code> (and <code>content_label</code> / <code>motion_label</code>) "
                "fields to measure each detector's AUC.</p>"
            )
        ]
    out = [
        (
            "<h2>Detectors against the labels</h2><table><tr><th>detector</th><th>ROC</th>"
            "<th class='num'>AUC</th><th class='num'>positives</th><th class='num'>negatives</th></tr>"
        )
    ]
    curves = detector_scores(prompts, invert)
    for name, e in evaluation.items():
        labels, raw = curves[name]
        finite = [v for v in raw if math.isfinite(v)]
        floor = (min(finite) - 1.0) if finite else 0.0  # missing scores: below every other
        scores = [v if math.isfinite(v) else floor for v in raw]
        out.append(
            f"<tr><td>{_e(name)}</td><td>{roc_svg(labels, scores, size=180)}</td>"
            f"<td class='num'><b>{e['auc']:.3f}</b></td><td class='num'>{int(e['positives'])}</td>"
            f"<td class='num'>{int(e['negatives'])}</td></tr>"
        )
    out.append("</table>")
    return out


def _prompt_table(run: Path, rows: Sequence[Mapping[str, Any]], top: int) -> list[str]:
    ranked = sorted(rows, key=lambda r: -float(r.get("content_max", -1.0)))[:top]
    out = [
        f"<h2>Prompts by their most copied sample (top {len(ranked)} of {len(rows)})</h2>",
        (
            "<table><tr><th>#</th><th>prompt</th><th>labels</th><th>sample | training match</th>"
            "<th class='num'>content max</th><th class='num'>motion OFS</th>"
            "<th class='num'>magnitude</th><th>best match</th></tr>"
        ),
    ]
    for n, r in enumerate(ranked, 1):
        pair = ""
        if r.get("sample"):
            gen = _img(_thumbnail(str(r["sample"]), int(r.get("best_gen_frame", 0)), 96), "sample")
            ref = _img(_thumbnail(str(r["best_source"]), int(r.get("best_frame", 0)), 96),
                       f"{r.get('best_item')} frame {r.get('best_frame')}")  # fmt: skip
            pair = gen + ref
        cm = _num(r.get("content_max"))
        if cm and r.get("content_memorized"):
            cm = f"<span class='mem'>{cm}</span>"
        mo = _num(r.get("motion_ofs"))
        if mo and r.get("motion_memorized"):
            mo = f"<span class='mem'>{mo}</span>"
        if r.get("motion_static"):
            mo += " <small>static</small>"
        out.append(
            f"<tr><td>{n}</td><td>{_e(r['prompt'])}</td><td>{_labels(r)}</td>"
            f"<td class='pair'>{pair}</td><td class='num'>{cm}</td><td class='num'>{mo}</td>"
            f"<td class='num'>{_num(r.get('magnitude'), '.4g')}</td>"
            f"<td>{_e(r.get('best_item', ''))}</td></tr>"
        )
    out.append("</table>")
    return out


def _motion(run: Path, rows: Sequence[Mapping[str, Any]], top: int) -> list[str]:
    moving = [
        r
        for r in rows
        if isinstance(r.get("motion_ofs"), (int, float)) and not r.get("motion_static")
    ]
    if not moving:
        return []
    out = [
        "<h2>Motion matches</h2>",
        histogram_svg([float(r["motion_ofs"]) for r in moving], 0.8, label="motion_ofs"),
        (
            "<table><tr><th>prompt</th><th>labels</th><th>flow (sample | training)</th>"
            "<th class='num'>OFS</th><th>camera</th><th>training item</th></tr>"
        ),
    ]
    for r in sorted(moving, key=lambda r: -float(r["motion_ofs"]))[:top]:
        flow = _img(_png(run / "scan", r.get("motion_flow_image")), "flow")
        out.append(
            f"<tr><td>{_e(r['prompt'])}</td><td>{_labels(r)}</td><td class='pair'>{flow}</td>"
            f"<td class='num'>{_num(r['motion_ofs'])}</td>"
            f"<td>{'yes' if r.get('motion_camera') else 'no'}</td>"
            f"<td>{_e(r.get('motion_best_item', ''))}</td></tr>"
        )
    out.append("</table>")
    return out


def _invmm(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    ranked = sorted(rows, key=lambda r: (r.get("invmm") is None, r.get("invmm") or 0.0))
    n_ok = sum(r.get("invmm") is not None for r in rows)
    out = [
        "<h2>InvMM of training items</h2>",
        (
            f"<p>{len(rows)} training items inverted, {n_ok} regenerated from a learned noise "
            "distribution. InvMM is that distribution's per-dimension KL to N(0, I): <b>lower = "
            "more memorized</b>; +inf = not regenerated within the step budget.</p>"
        ),
        (
            "<table><tr><th>training item</th><th>label</th><th>first frame</th>"
            "<th class='num'>InvMM</th><th class='num'>steps</th><th class='num'>similarity</th></tr>"
        ),
    ]
    for r in ranked:
        score = "+inf" if r.get("invmm") is None else _num(r["invmm"], ".4g")
        lab = "" if r.get("label") is None else ("planted" if r["label"] else "unique")
        thumb = _img(_thumbnail(str(r["path"]), 0, 64), str(r["path"]))
        out.append(
            f"<tr><td>{_e(Path(str(r['path'])).name)}</td><td>{_e(lab)}</td>"
            f"<td class='pair'>{thumb}</td><td class='num'>{_e(score)}</td>"
            f"<td class='num'>{int(r.get('steps', 0))}</td>"
            f"<td class='num'>{_num(r.get('final_similarity'))}</td></tr>"
        )
    out.append("</table>")
    return out


def render(
    run_dir: str | Path,
    prompts: Sequence[Mapping[str, Any]],
    invert: Sequence[Mapping[str, Any]],
    evaluation: Mapping[str, Mapping[str, float]],
    state: Mapping[str, Any],
    *,
    top: int = 30,
) -> Path:
    """Write ``run_dir/report.html`` and return its path."""
    run = Path(run_dir)
    settings = state.get("settings", {})
    stages = state.get("stages", {})
    train = settings.get("train", [])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>memlens audit report</title>",
        f"<style>{_STYLE}{_EXTRA_STYLE}{_LABEL_STYLE}</style></head><body>",
        "<h1>memlens audit report</h1>",
        (
            f"<p>Model <code>{_e(settings.get('model', '?'))}</code>; training set "
            f"{', '.join(f'<code>{_e(t)}</code>' for t in train)}; {len(prompts)} prompts.</p>"
        ),
        "<table><tr><th>stage</th><th class='num'>seconds</th><th>result</th></tr>",
    ]
    for name, info in stages.items():
        extra = ", ".join(
            f"{_e(k)} {_e(v)}" for k, v in info.items() if k not in ("done", "seconds")
        )
        parts.append(f"<tr><td>{_e(name)}</td><td class='num'>{_num(info.get('seconds'), '.1f')}</td>"
                     f"<td>{extra}</td></tr>")  # fmt: skip
    parts.append("</table>")
    n_c = sum(bool(r.get("content_memorized")) for r in prompts)
    n_m = sum(bool(r.get("motion_memorized")) for r in prompts)
    parts.append(
        f"<p><span class='mem'>{n_c}</span> prompts with a content-memorized sample, "
        f"<span class='mem'>{n_m}</span> with a motion-memorized one.</p>"
    )
    parts += _evaluation(prompts, invert, evaluation)
    parts += _prompt_table(run, prompts, top)
    parts += _tokens_section(prompts, top)
    parts += _motion(run, prompts, top)
    parts += _invmm(invert)
    links = [f"<a href='{d}/report.html'>{_e(label)}</a>" for d, label in _SECTIONS
             if (run / d / REPORT).exists()]  # fmt: skip
    if links:
        parts.append(f"<h2>Stage reports</h2><p>{' · '.join(links)}</p>")
    parts.append("</body></html>\n")
    path = run / REPORT
    atomic_write_text(path, "".join(parts))
    return path
