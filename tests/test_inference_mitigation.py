"""Inference-time mitigation (methods.md §3.4): the §3.7.5 loop oracles on a linear guidance
function (against a line-by-line re-implementation of the reference loop), the bare path with
exactly known magnitudes, and tiny image and video pipelines end to end."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from memlens.diffusion import TINY_CALL_KWARGS, BareDiffusion, tiny_pipeline
from memlens.metrics.magnitude import detect_magnitude
from memlens.metrics.mitigate_inference import (
    EmbeddingOptimization,
    InferenceMitigation,
    mitigate_prompt,
    optimize_embedding,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

L, D = 6, 4
LATENT = (2, 3, 3)
DECAY = 1 - 0.05 * 0.01  # AdamW's per-update weight decay at the reference lr and decay


@pytest.fixture(scope="module")
def pipes() -> dict[str, Any]:
    return {kind: tiny_pipeline(kind) for kind in ("sd", "cogvideox", "t2v")}


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


WEIGHT = _randn(math.prod(LATENT), L * D, seed=0)  # dense: BOS (position 0) has a gradient
PROMPT = _randn(1, L, D, seed=1)
NULL = _randn(1, L, D, seed=2)
N = 4  # generations


def linear_loss(e: torch.Tensor) -> torch.Tensor:
    """§3.7.2: n identical rows of ``W(e - e_∅)``, so ``L = √n·‖W(e - e_∅)‖``."""
    r = WEIGHT @ (e - NULL).flatten()
    return torch.linalg.vector_norm(r.expand(N, -1))


def reference_loop(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    e0: torch.Tensor,
    *,
    lr: float,
    iters: int,
    target: float | None,
) -> tuple[torch.Tensor, list[float]]:
    """``aug_prompt``'s loop, line by line (local_sd_pipeline.py)."""
    single = e0.clone().detach()
    single.requires_grad = True
    optimizer = torch.optim.AdamW([single], lr=lr)
    losses = []
    for _ in range(iters):
        loss = loss_fn(single)
        loss_item = loss.item()
        losses.append(loss_item)
        if target is not None and loss_item <= target:
            break
        (single.grad,) = torch.autograd.grad(loss, [single])
        single.grad[:, [0]] = single.grad[:, [0]] * 0
        optimizer.step()
        optimizer.zero_grad()
    return single.detach(), losses


# -- the loop (methods.md §3.7.5) ---------------------------------------------------------------


@pytest.mark.parametrize("target", [None, 20.0])
def test_loop_matches_the_reference_implementation(target: float | None) -> None:
    res = optimize_embedding(linear_loss, PROMPT, target_loss=target)
    emb, losses = reference_loop(linear_loss, PROMPT, lr=0.05, iters=10, target=target)
    assert res.losses == losses
    assert torch.equal(res.embedding, emb)
    assert res.embedding.shape == (1, L, D)
    assert res.iterations == (len(losses) - 1 if res.converged else len(losses))


def test_loop_stops_on_the_first_check_at_or_below_target() -> None:
    free = optimize_embedding(linear_loss, PROMPT, target_loss=None, iterations=10)
    assert not free.converged
    assert free.iterations == 10
    assert all(a > b for a, b in zip(free.losses, free.losses[1:], strict=False))
    for k in (1, 4, 7):
        target = free.losses[k]  # equal counts as reached: "L ≤ target"
        res = optimize_embedding(linear_loss, PROMPT, target_loss=target)
        assert res.converged
        assert res.iterations == k
        assert res.losses == free.losses[: k + 1]
        assert res.final_loss == target
        # no update once L ≤ target: the embedding is the one after exactly k updates
        k_updates = optimize_embedding(linear_loss, PROMPT, target_loss=None, iterations=k)
        assert torch.equal(res.embedding, k_updates.embedding)


def test_target_already_met_leaves_the_embedding_untouched() -> None:
    res = optimize_embedding(linear_loss, PROMPT, target_loss=1e9)
    assert (res.iterations, res.converged, len(res.losses)) == (0, True, 1)
    assert torch.equal(res.embedding, PROMPT)


def test_bos_row_changes_only_by_weight_decay() -> None:
    res = optimize_embedding(linear_loss, PROMPT, target_loss=None, iterations=10)
    expected = PROMPT[:, 0] * DECAY**10  # x0.9950 after 10 updates
    torch.testing.assert_close(res.embedding[:, 0], expected, rtol=1e-12, atol=0)
    assert not torch.allclose(res.embedding[:, 1:], PROMPT[:, 1:] * DECAY**10)
    free = optimize_embedding(linear_loss, PROMPT, target_loss=None, frozen_positions=())
    assert not torch.allclose(free.embedding[:, 0], expected)
    none = optimize_embedding(linear_loss, PROMPT, target_loss=None, weight_decay=0.0)
    assert torch.equal(none.embedding[:, 0], PROMPT[:, 0])


def test_small_lr_decreases_the_loss_monotonically() -> None:
    res = optimize_embedding(linear_loss, PROMPT, lr=0.005, target_loss=None, iterations=10)
    assert all(a > b for a, b in zip(res.losses, res.losses[1:], strict=False))
    assert res.final_loss < res.losses[-1]
    assert res.final_loss == pytest.approx(float(linear_loss(res.embedding)))


def test_l2_budget_pulls_the_embedding_back() -> None:
    plain = optimize_embedding(linear_loss, PROMPT, target_loss=None, lr=0.2)
    loose = optimize_embedding(linear_loss, PROMPT, target_loss=None, lr=0.2, epsilon=1e9)
    assert torch.equal(plain.embedding, loose.embedding)  # budget never exceeded
    tight = optimize_embedding(linear_loss, PROMPT, target_loss=None, lr=0.2, epsilon=0.0)

    def dist(e: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(e[:, 1:] - PROMPT[:, 1:], dim=-1).mean())

    assert dist(tight.embedding) < dist(plain.embedding)
    # alpha = 1 ignores the distance term
    pure = optimize_embedding(linear_loss, PROMPT, target_loss=None, lr=0.2, epsilon=0.0, alpha=1.0)
    torch.testing.assert_close(pure.embedding, plain.embedding)


# -- the bare path: exact magnitudes (methods.md §3.7.2) ----------------------------------------


class LinearGuidance(torch.nn.Module):
    """``ε(x, t, e) = 0.5·sin(x) + 1e-3·t + W·vec(e)``."""

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        t = timestep.to(sample.dtype).reshape(-1, *[1] * (sample.ndim - 1))
        text = encoder_hidden_states.flatten(1) @ WEIGHT.T
        return 0.5 * torch.sin(sample) + 1e-3 * t + text.reshape(sample.shape)


def _bare() -> BareDiffusion:
    from diffusers import DDIMScheduler

    table = {"mem": PROMPT[0], "": NULL[0]}

    def encode(prompts: list[str]) -> torch.Tensor:
        return torch.stack([table[p] for p in prompts])

    scheduler = DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)
    return BareDiffusion(LinearGuidance(), scheduler, latent_shape=LATENT, encode=encode)


def test_bare_denoiser_end_to_end_with_exact_magnitudes() -> None:
    scored: list[Any] = []

    def score(out: Any) -> float:
        scored.append(out)
        return float(out.abs().mean())

    res = mitigate_prompt(
        _bare(), "mem", target_loss=None, generations=N, num_inference_steps=3, content_score=score
    )
    a0 = float((WEIGHT @ (PROMPT - NULL).flatten()).norm())
    assert res.loss_before == pytest.approx(math.sqrt(N) * a0, rel=1e-12)
    assert res.magnitude_before == pytest.approx(a0, rel=1e-12)
    ref = optimize_embedding(linear_loss, PROMPT, target_loss=None)
    torch.testing.assert_close(res.embedding, ref.embedding, rtol=1e-12, atol=1e-12)
    assert res.losses == pytest.approx(ref.losses, rel=1e-12)
    a1 = float((WEIGHT @ (res.embedding - NULL).flatten()).norm())
    assert res.magnitude_after == pytest.approx(a1, rel=1e-12)
    assert res.loss_after == pytest.approx(math.sqrt(N) * a1, rel=1e-12)
    # The generations ran on the optimized / original embedding at every step.
    assert res.generation_magnitude_after == pytest.approx(a1, rel=1e-12)
    assert res.generation_magnitude_before == pytest.approx(a0, rel=1e-12)
    assert res.frozen_positions == [0]  # no tokenizer: the reference's position 0
    assert res.output.shape == (N, *LATENT)
    assert len(scored) == 2
    assert res.content_after == pytest.approx(float(scored[0].abs().mean()))
    assert res.content_before == pytest.approx(float(scored[1].abs().mean()))


# -- tiny pipelines ------------------------------------------------------------------------------


def test_sd_pipeline_end_to_end(pipes: dict) -> None:
    pipe, n, prompt = pipes["sd"], 2, "Emma Watson <i>Beauty</i>"
    kw = TINY_CALL_KWARGS["sd"]
    free = mitigate_prompt(
        pipe, prompt, target_loss=None, generations=n, num_inference_steps=1, call_kwargs=kw,
        output_type="np", content_score=lambda images: float(np.mean(images)),
    )  # fmt: skip
    (det,) = detect_magnitude(pipe, [prompt], generations=n, num_inference_steps=1, call_kwargs=kw)
    assert free.magnitude_before == pytest.approx(det.magnitude, rel=1e-5)
    assert free.loss_after < free.loss_before
    assert free.magnitude_after < free.magnitude_before
    assert free.iterations == 10
    # One sampling step: the generations' magnitudes are the first-step ones, so they show
    # the same x_T and, after, the optimized embedding through prompt_embeds.
    assert free.generation_magnitude_before == pytest.approx(free.magnitude_before, rel=1e-5)
    assert free.generation_magnitude_after == pytest.approx(free.magnitude_after, rel=1e-5)
    assert free.output.shape == (n, 16, 16, 3)
    assert free.original_output.shape == (n, 16, 16, 3)
    assert free.content_before == pytest.approx(float(np.mean(free.original_output)))
    assert free.content_after == pytest.approx(float(np.mean(free.output)))
    # CLIP: BOS at position 0 frozen, changed only by the decay
    assert free.frozen_positions == [0]
    torch.testing.assert_close(
        free.embedding[:, 0], free.initial_embedding[:, 0] * DECAY**10, rtol=1e-6, atol=0
    )
    # stopping on a target: the run that reaches the k-th loss stops there
    target = free.losses[3]
    stop = mitigate_prompt(
        pipe,
        prompt,
        target_loss=target,
        generations=n,
        num_inference_steps=1,
        call_kwargs=kw,
        generate=False,
    )
    assert (stop.iterations, stop.converged) == (3, True)
    assert stop.losses == pytest.approx(free.losses[:4], rel=1e-6)
    assert stop.output is None
    assert stop.generation_magnitude_after is None
    rec = json.loads(json.dumps(stop.to_record()))
    assert rec["iterations"] == 3
    assert "embedding" not in rec


@pytest.mark.parametrize("kind", ["cogvideox", "t2v"])
def test_video_pipeline_end_to_end(pipes: dict, kind: str) -> None:
    res = mitigate_prompt(
        pipes[kind], "a red fox", target_loss=None, iterations=3, generations=2,
        num_inference_steps=2, call_kwargs=TINY_CALL_KWARGS[kind], output_type="np",
        generate_original=False,
    )  # fmt: skip
    frames = TINY_CALL_KWARGS[kind]["num_frames"]
    assert res.output.shape == (2, frames, 16, 16, 3)
    assert res.original_output is None
    assert res.iterations == 3
    assert res.embedding.shape == (1, 64, 32)
    assert res.frozen_positions == ([] if kind == "cogvideox" else [0])  # T5 has no BOS
    assert math.isfinite(res.loss_after)
    assert res.generation_magnitude_after is not None


def test_result_record_round_trips() -> None:
    res = InferenceMitigation(
        prompt="p", embedding=torch.zeros(1, 2, 3), initial_embedding=torch.zeros(1, 2, 3),
        losses=[2.0, 1.0], iterations=1, converged=True, target_loss=1.5, frozen_positions=[0],
        loss_before=2.0, loss_after=1.0, magnitude_before=1.0, magnitude_after=0.5,
        generations=4, seed=0,
    )  # fmt: skip
    rec = json.loads(json.dumps(res.to_record()))
    assert rec["loss_after"] == 1.0
    assert rec["content_before"] is None
    assert isinstance(
        EmbeddingOptimization(torch.zeros(1, 1, 1), [1.0], 0, True, 1.0), EmbeddingOptimization
    )


# -- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"lr": 0.0}, ValueError, "lr"),
        ({"lr": float("nan")}, ValueError, "lr"),
        ({"iterations": -1}, ValueError, "iterations"),
        ({"iterations": 2.5}, ValueError, "iterations"),
        ({"target_loss": "3"}, TypeError, "target_loss"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"frozen_positions": (L,)}, ValueError, "frozen_positions"),
        ({"alpha": 1.5}, ValueError, "alpha"),
        ({"epsilon": True}, TypeError, "epsilon"),
    ],
)
def test_optimize_bad_arguments_name_the_argument(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        optimize_embedding(linear_loss, PROMPT, **kwargs)


def test_optimize_bad_embedding_and_loss() -> None:
    with pytest.raises(ValueError, match="embedding"):
        optimize_embedding(linear_loss, PROMPT[0])
    with pytest.raises(TypeError, match="embedding"):
        optimize_embedding(linear_loss, PROMPT.numpy())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="embedding"):
        optimize_embedding(linear_loss, torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="loss_fn"):
        optimize_embedding(None, PROMPT)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"generations": 0}, ValueError, "generations"),
        ({"seed": "0"}, TypeError, "seed"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"iterations": -2}, ValueError, "iterations"),
        ({"target_loss": [3]}, TypeError, "target_loss"),
        ({"freeze_bos": 1}, TypeError, "freeze_bos"),
        ({"generate": "no"}, TypeError, "generate"),
        ({"content_score": 3}, TypeError, "content_score"),
        ({"output_type": 5}, TypeError, "output_type"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay"),
        ({"epsilon": "x"}, TypeError, "epsilon"),
        ({"alpha": -0.5}, ValueError, "alpha"),
        ({"guidance_scale": 1.0}, ValueError, "guidance_scale"),
    ],
)
def test_mitigate_bad_arguments_name_the_argument(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        mitigate_prompt(_bare(), "mem", **kwargs)


def test_mitigate_bad_prompt_and_model() -> None:
    with pytest.raises(TypeError, match="prompt"):
        mitigate_prompt(_bare(), 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model"):
        mitigate_prompt(object(), "mem")


def test_works_inside_inference_mode() -> None:
    with torch.inference_mode():
        res = mitigate_prompt(_bare(), "mem", target_loss=None, generations=N, generate=False)
    ref = optimize_embedding(linear_loss, PROMPT, target_loss=None)
    torch.testing.assert_close(res.embedding, ref.embedding, rtol=1e-12, atol=1e-12)


class Untouchable(LinearGuidance):
    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise AssertionError("the model must not run")


@pytest.mark.parametrize("kwargs", [{"lr": -1.0}, {"alpha": 2.0}, {"iterations": -1}])
def test_bad_loop_options_are_rejected_before_the_model_runs(kwargs: dict[str, Any]) -> None:
    bare = _bare()
    bare.denoiser = Untouchable()
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        mitigate_prompt(bare, "mem", **kwargs)
