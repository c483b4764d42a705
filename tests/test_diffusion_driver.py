"""memlens.diffusion: hooks on real (tiny, in-process) diffusers pipelines of every supported
kind, the bare denoiser path, local loading, and argument checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from memlens.diffusion import (
    KINDS,
    TINY_CALL_KWARGS,
    BareDiffusion,
    GuidanceObserver,
    GuidanceStep,
    StopSampling,
    denoiser_of,
    denoisers_of,
    frame_axis_of,
    load_pipeline,
    observe,
    run_guided,
    tiny_pipeline,
)
from memlens.errors import ModelUnavailableError
from memlens.metrics.magnitude import detect_magnitude

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipes() -> dict[str, object]:
    return {kind: tiny_pipeline(kind) for kind in KINDS}


def _images(out: object) -> torch.Tensor:
    for name in ("images", "frames"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise AssertionError(f"no tensor output in {type(out).__name__}")


def _run(pipe: object, kind: str, prompts: list[str], seeds: list[int], **kw: object) -> object:
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(  # type: ignore[operator]
        prompts, generator=gens, num_inference_steps=3, **TINY_CALL_KWARGS[kind], **kw
    )


@pytest.mark.parametrize("kind", KINDS)
def test_observing_leaves_the_output_bit_for_bit_unchanged(pipes: dict, kind: str) -> None:
    pipe = pipes[kind]
    plain = _images(_run(pipe, kind, ["a red cat", "a dog"], [1, 2], output_type="pt"))
    with observe(pipe, keep=True) as obs:
        seen = _images(_run(pipe, kind, ["a red cat", "a dog"], [1, 2], output_type="pt"))
    assert torch.equal(plain, seen)
    assert obs.num_steps == 3
    assert [s.index for s in obs.steps] == [0, 1, 2]
    again = _images(_run(pipe, kind, ["a red cat", "a dog"], [1, 2], output_type="pt"))
    assert torch.equal(plain, again)  # the hook is gone and nothing was left behind


@pytest.mark.parametrize("kind", KINDS)
def test_cond_and_uncond_halves_are_identified(pipes: dict, kind: str) -> None:
    """Two prompts from the same x_T: their unconditional predictions agree, their conditional
    ones do not. A swapped or misread layout (batched vs Wan's sequential calls) fails this."""
    pipe = pipes[kind]
    with observe(pipe, keep=True) as obs:  # no rows given: the layout is found from the calls
        _run(pipe, kind, ["a red cat", "a blue dog"], [5, 5], output_type="latent")
    assert obs.num_steps == 3
    step = obs.steps[0]  # later steps follow each prompt's own trajectory
    assert step.cond.shape[0] == step.uncond.shape[0] == step.latents.shape[0] == 2
    assert torch.equal(step.latents[0], step.latents[1])
    torch.testing.assert_close(step.uncond[0], step.uncond[1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(step.cond[0], step.cond[1], rtol=1e-3, atol=1e-5)


def test_auto_layout_rejects_a_run_without_guidance(pipes: dict) -> None:
    pipe = pipes["sd"]
    with pytest.raises(ValueError, match="guidance_scale"), observe(pipe):
        _run(pipe, "sd", ["a", "b"], [1, 2], guidance_scale=1.0, output_type="latent")


def test_stop_after_stops_the_pipeline(pipes: dict) -> None:
    pipe = pipes["wan"]
    seen: list[GuidanceStep] = []
    obs = GuidanceObserver(denoiser_of(pipe), seen.append, rows=1, stop_after=2)
    with pytest.raises(StopSampling), obs:
        _run(pipe, "wan", ["a"], [0], output_type="latent")
    assert [s.index for s in seen] == [0, 1]
    # the hook was removed on the way out: the pipeline runs normally again
    _run(pipe, "wan", ["a"], [0], output_type="latent")
    assert len(seen) == 2


def test_run_guided_seeds_rows_prompt_major(pipes: dict) -> None:
    pipe = pipes["sd"]
    steps: list[GuidanceStep] = []
    n = run_guided(
        pipe, ["x", "y"], steps.append, seeds=[3, 4], generations=2,
        num_inference_steps=4, stop_after=1, call_kwargs=TINY_CALL_KWARGS["sd"],
    )  # fmt: skip
    assert n == 1
    x_t = steps[0].latents
    assert x_t.shape[0] == 4
    g = torch.Generator().manual_seed(3)
    first = torch.cat([torch.randn((1, *x_t.shape[1:]), generator=g) for _ in range(2)])
    torch.testing.assert_close(x_t[:2], first * pipe.scheduler.init_noise_sigma)
    assert not torch.equal(x_t[0], x_t[1])  # generations differ


def test_two_stage_wan_is_observed_through_both_transformers(pipes: dict) -> None:
    """Wan 2.2 hands the low-noise steps to ``transformer_2``: both are hooked."""
    from diffusers import WanPipeline

    base = pipes["wan"]
    second = tiny_pipeline("wan", seed=1).transformer
    pipe = WanPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
        scheduler=base.scheduler, transformer=base.transformer, transformer_2=second,
        boundary_ratio=0.5,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    assert denoisers_of(pipe) == [base.transformer, second]
    used = {"first": 0, "second": 0}
    handles = [
        base.transformer.register_forward_hook(lambda *_: used.__setitem__("first", 1)),
        second.register_forward_hook(lambda *_: used.__setitem__("second", 1)),
    ]
    try:
        (r,) = detect_magnitude(
            pipe, ["a red cat"], steps="all", generations=1, num_inference_steps=4,
            call_kwargs=TINY_CALL_KWARGS["wan"],
        )  # fmt: skip
    finally:
        for h in handles:
            h.remove()
    assert used == {"first": 1, "second": 1}
    assert len(r.magnitude_steps) == 4


def test_wrapped_forward_is_still_observed(pipes: dict) -> None:
    """Offloading hooks swap the instance's forward for a ``(*args, **kwargs)`` wrapper."""
    pipe = pipes["sd"]
    unet = pipe.unet
    original = unet.forward

    def wrapper(*args: object, **kwargs: object) -> object:
        return original(*args, **kwargs)

    unet.forward = wrapper
    try:
        with observe(pipe, keep=True) as obs:
            _run(pipe, "sd", ["a"], [0], output_type="latent")
    finally:
        del unet.forward
    assert obs.num_steps == 3
    assert obs.steps[0].timestep == pytest.approx(float(pipe.scheduler.timesteps[0]))


def test_frame_axis_per_denoiser(pipes: dict) -> None:
    assert frame_axis_of(denoiser_of(pipes["sd"]), 4) is None
    assert frame_axis_of(denoiser_of(pipes["cogvideox"]), 5) == 1
    for kind in ("t2v", "animatediff", "wan"):
        assert frame_axis_of(denoiser_of(pipes[kind]), 5) == 2
    assert type(pipes["animatediff"].unet).__name__ == "UNetMotionModel"
    with pytest.raises(ValueError, match="frame_axis"):
        frame_axis_of(denoiser_of(pipes["sd"]), 3)


# -- bare denoiser + scheduler + text encoder ---------------------------------------------------


def _bare_from(pipe: object) -> BareDiffusion:
    return BareDiffusion(
        pipe.unet,  # type: ignore[attr-defined]
        pipe.scheduler,  # type: ignore[attr-defined]
        latent_shape=(4, 8, 8),  # 16 px through the tiny VAE's 2x downsampling
        text_encoder=pipe.text_encoder,  # type: ignore[attr-defined]
        tokenizer=pipe.tokenizer,  # type: ignore[attr-defined]
    )


def test_bare_denoiser_samples_like_the_pipeline(pipes: dict) -> None:
    pipe = pipes["sd"]
    bare = _bare_from(pipe)
    ref = _run(pipe, "sd", ["a red cat"], [7], output_type="latent")
    got = bare(["a red cat"], generator=[torch.Generator().manual_seed(7)], num_inference_steps=3)
    torch.testing.assert_close(got, _images(ref))
    kw = {"steps": "all", "generations": 2, "num_inference_steps": 3}
    from_bare = detect_magnitude(bare, ["a red cat", "a dog"], **kw)
    from_pipe = detect_magnitude(
        pipe, ["a red cat", "a dog"], call_kwargs=TINY_CALL_KWARGS["sd"], **kw
    )
    for b, p in zip(from_bare, from_pipe, strict=True):
        assert b.magnitude_steps == pytest.approx(p.magnitude_steps, rel=1e-5)


def test_bare_transformer_video_model(pipes: dict) -> None:
    """A transformer denoiser ((B, F, C, H, W) CogVideoX) without its pipeline."""
    pipe = pipes["cogvideox"]
    bare = BareDiffusion(
        pipe.transformer,
        pipe.scheduler,
        latent_shape=(3, 4, 2, 2),
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
    )
    res = detect_magnitude(bare, ["a red cat", ""], steps=2, generations=2, num_inference_steps=3)
    assert res[0].magnitude > 0
    assert res[1].magnitude == pytest.approx(0.0, abs=1e-6)
    assert res[0].content_steps is not None
    assert len(res[0].content_steps) == 2


def test_bare_bad_arguments(pipes: dict) -> None:
    pipe = pipes["sd"]
    unet, sched = pipe.unet, pipe.scheduler
    with pytest.raises(ValueError, match="latent_shape"):
        BareDiffusion(unet, sched, latent_shape=(), encode=lambda p: torch.zeros(len(p), 1, 32))
    with pytest.raises(ValueError, match="encode or text_encoder"):
        BareDiffusion(unet, sched, latent_shape=(4, 2, 2))
    with pytest.raises(ValueError, match="tokenizer"):
        BareDiffusion(unet, sched, latent_shape=(4, 2, 2), text_encoder=pipe.text_encoder)
    with pytest.raises(TypeError, match="scheduler"):
        BareDiffusion(unet, object(), latent_shape=(4, 2, 2), encode=lambda p: torch.zeros(1))
    with pytest.raises(TypeError, match="denoiser"):
        BareDiffusion(object(), sched, latent_shape=(4, 2, 2), encode=lambda p: torch.zeros(1))  # type: ignore[arg-type]
    bare = BareDiffusion(
        unet, sched, latent_shape=(4, 2, 2), encode=lambda p: torch.zeros(1, 1, 32)
    )
    with pytest.raises(ValueError, match="one embedding row per prompt"):
        bare(["a", "b"], num_inference_steps=1)
    with pytest.raises(ValueError, match="output_type"):
        bare(["a"], output_type="pil")


# -- loading local directories -----------------------------------------------------------------


def test_load_pipeline_missing_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelUnavailableError, match="no-such-model"):
        load_pipeline(missing)
    with pytest.raises(ModelUnavailableError, match=r"model_index\.json"):
        load_pipeline(tmp_path)
    with pytest.raises(TypeError, match="path"):
        load_pipeline(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["sd", "cogvideox", "wan"])
def test_load_pipeline_round_trip(pipes: dict, kind: str, tmp_path: Path) -> None:
    if kind == "wan":
        # diffusers loads models with fp32-pinned modules (Wan) only through accelerate
        pytest.importorskip("accelerate")
    pipes[kind].save_pretrained(tmp_path)
    loaded = load_pipeline(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipes[kind])
    kw = {"generations": 1, "num_inference_steps": 3, "call_kwargs": TINY_CALL_KWARGS[kind]}
    (a,) = detect_magnitude(pipes[kind], ["a red cat"], **kw)
    (b,) = detect_magnitude(loaded, ["a red cat"], **kw)
    # Equal weights, but loaded tensors live at other addresses (safetensors storage): BLAS
    # kernels may take another path on a differently aligned operand and round differently
    # (measured on Wan: 4.8e-7 apart, bit-equal again after cloning every parameter).
    assert a.magnitude == pytest.approx(b.magnitude, rel=1e-6)


# -- argument checks and import hygiene ---------------------------------------------------------


def test_driver_bad_arguments(pipes: dict) -> None:
    pipe = pipes["sd"]
    kw = {"seeds": [0], "call_kwargs": TINY_CALL_KWARGS["sd"]}
    with pytest.raises(ValueError, match="seeds"):
        run_guided(pipe, ["a"], print, seeds=[0, 1])
    with pytest.raises(ValueError, match="guidance_scale"):
        run_guided(pipe, ["a"], print, guidance_scale=0.5, **kw)
    with pytest.raises(ValueError, match="generations"):
        run_guided(pipe, ["a"], print, generations=0, **kw)
    with pytest.raises(ValueError, match="stop_after"):
        run_guided(pipe, ["a"], print, stop_after=-1, **kw)
    with pytest.raises(ValueError, match="call_kwargs"):
        run_guided(pipe, ["a"], print, seeds=[0], call_kwargs={"output_type": "pil"})
    with pytest.raises(ValueError, match="prompts"):
        run_guided(pipe, [], print, seeds=[])
    with pytest.raises(ValueError, match="layout"):
        observe(pipe, layout="interleaved")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rows"):
        observe(pipe, rows=0)
    with pytest.raises(ValueError, match="kind"):
        tiny_pipeline("gan")
    with pytest.raises(TypeError, match="unet or transformer"):
        denoiser_of(object())


def test_rows_mismatch_is_reported(pipes: dict) -> None:
    pipe = pipes["sd"]
    with pytest.raises(ValueError, match="rows"), observe(pipe, rows=3):
        _run(pipe, "sd", ["a", "b"], [1, 2], output_type="latent")


def test_import_memlens_does_not_import_diffusers() -> None:
    code = (
        "import sys, memlens, memlens.diffusion, memlens.metrics.magnitude\n"
        "print(any(m.split('.')[0] in ('diffusers', 'transformers') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
