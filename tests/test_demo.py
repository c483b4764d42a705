"""The embedded demo model: the shipped weights load as a diffusers pipeline within the size
budget and carry their training record; the training recipe is deterministic (two runs of a
shortened recipe give identical weights) and its output loads like the shipped one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("skimage")

from memlens.demo import model
from memlens.demo.train import TrainSettings, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = TrainSettings(unique=4, copies=2, vae_steps=3, vae_batch=4, unet_steps=3, unet_batch=2,
                     refine_steps=(2, 2), decoder_steps=3, warmup=2, threads=1)  # fmt: skip


def test_shipped_weights_load_and_are_small() -> None:
    size = sum(f.stat().st_size for f in model.WEIGHTS.rglob("*") if f.is_file())
    assert size <= 20 * 2**20
    record = json.loads((model.WEIGHTS / "training.json").read_text())
    assert record["settings"]["seed"] == 0
    assert record["command"].startswith("memlens demo --retrain")
    pipe = model.load()
    assert type(pipe).__name__ == "TextToVideoSDPipeline"
    assert type(pipe.unet).__name__ == "UNet3DConditionModel"
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=["the astronaut portrait drifts slowly to the right"], num_inference_steps=2,
               num_frames=8, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    assert out.shape == (1, 8, 32, 32, 3)


def _weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.rglob("*.safetensors")):
        out |= {f"{f.parent.name}/{k}": v for k, v in load_file(f).items()}
    return out


def test_training_recipe_is_deterministic(tmp_path: Path) -> None:
    a = train(tmp_path / "a", TINY, log=lambda _: None)
    b = train(tmp_path / "b", TINY, log=lambda _: None)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert any(k.startswith("unet/") for k in wa)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the text encoder is trained too: it moved from its initialization
    te, _ = model.text(0)
    init = te.state_dict()
    moved = [k for k in init if torch.is_floating_point(init[k])
             and not torch.equal(init[k], wa[f"text_encoder/{k}"])]  # fmt: skip
    assert moved
    record = json.loads((a / "training.json").read_text())
    assert "--unet-steps 3" in record["command"]
    pipe = model.load(a)
    assert type(pipe.vae).__name__ == "AutoencoderKL"
    assert pipe.vae.config.scaling_factor == pytest.approx(record["scaling_factor"])


def test_resumed_training_equals_one_call(tmp_path: Path) -> None:
    """How the shipped weights were made: the later phases and the decoder refinement run in a
    second process on the saved weights of the first phases, bitwise as in one call."""
    from dataclasses import replace

    one = train(tmp_path / "one", TINY, log=lambda _: None)
    first = train(tmp_path / "first", replace(TINY, refine_steps=TINY.refine_steps[:1],
                                              decoder_steps=0), log=lambda _: None)  # fmt: skip
    rest = train(tmp_path / "rest", TINY, log=lambda _: None, resume=(first, 2))
    wa, wb = _weights(one), _weights(rest)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the decoder refinement moved the decoder only
    wf = _weights(first)
    assert not torch.equal(wf["vae/decoder.conv_out.weight"], wb["vae/decoder.conv_out.weight"])
    assert all(torch.equal(wf[k], wb[k]) for k in wf if k.startswith("vae/encoder."))
    record = json.loads((rest / "training.json").read_text())
    assert record["resumed"]["from_phase"] == 2
    assert record["command"] == json.loads((one / "training.json").read_text())["command"]
    with pytest.raises(ValueError, match="seed"):
        train(tmp_path / "x", replace(TINY, seed=1), log=lambda _: None, resume=(first, 2))


def test_demo_sets_aside_an_audit_of_other_weights_or_settings(tmp_path: Path) -> None:
    from dataclasses import asdict, replace

    from memlens.demo.run import DEMO_SETTINGS, _set_aside_other_audit
    from memlens.engine.audit import model_fingerprint

    audit = tmp_path / "audit"
    audit.mkdir()
    current = model_fingerprint(model.WEIGHTS)
    settings = json.loads(json.dumps(asdict(DEMO_SETTINGS), default=str))

    def write(**over: object) -> None:
        record = {**settings, "model_files": current, "engine": "ray", **over}
        (audit / "audit.json").write_text(json.dumps({"settings": record}))

    write()  # same weights and settings (another engine is fine): resumed as before
    _set_aside_other_audit(audit, model.WEIGHTS, DEMO_SETTINGS, None)
    assert audit.is_dir()
    write(model_files="0123abcd")
    _set_aside_other_audit(audit, model.WEIGHTS, DEMO_SETTINGS, None)
    assert not audit.exists()
    assert (tmp_path / "audit-0123abcd" / "audit.json").is_file()  # kept, not deleted
    audit.mkdir()
    write(embedder="default")  # an audit from before the demo's embedder changed
    _set_aside_other_audit(audit, model.WEIGHTS, DEMO_SETTINGS, None)
    assert (tmp_path / f"audit-{current}" / "audit.json").is_file()
    audit.mkdir()
    write()
    _set_aside_other_audit(audit, model.WEIGHTS, replace(DEMO_SETTINGS, seed=1), None)
    assert (tmp_path / f"audit-{current}-2" / "audit.json").is_file()
    audit.mkdir()
    (audit / "audit.json").write_text(
        json.dumps({"settings": {k: v for k, v in settings.items() if k != "content_tau"}})
    )  # from before content_tau existed: it ran at the default 0.5, the demo now uses 0.7
    _set_aside_other_audit(audit, model.WEIGHTS, DEMO_SETTINGS, None)
    assert (tmp_path / "audit-old" / "audit.json").is_file()


def test_training_clips_are_rewritten_when_the_training_set_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run directory from a release whose training set differed (same ids, other frames)
    must not keep its stale clips; unchanged clips are not written again."""
    from dataclasses import replace

    from memlens.demo import dataset
    from memlens.video import read_media

    written: list[str] = []
    real_write = dataset.write_video

    def spy(path: Path, frames: object, **kw: object) -> Path:
        written.append(Path(path).stem)
        return real_write(path, frames, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(dataset, "write_video", spy)
    items = dataset.training_set(unique=3, copies=1, seed=0)[:4]
    ids = [it.id for it in items]
    train_dir = tmp_path / "train"
    rows = dataset.write_training_set(items, train_dir)
    assert [r["item"] for r in rows] == ids
    assert written == ids
    written.clear()
    dataset.write_training_set(items, train_dir)  # nothing changed: nothing written
    assert written == []

    changed = replace(items[1], frames=255 - items[1].frames)
    dataset.write_training_set([items[0], changed, *items[2:]], train_dir)
    assert written == [changed.id]
    got = read_media(train_dir / f"{changed.id}.mp4").frames.astype(float)
    assert abs(got - changed.frames).mean() < abs(got - items[1].frames).mean()

    written.clear()
    (train_dir / dataset.MANIFEST).unlink()  # a directory from before the record
    dataset.write_training_set(items, train_dir)
    assert written == ids
    assert json.loads((train_dir / dataset.MANIFEST).read_text()).keys() == set(ids)
