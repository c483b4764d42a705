"""InvMM (memlens.metrics.invmm): the oracles of methods.md §2.10 with analytic denoisers, the
DDIM sampler against diffusers', and the duplication trend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memlens.metrics import invmm
from memlens.ops.inversion import InversionState

pytest.importorskip("diffusers")


def linear_schedule(t: int = 1000) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, t, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


AB = linear_schedule()


def mixture_denoiser(points: torch.Tensor, weights: torch.Tensor) -> invmm.Denoiser:
    """The optimal denoiser of a weighted set of training points (oracle 4)."""
    flat = points.reshape(len(points), -1).double()
    logw = weights.double().log()

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = AB[t.cpu()].to(x.device)[:, None]
        xf = x.reshape(len(x), -1).double()
        d2 = ((xf[:, None, :] - ab.sqrt()[:, None] * flat[None]) ** 2).sum(-1)
        post = torch.softmax(logw[None] - d2 / (2 * (1 - ab)), dim=1)
        x0 = post @ flat
        return ((xf - ab.sqrt() * x0) / (1 - ab).sqrt()).float().view_as(x)

    return f


def cosine_similarity(targets: torch.Tensor) -> invmm.Similarity:
    flat = targets.reshape(len(targets), -1)

    def f(samples: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cosine_similarity(
            samples.reshape(len(samples), -1), flat[index], dim=1
        )

    return f


SMALL = invmm.InvMMSettings(steps=300, samples=16, check_every=10, delta=1e-3, ddim_steps=50)


def test_adaptive_weight_oracle() -> None:
    """§2.10 item 2: C=2, delta=0.1, xi=0.5, p = [10, 9, 8, 7.9, 7.8, 7.7]."""
    s = invmm.InvMMSettings(check_every=2, delta=0.1, xi=0.5, w0=1.0)
    aw = invmm.AdaptiveWeight(1, s)
    got, checks = [], []
    for step, p in enumerate([10, 9, 8, 7.9, 7.8, 7.7]):
        checks.append(aw.record(step, np.array([p])))
        got.append(float(aw.w[0]))
    np.testing.assert_allclose(got, [1.1, 1.2, 1.3, 1.4, 1.5, 0.75])
    assert checks == [False, True, False, True, False, True]


def test_adaptive_weight_never_negative_and_per_target() -> None:
    s = invmm.InvMMSettings(check_every=2, delta=0.0, xi=1.0, w0=1.0)
    aw = invmm.AdaptiveWeight(2, s)
    for step in range(40):
        aw.record(step, np.array([5.0, 100.0 - 10 * step]))  # first stalls, second improves
    assert aw.w[0] == pytest.approx(2.0**-19)
    assert aw.w[1] == 1.0


def test_success_logic_oracle() -> None:
    assert not invmm.is_success(np.array([[0.6, 0.7, 0.49, 0.9]]))[0]
    assert invmm.is_success(np.array([[0.6, 0.7, 0.5, 0.9]]))[0]
    scales = np.array([[[0.9, 0.2], [0.6, 0.55]]])  # text models: any guidance scale suffices
    assert invmm.is_success(scales)[0]
    assert not invmm.is_success(np.array([[[0.9, 0.2], [0.6, 0.45]]]))[0]


def test_ddim_matches_diffusers_scheduler() -> None:
    from diffusers import DDIMScheduler

    pts = torch.tensor([[[[0.5, -0.5], [0.2, 0.9]]], [[[-0.7, 0.1], [0.3, -0.2]]]])
    den = mixture_denoiser(pts, torch.ones(2))
    noise = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    ours = invmm.ddim_sample(den, noise, AB, 50, clip=True)
    sch = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                        beta_end=0.02, clip_sample=True, set_alpha_to_one=True)  # fmt: skip
    sch.set_timesteps(50)
    x = noise.clone()
    for t in sch.timesteps:
        eps = den(x, torch.full((3,), int(t)))
        x = sch.step(eps, t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


def test_perfect_memorizer_scores_zero_at_first_check() -> None:
    """§2.10 item 3: x0_hat is always the target -> p = 0, success at step C - 1, InvMM = 0."""
    target = torch.rand(2, 1, 4, 4) * 2 - 1

    def den(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = AB[t].float()[:, None, None, None]
        # samples of both targets are in one batch: memorize target by batch position
        tgt = target.repeat_interleave(len(x) // 2, 0) if len(x) % 2 == 0 else target[:1]
        return (x - ab.sqrt() * tgt) / (1 - ab).sqrt()

    # the check samples come (target 0, noises...), (target 1, noises...): same layout
    res = invmm.invert(den, AB, target, cosine_similarity(target), settings=SMALL, seed=0)
    for r in res:
        assert r.success
        assert r.steps == SMALL.check_every
        # exact arithmetic gives p = 0 and InvMM = 0; float32 leaves p ~ 1e-12, whose gradient
        # noise Adam scales up to lr-sized steps for the few steps before the first check
        assert max(r.losses) < 1e-10
        assert 0 <= r.score < 2e-3


def test_constant_denoiser_fails_with_inf() -> None:
    """§2.10 item 6: a model that always outputs a constant image never regenerates x0."""
    target = torch.rand(1, 1, 4, 4) * 2 - 1
    c = -target

    def den(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = AB[t].float()[:, None, None, None]
        return (x - ab.sqrt() * c) / (1 - ab).sqrt()

    s = invmm.with_overrides(SMALL, steps=40)
    (r,) = invmm.invert(den, AB, target, cosine_similarity(target), settings=s)
    assert not r.success
    assert math.isinf(r.score)
    assert r.score > 0
    assert (r.steps, len(r.similarities), len(r.losses)) == (40, 4, 40)


def _trend(k_dup: int, seeds: int) -> tuple[float, float]:
    pts = torch.zeros(2, 1, 4, 4)
    pts[0, 0, :2] = 0.8
    pts[0, 0, 2:] = -0.8
    pts[1, 0, :, :2] = 0.8
    pts[1, 0, :, 2:] = -0.8
    den = mixture_denoiser(pts, torch.tensor([float(k_dup), 1.0]))
    scores = np.array(
        [invmm.kl_scores(invmm.invert(den, AB, pts, cosine_similarity(pts), settings=SMALL, seed=s))
         for s in range(seeds)]
    )  # fmt: skip
    return float(np.mean(np.minimum(scores[:, 0], 10))), float(
        np.mean(np.minimum(scores[:, 1], 10))
    )


def test_single_point_memorizer_scores_zero() -> None:
    pts = torch.full((1, 1, 4, 4), 0.5)
    den = mixture_denoiser(pts, torch.ones(1))
    (r,) = invmm.invert(den, AB, pts, cosine_similarity(pts), settings=SMALL)
    assert r.success
    assert r.steps == SMALL.check_every
    assert r.score < 2e-3  # ~0 (float32 noise)


@pytest.mark.slow
def test_duplication_lowers_invmm_mixture_of_deltas() -> None:
    """§2.10 item 4: duplicating x_1 k times enlarges its basin: InvMM(x_1) does not grow and
    InvMM(x_2) does not shrink with k (means over seeds, Spearman trend)."""
    from scipy.stats import spearmanr

    ks = [1, 4, 16]
    res = [_trend(k, seeds=5) for k in ks]
    x1 = [r[0] for r in res]
    x2 = [r[1] for r in res]
    assert spearmanr(ks, x1).statistic <= -0.5, x1
    assert spearmanr(ks, x2).statistic >= 0.5, x2
    assert x1[-1] < x2[-1]


def test_duplicated_point_scores_lower_than_rare_point() -> None:
    """The same trend at one k (fast): the point duplicated 16x is more memorized."""
    x1, x2 = _trend(16, seeds=2)
    assert x1 < x2


def test_invert_validates() -> None:
    with pytest.raises(ValueError, match="samples"):
        invmm.invert(lambda x, t: x, AB, torch.zeros(1, 4), cosine_similarity(torch.zeros(1, 4)),
                     settings=invmm.with_overrides(SMALL, samples=0))  # fmt: skip
    with pytest.raises(ValueError, match="targets"):
        invmm.invert(lambda x, t: x, AB, torch.zeros(4), cosine_similarity(torch.zeros(1, 4)))
    q0 = InversionState.create(2, (3, 4), seed=0)  # q starts as N(0, I): KL 0
    assert torch.equal(q0.score(), torch.zeros(2, dtype=torch.float64))


@pytest.mark.slow
def test_duplication_oracle_on_a_trained_pixel_ddpm() -> None:
    """A tiny UNet2DModel trained here on 6 binary 8x8 patterns, the first one duplicated 24x:
    the duplicated pattern is regenerated and scores a lower InvMM than the patterns seen once
    (methods.md §2.10/§2.11: duplication -> more memorized)."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    imgs = torch.sign(torch.rand(6, 1, 8, 8, generator=g) * 2 - 1) * 0.8
    data = torch.cat([imgs[:1].repeat(24, 1, 1, 1), imgs[1:]])
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))  # fmt: skip
    ab = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    for _ in range(1500):
        t = torch.randint(0, 1000, (len(data),), generator=g)
        eps = torch.randn(data.shape, generator=g)
        a, s = ab[t].sqrt()[:, None, None, None], (1 - ab[t]).sqrt()[:, None, None, None]
        loss = ((unet(a * data + s * eps, t).sample - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    unet.eval().requires_grad_(False)
    targets = imgs[:3]
    st = invmm.InvMMSettings(steps=400, samples=8, check_every=20, delta=1e-3, ddim_steps=20,
                             beta=0.9)  # fmt: skip
    res = invmm.invert(
        invmm.unet_denoiser(unet), ab, targets, cosine_similarity(targets), settings=st
    )
    scores = invmm.kl_scores(res)
    assert res[0].success, scores
    assert scores[0] < scores[1]
    assert scores[0] < scores[2]
