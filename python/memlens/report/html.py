"""A self-contained ``report.html`` for a scan run: summary, score histogram (inline SVG), the
top matches as side-by-side thumbnails (inline JPEG), and the error rows.

The report only reads the run's result files and the media they point to. Every string from
a user (paths, item ids, error messages) is HTML-escaped; thumbnails that cannot be decoded
any more are shown as a placeholder, never an exception.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from memlens.engine.records import RESULTS, RUN, atomic_write_text, read_results

REPORT = "report.html"
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}.num{text-align:right}
.mem{color:#b00;font-weight:600}.pair img{height:120px;margin-right:4px;border:1px solid #999}
.ph{display:inline-block;width:120px;height:120px;background:#eee;color:#888;font-size:.8em;
text-align:center;line-height:120px;margin-right:4px}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _thumbnail(path: str, frame_index: int, height: int = 120) -> str:
    """A data: URI with a JPEG of one frame, or '' if it cannot be read."""
    try:
        import cv2

        from memlens.video import read_frame

        frame = read_frame(path, frame_index)
        scale = height / frame.shape[0]
        small = cv2.resize(frame, (max(1, round(frame.shape[1] * scale)), height),
                           interpolation=cv2.INTER_AREA)  # fmt: skip
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 80])  # fmt: skip
    except Exception:  # noqa: BLE001 - the report must render even if a source moved or broke
        return ""
    if not ok:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    if not uri:
        return f'<span class="ph" title="{_e(alt)}">unavailable</span>'
    return f'<img src="{uri}" alt="{_e(alt)}" title="{_e(alt)}">'


def histogram_svg(values: list[float], tau: float, *, bins: int = 40, width: int = 640,
                  height: int = 200, label: str = "score") -> str:  # fmt: skip
    """An SVG histogram of ``values`` over [min(0, lo), 1] with a dashed line at ``tau``."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    lo = min(0.0, float(v.min())) if v.size else 0.0
    counts, edges = np.histogram(v, bins=bins, range=(lo, 1.0))
    top = max(int(counts.max()) if counts.size else 0, 1)
    pad, w, h = 30, width - 40, height - 40
    bw = w / bins
    bars = "".join(
        f'<rect x="{pad + i * bw:.1f}" y="{10 + h - c / top * h:.1f}" width="{bw - 1:.1f}" '
        f'height="{c / top * h:.1f}" fill="#4a78b0"><title>{edges[i]:.3f}-{edges[i + 1]:.3f}: '
        f"{c}</title></rect>"
        for i, c in enumerate(counts.tolist())
    )
    tx = pad + (tau - lo) / (1.0 - lo) * w
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(label)} histogram">'
        f'<line x1="{pad}" y1="{10 + h}" x2="{pad + w}" y2="{10 + h}" stroke="#333"/>{bars}'
        f'<line x1="{tx:.1f}" y1="5" x2="{tx:.1f}" y2="{10 + h}" stroke="#b00" '
        f'stroke-dasharray="4 3"/><text x="{tx + 3:.1f}" y="16" font-size="11" fill="#b00">'
        f"τ={tau:g}</text>"
        f'<text x="{pad}" y="{height - 8}" font-size="11">{lo:g}</text>'
        f'<text x="{pad + w - 8}" y="{height - 8}" font-size="11">1</text>'
        f'<text x="{pad + w / 2 - 20:.0f}" y="{height - 8}" font-size="11">{_e(label)} '
        f"(max {top})</text></svg>"
    )


def _png(run: Path, rel: object) -> str:
    """A data: URI of a PNG inside the run directory ('' if absent or outside it)."""
    if not isinstance(rel, str):
        return ""
    path = (run / rel).resolve()
    if run.resolve() not in path.parents or not path.is_file():
        return ""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _motion_section(run: Path, ok: list[dict[str, Any]], top: int) -> list[str]:
    scored = [r for r in ok if isinstance(r.get("motion_ofs"), (int, float))]
    if not scored:
        return []
    moving = [r for r in scored if not r.get("motion_static")]
    n_mem = sum(bool(r.get("motion_memorized")) for r in scored)
    out = [
        "<h2>Motion (OFS-k with natural-motion filtering)</h2>",
        (
            f"<p>{len(scored)} scored for motion: <span class='mem'>{n_mem}</span> motion-memorized, "
            f"{len(scored) - len(moving)} static, "
            f"{sum(bool(r.get('motion_camera')) for r in moving)} generic camera motion.</p>"
        ),
        histogram_svg([float(r["motion_ofs"]) for r in moving], 0.8, label="motion_ofs"),
        (
            "<table><tr><th>generated</th><th>best motion match</th>"
            "<th>flow (generated | training)</th><th class='num'>OFS</th>"
            "<th class='num'>OFS mag</th><th>camera</th><th class='num'>z</th></tr>"
        ),
    ]
    for r in sorted(moving, key=lambda r: -float(r["motion_ofs"]))[:top]:
        cls = " class='mem'" if r.get("motion_memorized") else ""
        z = r.get("motion_z")
        out.append(
            f"<tr><td>{_e(r['item'])}</td><td>{_e(r.get('motion_best_item'))}</td>"
            f"<td class='pair'>{_img(_png(run, r.get('motion_flow_image')), 'flow')}</td>"
            f"<td class='num'><span{cls}>{float(r['motion_ofs']):.3f}</span></td>"
            f"<td class='num'>{float(r['motion_ofs_mag']):.3f}</td>"
            f"<td>{'yes' if r.get('motion_camera') else 'no'}</td>"
            f"<td class='num'>{'' if z is None else f'{float(z):.1f}'}</td></tr>"
        )
    out.append("</table>")
    return out


def render(run_dir: str | Path, *, top: int = 24) -> Path:
    """Write ``run_dir/report.html`` from the run's results and return its path."""
    run = Path(run_dir)
    meta: dict[str, Any] = json.loads((run / RUN).read_text()) if (run / RUN).exists() else {}
    settings = meta.get("settings", {})
    tau = float(settings.get("tau", 0.5))
    rows = read_results(run / RESULTS)
    ok = [r for r in rows if r.get("status") == "ok"]
    bad = [r for r in rows if r.get("status") != "ok"]
    memorized = sum(bool(r.get("content_memorized")) for r in ok)
    rate = memorized / len(ok) if ok else float("nan")
    parts = [
        (
            "<!doctype html><html><head><meta charset='utf-8'><title>memlens scan report</title>"
            f"<style>{_STYLE}</style></head><body><h1>memlens scan report</h1>"
        ),
        (
            f"<p>{len(rows)} inputs: {len(ok)} scored, {len(bad)} errors. "
            f"<span class='mem'>{memorized}</span> content-memorized at τ = {tau:g} "
            f"(aggregation {_e(settings.get('agg', 'max'))}); replication rate {rate:.3f}.</p>"
        ),
        (
            f"<p>Index: <code>{_e(settings.get('index', '?'))}</code>; embedder "
            f"<code>{_e(settings.get('embedder', {}).get('name', '?'))}</code>.</p>"
        ),
        "<h2>Content scores</h2>",
        histogram_svg([float(r["content_max"]) for r in ok], tau, label="content_max"),
        histogram_svg([float(r["content_mean"]) for r in ok], tau, label="content_mean"),
        (
            f"<h2>Top matches (up to {top})</h2><table><tr><th>#</th><th>generated</th>"
            "<th>best training match</th><th>frames (generated | training)</th>"
            "<th class='num'>max</th><th class='num'>mean</th><th class='num'>VSSCD</th></tr>"
        ),
    ]
    ranked = sorted(ok, key=lambda r: -float(r["content_max"]))[:top]
    for n, r in enumerate(ranked, 1):
        gen = _img(
            _thumbnail(r["source"], int(r["best_gen_frame"])),
            f"{r['item']} frame {r['best_gen_frame']}",
        )
        ref = _img(_thumbnail(r["best_source"], int(r["best_frame"])),
                   f"{r['best_item']} frame {r['best_frame']}")  # fmt: skip
        cls = " class='mem'" if r.get("content_memorized") else ""
        parts.append(
            f"<tr><td>{n}</td><td>{_e(r['item'])}<br><small>frame {int(r['best_gen_frame'])}"
            f"</small></td><td>{_e(r['best_item'])}<br><small>frame {int(r['best_frame'])}"
            f"</small></td><td class='pair'>{gen}{ref}</td><td class='num'><span{cls}>"
            f"{float(r['content_max']):.3f}</span></td><td class='num'>"
            f"{float(r['content_mean']):.3f}</td><td class='num'>{float(r['vsscd']):.3f}</td></tr>"
        )
    parts.append("</table>")
    parts += _motion_section(run, ok, top)
    if bad:
        parts.append("<h2>Errors</h2><table><tr><th>input</th><th>error</th></tr>")
        parts += [
            f"<tr><td>{_e(r.get('item'))}</td><td>{_e(r.get('error'))}</td></tr>" for r in bad
        ]
        parts.append("</table>")
    parts.append("</body></html>\n")
    path = run / REPORT
    atomic_write_text(path, "".join(parts))
    return path
