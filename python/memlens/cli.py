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
    inv.add_argument("--model", required=True, help="local diffusers pipeline directory")
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
    settings = ScanSettings(tau=tau, agg=args.agg, frames=args.frames, fps=args.fps,
                            motion=args.motion, motion_settings=motion, flow=flow,
                            motion_candidates=args.motion_candidates, motion_extra=extra,
                            max_frames=args.max_frames, precision=args.precision,
                            batch_frames=args.batch_frames)  # fmt: skip
    s = scan(args.sources, args.index, args.out, settings=settings, resume=args.resume,
             embedder=args.embedder, threads=args.threads,
             progress=not args.quiet, command=" ".join(["memlens", *sys.argv[1:]]))  # fmt: skip
    report = render(args.out)
    split = ", ".join(f"{k} {v:.1f} s" for k, v in s.seconds.items())
    print(f"scan {args.out}: {s.items} inputs ({s.scored} scored, {s.skipped} already done, "
          f"{s.errors} errors), {s.memorized} content-memorized at τ = {tau:g}"
          f"{f', {s.motion_memorized} motion-memorized' if args.motion else ''}; "
          f"{s.frames_per_second:.1f} frames/s ({split}); report {report}")  # fmt: skip
    return 0


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
    _quiet_decoders()
    try:
        if args.command == "index":
            return _index_build(args)
        if args.command == "scan":
            return _scan(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "invert":
            return _invert(args)
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
