"""Noise-magnitude detection: oracles of methods.md §3.7 and the video content/motion split
(§1.6) on mock denoisers with exactly known guidance, and real tiny pipelines of every kind."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from memlens.diffusion import TINY_CALL_KWARGS, BareDiffusion, observe, tiny_pipeline
from memlens.metrics.magnitude import (
    MagnitudeResult,
    detect_magnitude,
    guidance_norms,
    steps_to_observe,
)
from memlens.metrics.roc import auc

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class GuidanceMock(torch.nn.Module):
    """``ε(x, e) = ε(x, ∅) + reshape(e)``: the text term is the embedding itself, so the
    guidance difference is whatever the mock encoder returns (zero for the null prompt)."""

    def __init__(self, *, text: bool = True) -> None:
        super().__init__()
        self.text = text
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        t = timestep.to(sample.dtype).reshape(-1, *[1] * (sample.ndim - 1))  # one per row
        base = 0.5 * torch.sin(sample) + 1e-3 * t
        if not self.text:
            return base
        return base + encoder_hidden_states.reshape(sample.shape)


def _unit(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    u = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u / torch.linalg.vector_norm(u)


def _ddim() -> object:
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)


def _bare(latent: tuple[int, ...], text_term: dict[str, torch.Tensor], *, text: bool = True):
    def encode(prompts: list[str]) -> torch.Tensor:
        rows = [text_term.get(p, torch.zeros(latent, dtype=torch.float64)) for p in prompts]
        return torch.stack(rows).reshape(len(prompts), 1, -1)

    return BareDiffusion(GuidanceMock(text=text), _ddim(), latent_shape=latent, encode=encode)


# -- oracles (methods.md §3.7) -----------------------------------------------------------------


def test_zero_text_effect_gives_zero_and_auc_half() -> None:
    latent = (4, 8, 8)
    terms = {p: _unit(latent, i) for i, p in enumerate(["a", "b", "c", "d"])}
    bare = _bare(latent, terms, text=False)
    res = detect_magnitude(bare, list(terms), steps="all", generations=2, num_inference_steps=4)
    for r in res:
        assert r.magnitude == 0.0
        assert r.magnitude_steps == [0.0] * 4
    assert auc([1, 1, 0, 0], [r.magnitude for r in res]) == 0.5


@pytest.mark.parametrize("steps", ["first", 3, "all"])
def test_linear_guidance_mock_gives_exact_magnitude(steps: str | int) -> None:
    latent = (4, 6, 5)
    amplitude = {"mem": 7.25, "plain": 0.5, "other": 2.0}
    terms = {p: a * _unit(latent, i) for i, (p, a) in enumerate(amplitude.items())}
    res = detect_magnitude(
        _bare(latent, terms), list(terms), steps=steps, generations=3, num_inference_steps=5
    )
    expected_steps = {"first": 1, 3: 3, "all": 5}[steps]
    for r in res:
        assert len(r.magnitude_steps) == expected_steps
        assert r.magnitude == pytest.approx(amplitude[r.prompt], rel=1e-12)
        assert r.magnitude_steps == pytest.approx([amplitude[r.prompt]] * expected_steps, rel=1e-12)
        assert r.content_magnitude is None
        assert r.generations == 3


def test_video_frame_constant_difference_has_no_motion() -> None:
    c, f, h, w = 2, 4, 3, 3
    frame = _unit((c, 1, h, w), 0) / math.sqrt(f)  # unit norm over the whole clip
    terms = {"still": 3.0 * frame.expand(c, f, h, w).clone()}
    (r,) = detect_magnitude(_bare((c, f, h, w), terms), ["still"], steps=2, num_inference_steps=3)
    assert r.magnitude == pytest.approx(3.0, rel=1e-12)
    assert r.motion_magnitude == pytest.approx(0.0, abs=1e-12)
    assert r.content_magnitude == pytest.approx(3.0 / math.sqrt(f), rel=1e-12)


def test_video_alternating_difference_has_no_content() -> None:
    c, f, h, w = 2, 4, 3, 3
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64).reshape(1, f, 1, 1)
    frame = _unit((c, 1, h, w), 1) / math.sqrt(f)
    terms = {"flicker": 2.0 * sign * frame}
    (r,) = detect_magnitude(_bare((c, f, h, w), terms), ["flicker"], num_inference_steps=3)
    assert r.content_magnitude == pytest.approx(0.0, abs=1e-12)
    assert r.motion_magnitude == pytest.approx(2.0, rel=1e-12)
    assert r.content_steps is not None
    assert len(r.content_steps) == 1


def test_guidance_norms_split_is_orthogonal() -> None:
    g = torch.Generator().manual_seed(3)
    cond, uncond = torch.randn(3, 4, 5, 6, 7, generator=g), torch.randn(3, 4, 5, 6, 7, generator=g)
    m, content, motion = guidance_norms(cond, uncond, frame_axis=2)
    assert content is not None
    assert motion is not None
    # ‖Δ‖² = F·‖mean_f Δ‖² + ‖Δ - mean_f Δ‖², frame count F = 5
    torch.testing.assert_close(m**2, 5 * content**2 + motion**2)
    # frames first (CogVideoX layout): the same data permuted gives the same numbers
    m2, c2, d2 = guidance_norms(cond.transpose(1, 2), uncond.transpose(1, 2), frame_axis=1)
    torch.testing.assert_close((m2, c2, d2), (m, content, motion))
    # sign/order invariance (methods.md §3.7.3)
    torch.testing.assert_close(guidance_norms(uncond, cond, frame_axis=2), (m, content, motion))


def test_half_precision_norms_are_taken_in_float32() -> None:
    cond = torch.full((1, 4, 64, 64), 0.01, dtype=torch.float16)
    m, _, _ = guidance_norms(cond, torch.zeros_like(cond))
    assert m.dtype == torch.float32
    assert m.item() == pytest.approx(0.01 * 128, rel=1e-3)


def test_scores_do_not_depend_on_batch_size() -> None:
    latent = (4, 6, 6)
    terms = {p: (i + 1) * _unit(latent, i) for i, p in enumerate("abcde")}
    bare = _bare(latent, terms)
    one = detect_magnitude(bare, list(terms), steps=2, generations=2, num_inference_steps=3)
    many = detect_magnitude(
        bare, list(terms), steps=2, generations=2, num_inference_steps=3, batch_size=2
    )
    for a, b in zip(one, many, strict=True):
        assert a.magnitude_steps == pytest.approx(b.magnitude_steps, rel=1e-12)


def test_record_is_flat_and_video_keys_only_for_video() -> None:
    image = MagnitudeResult("p", 1.0, [1.0], [999.0], 1)
    assert set(image.to_record()) == {
        "prompt", "magnitude", "magnitude_steps", "timesteps", "generations"
    }  # fmt: skip
    video = MagnitudeResult("p", 1.0, [1.0], [999.0], 1, 0.5, 0.25, [0.5], [0.25])
    assert video.to_record()["motion_magnitude"] == 0.25


# -- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": "last"}, "steps"),
        ({"steps": 0}, "steps"),
        ({"generations": 0}, "generations"),
        ({"batch_size": 0}, "batch_size"),
        ({"guidance_scale": 1.0}, "guidance_scale"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"frame_axis": "frames"}, "frame_axis"),
        ({"steps": 10, "num_inference_steps": 3}, "steps"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, object], name: str) -> None:
    bare = _bare((4, 4, 4), {})
    with pytest.raises(ValueError, match=name):
        detect_magnitude(bare, ["a"], **kwargs)  # type: ignore[arg-type]


def test_bad_tensors_and_steps() -> None:
    with pytest.raises(ValueError, match="same shape"):
        guidance_norms(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="frame_axis"):
        guidance_norms(torch.zeros(2, 3, 4, 5, 6), torch.zeros(2, 3, 4, 5, 6), frame_axis=5)
    with pytest.raises(TypeError, match="seed"):
        detect_magnitude(_bare((4, 4, 4), {}), ["a"], seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prompts"):
        detect_magnitude(_bare((4, 4, 4), {}), "one prompt")
    assert steps_to_observe("first") == 1
    assert steps_to_observe("all") is None
    assert detect_magnitude(_bare((4, 4, 4), {}), []) == []


# -- tiny real pipelines of every kind ---------------------------------------------------------

VIDEO = {"t2v", "animatediff", "cogvideox", "wan"}


@pytest.mark.parametrize("kind", ["sd", "t2v", "animatediff", "cogvideox", "wan"])
def test_tiny_pipeline_detection_first_and_all_steps(kind: str) -> None:
    pipe = tiny_pipeline(kind)
    prompts = ["a red cat", "a blue dog", ""]
    common = {"generations": 2, "num_inference_steps": 3, "call_kwargs": TINY_CALL_KWARGS[kind]}
    first = detect_magnitude(pipe, prompts, steps="first", **common)
    full = detect_magnitude(pipe, prompts, steps="all", batch_size=2, **common)
    for f, a in zip(first, full, strict=True):
        assert len(f.magnitude_steps) == 1
        assert len(a.magnitude_steps) == 3
        # the first-step mode stops the very same sampler: its x_T and step 0 are the full run's
        assert f.magnitude == pytest.approx(a.magnitude_steps[0], rel=1e-5)
        assert math.isfinite(a.magnitude)
        assert (f.content_magnitude is not None) == (kind in VIDEO)
        assert (a.motion_steps is not None) == (kind in VIDEO)
    assert first[0].magnitude > 0
    assert first[1].magnitude > 0
    # the null prompt as the prompt: cond and uncond coincide, nothing is text-driven
    assert first[2].magnitude == pytest.approx(0.0, abs=1e-6)
    if kind in VIDEO:
        for r in full:
            assert r.content_magnitude is not None
            assert r.motion_magnitude is not None
            assert r.content_magnitude >= 0
            assert r.motion_magnitude >= 0


def test_first_step_mode_makes_one_denoiser_call_and_no_decode() -> None:
    pipe = tiny_pipeline("sd")
    calls = {"unet": 0, "vae": 0}

    def count(name: str):
        def hook(*_: object) -> None:
            calls[name] += 1

        return hook

    handles = [
        pipe.unet.register_forward_hook(count("unet")),
        pipe.vae.decoder.register_forward_hook(count("vae")),
    ]
    try:
        detect_magnitude(pipe, ["a", "b", "c"], num_inference_steps=50, **_sd_kwargs())
    finally:
        for h in handles:
            h.remove()
    assert calls == {"unet": 1, "vae": 0}


def _sd_kwargs() -> dict[str, object]:
    return {"call_kwargs": TINY_CALL_KWARGS["sd"]}


def test_observer_sees_what_detection_scores() -> None:
    """Detection's step-0 number equals the norm of the observed halves of a normal run."""
    pipe = tiny_pipeline("t2v")
    gen = torch.Generator().manual_seed(0)
    with observe(pipe, keep=True) as obs:
        pipe(["a red cat"], generator=[gen], num_inference_steps=2, output_type="latent",
             **TINY_CALL_KWARGS["t2v"])  # fmt: skip
    step = obs.steps[0]
    m, c, d = guidance_norms(step.cond, step.uncond, frame_axis=2)
    (r,) = detect_magnitude(
        pipe,
        ["a red cat"],
        generations=1,
        num_inference_steps=2,
        call_kwargs=TINY_CALL_KWARGS["t2v"],
    )
    assert r.magnitude == pytest.approx(m.item(), rel=1e-6)
    assert r.content_magnitude == pytest.approx(c.item() if c is not None else -1, rel=1e-6)
    assert r.motion_magnitude == pytest.approx(d.item() if d is not None else -1, rel=1e-6)
