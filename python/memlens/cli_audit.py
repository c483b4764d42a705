"""``memlens audit`` and ``memlens demo`` (parsers and handlers; ``memlens.cli`` dispatches)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def add_parsers(sub: Any, positive: Any, positive_float: Any) -> None:
    aud = sub.add_parser("audit", help="every measure on one model + training set -> report.html")
    aud.add_argument(
        "--model",
        required=True,
        metavar="M",
        help="local diffusers directory, or demo (the embedded model)",
    )
    aud.add_argument("--train", required=True, nargs="+", metavar="SRC",
                     help="training videos/images (files or directories)")  # fmt: skip
    aud.add_argument("--prompts", metavar="FILE",
                     help="prompts (one per line, or .jsonl/.csv); .jsonl may carry label, "
                          "content_label, motion_label. Default: the training captions.jsonl")  # fmt: skip
    aud.add_argument("--out", required=True, metavar="RUN", help="run directory")
    aud.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="where the scan's search and flow work runs")  # fmt: skip
    aud.add_argument("--address", metavar="ADDR", help="Ray cluster address (--engine ray)")
    aud.add_argument(
        "--embedder", default="default", help="sscd | sscd_distilled | builtin | onnx:PATH"
    )
    aud.add_argument("--tau", type=float, default=0.5,
                     help="content-memorized decision: max similarity > tau (default 0.5, "
                          "Somepalli et al.; 0.7 is the strict one)")  # fmt: skip
    aud.add_argument("--generations", type=positive, default=1, help="samples per prompt")
    aud.add_argument("--seed", type=int, default=0)
    aud.add_argument(
        "--inference-steps", type=positive, help="sampler steps (default: the pipeline's)"
    )
    aud.add_argument("--guidance", type=positive_float, help="guidance scale")
    aud.add_argument("--height", type=positive)
    aud.add_argument("--width", type=positive)
    aud.add_argument("--num-frames", type=positive, help="frames per video (video pipelines)")
    aud.add_argument("--index-frames", type=positive, default=8,
                     help="uniform frames per training video in the index")  # fmt: skip
    aud.add_argument("--flow-frames", type=positive, default=16, help="frames per video for flow")
    aud.add_argument("--no-motion", action="store_true", help="skip the motion scan")
    aud.add_argument("--explain-top", type=int, default=3, metavar="K",
                     help="token significance of the K highest-magnitude prompts")  # fmt: skip
    aud.add_argument("--invert-items", type=int, default=16, metavar="N",
                     help="training items inverted with InvMM (0: skip)")  # fmt: skip
    aud.add_argument("--invert-steps", type=positive, help="InvMM optimisation steps at most")
    aud.add_argument("--device", default="auto", help="torch device (default: cuda if present)")
    aud.add_argument("--resume", action="store_true", help="continue an interrupted audit")
    aud.add_argument("--quiet", action="store_true", help="no progress bars")

    demo = sub.add_parser("demo", help="audit the embedded memorizing video model (make demo)")
    demo.add_argument("--out", default="demo-run", metavar="DIR", help="run directory (demo-run)")
    demo.add_argument("--retrain", action="store_true",
                      help="train the demo model from scratch first (~2 h on 2 cores) and audit it")  # fmt: skip
    demo.add_argument("--unet-steps", type=positive, help="--retrain: UNet phase-1 steps (3000)")
    demo.add_argument("--refine-steps", type=positive, nargs="*", metavar="N",
                      help="--retrain: steps of each later UNet phase (2000 4000)")  # fmt: skip
    demo.add_argument("--decoder-steps", type=int, metavar="N",
                      help="--retrain: decoder refinement steps (1500; 0: none)")  # fmt: skip
    demo.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")


def _say(quiet: bool) -> Any:
    start = time.perf_counter()

    def say(msg: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


def audit(args: argparse.Namespace) -> int:
    from memlens.engine.audit import AuditSettings, read_prompt_file, run_audit, summary_table

    model = args.model
    prompts, labels = read_prompt_file(args.prompts) if args.prompts else (None, {})
    sizes = {"height": args.height, "width": args.width, "num_frames": args.num_frames}
    if args.explain_top < 0 or args.invert_items < 0:
        raise ValueError("--explain-top and --invert-items must be >= 0")
    settings = AuditSettings(
        generations=args.generations,
        seed=args.seed,
        num_inference_steps=args.inference_steps,
        guidance_scale=args.guidance,
        call_kwargs={k: v for k, v in sizes.items() if v is not None},
        embedder=args.embedder,
        content_tau=args.tau,
        index_frames=args.index_frames,
        flow_frames=args.flow_frames,
        motion=not args.no_motion,
        explain_top=args.explain_top,
        invert_items=args.invert_items,
        invert={"steps": args.invert_steps} if args.invert_steps else {},
        engine=args.engine,
        ray_address=args.address,
    )
    s = run_audit(model, args.train, args.out, prompts=prompts, labels=labels, settings=settings,
                  resume=args.resume, progress=not args.quiet, device=args.device,
                  log=_say(args.quiet))  # fmt: skip
    print(summary_table(s))
    return 0


def demo(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from memlens.demo.run import run_demo
    from memlens.engine.audit import summary_table

    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    say = _say(args.quiet)
    model = None
    if args.retrain:
        from memlens.demo.train import TrainSettings, train

        given = {"unet_steps": args.unet_steps, "decoder_steps": args.decoder_steps,
                 "refine_steps": None if args.refine_steps is None else tuple(args.refine_steps)}  # fmt: skip
        ts = TrainSettings(**{k: v for k, v in given.items() if v is not None})
        model = train(out / "model", ts, log=say)
    try:
        s = run_demo(out, model=model, progress=not args.quiet, log=say)
    except ImportError as e:  # the training set is made from scikit-image's photographs
        raise ValueError(f"memlens demo needs scikit-image (pip install scikit-image): {e}") from e
    print(summary_table(s))
    return 0
