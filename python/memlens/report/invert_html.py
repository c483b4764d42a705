"""``report.html`` of an InvMM run: the score distribution, each image's convergence (x0 loss
per step, similarity at every check) and samples regenerated from its learned q beside the
target. Self-contained (inline SVG and PNG); every user string is HTML-escaped."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memlens.engine.records import RESULTS, atomic_write_text, read_results
from memlens.report.html import _STYLE, REPORT, _e, _img

SAMPLES_SHOWN = 4


def _png(img: np.ndarray, height: int = 96) -> str:
    import cv2

    scale = max(1, round(height / img.shape[0]))
    big = np.repeat(np.repeat(img, scale, 0), scale, 1)  # nearest: small images stay crisp
    ok, buf = cv2.imencode(".png", cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""


def _hist_svg(scores: list[float], n_inf: int, width: int = 560, height: int = 160) -> str:
    v = np.asarray(scores, dtype=np.float64)
    hi = float(v.max()) if v.size else 1.0
    counts, edges = np.histogram(v, bins=30, range=(0.0, hi if hi > 0 else 1.0))
    top = max(int(counts.max()) if counts.size else 0, 1)
    bw = width / len(counts)
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{height - 20 - (c / top) * (height - 30):.1f}" width="{bw - 1:.1f}" '
        f'height="{(c / top) * (height - 30):.1f}" fill="#4a7"><title>{c}</title></rect>'
        for i, c in enumerate(counts)
    )
    axis = (f'<text x="0" y="{height - 4}" font-size="11">0</text>'
            f'<text x="{width - 60}" y="{height - 4}" font-size="11">{edges[-1]:.3g}</text>')  # fmt: skip
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="InvMM score histogram">'
            f"{bars}{axis}</svg><p>{n_inf} image(s) not regenerated (InvMM = +inf).</p>")  # fmt: skip


def _curve_svg(
    losses: list[float], sims: list[list[float]], width: int = 260, height: int = 70
) -> str:
    if not losses:
        return ""
    lv = np.log10(np.maximum(np.asarray(losses, dtype=np.float64), 1e-12))
    lo, hi = float(lv.min()), float(lv.max())
    span = hi - lo if hi > lo else 1.0
    pts = " ".join(f"{i * width / max(len(lv) - 1, 1):.1f},{height - 5 - (x - lo) / span * (height - 10):.1f}"
                   for i, x in enumerate(lv))  # fmt: skip
    n_steps = max((s for s, _ in sims), default=0) + 1
    dots = "".join(
        f'<circle cx="{s * width / max(n_steps, 1):.1f}" cy="{height - 5 - max(0.0, min(1.0, v)) * (height - 10):.1f}" '
        f'r="2.5" fill="#c33"><title>step {int(s)}: similarity {v:.3f}</title></circle>'
        for s, v in sims
    )
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="convergence">'
            f'<polyline points="{pts}" fill="none" stroke="#36c" stroke-width="1.2"/>{dots}</svg>')  # fmt: skip


def _samples(model: Any, params: Path, settings: dict[str, Any], seed: int) -> list[str]:
    """Images regenerated from the learned q (text models: conditioned on one draw of the
    learned soft prompt, no guidance), decoded to pixels."""
    from memlens.metrics import invmm

    try:
        z = np.load(params, allow_pickle=False)
        mu, lv = torch.from_numpy(z["mu"]), torch.from_numpy(z["logvar"])
        coeffs = z["soft_prompt"] if "soft_prompt" in z.files else None
    except (OSError, KeyError, ValueError):
        return []
    g = torch.Generator().manual_seed(seed)
    noise = mu + torch.randn((SAMPLES_SHOWN, *mu.shape), generator=g) * torch.exp(0.5 * lv)
    den = model.denoiser
    if model.text_encoder is not None:
        if coeffs is None:
            return []
        # the soft prompt's shape and temperature as the run learned it
        sp_settings = invmm.with_overrides(invmm.PRESETS["text"],
                                           soft_prompt_tokens=settings.get("soft_prompt_tokens"),
                                           gumbel_tau=settings.get("gumbel_tau"))  # fmt: skip
        sp = invmm.SoftPrompt(model.text_encoder, model.tokenizer, 1, sp_settings, seed=seed)
        with torch.no_grad():
            sp.log_coeffs.copy_(torch.from_numpy(coeffs.astype(np.float32))[None])
            states = sp.cond(torch.zeros(SAMPLES_SHOWN, dtype=torch.long))
        cond_den = den
        den = lambda x, t: cond_den(x, t, states[: len(x)])
    x = invmm.ddim_sample(den, noise, model.alphas_cumprod, int(settings.get("ddim_steps", 50)),
                          clip=bool(settings.get("clip", True)), batch=SAMPLES_SHOWN)  # fmt: skip
    return [_png(im) for im in invmm.pixels_to_uint8(model.preview(x))]


def render(run_dir: str | Path, model: Any = None) -> Path:
    """Write run_dir/report.html; with ``model`` (engine.invert.InversionModel) the regenerated
    samples are drawn too."""
    run = Path(run_dir)
    rows = sorted(
        read_results(run / RESULTS), key=lambda r: (r["invmm"] is None, r["invmm"] or 0.0)
    )
    settings: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        settings = json.loads((run / "run.json").read_text()).get("settings", {})
    finite = [float(r["invmm"]) for r in rows if r.get("invmm") is not None]
    n_inf = len(rows) - len(finite)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>memlens InvMM report</title>",
        f"<style>{_STYLE}</style></head><body><h1>memlens InvMM report</h1>",
        (
            f"<p>{len(rows)} images, {len(finite)} regenerated from a learned noise distribution. "
            "InvMM is the per-dimension KL of that distribution to N(0, I): <b>lower = more "
            "memorized</b>; +inf = not regenerated within the step budget.</p>"
        ),
        "<h2>Score distribution</h2>", _hist_svg(finite, n_inf),
        (
            "<h2>Images</h2><table><tr><th>image</th><th class='num'>InvMM</th>"
            "<th class='num'>steps</th><th>target | samples from q</th>"
            "<th>x0 loss (log) and check similarity</th></tr>"
        ),
    ]  # fmt: skip
    from memlens.report.html import _thumbnail

    for r in rows:
        score = "+inf" if r.get("invmm") is None else f"{float(r['invmm']):.4g}"
        target = _img(_thumbnail(str(r["path"]), 0, 96), str(r["path"]))
        samples = "".join(_img(u, "sample") for u in (_samples(model, run / str(r["params"]), settings, int(r["index"]))
                                                       if model is not None else []))  # fmt: skip
        parts.append(
            f"<tr><td>{_e(Path(str(r['path'])).name)}</td><td class='num'>{_e(score)}</td>"
            f"<td class='num'>{int(r['steps'])}</td><td class='pair'>{target}{samples}</td>"
            f"<td>{_curve_svg(r.get('losses') or [], r.get('similarities') or [])}</td></tr>"
        )
    parts.append("</table></body></html>")
    out = run / REPORT
    atomic_write_text(out, "".join(parts))
    return out
