"""Planted-motion experiment (issue 6 §2): does the model reproduce the planted motion, and
which prompt-side detector finds the motion-memorized captions?

On the embedded demo model (or ``--model DIR``, trained by the same recipe) and the demo's
labelled prompts (7 planted captions, 25 single-item captions, 16 fresh ones):

1. **Verification with optical flow.** Every prompt is sampled ``--generations`` times (the
   pipeline's own sampler, 25 DDIM steps, guidance 7.5). For each motion-planted group, OFS
   (DIS flow, ``memlens.metrics.motion``, camera filter off) of its captions' generations
   against the group's training clips is compared with the OFS of every other prompt's
   generations against the same clips: the planted motion is reproduced when the group's own
   captions score clearly above the rest. The sprite paths (circle, zigzag: a 10-px patch over
   a different background in every copy) are also checked directly: how strongly each
   generation's frame-to-frame change concentrates on the planted path (``_path_concentration``)
   is compared with the same measure for every other prompt's generations.
2. **Detectors**, each scored per prompt and given as AUC against ``motion_label`` (planted
   motion: circle and zigzag sprites, astronaut pan, rocket zoom) and against the narrower
   motion-only label (circle, zigzag: content differs in every copy):

   - ``d``, ``d_c``, ``d_m``: the first-step guidance magnitude and its content/motion split
     (methods.md §1.6, the shipped detectors);
   - ``d_m_share``: ``d_m / d``, the frame-varying share of the guidance (scale free);
   - ``d_m_all``: ``d_m`` averaged over all sampling steps;
   - ``dt``: the norm of the guidance's frame-to-frame difference at the first step;
   - ``flow_agreement``: mean pairwise OFS between the flows of a prompt's own generations
     (memorized motion comes back whatever the starting noise; generic motion varies).

Writes JSON (``--json``) with the per-prompt values, the AUC table and the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _flows(video: np.ndarray, side: int) -> np.ndarray:
    from memlens.video.flow import estimate_flow, prepare_for_flow

    return estimate_flow(prepare_for_flow(video, size=(side, side)), threads=1)


def _ofs(gen: np.ndarray, refs: np.ndarray) -> np.ndarray:
    from memlens.metrics import motion

    s = motion.MotionSettings(camera_filter="off")
    return np.array([m.ofs for m in motion.motion_scores(gen, refs, s)])


def _path_concentration(video: np.ndarray, group: str) -> float:
    """How much of the frame-to-frame change lies on the planted sprite path: per frame pair,
    the mean absolute change inside the sprite's two boxes (frames t and t + 1) over the mean
    change of the whole frame, averaged over pairs. 1 = no preference for the path; the
    planted training clips score 5-6, the single sprite clips 0.75-0.95."""
    from memlens.demo.dataset import _sprite_path

    corners = np.array(_sprite_path(group))
    v = video.astype(np.float64).mean(axis=-1)
    d = np.abs(np.diff(v, axis=0))
    ratios = []
    for t in range(len(d)):
        mask = np.zeros(v.shape[1:], dtype=bool)
        for x, y in (corners[t], corners[t + 1]):
            x0, y0 = int(np.rint(x)), int(np.rint(y))
            mask[y0 : y0 + 10, x0 : x0 + 10] = True
        ratios.append(d[t][mask].mean() / (d[t].mean() + 1e-9))
    return float(np.mean(ratios))


def _sample(pipe: Any, prompt: str, generations: int, seed: int, steps: int) -> np.ndarray:
    """(generations, F, H, W, 3) uint8 through the pipeline's own sampler."""
    g = torch.Generator().manual_seed(seed)
    out = pipe(
        prompt=[prompt] * generations,
        num_inference_steps=steps,
        num_frames=8,
        height=32,
        width=32,
        output_type="np",
        generator=g,
    ).frames
    return (np.clip(np.asarray(out), 0, 1) * 255).round().astype(np.uint8)


def _first_step_terms(
    pipe: Any, prompts: list[str], generations: int, seed: int, steps: int
) -> dict[str, list[float]]:
    """Per prompt: d, d_c, d_m at the first step, d_m over all steps and the temporal
    difference norm at the first step, means over ``generations`` (seeds ``seed + i``)."""
    from memlens.diffusion.driver import run_guided
    from memlens.metrics.magnitude import guidance_norms

    out: dict[str, list[float]] = {k: [] for k in ("d", "d_c", "d_m", "dt", "d_m_all")}
    for i, p in enumerate(prompts):
        per_step: list[tuple[float, float, float, float]] = []

        def on_step(st: Any, per_step: list[tuple[float, float, float, float]] = per_step) -> None:
            m, c, mo = guidance_norms(st.cond, st.uncond, frame_axis=2)
            delta = (st.cond - st.uncond).float()
            dt = torch.linalg.vector_norm((delta[:, :, 1:] - delta[:, :, :-1]).flatten(1), dim=1)
            assert c is not None
            assert mo is not None
            per_step.append((m.mean().item(), c.mean().item(), mo.mean().item(), dt.mean().item()))

        run_guided(
            pipe,
            [p],
            on_step,
            seeds=[seed + i],
            generations=generations,
            num_inference_steps=steps,
            call_kwargs={"num_frames": 8, "height": 32, "width": 32},
        )
        first = per_step[0]
        out["d"].append(first[0])
        out["d_c"].append(first[1])
        out["d_m"].append(first[2])
        out["dt"].append(first[3])
        out["d_m_all"].append(float(np.mean([s[2] for s in per_step])))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="pipeline directory (default: the shipped demo weights)")
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--flow-side", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="first N prompts only (a smoke run)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from memlens.demo.model import WEIGHTS, load
    from memlens.demo.run import prepare
    from memlens.metrics.roc import auc
    from memlens.video import read_media

    start = time.perf_counter()
    pipe = load(args.model or WEIGHTS)
    pipe.set_progress_bar_config(disable=True)
    with tempfile.TemporaryDirectory() as tmp:
        train, prompt_file, _ = prepare(Path(tmp))
        rows = [json.loads(line) for line in prompt_file.read_text().splitlines()]
        captions = [
            json.loads(line) for line in (train / "captions.jsonl").read_text().splitlines()
        ]
        if args.limit:
            rows = rows[: args.limit]
        prompts = [r["prompt"] for r in rows]
        # the planted motions: every clip of each motion-planted group
        groups = sorted({c["group"] for c in captions if c["group"] and c["motion"]})
        ref_flows = {
            g: np.stack(
                [
                    _flows(read_media(train / c["file"]).frames, args.flow_side)
                    for c in captions
                    if c["group"] == g
                ][:8]
            )
            for g in groups
        }

    def say(m: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {m}", file=sys.stderr, flush=True)

    say(f"{len(prompts)} prompts, groups {groups}")

    terms = _first_step_terms(pipe, prompts, args.generations, args.seed, args.steps)
    say("guidance terms done")
    ofs_to_group: dict[str, list[float]] = {g: [] for g in groups}
    agreement: list[float] = []
    sprite_groups = [g for g in groups if g in ("circle", "zigzag")]
    path_conc: dict[str, list[float]] = {g: [] for g in sprite_groups}
    for i, p in enumerate(prompts):
        videos = _sample(pipe, p, args.generations, args.seed + 1000 + i, args.steps)
        flows = [_flows(v, args.flow_side) for v in videos]
        for g in sprite_groups:
            path_conc[g].append(float(np.mean([_path_concentration(v, g) for v in videos])))
        for g in groups:
            ofs_to_group[g].append(float(np.mean([_ofs(f, ref_flows[g]).max() for f in flows])))
        pairs = [float(_ofs(a, b[None])[0]) for a, b in itertools.combinations(flows, 2)]
        agreement.append(float(np.mean(pairs)) if pairs else 0.0)
    say("generations and flows done")
    scores = {
        **terms,
        "d_m_share": [
            m / d if d > 0 else 0.0 for m, d in zip(terms["d_m"], terms["d"], strict=True)
        ],
        "flow_agreement": agreement,
    }
    motion = [int(r["motion_label"]) for r in rows]
    motion_only = [int(r["motion_label"] and not r["content_label"]) for r in rows]
    table = {}
    for name, vals in scores.items():
        table[name] = {
            "auc_motion": auc(motion, vals) if 0 < sum(motion) < len(motion) else None,
            "auc_motion_only": auc(motion_only, vals) if 0 < sum(motion_only) < len(rows) else None,
        }
    # verification: a group's own captions against every other prompt
    group_of = {r["prompt"]: r.get("group", "") for r in rows}
    verification = {}
    for g in groups:
        own = [v for p, v in zip(prompts, ofs_to_group[g], strict=True) if group_of[p] == g]
        rest = [v for p, v in zip(prompts, ofs_to_group[g], strict=True) if group_of[p] != g]
        verification[g] = {
            "own_ofs": own,
            "others_ofs_mean": float(np.mean(rest)),
            "others_ofs_max": float(np.max(rest)),
        }
        if g in path_conc:
            own_e = [v for p, v in zip(prompts, path_conc[g], strict=True) if group_of[p] == g]
            rest_e = [v for p, v in zip(prompts, path_conc[g], strict=True) if group_of[p] != g]
            verification[g] |= {
                "own_path_concentration": own_e,
                "others_path_concentration_mean": float(np.mean(rest_e)),
                "others_path_concentration_max": float(np.max(rest_e)),
            }
    result = {
        "model": str(args.model or WEIGHTS),
        "generations": args.generations,
        "steps": args.steps,
        "prompts": [
            {
                **r,
                **{k: v[i] for k, v in scores.items()},
                **{f"ofs_{g}": ofs_to_group[g][i] for g in groups},
            }
            for i, r in enumerate(rows)
        ],
        "auc": table,
        "verification": verification,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
    }
    print(f"{'detector':16s} {'AUC motion':>11s} {'AUC motion-only':>16s}")
    for name, row in table.items():
        a, b = row["auc_motion"], row["auc_motion_only"]
        print(f"{name:16s} {a if a is None else f'{a:11.3f}'} {b if b is None else f'{b:16.3f}'}")
    for g, v in verification.items():
        own = ", ".join(f"{x:.3f}" for x in v["own_ofs"])
        print(
            f"OFS to {g} clips: own captions {own}; others mean {v['others_ofs_mean']:.3f}"
            f" max {v['others_ofs_max']:.3f}"
        )
        if "own_path_concentration" in v:
            own = ", ".join(f"{x:.2f}" for x in v["own_path_concentration"])
            print(
                f"  {g} change on the sprite path: own captions {own}; others mean"
                f" {v['others_path_concentration_mean']:.2f}, max"
                f" {v['others_path_concentration_max']:.2f}"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
