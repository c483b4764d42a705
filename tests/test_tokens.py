"""Token significance (methods.md §3.3): the §3.7 oracles on linear guidance mocks with exactly
known gradients (both CFG layouts), an independent autograd check on a real tiny pipeline, and
every tiny pipeline kind end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from memlens.diffusion import KINDS, TINY_CALL_KWARGS, BareDiffusion, observe, tiny_pipeline
from memlens.metrics.tokens import TokenSignificance, token_significance

pytestmark = pytest.mark.usefixtures("one_torch_thread")

L, D = 8, 3  # embedding positions and width of the mocks
LATENT = (2, 4, 4)


@pytest.fixture(scope="module")
def pipes() -> dict[str, Any]:
    return {kind: tiny_pipeline(kind) for kind in KINDS}


class LinearGuidance(torch.nn.Module):
    """``ε(x, t, e) = 0.5·sin(x) + 1e-3·t + W·vec(e)``: the text term is linear in the
    embedding and independent of ``x_t`` and ``t``, so ``∂L_t/∂e`` is known in closed form."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        t = timestep.to(sample.dtype).reshape(-1, *[1] * (sample.ndim - 1))
        text = encoder_hidden_states.flatten(1) @ self.weight.T
        return 0.5 * torch.sin(sample) + 1e-3 * t + text.reshape(sample.shape)


def _ddim() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _block_sparse(positions: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """``W`` (latent size x L·D) whose only non-zero columns belong to ``positions``."""
    w = _randn(math.prod(LATENT), L * D, seed=seed)
    mask = torch.zeros(L, D, dtype=torch.float64)
    mask[list(positions)] = 1
    return w * mask.flatten()


EMBEDDINGS = {"mem": _randn(L, D, seed=1), "": _randn(L, D, seed=2)}


def _encode(prompts: list[str]) -> torch.Tensor:
    return torch.stack([EMBEDDINGS[p] for p in prompts])


def _bare(weight: torch.Tensor, cls: type[BareDiffusion] = BareDiffusion) -> BareDiffusion:
    return cls(LinearGuidance(weight), _ddim(), latent_shape=LATENT, encode=_encode)


class SequentialBare(BareDiffusion):
    """A sampler with the ``"sequential"`` CFG layout (Wan's): two denoiser calls per step,
    the conditional one first."""

    @torch.no_grad()
    def __call__(  # type: ignore[override]
        self,
        prompt: list[str],
        *,
        generator: list[torch.Generator],
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        output_type: str = "latent",
    ) -> torch.Tensor:
        cond = self.encode_prompts(list(prompt))
        null = self.encode_prompts([""]).expand_as(cond)
        rows = [
            torch.randn((1, *self.latent_shape), generator=g, dtype=cond.dtype) for g in generator
        ]
        latents = torch.cat(rows)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            tt = t.expand(len(rows))
            c = self.denoiser(sample=latents, timestep=tt, encoder_hidden_states=cond)
            u = self.denoiser(sample=latents, timestep=tt, encoder_hidden_states=null)
            guided = u + guidance_scale * (c - u)
            latents = self.scheduler.step(guided, t, latents, return_dict=False)[0]
        return latents


def _expected(weight: torch.Tensor, generations: int) -> torch.Tensor:
    """§3.7.4: with ``r = W(e_p - e_∅)``, ``SS_k = √n·‖W_kᵀ r‖ / ‖r‖`` for n generations
    (n = 1 is the methods.md formula; the n copies of the shared embedding add up)."""
    r = weight @ (EMBEDDINGS["mem"] - EMBEDDINGS[""]).flatten()
    per_position = (weight.T @ r).reshape(L, D)
    return math.sqrt(generations) * torch.linalg.vector_norm(per_position, dim=1) / r.norm()


# -- oracles (methods.md §3.7) -----------------------------------------------------------------


@pytest.mark.parametrize("generations", [1, 3])
@pytest.mark.parametrize("steps", ["first", 2, "all", [1, 3]])
@pytest.mark.parametrize("cls", [BareDiffusion, SequentialBare])
def test_block_sparse_linear_mock_gives_exact_significance(
    generations: int, steps: Any, cls: type[BareDiffusion]
) -> None:
    weight = _block_sparse((2, 5))
    res = token_significance(
        _bare(weight, cls), "mem", steps=steps, generations=generations, num_inference_steps=4
    )
    expected = _expected(weight, generations)
    torch.testing.assert_close(
        torch.tensor(res.position_scores, dtype=torch.float64), expected, rtol=1e-10, atol=1e-12
    )
    assert [k for k, s in enumerate(res.position_scores) if s != 0] == [2, 5]
    expected_steps = {"first": [0], "2": [0, 1], "all": [0, 1, 2, 3], "[1, 3]": [1, 3]}
    assert res.steps == expected_steps[str(steps)]
    r = weight @ (EMBEDDINGS["mem"] - EMBEDDINGS[""]).flatten()
    assert res.losses == pytest.approx([math.sqrt(generations) * float(r.norm())] * len(res.steps))
    assert res.tokens == []  # no tokenizer behind an encode callable
    assert res.generations == generations


def test_reference_scale_divides_by_the_embedding_batch() -> None:
    weight = _block_sparse((1, 3, 4))
    bare = _bare(weight)
    plain = token_significance(bare, "mem", steps="first", generations=2)
    scaled = token_significance(bare, "mem", steps="first", generations=2, reference_scale=True)
    assert scaled.position_scores == pytest.approx([s / 4 for s in plain.position_scores])


def test_zero_text_effect_gives_zero_significance() -> None:
    res = token_significance(
        _bare(torch.zeros(math.prod(LATENT), L * D, dtype=torch.float64)), "mem"
    )
    assert res.position_scores == [0.0] * L
    assert res.losses == [0.0] * len(res.steps)


def test_sign_and_order_invariance() -> None:
    """§3.7.3: swapping the prompt and the null embedding leaves every score unchanged."""
    weight = _block_sparse((0, 2, 7), seed=4)
    a = token_significance(_bare(weight), "mem", steps="first", generations=2)
    swapped = {"mem": EMBEDDINGS[""], "": EMBEDDINGS["mem"]}

    def encode(prompts: list[str]) -> torch.Tensor:
        return torch.stack([swapped[p] for p in prompts])

    bare = BareDiffusion(LinearGuidance(weight), _ddim(), latent_shape=LATENT, encode=encode)
    b = token_significance(bare, "mem", steps="first", generations=2)
    assert b.position_scores == pytest.approx(a.position_scores, rel=1e-12)


# -- real tiny pipelines -----------------------------------------------------------------------


def test_sd_first_step_matches_an_independent_autograd_computation(pipes: dict) -> None:
    pipe, n, prompt = pipes["sd"], 2, "Emma <i>Beauty</i>"
    res = token_significance(
        pipe,
        prompt,
        steps="first",
        generations=n,
        num_inference_steps=3,
        call_kwargs=TINY_CALL_KWARGS["sd"],
    )
    # The same x_T and timestep, seen through the driver's observer ...
    g = torch.Generator().manual_seed(0)
    with observe(pipe, keep=True) as obs:
        pipe(
            [prompt] * n,
            generator=[g] * n,
            num_inference_steps=3,
            output_type="latent",
            **TINY_CALL_KWARGS["sd"],
        )
    step = obs.steps[0]
    # ... then the UNet differentiated by hand w.r.t. the text encoder's output.
    with torch.no_grad():
        e, null = pipe.encode_prompt(prompt, "cpu", 1, True)
    e = e.clone().requires_grad_(True)
    x = pipe.scheduler.scale_model_input(torch.cat([step.latents] * 2), step.raw_timestep)
    out = pipe.unet(
        x,
        step.raw_timestep,
        encoder_hidden_states=torch.cat([null.expand(n, -1, -1), e.expand(n, -1, -1)]),
    ).sample
    uncond, cond = out.chunk(2)
    loss = torch.linalg.vector_norm(cond - uncond.detach())
    (grad,) = torch.autograd.grad(loss, [e])
    expected = torch.linalg.vector_norm(grad[0], dim=-1)
    torch.testing.assert_close(torch.tensor(res.position_scores), expected, rtol=1e-4, atol=1e-7)
    assert res.losses[0] == pytest.approx(float(loss.detach()), rel=1e-5)
    # BOS (position 0) and EOS are excluded; the prompt's own tokens are positions 1..len.
    assert res.tokens == list(prompt)
    assert res.positions == list(range(1, len(prompt) + 1))
    assert res.scores == [res.position_scores[k] for k in res.positions]


@pytest.mark.parametrize("kind", KINDS)
def test_every_tiny_pipeline_kind_end_to_end(pipes: dict, kind: str) -> None:
    prompt = "a cat <i>"
    res = token_significance(
        pipes[kind], prompt, steps="all", generations=2, num_inference_steps=3,
        call_kwargs=TINY_CALL_KWARGS[kind],
    )  # fmt: skip
    assert res.steps == [0, 1, 2]
    assert len(res.timesteps) == 3
    assert res.tokens == list(prompt)
    assert len(res.position_scores) == 64  # the tiny text encoders' sequence length
    # CLIP puts BOS at position 0; T5 (CogVideoX, Wan) has no BOS, only EOS after the text
    first = 0 if kind in ("cogvideox", "wan") else 1
    assert res.positions == list(range(first, first + len(prompt)))
    assert all(math.isfinite(s) and s > 0 for s in res.scores)
    assert all(math.isfinite(v) and v > 0 for v in res.losses)


def test_results_are_deterministic_and_recordable(pipes: dict) -> None:
    kw = {
        "steps": 2,
        "generations": 2,
        "num_inference_steps": 4,
        "call_kwargs": TINY_CALL_KWARGS["cogvideox"],
    }
    a = token_significance(pipes["cogvideox"], "red fox", **kw)
    b = token_significance(pipes["cogvideox"], "red fox", **kw)
    assert a == b
    rec = json.loads(json.dumps(a.to_record()))
    assert rec["tokens"] == list("red fox")
    assert rec["token_significance"] == a.scores
    ranked = a.top(2)
    assert len(ranked) == 2
    assert ranked[0][1] == max(a.scores)
    assert ranked[0][1] >= ranked[1][1]


def test_top_orders_by_score() -> None:
    res = TokenSignificance(
        prompt="ab", tokens=["a", "b"], token_ids=[3, 4], positions=[1, 2], scores=[0.1, 0.5],
        position_scores=[0.0, 0.1, 0.5], steps=[0], timesteps=[999.0], losses=[1.0],
        generations=1,
    )  # fmt: skip
    assert res.top() == [("b", 0.5), ("a", 0.1)]
    assert res.top(1) == [("b", 0.5)]


# -- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"steps": "last"}, ValueError, "steps"),
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": []}, ValueError, "steps"),
        ({"steps": [0, -1]}, ValueError, "steps"),
        ({"steps": 9, "num_inference_steps": 3}, ValueError, "steps"),
        ({"steps": [5], "num_inference_steps": 3}, ValueError, "steps"),
        ({"generations": 0}, ValueError, "generations"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"reference_scale": "yes"}, TypeError, "reference_scale"),
        ({"guidance_scale": 1.0}, ValueError, "guidance_scale"),
    ],
)
def test_bad_arguments_name_the_argument(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        token_significance(_bare(_block_sparse((2,))), "mem", **kwargs)


def test_bad_prompt_and_model() -> None:
    with pytest.raises(TypeError, match="prompt"):
        token_significance(_bare(_block_sparse((2,))), ["mem"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model"):
        token_significance(object(), "mem")


def test_import_memlens_does_not_import_diffusers() -> None:
    code = (
        "import sys, memlens, memlens.metrics.tokens, memlens.metrics.mitigate_inference\n"
        "print(any(m.split('.')[0] in ('diffusers', 'transformers') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_works_inside_inference_mode() -> None:
    weight = _block_sparse((2, 5))
    with torch.inference_mode():
        res = token_significance(_bare(weight), "mem", steps=2, generations=2)
    torch.testing.assert_close(
        torch.tensor(res.position_scores, dtype=torch.float64),
        _expected(weight, 2),
        rtol=1e-10,
        atol=1e-12,
    )


# -- the reference code's trajectory ---------------------------------------------------------


class CoupledGuidance(LinearGuidance):
    """The text term is scaled by a function of ``x_t``, so the trajectory matters."""

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        t = timestep.to(sample.dtype).reshape(-1, *[1] * (sample.ndim - 1))
        text = (encoder_hidden_states.flatten(1) @ self.weight.T).reshape(sample.shape)
        return 0.5 * torch.sin(sample) + 1e-3 * t + (1 + 0.5 * torch.tanh(sample)) * text


def reference_get_text_cond_grad(
    unet: torch.nn.Module, n: int, steps: int, target_steps: list[int], guidance: float = 7.5
) -> torch.Tensor:
    """``LocalStableDiffusionPipeline.get_text_cond_grad``, line by line, on a bare denoiser
    (the text encoder's output is a leaf here; BareDiffusion's x_T drawing and timesteps)."""
    scheduler = _ddim()
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    latents = torch.cat(
        [torch.randn((1, *LATENT), generator=g, dtype=torch.float64) for _ in range(n)]
    )
    prompt_embeds = torch.cat(
        [EMBEDDINGS[""].expand(n, -1, -1), EMBEDDINGS["mem"].expand(n, -1, -1)]
    ).requires_grad_(True)
    all_token_grads = []
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        tt = t.expand(2 * n)
        if i in target_steps:
            single_prompt_embeds = prompt_embeds[[0], :, :].clone().detach()
            single_prompt_embeds.requires_grad = True
            dummy_prompt_embeds = prompt_embeds[[-1], :, :].clone()
            input_prompt_embeds = torch.cat(
                [dummy_prompt_embeds.repeat(n, 1, 1), single_prompt_embeds.repeat(n, 1, 1)]
            )
            noise_pred = unet(x, tt, input_prompt_embeds)
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred_text = noise_pred_text - noise_pred_uncond
            loss = torch.norm(noise_pred_text, p=2).mean()
            (token_grads,) = torch.autograd.grad(loss, [prompt_embeds])
            all_token_grads.append(token_grads.norm(p=2, dim=-1).mean(dim=0).detach())
            with torch.no_grad():
                noise_pred = noise_pred_uncond + guidance * noise_pred_text
                latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if i == max(target_steps):
                return torch.mean(torch.stack(all_token_grads), dim=0)
        else:
            with torch.no_grad():
                noise_pred = unet(x, tt, prompt_embeds)
                noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                noise_pred = noise_pred_uncond + guidance * (noise_pred_text - noise_pred_uncond)
                latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
    raise AssertionError("target steps beyond the schedule")


@pytest.mark.parametrize("target_steps", [[0, 1, 2, 3], [1, 3]])
def test_reference_trajectory_reproduces_the_reference_code(target_steps: list[int]) -> None:
    unet = CoupledGuidance(_block_sparse((1, 2, 5), seed=7))
    bare = BareDiffusion(unet, _ddim(), latent_shape=LATENT, encode=_encode)
    expected = reference_get_text_cond_grad(unet, 3, 4, target_steps)
    kw: dict[str, Any] = {"steps": target_steps, "generations": 3, "num_inference_steps": 4}
    ref = token_significance(bare, "mem", trajectory="reference", reference_scale=True, **kw)
    torch.testing.assert_close(
        torch.tensor(ref.position_scores, dtype=torch.float64), expected, rtol=1e-10, atol=1e-14
    )
    # The ordinary CFG trajectory (methods.md) sees other x_t after the first target step.
    cfg = token_significance(bare, "mem", reference_scale=True, **kw)
    assert not torch.allclose(torch.tensor(cfg.position_scores, dtype=torch.float64), expected)


def test_first_step_does_not_depend_on_the_trajectory() -> None:
    unet = CoupledGuidance(_block_sparse((1, 2, 5), seed=7))
    bare = BareDiffusion(unet, _ddim(), latent_shape=LATENT, encode=_encode)
    a = token_significance(bare, "mem", steps="first", num_inference_steps=4)
    b = token_significance(
        bare, "mem", steps="first", num_inference_steps=4, trajectory="reference"
    )
    assert a.position_scores == b.position_scores


def test_reference_trajectory_needs_the_batched_layout(pipes: dict) -> None:
    with pytest.raises(ValueError, match="trajectory"):
        token_significance(
            pipes["wan"], "a", steps=2, generations=1, num_inference_steps=2,
            call_kwargs=TINY_CALL_KWARGS["wan"], trajectory="reference",
        )  # fmt: skip
    with pytest.raises(ValueError, match="trajectory"):
        token_significance(_bare(_block_sparse((2,))), "mem", trajectory="ref")  # type: ignore[arg-type]
