"""``memlens audit``: every stage on a tiny text-to-video pipeline and a small training set,
resume, labels and AUCs, report escaping, and the CLI's exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("cv2")

from conftest import AUDIT_PROMPTS, audit_settings
from memlens.cli import main
from memlens.engine.audit import AuditSettings, evaluate, read_prompt_file, run_audit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = audit_settings()
PROMPTS = AUDIT_PROMPTS


def test_every_stage_writes_its_results(audited: tuple[Path, object]) -> None:
    run, _ = audited
    state = json.loads((run / "audit.json").read_text())
    assert set(state["stages"]) == {"generate", "index", "scan", "detect", "invert"}
    assert all(v["done"] for v in state["stages"].values())
    for stage in ("generate", "scan", "detect", "invert"):
        assert (run / stage / "results.jsonl").stat().st_size > 0
    assert (run / "index" / "manifest.json").is_file()
    rows = [json.loads(line) for line in (run / "prompts.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in PROMPTS]
    for r in rows:
        assert -1.0 <= r["content_max"] <= 1.0 + 1e-6
        assert r["magnitude"] >= 0
        assert r["label"] in (0, 1)
        assert r["best_item"].endswith(".mp4")
    # token significance for the top prompt only
    assert sum("tokens" in r for r in rows) == 1
    assert (run / "prompts.parquet").is_file()
    inv = [json.loads(line) for line in (run / "invert" / "results.jsonl").read_text().splitlines()]
    assert len(inv) == 2


def test_labels_give_every_detector_an_auc(audited: tuple[Path, object]) -> None:
    run, summary = audited
    ev = summary.evaluation  # type: ignore[attr-defined]
    for name in (
        "content scan (max similarity)",
        "prompt magnitude (first step)",
        "motion magnitude",
    ):
        assert 0.0 <= ev[name]["auc"] <= 1.0
        assert ev[name]["positives"] == 2
        assert ev[name]["negatives"] == 2
    assert json.loads((run / "audit.json").read_text())["evaluation"] == json.loads(json.dumps(ev))


def test_report_is_self_contained_and_escaped(audited: tuple[Path, object]) -> None:
    run, _ = audited
    page = (run / "report.html").read_text()
    assert "a &lt;i&gt;cat&lt;/i&gt; &amp; a dog" in page
    assert "<i>cat</i>" not in page
    assert "data:image/jpeg;base64," in page  # sample and training thumbnails inline
    assert "<svg" in page
    assert "ROC curve" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_resume_skips_finished_stages(
    audited: tuple[Path, object],
    tiny_model_dirs: dict[str, Path],
    audit_training_dir: Path,
    tmp_path: Path,
) -> None:
    import shutil

    shared, first = audited
    run = tmp_path / "run"  # a copy: the shared run stays as the fixture made it
    shutil.copytree(shared, run)
    prompts = [p["prompt"] for p in PROMPTS]
    with pytest.raises(ValueError, match="--resume"):
        run_audit(tiny_model_dirs["t2v"], [audit_training_dir], run, prompts=prompts,
                  settings=SETTINGS, progress=False)  # fmt: skip
    again = run_audit(tiny_model_dirs["t2v"], [audit_training_dir], run, prompts=prompts,
                      labels=None, settings=SETTINGS, resume=True, progress=False)  # fmt: skip
    assert all(v == 0.0 for v in again.seconds.values())
    keys = ("content_max", "magnitude", "motion_ofs")
    assert [[r.get(k) for k in keys] for r in again.prompts] == [
        [r.get(k) for k in keys]
        for r in first.prompts  # type: ignore[attr-defined]
    ]
    other = AuditSettings(**{**SETTINGS.__dict__, "index_frames": 3})
    with pytest.raises(ValueError, match="index_frames"):
        run_audit(tiny_model_dirs["t2v"], [audit_training_dir], run, prompts=prompts,
                  settings=other, resume=True, progress=False)  # fmt: skip


def test_training_labels_reach_invmm(audited: tuple[Path, object]) -> None:
    _, summary = audited
    inv = summary.invert  # type: ignore[attr-defined]
    assert all(r["label"] in (0, 1) for r in inv)


def test_evaluate_handles_missing_scores_and_one_class() -> None:
    rows = [{"label": 1, "magnitude": 2.0}, {"label": 0, "magnitude": None},
            {"label": 0, "magnitude": 1.0}]  # fmt: skip
    ev = evaluate(rows, [])
    assert ev["prompt magnitude (first step)"]["auc"] == 1.0
    assert "content scan (max similarity)" not in ev  # no content_max in the rows
    assert evaluate([{"label": 1, "magnitude": 1.0}], []) == {}
    inv = [{"label": 1, "invmm": 0.1}, {"label": 0, "invmm": None}, {"label": 0, "invmm": 0.5}]
    assert evaluate([], inv)["InvMM (training items)"]["auc"] == 1.0


def test_prompt_file_labels(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "label": 1, "motion_label": false}\n{"prompt": "b"}\n')
    prompts, labels = read_prompt_file(f)
    assert prompts == ["a", "b"]
    assert labels == {"a": {"label": 1, "motion_label": 0}}
    f.write_text('{"prompt": "a", "label": 3}\n')
    with pytest.raises(ValueError, match="label must be 0/1"):
        read_prompt_file(f)


def test_cli_audit_and_user_errors(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], audit_training_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    base = ["audit", "--model", str(tiny_model_dirs["t2v"]), "--train", str(audit_training_dir),
            "--embedder", "builtin", "--inference-steps", "2", "--height", "16", "--width", "16",
            "--num-frames", "4", "--index-frames", "2", "--flow-frames", "4", "--no-motion",
            "--explain-top", "0", "--invert-items", "0", "--quiet"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "audit " in out
    assert "report:" in out
    # prompts default to the training captions
    rows = (tmp_path / "r" / "prompts.jsonl").read_text().splitlines()
    assert len(rows) == 5
    assert main([*base, "--out", str(tmp_path / "r")]) == 2  # exists: needs --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "s"), "--train", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--train" in err


def test_demo_training_set_is_deterministic_and_planted() -> None:
    from memlens.demo.dataset import PLANTED, training_set

    a = training_set(unique=8, copies=3, seed=1)
    b = training_set(unique=8, copies=3, seed=1)
    assert [x.id for x in a] == [x.id for x in b]
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(a, b, strict=True))
    groups = {x.group for x in a if x.planted}
    assert groups == set(PLANTED)
    both = [x for x in a if x.group == "astronaut_pan"]
    assert all(np.array_equal(both[0].frames, x.frames) for x in both)  # the same clip
    cats = [x for x in a if x.group == "cat"]
    assert not np.array_equal(cats[0].frames, cats[1].frames)  # same photo, other motion
    assert all(x.content and not x.motion for x in cats)
    assert all(x.motion and not x.content for x in a if x.group == "zigzag")
    assert len({x.caption for x in a if not x.planted}) == 8


def test_ray_engine_scan_equals_local(
    audited: tuple[Path, object],
    tiny_model_dirs: dict[str, Path],
    audit_training_dir: Path,
    tmp_path: Path,
) -> None:
    """The scan stage redone with --engine ray on a local Ray gives the same joined rows."""
    import shutil

    pytest.importorskip("ray")
    shared, first = audited
    run = tmp_path / "run"
    shutil.copytree(shared, run)
    shutil.rmtree(run / "scan")
    state = json.loads((run / "audit.json").read_text())
    del state["stages"]["scan"]
    (run / "audit.json").write_text(json.dumps(state))
    ray_settings = AuditSettings(**{**SETTINGS.__dict__, "engine": "ray"})
    again = run_audit(tiny_model_dirs["t2v"], [audit_training_dir], run,
                      prompts=[p["prompt"] for p in PROMPTS], settings=ray_settings,
                      resume=True, progress=False)  # fmt: skip
    assert again.seconds["scan"] > 0
    assert again.seconds["generate"] == 0.0
    keys = ("content_max", "best_item", "motion_ofs", "motion_best_item")
    assert [[r.get(k) for k in keys] for r in again.prompts] == [
        [r.get(k) for k in keys]
        for r in first.prompts  # type: ignore[attr-defined]
    ]


def test_resume_refuses_changed_weights_at_the_same_path(
    audited: tuple[Path, object], tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Retrained weights under the same directory must not be mixed with the old stages."""
    import shutil

    from memlens.engine.audit import model_fingerprint

    shared, _ = audited
    recorded = json.loads((shared / "audit.json").read_text())["settings"]["model_files"]
    assert recorded == model_fingerprint(tiny_model_dirs["t2v"])
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["t2v"], copy)
    assert model_fingerprint(copy) == recorded  # the path itself is not part of it
    weights = max(copy.rglob("*.safetensors"), key=lambda f: f.stat().st_size)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_fingerprint(copy) != recorded
    assert model_fingerprint(tmp_path / "missing") is None


def test_small_frames_warning_names_builtin(tmp_path: Path) -> None:
    """SSCD on frames below 64 px gets a one-line hint to use builtin; builtin, big frames
    and an empty or unreadable sample directory get none."""
    import cv2

    from memlens.engine.audit import small_frames_warning

    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    cv2.imwrite(str(small / "a.png"), np.zeros((32, 48, 3), np.uint8))
    cv2.imwrite(str(big / "a.png"), np.zeros((64, 64, 3), np.uint8))
    hint = small_frames_warning("sscd", small)
    assert hint is not None
    assert "32 px" in hint
    assert "--embedder builtin" in hint
    assert small_frames_warning("builtin", small) is None
    assert small_frames_warning("sscd_distilled", big) is None
    assert small_frames_warning("sscd", tmp_path / "none") is None
    (small / "a.png").write_bytes(b"not a png")
    assert small_frames_warning("sscd", small) is None
