"""``memlens demo``: the audit of the embedded model on its own training set.

Writes the training set (``RUN/train``: one mp4 per item and ``captions.jsonl`` with the
planted labels), a prompt file (``RUN/prompts-in.jsonl``: every planted caption, a seeded
sample of the single-item captions and fresh captions the model never saw, labelled), and runs
:func:`memlens.engine.audit.run_audit` on it. The report states how well each detector finds
the planted memorization (AUC against the planted labels).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from memlens.engine.audit import AuditSettings, AuditSummary, run_audit
from memlens.engine.records import atomic_write_text
from memlens.metrics.content import TAU_STRICT

UNIQUE_PROMPTS = 25  # single-item training captions among the prompts
UNIQUE_INVERTED = 5  # single-item training clips among the InvMM targets

# The demo's audit settings: the model's own frame count and size, a 25-step DDIM sampler,
# and the builtin descriptor as the embedder. SSCD is a ResNet-50 trained on >= 224 px
# photographs; the demo's 32 x 32 frames reach it upsampled 9x, where blurred frames all look
# alike: on the demo its content scan ranked the planted prompts at AUC 0.50 (every generation
# scored 0.41-0.67 to some training clip), the builtin descriptor (a 64 x 64 canonical frame)
# at AUC 0.94 (2026-11-27). Below ~64 px, prefer ``--embedder builtin``.
DEMO_SETTINGS = AuditSettings(
    num_inference_steps=25,
    guidance_scale=7.5,
    call_kwargs={"num_frames": 8, "height": 32, "width": 32},
    embedder="builtin",
    # The strict threshold (Wen et al.'s 0.7, methods.md §0.1): a sample's score is the best of
    # 8 x 1984 frame pairs, and at 0.5 nearly every sample would be flagged (42 of the 43
    # unplanted: the single clips share 13 photographs, whose textures the model does repeat).
    content_tau=TAU_STRICT,
    index_frames=4,
    flow_frames=8,
    flow_short_side=128,
    detect_generations=4,
    explain_top=3,
    # 200 InvMM steps: at 100, two of the seven planted items were regenerated (AUC 0.64); at
    # 200, five (AUC 0.80), for ~2 more minutes of the demo's budget (2026-11-27)
    invert={
        "steps": 200,
        "samples": 2,
        "check_every": 25,
        "check_noises": 2,
        "ddim_steps": 10,
        "guidance_scales": (1.0, 4.0),
        "soft_prompt_tokens": 16,
    },
)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def prepare(run: Path, seed: int = 0) -> tuple[Path, Path, list[str]]:
    """Write the training set and the labelled prompt file; returns (train dir, prompt file,
    InvMM targets)."""
    from memlens.demo.dataset import FRESH_CAPTIONS, training_set, write_training_set
    from memlens.demo.train import TrainSettings

    ts = TrainSettings()
    items = training_set(unique=ts.unique, copies=ts.copies, seed=ts.seed)
    train = run / "train"
    rows = write_training_set(items, train)
    _write_jsonl(
        train / "captions.jsonl",
        [{"file": f"{r['item']}.mp4", **r, "label": int(bool(r["group"]))} for r in rows],
    )
    rng = random.Random(seed)
    planted = {it.caption: it for it in items if it.planted}
    unique = [it for it in items if not it.planted]
    prompts = [
        {"prompt": c, "label": 1, "content_label": int(it.content), "motion_label": int(it.motion),
         "kind": "planted", "group": it.group}
        for c, it in sorted(planted.items())
    ]  # fmt: skip
    prompts += [
        {"prompt": it.caption, "label": 0, "content_label": 0, "motion_label": 0, "kind": "unique"}
        for it in rng.sample(unique, UNIQUE_PROMPTS)
    ]
    prompts += [
        {"prompt": c, "label": 0, "content_label": 0, "motion_label": 0, "kind": "fresh"}
        for c in FRESH_CAPTIONS
    ]
    prompt_file = run / "prompts-in.jsonl"
    _write_jsonl(prompt_file, prompts)
    first = {}
    for it in items:
        if it.planted and it.group not in first:
            first[it.group] = str(train / f"{it.id}.mp4")
    targets = sorted(first.values())
    targets += sorted(str(train / f"{it.id}.mp4") for it in rng.sample(unique, UNIQUE_INVERTED))
    return train, prompt_file, targets


def _set_aside_other_audit(
    audit: Path, model: str | Path, settings: AuditSettings, log: Any
) -> None:
    """An earlier demo audit of other weights or with other settings (an upgrade shipped a
    retrained model, or changed the demo's settings) is moved to ``audit-<its weights'
    fingerprint>`` (``-2``, ``-3``... if taken) so that the demo starts over instead of refusing
    to resume; nothing is deleted. Where the work runs (engine, Ray address) may differ."""
    from memlens.engine.audit import changed_setting, model_fingerprint, stored_settings

    try:
        old = json.loads((audit / "audit.json").read_text())["settings"]
        old_files = old.get("model_files")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    now = {**stored_settings(settings), "model_files": model_fingerprint(model)}
    if changed_setting(old, now) is None:  # the resume in run_audit accepts it
        return
    target = audit.with_name(f"audit-{old_files or 'old'}")
    n = 2
    while target.exists():
        target = audit.with_name(f"audit-{old_files or 'old'}-{n}")
        n += 1
    audit.rename(target)
    if log is not None:
        log(f"{audit} audited other weights or settings: moved to {target}; starting over")


def run_demo(
    out: str | Path = "demo-run",
    *,
    model: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    settings: AuditSettings = DEMO_SETTINGS,
    log: Any = None,
) -> AuditSummary:
    """The whole demo; ``model`` defaults to the shipped weights."""
    from memlens.demo.model import WEIGHTS
    from memlens.engine.audit import read_prompt_file

    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    _set_aside_other_audit(run / "audit", model or WEIGHTS, settings, log)
    train, prompt_file, targets = prepare(run)
    prompts, labels = read_prompt_file(prompt_file)
    return run_audit(
        model or WEIGHTS,
        [train],
        run / "audit",
        prompts=prompts,
        labels=labels,
        settings=settings,
        invert_sources=targets,
        resume=resume,
        progress=progress,
        log=log,
    )
