"""The ``memlens`` command line. User errors print one line and exit with status 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from memlens._dispatch import BackendUnavailableError

# Exit status: 0 all inputs done, 1 finished but some inputs failed (their error rows are in
# the run), 2 a user error (one line on stderr, nothing done), 130 interrupted.
PARTIAL_FAILURE = 1
MODEL_HELP = "local diffusers directory, or demo (the embedded model)"
from memlens import cli_audit
from memlens.demo import WEIGHTS as DEMO_WEIGHTS
from memlens.errors import ModelUnavailableError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"memlens: error: {message}\n")


def _positive(text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1 or value != float(text):
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}")
    return value


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]; got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]; got {text!r}")
    return value


def _sampling(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--frames", type=_positive, help=f"sample N frames uniformly per {what}")
    g.add_argument("--fps", type=_positive_float, help=f"sample {what}s at F frames per second")


def _motion_options(p: argparse.ArgumentParser) -> None:
    """OFS-k / NMF and flow options (defaults: methods.md §1.4's reconstruction)."""
    g = p.add_argument_group("motion (OFS-k with natural-motion filtering)")
    g.add_argument("--stride", type=_positive, default=1, help="flow frame stride k")
    g.add_argument("--flow-frames", type=_positive, default=16,
                   help="frames per video for flow (uniform resampling)")  # fmt: skip
    g.add_argument("--flow-method", choices=("dis", "farneback", "raft"), default="dis")
    g.add_argument("--flow-preset", choices=("ultrafast", "fast", "medium"), default="medium")
    g.add_argument("--raft-weights", metavar="PATH", help="local RAFT weights (--flow-method raft)")
    g.add_argument("--max-offset", type=int, default=0, help="temporal offsets searched (±)")
    g.add_argument("--camera-filter", choices=("exclude", "residual", "off"), default="exclude",
                   help="NMF (b): drop generic camera motion, or score the residual flow")  # fmt: skip
    g.add_argument("--tau-motion", type=float, default=0.8, help="OFS threshold (default 0.8)")


def _motion_from(args: argparse.Namespace) -> tuple[Any, Any]:
    from memlens.engine.motion import FlowOptions
    from memlens.metrics.motion import MotionSettings

    if args.max_offset < 0:
        raise ValueError(f"--max-offset must be >= 0; got {args.max_offset}")
    settings = MotionSettings(camera_filter=args.camera_filter, tau=args.tau_motion,
                              max_offset=args.max_offset)  # fmt: skip
    flow = FlowOptions(frames=args.flow_frames, stride=args.stride, method=args.flow_method,
                       preset=args.flow_preset, raft_weights=args.raft_weights,
                       threads=args.threads)  # fmt: skip
    return settings, flow


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="memlens", description="Measure memorization in diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    index = sub.add_parser("index", help="build a reference index of training videos/images")
    isub = index.add_subparsers(dest="action", required=True)
    build = isub.add_parser("build", help="embed training frames into an on-disk index")
    build.add_argument("sources", nargs="+", metavar="SRC", help="videos, images or directories")
    build.add_argument("--out", required=True, metavar="IDX", help="index directory")
    build.add_argument("--embedder", default="default",
                       help="sscd | sscd_distilled | builtin | onnx:PATH | torchscript:PATH "
                            "(default: sscd when installed, else builtin)")  # fmt: skip
    _sampling(build, "training video (default --frames 16)")
    build.add_argument("--copies", nargs="+", choices=("bf16", "int8"), default=(),
                       help="also store reduced-precision copies of every shard")  # fmt: skip
    build.add_argument("--resume", action="store_true", help="continue an interrupted build")
    build.add_argument("--shard-rows", type=_positive, default=65536, help="rows per shard")
    build.add_argument("--threads", type=_positive, help="embedder threads (default: all cores)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    verify = isub.add_parser("verify", help="check every file of an index against its sha256")
    verify.add_argument("index", metavar="IDX", help="index directory")

    scan = sub.add_parser("scan", help="score generated videos/images against an index")
    scan.add_argument("sources", nargs="+", metavar="GEN", help="videos, images or directories")
    scan.add_argument("--index", required=True, metavar="IDX", help="index directory")
    scan.add_argument("--out", required=True, metavar="RUN", help="run directory")
    _sampling(scan, "generated video (default: every frame, up to --max-frames)")
    scan.add_argument("--max-frames", type=_positive, default=256, help="frame cap per video")
    scan.add_argument("--embedder", help="default: the index's; needed for onnx:PATH and "
                      "torchscript:PATH models, and must match the index")  # fmt: skip
    scan.add_argument("--tau", type=_unit_interval, help="decision threshold (default 0.5)")
    scan.add_argument("--strict", action="store_true", help="the strict threshold, τ = 0.7")
    scan.add_argument("--agg", choices=("max", "mean"), default="max",
                      help="GSSCD aggregation used for the decision")  # fmt: skip
    scan.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                      help="search precision (results are exact either way)")  # fmt: skip
    scan.add_argument("--batch-frames", type=_positive, default=2048,
                      help="frames searched together (results are written per batch)")  # fmt: skip
    scan.add_argument("--resume", action="store_true", help="continue an interrupted scan")
    scan.add_argument("--threads", type=_positive, help="embedder threads (default: all cores)")
    scan.add_argument("--motion", action="store_true",
                      help="also score motion (OFS-k + NMF) against the content neighbours")  # fmt: skip
    scan.add_argument("--motion-candidates", type=_positive, default=50,
                      help="content top-K training videos scored for motion")  # fmt: skip
    scan.add_argument("--motion-extra", metavar="FILE",
                      help="training item ids (one per line) also scored for motion against "
                           "every input, on top of the content top-K")  # fmt: skip
    _motion_options(scan)
    g = scan.add_argument_group("engine (DESIGN.md §7)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: index shards on Ray actors, embedding and "
                        "flows as Ray tasks (same results)")  # fmt: skip
    g.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to join (default: the running session, else a local one)")  # fmt: skip
    g.add_argument("--ray-actors", type=_positive, metavar="N",
                   help="shard actors (default: one per cluster CPU, at most one per shard)")  # fmt: skip
    scan.add_argument("--quiet", action="store_true", help="no progress bar")

    compare = sub.add_parser("compare", help="content similarity of one pair A (generated), B")
    compare.add_argument("a", metavar="A", help="generated video or image")
    compare.add_argument("b", metavar="B", help="training video or image")
    compare.add_argument("--embedder", default="default", help="as for index build")
    compare.add_argument("--max-frames", type=_positive, default=256, help="frame cap per video")
    compare.add_argument("--threads", type=_positive, help="embedder threads")
    compare.add_argument("--json", action="store_true", help="print JSON")
    compare.add_argument("--no-motion", action="store_true", help="content only")
    _motion_options(compare)

    inv = sub.add_parser("invert", help="InvMM memorization scores of images under a model")
    inv.add_argument("--model", required=True, metavar="M", help=MODEL_HELP)
    inv.add_argument("--images", required=True, nargs="+", help="target image files")
    inv.add_argument("--out", required=True, help="run directory")
    inv.add_argument(
        "--preset",
        choices=["pixel", "latent", "text"],
        help="hyperparameters of the paper's code path (methods.md §2.6); default: the model's kind",
    )
    inv.add_argument("--max-steps", type=_positive, help="optimisation steps at most (S)")
    inv.add_argument("--samples", type=_positive, help="noise samples per image and step (B)")
    inv.add_argument("--check-every", type=_positive, help="success check period (C)")
    inv.add_argument("--ddim-steps", type=_positive, help="DDIM steps of the success check")
    inv.add_argument("--batch", type=_positive, default=16, help="images inverted together")
    inv.add_argument("--seed", type=int, default=0)
    inv.add_argument("--embedder", default="default", help="similarity embedder (default: SSCD)")
    inv.add_argument("--backend", choices=["cpu", "cuda", "triton", "torch"])
    inv.add_argument("--resume", action="store_true", help="continue an interrupted run")
    inv.add_argument("--quiet", action="store_true", help="no progress line")
    _prompt_side_parsers(sub)
    cli_audit.add_parsers(sub, _positive, _positive_float)
    bench = sub.add_parser("bench", help="microbenchmarks against the best baselines, same run")
    bsub = bench.add_subparsers(dest="family", required=True)
    search = bsub.add_parser("search", help="exact cosine top-k vs faiss, numpy and torch")
    search.add_argument("--smoke", action="store_true", help="a small, quick configuration")
    search.add_argument("--json", metavar="PATH", help="write results and machine metadata here")
    search.add_argument("--d", type=_positive, help="embedding dimension (default 512)")
    search.add_argument("--nq", type=_positive, help="number of queries")
    search.add_argument("--nr", type=_positive, nargs="+", help="reference set sizes")
    search.add_argument("--k", type=_positive, nargs="+", help="k values")
    flow = bsub.add_parser("flow", help="flow_similarity vs torch eager and memory bandwidth")
    flow.add_argument("--smoke", action="store_true", help="a small, quick configuration")
    flow.add_argument("--json", metavar="PATH", help="write results and machine metadata here")
    for name in ("n", "t", "h", "w"):
        flow.add_argument(f"--{name}", type=_positive, help=f"size {name.upper()} override")
    flow.add_argument("--dtypes", nargs="+", choices=["float32", "float16"])
    invert = bsub.add_parser(
        "invert", help="the fused InvMM inversion step vs eager/compiled torch and bandwidth"
    )
    invert.add_argument("--smoke", action="store_true", help="small sizes, no torch.compile")
    invert.add_argument("--json", metavar="PATH", help="write results and machine metadata here")
    invert.add_argument("--backend", choices=["cpu", "cuda", "triton", "torch"])
    invert.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    return p


def _step_set(text: str) -> str | int:
    if text in ("first", "all"):
        return text
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected first, all or a positive integer; got {text!r}"
        ) from None


def _pipeline_options(p: argparse.ArgumentParser) -> None:
    """Sampling options shared by detect, generate and prompts mine (default: the pipeline's)."""
    p.add_argument("--guidance", type=_positive_float, help="guidance scale (> 1)")
    p.add_argument("--height", type=_positive, help="sample height in pixels")
    p.add_argument("--width", type=_positive, help="sample width in pixels")
    p.add_argument("--num-frames", type=_positive, help="frames per video (video pipelines)")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if present)")


def _size_kwargs(args: argparse.Namespace) -> dict[str, int]:
    sizes = {"height": args.height, "width": args.width, "num_frames": args.num_frames}
    return {k: v for k, v in sizes.items() if v is not None}


def _prompt_side_parsers(sub: Any) -> None:
    det = sub.add_parser("detect", help="noise-magnitude detection of memorized prompts")
    det.add_argument("--model", required=True, metavar="M", help=MODEL_HELP)
    det.add_argument("--prompts", required=True, metavar="FILE",
                     help="one prompt per line, or .jsonl/.csv with a prompt column")  # fmt: skip
    det.add_argument("--out", required=True, metavar="RUN", help="run directory")
    det.add_argument("--steps", type=_step_set, default="first",
                     help="steps averaged: first (one model call), N (the first N) or all")  # fmt: skip
    det.add_argument("--generations", type=_positive, default=4, help="samples per prompt")
    det.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    det.add_argument("--labels", metavar="FILE",
                     help="prompt<TAB>label lines (1 = memorized), or .jsonl/.csv with "
                          "prompt,label: histograms per label, ROC and AUC")  # fmt: skip
    det.add_argument("--batch-size", type=_positive, default=8, help="prompts per model call")
    det.add_argument("--explain-top", type=int, default=0, metavar="K",
                     help="token significance of the K highest-magnitude prompts, as bars in "
                          "the report (default 0)")  # fmt: skip
    det.add_argument("--inference-steps", type=_positive,
                     help="sampler steps (default: the pipeline's)")  # fmt: skip
    _pipeline_options(det)
    det.add_argument("--resume", action="store_true", help="continue an interrupted run")
    det.add_argument("--quiet", action="store_true", help="no progress bar")

    gen = sub.add_parser("generate", help="generate images/videos with recorded seeds")
    gen.add_argument("--model", required=True, metavar="M", help=MODEL_HELP)
    gen.add_argument("--prompts", required=True, metavar="FILE", help="as for detect")
    gen.add_argument("--out", required=True, metavar="DIR", help="output directory")
    gen.add_argument("--generations", type=_positive, default=1, help="samples per prompt")
    gen.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i (as detect)")
    gen.add_argument("--steps", type=_positive, help="sampler steps (default: the pipeline's)")
    _pipeline_options(gen)
    gen.add_argument("--fps", type=_positive_float, default=8.0, help="frame rate of videos")
    gen.add_argument("--batch-size", type=_positive, default=4, help="prompts per model call")
    gen.add_argument("--resume", action="store_true", help="continue an interrupted run")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

    exp = sub.add_parser("explain", help="which tokens of a prompt drive its memorization")
    exp.add_argument("--model", required=True, metavar="M", help=MODEL_HELP)
    exp.add_argument("--prompt", required=True, help="the prompt to explain")
    exp.add_argument("--steps", type=_step_set, default="all",
                     help="steps averaged: all (default, as the reference), first or N")  # fmt: skip
    exp.add_argument("--generations", type=_positive, default=4, help="noise samples")
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--inference-steps", type=_positive,
                     help="sampler steps (default: the pipeline's)")  # fmt: skip
    exp.add_argument("--top", type=_positive, default=20, help="tokens shown")
    exp.add_argument("--json", action="store_true", help="print the full record as JSON")
    _pipeline_options(exp)

    mit = sub.add_parser("mitigate", help="inference-time mitigation of one prompt")
    mit.add_argument("--model", required=True, metavar="M", help=MODEL_HELP)
    mit.add_argument("--prompt", required=True, help="the prompt to mitigate")
    mit.add_argument("--out", required=True, metavar="DIR", help="output directory")
    mit.add_argument("--target", type=_positive_float, default=3.0,
                     help="stop when the first-step magnitude is <= this (default 3.0)")  # fmt: skip
    mit.add_argument("--iterations", type=_positive, default=10, help="AdamW steps at most")
    mit.add_argument("--lr", type=_positive_float, default=0.05, help="AdamW learning rate")
    mit.add_argument("--generations", type=_positive, default=4, help="samples before/after")
    mit.add_argument("--seed", type=int, default=0)
    mit.add_argument("--inference-steps", type=_positive,
                     help="sampler steps (default: the pipeline's)")  # fmt: skip
    mit.add_argument("--fps", type=_positive_float, default=8.0, help="frame rate of videos")
    _pipeline_options(mit)

    prompts = sub.add_parser("prompts", help="curate memorization-prone prompts")
    psub = prompts.add_subparsers(dest="action", required=True)
    mine = psub.add_parser("mine", help="rank training captions by duplication (and magnitude)")
    mine.add_argument("captions", metavar="CAPTIONS",
                      help="captions file: text lines, .jsonl, .csv/.tsv or .parquet")  # fmt: skip
    mine.add_argument("--out", required=True, metavar="FILE", help="JSON Lines output")
    mine.add_argument("--model", metavar="M",
                      help="also rank by this model's first-step magnitude")  # fmt: skip
    mine.add_argument("--top", type=_positive, default=100, help="prompts written")
    mine.add_argument("--threshold", type=_unit_interval, default=0.7,
                      help="near-duplicate Jaccard of word bigrams (default 0.7)")  # fmt: skip
    mine.add_argument("--column", help="caption column of a structured file")
    mine.add_argument("--id-column", help="id column of a structured file")
    mine.add_argument("--all-variants", action="store_true",
                      help="one row per distinct caption, not per near-duplicate cluster")  # fmt: skip
    mine.add_argument("--score-pool", type=_positive,
                      help="captions scored with --model (default 4 x --top)")  # fmt: skip
    mine.add_argument("--generations", type=_positive, default=4, help="noises per caption")
    mine.add_argument("--seed", type=int, default=0, help="seed of the shared noises")
    mine.add_argument("--batch-size", type=_positive, default=16, help="captions per model call")
    _pipeline_options(mine)


def _short(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _explain(args: argparse.Namespace) -> int:
    from memlens.engine.explain import run_explain

    rec = run_explain(args.model, args.prompt, steps=args.steps, generations=args.generations,
                      seed=args.seed, num_inference_steps=args.inference_steps,
                      guidance_scale=args.guidance, call_kwargs=_size_kwargs(args),
                      device=args.device)  # fmt: skip
    if args.json:
        print(json.dumps(rec, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
        return 0
    scores = [float(v) for v in rec["token_significance"]]
    top = max(scores, default=0.0) or 1.0
    print(f"explain: {_short(args.prompt)}  (steps {args.steps}, {args.generations} generations)")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: args.top]
    for i in order:
        bar = "#" * max(1, round(30 * scores[i] / top))
        print(f"  {rec['tokens'][i]!r:>18}  {scores[i]:>10.4g}  {bar}")
    return 0


def _mitigate(args: argparse.Namespace) -> int:
    from memlens.engine.explain import run_mitigate

    rec = run_mitigate(args.model, args.prompt, args.out, target_loss=args.target,
                       iterations=args.iterations, lr=args.lr, generations=args.generations,
                       seed=args.seed, num_inference_steps=args.inference_steps,
                       guidance_scale=args.guidance, call_kwargs=_size_kwargs(args), fps=args.fps,
                       device=args.device)  # fmt: skip
    print(f"mitigate {args.out}: first-step magnitude {rec['magnitude_before']:.4g} -> "
          f"{rec['magnitude_after']:.4g} in {rec['iterations']} iterations "
          f"({'reached' if rec['converged'] else 'did not reach'} target {args.target:g}); "
          f"samples in {args.out}/before and {args.out}/after")  # fmt: skip
    return 0


def _detect(args: argparse.Namespace) -> int:
    from memlens.engine.detect import DetectSettings, run_detect
    from memlens.engine.prompt_io import read_labels, read_prompts

    prompts = read_prompts(args.prompts)
    labels = read_labels(args.labels) if args.labels is not None else None
    settings = DetectSettings(steps=args.steps, generations=args.generations, seed=args.seed,
                              num_inference_steps=args.inference_steps,
                              guidance_scale=args.guidance,
                              call_kwargs=_size_kwargs(args))  # fmt: skip
    s = run_detect(args.model, prompts, args.out, settings=settings, labels=labels,
                   batch_size=args.batch_size, resume=args.resume, device=args.device,
                   progress=not args.quiet, explain_top=args.explain_top,
                   command=" ".join(["memlens", *sys.argv[1:]]))  # fmt: skip
    print(f"detect {args.out}: {len(s.rows)} prompts ({s.scored} scored, {s.skipped} already "
          f"done); steps {args.steps}, {args.generations} generations; "
          f"{s.prompts_per_second:.2f} prompts/s; report {args.out}/report.html")  # fmt: skip
    for key, ev in s.evaluation.items():
        print(f"  {key}: AUC {ev['auc']:.3f}  ACC {ev['acc']:.3f}  TPR@1%FPR "
              f"{ev['tpr_at_1fpr']:.3f} ({int(ev['positives'])} memorized, "
              f"{int(ev['negatives'])} not)")  # fmt: skip
    if labels is not None and not s.evaluation:
        print("  labels: both classes (0 and 1) are needed for AUC")
    if s.unlabeled:
        print(f"  {s.unlabeled} prompts have no label")
    print("  top prompts by magnitude:")
    for r in sorted(s.rows, key=lambda r: -r["magnitude"])[:10]:
        label = f"  label {r['label']}" if r.get("label") is not None else ""
        print(f"  {r['magnitude']:>12.5g}{label}  {_short(r['prompt'])}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from memlens.engine.generate import GenerateSettings, run_generate
    from memlens.engine.prompt_io import read_prompts

    prompts = read_prompts(args.prompts)
    settings = GenerateSettings(generations=args.generations, seed=args.seed,
                                num_inference_steps=args.steps, guidance_scale=args.guidance,
                                call_kwargs=_size_kwargs(args), fps=args.fps)  # fmt: skip
    s = run_generate(args.model, prompts, args.out, settings=settings,
                     batch_size=args.batch_size, resume=args.resume, device=args.device,
                     progress=not args.quiet,
                     command=" ".join(["memlens", *sys.argv[1:]]))  # fmt: skip
    rate = s.generated / s.seconds if s.seconds > 0 else 0.0
    print(f"generate {args.out}: {len(s.rows)} samples of {len(prompts)} prompts "
          f"({s.generated} generated, {s.skipped} already there), {rate:.2f} samples/s; "
          f"records {args.out}/results.jsonl")  # fmt: skip
    return 0


def _prompts_mine(args: argparse.Namespace) -> int:
    from memlens.prompts import mine_prompts, write_mined_prompts

    score = None
    if args.model is not None:
        from memlens.engine.detect import magnitude_scorer
        from memlens.engine.pipeline import check_call_kwargs, open_pipeline

        pipe = open_pipeline(args.model, device=args.device)
        check_call_kwargs(pipe, _size_kwargs(args))
        score = magnitude_scorer(pipe, generations=args.generations, seed=args.seed,
                                 guidance_scale=args.guidance,
                                 call_kwargs=_size_kwargs(args))  # fmt: skip
    elif args.guidance or _size_kwargs(args):
        raise ValueError("--guidance, --height, --width and --num-frames need --model")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ValueError(f"--out: directory {str(out.parent)!r} does not exist")
    result = mine_prompts(args.captions, top=args.top, threshold=args.threshold, score=score,
                          score_pool=args.score_pool, score_batch_size=args.batch_size,
                          one_per_cluster=not args.all_variants, column=args.column,
                          id_column=args.id_column)  # fmt: skip
    write_mined_prompts(out, result)
    st = result.stats
    print(f"prompts mine {args.out}: {len(result.prompts)} prompts from {st.captions} captions "
          f"({st.unique} distinct, {st.clusters} near-duplicate clusters"
          f"{f', {st.scored} scored by first-step magnitude' if score else ''}) "
          f"in {st.seconds:.1f} s")  # fmt: skip
    for p in result.prompts[:10]:
        extra = f"  magnitude {p.score:.5g}" if p.score is not None else ""
        print(f"  #{p.rank:<3} {p.exact_duplicates:>6} exact {p.near_duplicates:>6} near"
              f"{extra}  {_short(p.caption)}")  # fmt: skip
    return 0


def _invert(args: argparse.Namespace) -> int:
    from memlens.engine.invert import run_invert

    overrides = {"steps": args.max_steps, "samples": args.samples,
                 "check_every": args.check_every, "ddim_steps": args.ddim_steps}  # fmt: skip
    rows = run_invert(args.model, args.images, args.out, preset=args.preset, overrides=overrides,
                      batch=args.batch, seed=args.seed, embedder=args.embedder,
                      resume=args.resume, backend=args.backend, progress=not args.quiet)  # fmt: skip
    ok = [r for r in rows if r["invmm"] is not None]
    print(f"invert {args.out}: {len(rows)} images, {len(ok)} regenerated; "
          f"report {args.out}/report.html")  # fmt: skip
    for r in sorted(rows, key=lambda r: (r["invmm"] is None, r["invmm"] or 0.0))[:10]:
        score = "+inf" if r["invmm"] is None else f"{r['invmm']:.4g}"
        print(f"  {score:>10}  {r['steps']:>5} steps  {r['path']}")
    return 0


def _index_build(args: argparse.Namespace) -> int:
    from memlens.engine.build import build_index

    s = build_index(args.sources, args.out, embedder=args.embedder, frames=args.frames,
                    fps=args.fps, resume=args.resume, shard_rows=args.shard_rows,
                    copies=args.copies, threads=args.threads,
                    progress=not args.quiet)  # fmt: skip
    split = ", ".join(f"{k} {v:.1f} s" for k, v in s.seconds.items())
    print(f"index {args.out}: {s.items} items ({s.added} added, {s.skipped} already there), "
          f"{s.frames} frames embedded, {len(s.errors)} errors, "
          f"{s.frames_per_second:.1f} frames/s ({split})")  # fmt: skip
    for e in s.errors:
        print(f"  error: {e['item']}: {e['error']}")
    return PARTIAL_FAILURE if s.errors else 0


def _index_verify(args: argparse.Namespace) -> int:
    """Opening checks sizes and array headers only (cheap at any size); this reads every
    file and compares its sha256 with the manifest's."""
    from memlens.index import ReferenceIndex

    with ReferenceIndex.open(args.index, verify=True) as idx:
        print(f"index {args.index}: ok ({idx.num_items} items, {idx.num_rows} rows, "
              f"{len(idx.shards)} shards, every checksum matches)")  # fmt: skip
    return 0


def _scan(args: argparse.Namespace) -> int:
    from memlens.engine.scan import ScanSettings, scan
    from memlens.metrics.content import TAU_DEFAULT, TAU_STRICT
    from memlens.report.html import render

    if args.strict and args.tau is not None:
        raise ValueError("give either --tau or --strict, not both")
    tau = TAU_STRICT if args.strict else (TAU_DEFAULT if args.tau is None else args.tau)
    motion, flow = _motion_from(args)
    extra: tuple[str, ...] = ()
    if args.motion_extra is not None:
        if not args.motion:
            raise ValueError("--motion-extra needs --motion")
        try:
            lines = Path(args.motion_extra).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ValueError(
                f"--motion-extra: cannot read {args.motion_extra!r}: {e.strerror}"
            ) from e
        extra = tuple(x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#"))
    if args.engine != "ray" and (args.address is not None or args.ray_actors is not None):
        raise ValueError("--address and --ray-actors need --engine ray")
    settings = ScanSettings(tau=tau, agg=args.agg, frames=args.frames, fps=args.fps,
                            motion=args.motion, motion_settings=motion, flow=flow,
                            motion_candidates=args.motion_candidates, motion_extra=extra,
                            max_frames=args.max_frames, precision=args.precision,
                            batch_frames=args.batch_frames)  # fmt: skip
    s = scan(args.sources, args.index, args.out, settings=settings, resume=args.resume,
             embedder=args.embedder, threads=args.threads,
             progress=not args.quiet, command=" ".join(["memlens", *sys.argv[1:]]),
             engine=args.engine, ray_address=args.address, ray_actors=args.ray_actors)  # fmt: skip
    report = render(args.out)
    split = ", ".join(f"{k} {v:.1f} s" for k, v in s.seconds.items())
    print(f"scan {args.out}: {s.items} inputs ({s.scored} scored, {s.skipped} already done, "
          f"{s.errors} errors), {s.memorized} content-memorized at τ = {tau:g}"
          f"{f', {s.motion_memorized} motion-memorized' if args.motion else ''}; "
          f"{s.frames_per_second:.1f} frames/s ({split}); report {report}")  # fmt: skip
    return PARTIAL_FAILURE if s.errors else 0


def _compare(args: argparse.Namespace) -> int:
    from memlens.embed import get_embedder
    from memlens.engine.motion import compare_motion
    from memlens.metrics.content import gsscd, vsscd
    from memlens.video import read_media

    emb = get_embedder(args.embedder, threads=args.threads)
    clips = [read_media(p, max_frames=args.max_frames) for p in (args.a, args.b)]
    a, b = (emb.embed(c.frames) for c in clips)
    result: dict[str, Any] = {
        "content": {
            "gsscd_max": gsscd(a, b, agg="max"),
            "gsscd_mean": gsscd(a, b, agg="mean"),
            "vsscd": vsscd(a, b),
        },
        "embedder": emb.spec.name,
        "frames": {"a": len(a), "b": len(b)},
    }
    if not args.no_motion:
        settings, flow = _motion_from(args)
        if min(len(c.frames) for c in clips) < 2:
            result["motion"] = {"ofs": 0.0, "ofs_mag": 0.0, "static": True,
                                "camera_motion": False, "best_offset": 0}  # fmt: skip
        else:
            m, _, _ = compare_motion(clips[0].frames, clips[1].frames, settings, flow)
            result["motion"] = {"ofs": m.ofs, "ofs_mag": m.ofs_mag, "static": m.static,
                                "camera_motion": m.camera_motion, "best_offset": m.offset,
                                "rho_gen": m.rho_gen, "rho_ref": m.rho_ref,
                                "valid_fraction": m.valid_fraction}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    c = result["content"]
    print(f"content: gsscd_max {c['gsscd_max']:.4f}  gsscd_mean {c['gsscd_mean']:.4f}  "
          f"vsscd {c['vsscd']:.4f}  ({emb.spec.name}; {len(a)} vs {len(b)} frames)")  # fmt: skip
    if "motion" in result:
        mo = result["motion"]
        print(f"motion: ofs {mo['ofs']:.4f}  ofs_mag {mo['ofs_mag']:.4f}  static {mo['static']}  "
              f"camera_motion {mo['camera_motion']}  best_offset {mo['best_offset']}")  # fmt: skip
    return 0


def _quiet_decoders() -> None:
    """Decode failures become error rows with their own message; keep OpenCV's and FFmpeg's
    console chatter about them out of the output (set before cv2 is first imported)."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "model", None) == "demo":  # the embedded model; a directory named demo: ./demo
        args.model = str(DEMO_WEIGHTS)
    _quiet_decoders()
    try:
        if args.command == "index":
            return _index_verify(args) if args.action == "verify" else _index_build(args)
        if args.command == "scan":
            return _scan(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "invert":
            return _invert(args)
        if args.command == "detect":
            return _detect(args)
        if args.command == "explain":
            return _explain(args)
        if args.command == "mitigate":
            return _mitigate(args)
        if args.command == "generate":
            return _generate(args)
        if args.command == "audit":
            return cli_audit.audit(args)
        if args.command == "demo":
            return cli_audit.demo(args)
        if args.command == "prompts":
            return _prompts_mine(args)
        if args.command == "bench" and args.family == "search":
            from memlens.bench import search

            sizes = {"d": args.d, "nq": args.nq, "nr": args.nr, "k": args.k}
            search.run(smoke=args.smoke, json_path=args.json, overrides=sizes)
            return 0
        if args.command == "bench" and args.family == "flow":
            from memlens.bench import flow as flow_bench

            sizes = {k: getattr(args, k) for k in ("n", "t", "h", "w", "dtypes")}
            flow_bench.run(smoke=args.smoke, json_path=args.json, overrides=sizes)
            return 0
        if args.command == "bench" and args.family == "invert":
            from memlens.bench import invert as invert_bench

            invert_bench.run(smoke=args.smoke, json_path=args.json, backend=args.backend,
                             compiled=False if args.no_compile else None)  # fmt: skip
            return 0
    except (ValueError, TypeError, OSError, ModelUnavailableError, BackendUnavailableError) as e:
        print("memlens: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memlens: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
