"""``memlens detect``: noise-magnitude detection of memorized prompts over a prompt file.

Run directory::

    results.jsonl    one row per prompt, appended as each batch finishes (resumable)
    results.parquet  the same rows as a table (rewritten at the end)
    run.json         settings, model, versions, and the summary (AUC etc. when labelled)
    report.html      score histograms per label, ROC curves, top prompts

Row keys (DESIGN.md §11): ``index`` (position in the prompt file), ``prompt``, ``label``
(only with labels; null for a prompt the labels file lacks), ``seed``, ``magnitude``,
``magnitude_steps``, ``timesteps``, ``generations`` and, for video models,
``content_magnitude``, ``motion_magnitude``, ``content_steps``, ``motion_steps``; with
``--explain-top K``, the K highest-magnitude rows also carry ``tokens`` and
``token_significance`` (parallel lists, memlens.metrics.tokens), drawn as bars in the report.

Prompt ``i`` always starts from the generator seeded ``seed + i`` (the convention of
:func:`~memlens.metrics.magnitude.detect_magnitude`), so a resumed run, or one with another
``batch_size``, gives the same scores as one uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from memlens.engine.pipeline import check_call_kwargs, check_resumable, open_pipeline
from memlens.engine.progress import Progress
from memlens.engine.records import (
    PARQUET,
    RESULTS,
    ResultWriter,
    atomic_write_text,
    dumps,
    read_results,
    write_parquet,
    write_run_json,
)
from memlens.metrics.magnitude import (
    MagnitudeAccumulator,
    StepSet,
    detect_magnitude,
    steps_to_observe,
)

SCORE_KEYS = ("magnitude", "content_magnitude", "motion_magnitude")


@dataclass(frozen=True)
class DetectSettings:
    """What decides a prompt's score (a resumed run must use the same)."""

    steps: StepSet = "first"
    generations: int = 4
    seed: int = 0
    num_inference_steps: int | None = None  # None: the pipeline's default
    guidance_scale: float | None = None  # None: the pipeline's default
    call_kwargs: dict[str, Any] = field(default_factory=dict)  # height, width, num_frames

    def validate(self) -> None:
        steps_to_observe(self.steps)  # raises on a bad step set
        if isinstance(self.generations, bool) or self.generations < 1:
            raise ValueError(f"--generations must be >= 1; got {self.generations}")


@dataclass(frozen=True)
class DetectSummary:
    rows: list[dict[str, Any]]  # every prompt's row, in prompt order
    scored: int  # prompts scored by this invocation
    skipped: int  # prompts already in results.jsonl (--resume)
    seconds: float  # scoring time of this invocation (model loading excluded)
    unlabeled: int  # prompts the labels file lacks (0 without labels)
    evaluation: dict[str, dict[str, float]]  # score key -> AUC, ACC, TPR@1%FPR

    @property
    def prompts_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


class _PromptProgress(Progress):
    """The shared progress line, counting prompts instead of frames."""

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self._start, 1e-9)
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        line = (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"prompts, {rate:.2f} prompts/s"
        )
        end = "\n" if not self._tty or self.done == self.total else ""
        self.stream.write(("\r" if self._tty else "") + line + end)
        self.stream.flush()


def _runs(indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Consecutive indices in chunks of at most ``batch_size``: a chunk starting at prompt
    ``i`` is scored with ``seed + i``, which keeps prompt ``i`` on its own seed."""
    chunk: list[int] = []
    for i in indices:
        if chunk and (i != chunk[-1] + 1 or len(chunk) == batch_size):
            yield chunk
            chunk = []
        chunk.append(i)
    if chunk:
        yield chunk


def _settings_record(settings: DetectSettings, model: str) -> dict[str, Any]:
    return {**asdict(settings), "model": model}


def _row(index: int, seed: int, rec: dict[str, Any], labels: Mapping[str, int] | None) -> dict:
    row: dict[str, Any] = {"index": index, "prompt": rec.pop("prompt")}
    if labels is not None:
        row["label"] = labels.get(row["prompt"])
    row["seed"] = seed + index
    return {**row, **rec}


def evaluate(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """AUC, ACC and TPR@1%FPR of every score key over the labelled rows (both classes needed)."""
    from memlens.metrics.roc import detection_report

    labelled = [r for r in rows if r.get("label") in (0, 1)]
    labels = [int(r["label"]) for r in labelled]
    if len(set(labels)) < 2:
        return {}
    out: dict[str, dict[str, float]] = {}
    for key in SCORE_KEYS:
        # a NaN score (e.g. a half-precision overflow) leaves that key out, not the whole run
        if all(isinstance(r.get(key), (int, float)) and not math.isnan(r[key]) for r in labelled):
            rep = detection_report(labels, [float(r[key]) for r in labelled])
            out[key] = {**asdict(rep), "positives": labels.count(1), "negatives": labels.count(0)}
    return out


def run_detect(
    model: str | Path,
    prompts: Sequence[str],
    out: str | Path,
    *,
    settings: DetectSettings | None = None,
    labels: Mapping[str, int] | None = None,
    batch_size: int = 8,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    command: str = "detect",
    explain_top: int = 0,
) -> DetectSummary:
    """Score ``prompts`` on the pipeline in ``model``; write the run directory ``out``.

    ``explain_top`` > 0: token significance (memlens.metrics.tokens, over the same steps and
    generations as the detection) for that many highest-magnitude prompts, stored in their
    rows as ``tokens`` / ``token_significance`` and drawn as bars in the report."""
    if explain_top < 0:
        raise ValueError(f"--explain-top must be >= 0; got {explain_top}")
    settings = settings or DetectSettings()
    settings.validate()
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {batch_size}")
    if not prompts:
        raise ValueError("--prompts: no prompt to score")
    if labels is not None and not set(labels) & set(prompts):
        raise ValueError(f"--labels: none of its {len(labels)} prompts is among the prompts")
    run = Path(out)
    record = _settings_record(settings, str(model))
    check_resumable(run, record, resume)
    pipe = open_pipeline(model, device=device)
    check_call_kwargs(pipe, settings.call_kwargs)
    run.mkdir(parents=True, exist_ok=True)
    earlier = read_results(run / RESULTS)
    keys = set(enumerate(prompts))
    done = {(r.get("index"), r.get("prompt")): r for r in earlier}
    done = {k: r for k, r in done.items() if k in keys}
    # rows of prompts no longer in the file (it was edited) leave results.jsonl at the end
    stale = len(done) != len(earlier)
    todo = [i for i, p in enumerate(prompts) if (i, p) not in done]
    write_run_json(run, command, {**record, "batch_size": batch_size})
    bar = _PromptProgress(len(todo), "detect", enabled=progress)
    new: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with ResultWriter(run) as w:
        for chunk in _runs(todo, batch_size):
            results = detect_magnitude(
                pipe,
                [prompts[i] for i in chunk],
                steps=settings.steps,
                generations=settings.generations,
                seed=settings.seed + chunk[0],
                num_inference_steps=settings.num_inference_steps,
                guidance_scale=settings.guidance_scale,
                batch_size=len(chunk),
                call_kwargs=settings.call_kwargs,
            )
            for i, res in zip(chunk, results, strict=True):
                row = _row(i, settings.seed, res.to_record(), labels)
                w.write(row)
                new.append(row)
            bar.update(len(chunk))
    seconds = time.perf_counter() - t0
    rows = _finish(run, [*done.values(), *new], labels, rewrite=stale)
    if explain_top and _explain(pipe, rows, explain_top, settings):
        atomic_write_text(run / RESULTS, "".join(dumps(r) + "\n" for r in rows))
        write_parquet(rows, run / PARQUET)
    summary = DetectSummary(
        rows=rows,
        scored=len(new),
        skipped=len(done),
        seconds=seconds,
        unlabeled=sum(r["prompt"] not in labels for r in rows) if labels is not None else 0,
        evaluation=evaluate(rows),
    )
    extra = {"prompts": len(rows), "prompts_per_second": summary.prompts_per_second,
             "evaluation": summary.evaluation}  # fmt: skip
    write_run_json(run, command, {**record, "batch_size": batch_size}, summary=extra)
    from memlens.report.detect_html import render

    render(run)
    return summary


def _explain(pipe: Any, rows: list[dict[str, Any]], top: int, settings: DetectSettings) -> bool:
    """Adds ``tokens`` and ``token_significance`` (parallel lists: Parquet wants one type per
    column) to the ``top`` rows of largest magnitude that lack them; returns whether any row
    changed."""
    from memlens.metrics.tokens import token_significance

    best = sorted(range(len(rows)), key=lambda k: -rows[k]["magnitude"])[:top]
    changed = False
    for k in best:
        if rows[k].get("tokens"):
            continue
        sig = token_significance(pipe, rows[k]["prompt"], steps=settings.steps,
                                 generations=settings.generations, seed=rows[k].get("seed", 0),
                                 num_inference_steps=settings.num_inference_steps,
                                 guidance_scale=settings.guidance_scale,
                                 call_kwargs=settings.call_kwargs)  # fmt: skip
        rows[k] = {
            **rows[k],
            "tokens": list(sig.tokens),
            "token_significance": [float(v) for v in sig.scores],
        }
        changed = True
    return changed


def _finish(
    run: Path, rows: list[dict[str, Any]], labels: Mapping[str, int] | None, *, rewrite: bool
) -> list[dict[str, Any]]:
    """Rows in prompt order, labelled with this invocation's labels, and the Parquet copy.

    results.jsonl is rewritten (atomically) when a resumed run brings another labels file or
    dropped rows of prompts the prompt file no longer holds, so it always matches Parquet."""
    rows = sorted(rows, key=lambda r: r["index"])
    if labels is not None:
        relabelled = [{**r, "label": labels.get(r["prompt"])} for r in rows]
        rewrite = rewrite or relabelled != rows
        rows = relabelled
    if rewrite:
        atomic_write_text(run / RESULTS, "".join(dumps(r) + "\n" for r in rows))
    write_parquet(rows, run / PARQUET)
    return rows


def magnitude_scorer(
    pipe: Any,
    *,
    generations: int = 4,
    seed: int = 0,
    guidance_scale: float | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
) -> Callable[[list[str]], list[float]]:
    """A :data:`memlens.prompts.ScoreFn`: the first-step magnitude of each caption.

    Every caption starts from the same ``generations`` noises (one generator seeded ``seed``
    per caption), so two captions' scores differ only through the text, and a caption's score
    does not depend on the batch it is scored in.
    """

    def score(batch: list[str]) -> list[float]:
        from memlens.diffusion import denoiser_of, run_guided

        acc = MagnitudeAccumulator(batch, generations, denoiser=denoiser_of(pipe))
        run_guided(pipe, batch, acc, seeds=[seed] * len(batch), generations=generations,
                   guidance_scale=guidance_scale, stop_after=1,
                   call_kwargs=call_kwargs)  # fmt: skip
        return [r.magnitude for r in acc.results()]

    return score
