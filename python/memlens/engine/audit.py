"""``memlens audit``: every measure on one model and its training set, into one run directory.

Stages, each in its own sub-directory and each resumable (a stage that finished is skipped on
``--resume``; one that was interrupted continues where its own results end)::

    generate/   samples of every prompt (memlens generate)
    index/      the training set's reference index (memlens index build)
    scan/       content and motion scores of the samples against the index (memlens scan)
    detect/     prompt-side noise magnitude, token significance of the top prompts (memlens detect)
    invert/     InvMM of a sample of training items (memlens invert)
    prompts.jsonl / prompts.parquet   one joined row per prompt (the user's labels kept)
    audit.json  settings, per-stage status and seconds, detector evaluation
    report.html everything above on one self-contained page

Labels are optional: a JSON Lines prompt file may carry ``label`` (memorized or not) and, for
video models, ``content_label`` / ``motion_label``; training items may be labelled in a
``captions.jsonl`` next to them (``file``, ``caption``, ``label``). With labels, every
detector's AUC against them is reported.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from memlens.engine.records import (
    RESULTS,
    atomic_write_text,
    dumps,
    finite_or_none,
    iter_json_objects,
    read_results,
    versions,
    write_parquet,
)
from memlens.metrics.content import TAU_DEFAULT

AUDIT = "audit.json"
PROMPTS = "prompts.jsonl"
STAGES = ("generate", "index", "scan", "detect", "invert")
LABEL_KEYS = ("label", "content_label", "motion_label")
CAPTIONS = "captions.jsonl"


@dataclass(frozen=True)
class AuditSettings:
    """What decides an audit's numbers (a resumed audit must use the same)."""

    generations: int = 1  # samples per prompt scanned for content and motion
    seed: int = 0
    num_inference_steps: int | None = None  # None: the pipeline's default
    guidance_scale: float | None = None  # None: the pipeline's default
    call_kwargs: dict[str, Any] = field(default_factory=dict)  # height, width, num_frames
    embedder: str = "default"
    content_tau: float = TAU_DEFAULT  # content-memorized decision: max similarity > tau
    index_frames: int = 8  # uniform frames per training video in the index
    motion: bool = True
    flow_frames: int = 16  # frames per video the flows are computed on (uniform resampling)
    flow_short_side: int = 256  # flow resolution (short side, a multiple of 8)
    detect_generations: int = 4
    explain_top: int = 3  # token significance for this many highest-magnitude prompts
    invert_items: int = 16  # training items inverted (0: skip InvMM)
    invert: dict[str, Any] = field(default_factory=dict)  # InvMM setting overrides
    engine: str = "local"  # local | ray (the scan's search and flow work)
    ray_address: str | None = None

    def validate(self) -> None:
        for name in ("generations", "index_frames", "detect_generations", "flow_short_side"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {v!r}")
        for name in ("explain_top", "invert_items"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0; got {v!r}")
        if not (isinstance(self.content_tau, int | float) and 0 <= self.content_tau <= 1):
            raise ValueError(f"--tau must be in [0, 1]; got {self.content_tau!r}")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"--engine must be local or ray; got {self.engine!r}")


@dataclass
class AuditSummary:
    run: Path
    prompts: list[dict[str, Any]]  # the joined per-prompt rows
    invert: list[dict[str, Any]]  # InvMM rows (with labels when the training set has them)
    evaluation: dict[str, dict[str, float]]  # detector -> {"auc", "positives", "negatives"}
    seconds: dict[str, float]  # stage -> seconds (this invocation; 0 for skipped stages)
    report: Path


# -- prompts and labels ------------------------------------------------------------------


def read_prompt_file(path: str | Path) -> tuple[list[str], dict[str, dict[str, int]]]:
    """The prompts of ``path`` (any format :func:`memlens.engine.prompt_io.read_prompts`
    reads) and, for JSON Lines, each prompt's labels among :data:`LABEL_KEYS`."""
    from memlens.engine.prompt_io import read_prompts

    prompts = read_prompts(path)
    labels: dict[str, dict[str, int]] = {}
    p = Path(path)
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        for where, rec in iter_json_objects(p, "--prompts "):
            text = rec.get("prompt", rec.get("caption", rec.get("text")))
            got = {k: _label(rec[k], where, k) for k in LABEL_KEYS if rec.get(k) is not None}
            if isinstance(text, str) and got:
                labels[text] = got
    return prompts, labels


def _label(value: object, where: str, key: str) -> int:
    if isinstance(value, bool) or value in (0, 1):
        return int(value)
    raise ValueError(f"{where}: {key} must be 0/1 or true/false; got {value!r}")


def training_captions(sources: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Rows of every ``captions.jsonl`` found directly in the training source directories
    (``file`` relative to that directory, ``caption``, optional ``label``)."""
    rows: list[dict[str, Any]] = []
    for src in sources:
        p = Path(src)
        f = p / CAPTIONS if p.is_dir() else None
        if f is None or not f.is_file():
            continue
        for _, rec in iter_json_objects(f, "captions "):
            if isinstance(rec.get("file"), str):
                rows.append({**rec, "path": str(p / rec["file"])})
    return rows


def default_prompts(sources: Sequence[str | Path]) -> list[str]:
    """Without ``--prompts``: the distinct captions of the training set, in file order."""
    caps = [r["caption"] for r in training_captions(sources) if isinstance(r.get("caption"), str)]
    if not caps:
        raise ValueError(
            "--prompts is required: the training sources hold no captions.jsonl to take "
            "prompts from"
        )
    return list(dict.fromkeys(caps))


# -- the run directory -------------------------------------------------------------------


def model_fingerprint(model: object) -> str | None:
    """A digest of a model directory's files (relative path, size, and the sha256 of the
    first and last MiB of each), so that resuming an audit on retrained or replaced weights at
    the same path is refused instead of mixing old and new results; cheap on 20 GB models.
    None when ``model`` is not a directory."""
    root = Path(str(model))
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        size = f.stat().st_size
        digest.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
        with f.open("rb") as fh:
            digest.update(fh.read(2**20))
            if size > 2**20:
                fh.seek(max(2**20, size - 2**20))
                digest.update(fh.read())
    return digest.hexdigest()[:16]


# Where the work runs, not what it computes: a resumed audit may change these.
_WHERE_KEYS = ("engine", "ray_address")


# SSCD models were trained on photographs of 224-320 px; far below that, upsampled frames all
# look alike to them (the demo's 32 px frames: content scan AUC 0.50 with SSCD, 0.94 builtin).
SMALL_FRAME = 64


def small_frames_warning(embedder: str, samples: Path) -> str | None:
    """A line advising ``--embedder builtin`` when an SSCD model would embed generated frames
    whose short side is below SMALL_FRAME pixels (judged on the first sample), else None."""
    from memlens.embed import default_embedder_name
    from memlens.errors import MediaError
    from memlens.video.decode import read_frame

    name = default_embedder_name() if embedder == "default" else embedder
    if not name.startswith("sscd"):
        return None
    first = next(iter(sorted(p for p in samples.glob("*") if p.is_file())), None)
    if first is None:
        return None
    try:
        side = min(read_frame(first, 0).shape[:2])
    except (MediaError, OSError, ValueError):  # the scan reports unreadable samples
        return None
    if side >= SMALL_FRAME:
        return None
    return (
        f"warning: the samples are {side} px on the short side; {name} was trained on "
        f">= 224 px photographs and ranks such small frames poorly: consider --embedder builtin"
    )


def stored_settings(s: AuditSettings) -> dict[str, Any]:
    """Settings as audit.json stores them (JSON values)."""
    out: dict[str, Any] = json.loads(json.dumps(asdict(s), default=str))
    return out


def changed_setting(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, Any] | None:
    """The first setting in ``new`` that the audit recorded as ``old`` ran with another value,
    as (key, that value); None when a resume may continue it. A key ``old`` lacks was added
    since that audit ran, which then ran with the key's default; where the work runs
    (``_WHERE_KEYS``) may change."""
    defaults = stored_settings(AuditSettings())
    for key, value in new.items():
        was = old.get(key, defaults.get(key, value))
        if was != value and key not in _WHERE_KEYS:
            return key, was
    return None


class _State:
    """``audit.json``: settings, and per stage whether it finished and how long it took."""

    def __init__(self, run: Path, settings: dict[str, Any], resume: bool) -> None:
        self.path = run / AUDIT
        before: dict[str, Any] = {}
        if self.path.exists():
            if not resume:
                raise ValueError(
                    f"--out: {str(run)!r} holds an audit; pass --resume to continue it"
                )
            try:
                before = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                before = {}
            changed = changed_setting(before.get("settings", {}), settings)
            if changed is not None:
                key, was = changed
                raise ValueError(
                    f"--resume: the audit in {str(run)!r} used {key}={was!r}; now "
                    f"{settings[key]!r} (use a new --out)"
                )
        elif run.exists() and any(run.iterdir()) and not resume:
            raise ValueError(f"--out: {str(run)!r} is not empty; pass --resume or a new directory")
        run.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {
            "schema_version": 1,
            "settings": settings,
            "stages": before.get("stages", {}),
            "versions": versions(),
        }
        self.save()

    def done(self, stage: str) -> bool:
        return bool(self.data["stages"].get(stage, {}).get("done"))

    def finish(self, stage: str, seconds: float, **info: Any) -> None:
        self.data["stages"][stage] = {"done": True, "seconds": round(seconds, 2), **info}
        self.save()

    def save(self, **extra: Any) -> None:
        self.data.update(extra)
        atomic_write_text(self.path, json.dumps(self.data, indent=1, default=str) + "\n")


# -- evaluation --------------------------------------------------------------------------


# Detector -> (label key, score key in the joined rows); every score: higher = more memorized
DETECTORS: dict[str, tuple[str, str]] = {
    "content scan (max similarity)": ("content_label", "content_max"),
    "motion scan (OFS)": ("motion_label", "motion_ofs"),
    "prompt magnitude (first step)": ("label", "magnitude"),
    "content magnitude": ("content_label", "content_magnitude"),
    "motion magnitude": ("motion_label", "motion_magnitude"),
}
INVMM = "InvMM (training items)"


def _score(v: object) -> float:
    """A score oriented so that higher = more memorized; missing or NaN = -inf (least)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return -math.inf
    return float(v)  # type: ignore[arg-type]


def detector_scores(
    prompt_rows: Sequence[Mapping[str, Any]], invert_rows: Sequence[Mapping[str, Any]]
) -> dict[str, tuple[list[int], list[float]]]:
    """Per detector, the (labels, scores) of the labelled rows that carry it; scores are
    oriented higher = more memorized with -inf for a missing score (InvMM: the negated KL, a
    failed inversion +inf KL -> -inf). ``content_label`` / ``motion_label`` fall back to
    ``label``. The evaluation and the report's ROC curves both read these."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for name, (label_key, score_key) in DETECTORS.items():
        pairs = [
            (int(r.get(label_key, r.get("label"))), _score(r.get(score_key)))
            for r in prompt_rows
            if r.get(label_key, r.get("label")) is not None and score_key in r
        ]
        if pairs:
            out[name] = ([lab for lab, _ in pairs], [v for _, v in pairs])
    inv = [r for r in invert_rows if r.get("label") is not None]
    if inv:
        # lower KL = more memorized; null (+inf: not regenerated) = least memorized
        out[INVMM] = (
            [int(r["label"]) for r in inv],
            [-math.inf if r.get("invmm") is None else -float(r["invmm"]) for r in inv],
        )
    return out


def evaluate(
    prompt_rows: Sequence[Mapping[str, Any]], invert_rows: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, float]]:
    """Each detector's AUC against the labels present, where both classes occur."""
    from memlens.metrics.roc import auc

    out: dict[str, dict[str, float]] = {}
    for name, (labels, scores) in detector_scores(prompt_rows, invert_rows).items():
        if 0 < sum(labels) < len(labels):
            out[name] = {
                "auc": float(auc(labels, scores)),
                "positives": sum(labels),
                "negatives": len(labels) - sum(labels),
            }
    return out


# -- the stages --------------------------------------------------------------------------


def _join(
    prompts: Sequence[str],
    labels: Mapping[str, Mapping[str, int]],
    gen_rows: Sequence[Mapping[str, Any]],
    scan_rows: Sequence[Mapping[str, Any]],
    detect_rows: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One row per prompt: its labels, magnitude(s) and tokens, and the scores of its most
    memorized sample (max over its generations)."""
    by_file = {Path(str(r["file"])).name: r for r in gen_rows}
    samples: dict[int, list[Mapping[str, Any]]] = {}
    for r in scan_rows:
        g = by_file.get(Path(str(r.get("source", ""))).name)
        if g is not None:
            samples.setdefault(int(g["prompt_index"]), []).append(
                {**r, "generation": g["generation"]}
            )
    det = {int(r["index"]): r for r in detect_rows}
    out: list[dict[str, Any]] = []
    for i, p in enumerate(prompts):
        row: dict[str, Any] = {"index": i, "prompt": p, **dict(labels.get(p, {}))}
        d = det.get(i)
        if d is not None:
            for k in (
                "magnitude",
                "content_magnitude",
                "motion_magnitude",
                "tokens",
                "token_significance",
            ):
                if d.get(k) is not None:
                    row[k] = d[k]
        ok = [s for s in samples.get(i, []) if s.get("status") == "ok"]
        if ok:
            best = max(ok, key=lambda s: float(s["content_max"]))
            row |= {
                "samples": len(ok),
                "content_max": best["content_max"],
                "vsscd": best["vsscd"],
                "content_memorized": any(bool(s.get("content_memorized")) for s in ok),
                "best_item": best["best_item"],
                "best_source": best["best_source"],
                "best_frame": best["best_frame"],
                "best_gen_frame": best["best_gen_frame"],
                "sample": best["source"],
            }
            moving = [s for s in ok if isinstance(s.get("motion_ofs"), (int, float))]
            if moving:
                m = max(moving, key=lambda s: float(s["motion_ofs"]))
                row |= {
                    "motion_ofs": m["motion_ofs"],
                    "motion_ofs_mag": m.get("motion_ofs_mag"),
                    "motion_static": all(bool(s.get("motion_static")) for s in moving),
                    "motion_camera": bool(m.get("motion_camera")),
                    "motion_memorized": any(bool(s.get("motion_memorized")) for s in moving),
                    "motion_best_item": m.get("motion_best_item"),
                    "motion_flow_image": m.get("motion_flow_image"),
                }
        out.append(row)
    return out


def _invert_sample(
    sources: Sequence[str | Path], n: int, seed: int, chosen: Sequence[str] | None
) -> list[str]:
    """``chosen`` as given, or ``n`` training files drawn at random (seeded)."""
    if chosen is not None:
        return [str(c) for c in chosen]
    from memlens.video import list_media

    files = sorted(str(m.path) for m in list_media(sources))
    rng = random.Random(seed)
    return sorted(rng.sample(files, min(n, len(files))))


def _video_frames(settings: AuditSettings) -> int:
    nf = settings.call_kwargs.get("num_frames")
    return int(nf) if isinstance(nf, int) and nf > 0 else 8


def run_audit(
    model: str | Path,
    train: Sequence[str | Path],
    out: str | Path,
    *,
    prompts: Sequence[str] | None = None,
    labels: Mapping[str, Mapping[str, int]] | None = None,
    settings: AuditSettings | None = None,
    invert_sources: Sequence[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
    log: Callable[[str], None] | None = None,
) -> AuditSummary:
    """Run every stage (see the module docstring) and write ``out/report.html``."""
    from memlens.engine.build import build_index
    from memlens.engine.detect import DetectSettings, run_detect
    from memlens.engine.generate import GenerateSettings, run_generate
    from memlens.engine.motion import FlowOptions
    from memlens.engine.scan import ScanSettings, scan

    s = settings or AuditSettings()
    s.validate()
    say = log or (lambda m: None)
    train = [str(t) for t in train]
    for t in train:
        if not Path(t).exists():
            raise ValueError(f"--train: {t!r} does not exist")
    prompt_list = list(prompts) if prompts is not None else default_prompts(train)
    if not prompt_list:
        raise ValueError("--prompts: no prompt to audit")
    labels = dict(labels or {})
    run = Path(out)
    record = {**asdict(s), "model": str(model), "model_files": model_fingerprint(model),
              "train": train, "prompts": len(prompt_list)}  # fmt: skip
    state = _State(run, json.loads(json.dumps(record, default=str)), resume)
    seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    scan_settings = ScanSettings(
        tau=s.content_tau,
        motion=s.motion,
        flow=FlowOptions(frames=s.flow_frames, short_side=s.flow_short_side),
    )

    def stage(name: str, fn: Callable[[], dict[str, Any] | None]) -> None:
        if state.done(name):
            say(f"{name}: done earlier (resumed)")
            return
        say(f"{name} ...")
        t0 = time.perf_counter()
        info = fn() or {}
        seconds[name] = time.perf_counter() - t0
        state.finish(name, seconds[name], **info)

    def do_generate() -> dict[str, Any]:
        gs = GenerateSettings(generations=s.generations, seed=s.seed,
                              num_inference_steps=s.num_inference_steps,
                              guidance_scale=s.guidance_scale, call_kwargs=dict(s.call_kwargs))  # fmt: skip
        r = run_generate(model, prompt_list, run / "generate", settings=gs, resume=True,
                         device=device, progress=progress, command="audit generate")  # fmt: skip
        return {"samples": len(r.rows)}

    def do_index() -> dict[str, Any]:
        if (warning := small_frames_warning(s.embedder, run / "generate" / "samples")) is not None:
            say(warning)
        r = build_index(train, run / "index", embedder=s.embedder, frames=s.index_frames,
                        resume=True, progress=progress)  # fmt: skip
        return {"items": r.items, "errors": len(r.errors)}

    def do_scan() -> dict[str, Any]:
        r = scan([str(run / "generate" / "samples")], run / "index", run / "scan",
                 settings=scan_settings, resume=True, progress=progress,
                 command="audit scan", engine=s.engine, ray_address=s.ray_address)  # fmt: skip
        return {"scored": r.scored + r.skipped, "errors": r.errors}

    def do_detect() -> dict[str, Any]:
        ds = DetectSettings(generations=s.detect_generations, seed=s.seed,
                            num_inference_steps=s.num_inference_steps,
                            guidance_scale=s.guidance_scale, call_kwargs=dict(s.call_kwargs))  # fmt: skip
        flat = {p: v["label"] for p, v in labels.items() if "label" in v}
        r = run_detect(model, prompt_list, run / "detect", settings=ds, labels=flat or None,
                       resume=True, device=device, progress=progress, command="audit detect",
                       explain_top=s.explain_top)  # fmt: skip
        return {"prompts": len(r.rows)}

    def do_invert() -> dict[str, Any]:
        from memlens.engine.invert import run_invert

        items = _invert_sample(train, s.invert_items, s.seed, invert_sources)
        rows = run_invert(model, items, run / "invert", overrides=dict(s.invert), seed=s.seed,
                          embedder=s.embedder, resume=True, progress=progress,
                          frames=_video_frames(s))  # fmt: skip
        return {"items": len(rows)}

    stage("generate", do_generate)
    stage("index", do_index)
    stage("scan", do_scan)
    stage("detect", do_detect)
    if s.invert_items > 0 or invert_sources:
        stage("invert", do_invert)

    gen_rows = read_results(run / "generate" / RESULTS)
    scan_rows = read_results(run / "scan" / RESULTS)
    detect_rows = read_results(run / "detect" / RESULTS)
    joined = _join(prompt_list, labels, gen_rows, scan_rows, detect_rows)
    atomic_write_text(run / PROMPTS, "".join(dumps(r) + "\n" for r in joined))
    write_parquet(joined, run / "prompts.parquet")
    train_labels = {
        str(Path(r["path"]).resolve()): int(r["label"])
        for r in training_captions(train)
        if r.get("label") is not None
    }
    inv_rows = [
        {**r, "label": train_labels.get(str(Path(str(r["path"])).resolve()))}
        for r in read_results(run / "invert" / RESULTS)
    ]
    evaluation = evaluate(joined, inv_rows)
    state.save(evaluation=evaluation, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    from memlens.report.audit_html import render

    report = render(run, joined, inv_rows, evaluation, state.data)
    return AuditSummary(run, joined, inv_rows, evaluation, seconds, report)


def summary_table(summary: AuditSummary) -> str:
    """The terminal summary: stages, counts and the detectors' AUCs."""
    rows = summary.prompts
    lines = [f"audit {summary.run}", f"  {'stage':<10} {'seconds':>8}"]
    lines += [f"  {k:<10} {v:8.1f}" for k, v in summary.seconds.items()]
    n_c = sum(bool(r.get("content_memorized")) for r in rows)
    n_m = sum(bool(r.get("motion_memorized")) for r in rows)
    mags = [
        float(r["magnitude"])
        for r in rows
        if finite_or_none(float(r.get("magnitude", math.nan))) is not None
    ]
    lines.append(
        f"  prompts {len(rows)}: {n_c} content-memorized, {n_m} motion-memorized samples; "
        f"magnitude median {sorted(mags)[len(mags) // 2] if mags else float('nan'):.3g}"
    )
    if summary.invert:
        fin = [r for r in summary.invert if r.get("invmm") is not None]
        lines.append(f"  InvMM: {len(summary.invert)} training items, {len(fin)} regenerated")
    if summary.evaluation:
        lines.append(f"  {'detector':<32} {'AUC':>6} {'pos':>5} {'neg':>5}")
        for name, e in summary.evaluation.items():
            lines.append(
                f"  {name:<32} {e['auc']:6.3f} {int(e['positives']):5d} {int(e['negatives']):5d}"
            )
    lines.append(f"  report: {summary.report}")
    return "\n".join(lines)


__all__ = [
    "AuditSettings",
    "AuditSummary",
    "evaluate",
    "read_prompt_file",
    "run_audit",
    "summary_table",
    "training_captions",
]
