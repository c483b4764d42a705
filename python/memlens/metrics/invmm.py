"""InvMM: how strongly is an image memorized? (Ma et al., ICCV 2025; methods.md §2)

For each target x0 learn q = N(mu, exp(logvar)) over the sampler's start noise such that
samples from q regenerate x0, while keeping q close to N(0, I). The score is the per-dimension
KL(q || N(0, I)) once deterministic DDIM samples from q reproduce the target (minimum similarity
over 8 samples >= beta), +inf if they never do within the step budget: **lower = more
memorized** (typical noise already reproduces the image).

The optimisation runs on the fused kernels of :mod:`memlens.ops.inversion` (two passes over
memory per step outside the model), many targets at once in one model call per step; targets
leave the batch when they succeed. The adaptive normality weight follows §2.4 exactly.

Model interface: ``denoiser(x_t, t) -> eps`` (batched; t int64 (M,)) and the schedule's
``alphas_cumprod`` (T,). :func:`unet_denoiser` wraps a diffusers ``UNet2DModel``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from memlens.ops import inversion as inv
from memlens.reference.inversion import AdamSettings

__all__ = [
    "PRESETS",
    "AdaptiveWeight",
    "InvMMResult",
    "InvMMSettings",
    "SoftPrompt",
    "StepInfo",
    "ddim_sample",
    "invert",
    "is_success",
    "unet_cond_denoiser",
    "unet_denoiser",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class InvMMSettings:
    """Hyperparameters (methods.md §2.6; the defaults are the pixel-DDPM code path's)."""

    steps: int = 2000  # S: optimisation steps at most
    samples: int = 32  # B: noise samples per target and step
    check_every: int = 50  # C: success check period
    xi: float = 1e-3  # stall threshold of the smoothed x0 loss
    delta: float = 1e-4  # per-step increment of the normality weight
    w0: float = 1.0  # initial normality weight
    beta: float = 0.5  # success: min similarity over the check samples >= beta
    check_noises: int = 8  # samples drawn from q per check
    ddim_steps: int = 200  # deterministic DDIM (eta = 0) steps of the check sampler
    clip: bool = True  # clip x0 to [-1, 1] in the sampler (pixel models)
    history: int = 100  # running-mean window of the x0 loss
    lr: float = 0.1  # Adam learning rate (other Adam settings: torch defaults)
    # text-conditional models: the check samples with classifier-free guidance at each scale
    guidance_scales: tuple[float, ...] = ()
    soft_prompt_tokens: int = 75  # learned tokens at positions 1..L of the text encoder
    gumbel_tau: float = 2.0  # Gumbel-softmax temperature of the soft prompt

    def validate(self) -> None:
        for name in ("steps", "samples", "check_every", "check_noises", "ddim_steps", "history"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        for name in ("xi", "delta", "w0", "lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be finite and >= 0; got {v!r}")
        if not (math.isfinite(self.beta) and -1 <= self.beta <= 1):
            raise ValueError(f"beta must be in [-1, 1]; got {self.beta!r}")


#: Per code path of the reference implementation (methods.md §2.6). "text" also needs the soft
#: prompt and guidance scales 1..7 of the text-conditional path.
PRESETS: dict[str, InvMMSettings] = {
    "pixel": InvMMSettings(),
    "latent": InvMMSettings(samples=16, check_every=10, delta=5e-4, ddim_steps=50, clip=False),
    "text": InvMMSettings(
        samples=16,
        check_every=50,
        delta=1e-3,
        ddim_steps=50,
        clip=False,
        guidance_scales=(1, 2, 3, 4, 5, 6, 7),
    ),
}


class AdaptiveWeight:
    """The normality weight w of each target (methods.md §2.4, exact): every step records the
    x0 loss; at check steps ((step + 1) % C == 0, step > 0) w halves if the running mean of the
    last ``history`` losses improved by less than xi since the last check, else (and at every
    other step) w grows by delta."""

    def __init__(self, n: int, s: InvMMSettings) -> None:
        self.w = np.full(n, s.w0, dtype=np.float64)
        self._p_prev = np.full(n, np.inf)
        self._hist: deque[np.ndarray] = deque(maxlen=s.history)
        self._s = s

    def record(self, step: int, p_loss: np.ndarray) -> bool:
        """Record this step's loss of every target; returns whether this is a check step."""
        self._hist.append(np.asarray(p_loss, dtype=np.float64))
        s = self._s
        if step > 0 and (step + 1) % s.check_every == 0:
            p_now = np.mean(np.stack(self._hist), axis=0)
            stalled = self._p_prev - p_now < s.xi
            self.w = np.where(stalled, np.maximum(self.w / 2, 0.0), self.w + s.delta)
            self._p_prev = p_now
            return True
        self.w = self.w + s.delta
        return False

    def select(self, keep: np.ndarray) -> None:
        self.w = self.w[keep]
        self._p_prev = self._p_prev[keep]
        self._hist = deque((h[keep] for h in self._hist), maxlen=self._hist.maxlen)


def is_success(similarities: np.ndarray | torch.Tensor, beta: float = 0.5) -> np.ndarray:
    """Success per target from similarities (N, noises) or (N, guidance scales, noises): the
    minimum over the noises >= beta (for any guidance scale). methods.md §2.5 / oracle 5."""
    s = np.asarray(similarities.cpu() if isinstance(similarities, torch.Tensor) else similarities)
    if s.ndim == 2:
        s = s[:, None, :]
    if s.ndim != 3:
        raise ValueError(f"similarities must be (N, noises) or (N, scales, noises); got {s.shape}")
    return np.asarray((s.min(axis=2) >= beta).any(axis=1))


@torch.no_grad()
def ddim_sample(
    denoiser: Denoiser,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int,
    *,
    clip: bool = True,
    batch: int = 256,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from x_T = ``noise``: diffusers' DDIMScheduler with
    "leading" timestep spacing, ``set_alpha_to_one`` and the model's eps kept after clipping
    x0 (as diffusers does)."""
    ab = alphas_cumprod.to(device=noise.device, dtype=torch.float64)
    t_all = ab.shape[0]
    if not 1 <= steps <= t_all:
        raise ValueError(f"steps must be in [1, {t_all}]; got {steps}")
    ts = (np.arange(steps) * (t_all // steps))[::-1]
    x = noise.float()
    for i, t in enumerate(ts):
        eps = torch.cat(
            [
                denoiser(
                    x[j : j + batch],
                    torch.full((len(x[j : j + batch]),), int(t), device=x.device, dtype=torch.long),
                ).float()
                for j in range(0, len(x), batch)
            ]
        )
        a_t = float(ab[t])
        a_prev = float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if clip:
            x0 = x0.clamp(-1, 1)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x


def unet_denoiser(unet: Any) -> Denoiser:
    """``denoiser(x_t, t)`` of a diffusers UNet2DModel (eps prediction)."""

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = unet(x.to(unet.dtype), t).sample
        return out

    return f


class SoftPrompt:
    """The caption-free, adversarial conditioning of the text-conditional InvMM (§2.2): per
    target, ``log_coeffs`` (L, |V|) from 0; each use draws coefficients by Gumbel-softmax
    (tau, soft) and feeds ``coeffs @ token_embeddings`` to the text encoder at positions 1..L
    of the empty prompt (a forward hook on its token-embedding layer), optimised with
    Adam(lr, no weight decay) jointly with q."""

    def __init__(self, text_encoder: Any, tokenizer: Any, n: int, s: InvMMSettings,
                 *, device: torch.device | str = "cpu", seed: int = 0) -> None:  # fmt: skip
        self.encoder = text_encoder.eval().requires_grad_(False)
        self.layer = text_encoder.get_input_embeddings()
        self.vocab = self.layer.weight.detach()  # (V, E)
        max_len = int(tokenizer.model_max_length)
        ids = tokenizer([""], padding="max_length", max_length=max_len, truncation=True,
                        return_tensors="pt").input_ids.to(device)  # fmt: skip
        self.ids = ids  # (1, max_len)
        self.tokens = max(1, min(s.soft_prompt_tokens, max_len - 2))
        self.tau = s.gumbel_tau
        self.log_coeffs = torch.zeros((n, self.tokens, self.vocab.shape[0]), device=device,
                                      requires_grad=True)  # fmt: skip
        self.opt = torch.optim.Adam([self.log_coeffs], lr=s.lr, weight_decay=0.0)
        self.gen = torch.Generator(device=device).manual_seed(seed + 2)
        with torch.no_grad():
            self.uncond = self.encoder(ids)[0]  # (1, max_len, H): the empty prompt

    def _gumbel(self, logits: torch.Tensor) -> torch.Tensor:
        # torch's gumbel_softmax draws from the global RNG; a local generator keeps runs
        # reproducible whatever else draws random numbers
        u = torch.rand(logits.shape, generator=self.gen, device=logits.device).clamp_(1e-10, 1.0)
        return torch.softmax((logits - torch.log(-torch.log(u))) / self.tau, dim=-1)

    def cond(self, rows: torch.Tensor) -> torch.Tensor:
        """Text-encoder states (M, max_len, H) for soft-prompt rows ``rows`` (M,), one Gumbel
        draw each; differentiable w.r.t. ``log_coeffs``."""
        tok = self._gumbel(self.log_coeffs[rows]) @ self.vocab.to(self.log_coeffs.dtype)
        m, length = len(rows), self.tokens

        def hook(_mod: Any, _inp: Any, out: torch.Tensor) -> torch.Tensor:
            out = out.expand(m, -1, -1).clone()
            out[:, 1 : 1 + length] = tok.to(out.dtype)
            return out

        h = self.layer.register_forward_hook(hook)
        try:
            states: torch.Tensor = self.encoder(self.ids.expand(m, -1))[0]
        finally:
            h.remove()
        return states

    def step(self, grad: torch.Tensor | None) -> None:
        self.opt.zero_grad(set_to_none=True)
        if grad is not None:
            self.log_coeffs.grad = grad
            self.opt.step()


ConditionalDenoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def unet_cond_denoiser(unet: Any) -> ConditionalDenoiser:
    """``denoiser(x_t, t, text_states)`` of a diffusers UNet2DConditionModel (eps)."""

    def f(x: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = unet(
            x.to(unet.dtype), t, encoder_hidden_states=states.to(unet.dtype)
        ).sample
        return out

    return f


@dataclass
class InvMMResult:
    """One target's outcome: ``score`` (per-dimension KL; +inf = not regenerated within the
    budget), the learned q, the similarity of every check and the steps taken."""

    index: int
    score: float
    success: bool
    steps: int
    mu: np.ndarray
    logvar: np.ndarray
    similarities: list[tuple[int, float]] = field(default_factory=list)  # (step, min similarity)
    losses: list[float] = field(default_factory=list)  # x0 loss per step
    weights: list[float] = field(default_factory=list)  # w after each check
    soft_prompt: np.ndarray | None = None  # text models: the learned log-coefficients (L, |V|)


def _timestep_coefs(
    ab: torch.Tensor, n: int, b: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = torch.randint(0, ab.shape[0], (n, b), generator=gen)
    abt = ab[t]
    return t, abt.sqrt().float(), (1 - abt).sqrt().float()


def invert(
    denoiser: Denoiser | ConditionalDenoiser,
    alphas_cumprod: torch.Tensor,
    targets: torch.Tensor,
    similarity: Similarity,
    *,
    settings: InvMMSettings = PRESETS["pixel"],
    seed: int = 0,
    backend: str | None = None,
    model_dtype: torch.dtype = torch.float32,
    soft_prompt: SoftPrompt | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    timings: dict[str, float] | None = None,
) -> list[InvMMResult]:
    """Invert every target (N, *shape) in model space (pixels in [-1, 1], or latents).

    ``similarity(samples, index)`` -> (M,) similarity of each generated sample (model space,
    (M, *shape)) to its target ``index`` (M,) (e.g. SSCD cosine, see :func:`sscd_similarity`).
    With ``soft_prompt`` (text-conditional models) ``denoiser(x_t, t, text_states)`` is
    conditioned on the learned soft prompt, which is optimised jointly, and the success check
    samples with classifier-free guidance at each of ``settings.guidance_scales``.
    ``on_step(StepInfo)`` is called after every step (progress lines). ``timings``, when
    given, accumulates seconds spent in "model" (denoiser forward and backward), "passes"
    (the fused loss and update passes), "check" (success checks) and "total"."""
    settings.validate()
    if targets.ndim < 2 or targets.shape[0] < 1:
        raise ValueError(f"targets must be (N, ...) with N >= 1; got {tuple(targets.shape)}")
    dev = targets.device
    ab = alphas_cumprod.to(dtype=torch.float64).cpu()
    n, shape = int(targets.shape[0]), tuple(int(v) for v in targets.shape[1:])
    b, d = settings.samples, math.prod(shape)
    x0 = targets.float().reshape(n, d).contiguous()
    state = inv.InversionState.create(n, shape, seed=seed, device=dev)
    gen = torch.Generator().manual_seed(seed)
    check_gen = torch.Generator(device=dev).manual_seed(seed + 1)
    weights = AdaptiveWeight(n, settings)
    adam = AdamSettings(lr=settings.lr)
    active = np.arange(n)
    results: dict[int, InvMMResult] = {}
    sims: dict[int, list[tuple[int, float]]] = {i: [] for i in range(n)}
    losses: dict[int, list[float]] = {i: [] for i in range(n)}
    ws: dict[int, list[float]] = {i: [] for i in range(n)}

    t, a, s = _timestep_coefs(ab, n, b, gen)
    a, s = a.to(dev), s.to(dev)
    clock = _Clock(timings, dev)
    xt = inv.sample_xt(state, x0, a, s, dtype=model_dtype, backend=backend)
    # buffers reused across steps (fresh large tensors page-fault on the CPU): g_eps, and the
    # x_t the previous step's model consumed, which receives the x_t after next
    g_buf: torch.Tensor | None = None
    spare: torch.Tensor | None = None
    for step in range(settings.steps):
        xt = xt.detach().requires_grad_(True)
        sp_grad = None
        with torch.enable_grad():
            tf = t.flatten().to(dev)
            if soft_prompt is not None:
                rows = torch.as_tensor(np.repeat(active, b), device=dev)
                eps = denoiser(xt.flatten(0, 1), tf, soft_prompt.cond(rows)).view_as(xt)  # type: ignore[call-arg]
            else:
                eps = denoiser(xt.flatten(0, 1), tf).view_as(xt)  # type: ignore[call-arg]
            clock.lap("model")
            sse, g_eps = inv.x0_loss(xt, eps, x0, a, s, out=g_buf, check=False, backend=backend)
            g_buf = g_eps
            clock.lap("passes")
            wrt = [xt] if soft_prompt is None else [xt, soft_prompt.log_coeffs]
            grads = torch.autograd.grad(eps, wrt, g_eps.to(eps.dtype))
            g_model = grads[0]
            if soft_prompt is not None:
                sp_grad = grads[1]
        if soft_prompt is not None:
            soft_prompt.step(sp_grad)
        clock.lap("model")
        p = (sse.sum(1) / (b * d)).cpu().numpy()
        w_now = torch.as_tensor(weights.w, dtype=torch.float32, device=dev)
        t, a2, s2 = _timestep_coefs(ab, len(active), b, gen)
        a2, s2 = a2.to(dev), s2.to(dev)
        clock.lap("other")
        xt_next = inv.update(state, g_eps, g_model, s, w_now, x0=x0, next_coefs=(a2, s2),
                             adam=adam, out=spare, check=False, backend=backend)  # fmt: skip
        clock.lap("passes")
        assert xt_next is not None
        spare = xt.detach()
        xt, a, s = xt_next, a2, s2
        for k, i in enumerate(active):
            losses[int(i)].append(float(p[k]))
        is_check = weights.record(step, p)
        min_sim = None
        if is_check:
            min_sim = _check(
                state, denoiser, ab, settings, similarity, active, check_gen, soft_prompt
            )
            clock.lap("check")
        if on_step is not None:
            on_step(StepInfo(step, active.copy(), p, weights.w.copy(), min_sim))
        clock.lap("other")
        if min_sim is None:
            continue
        ok = min_sim >= settings.beta
        for k, i in enumerate(active):
            sims[int(i)].append((step, float(min_sim[k])))
            ws[int(i)].append(float(weights.w[k]))
        if not ok.any():
            continue
        kl = state.score().cpu().numpy()
        for kk in np.nonzero(ok)[0]:
            k, j = int(kk), int(active[kk])
            results[j] = InvMMResult(
                j, float(kl[k]), True, step + 1, state.mu[k].cpu().numpy().reshape(shape),
                state.logvar[k].cpu().numpy().reshape(shape), sims[j], losses[j], ws[j],
                _coeffs(soft_prompt, j),
            )  # fmt: skip
        keep = ~ok
        active = active[keep]
        if len(active) == 0:
            break
        kt = torch.as_tensor(keep, device=dev)
        state = state.select(kt)
        weights.select(keep)
        x0, xt, a, s = x0[kt], xt[kt], a[kt], s[kt]
        t = t[torch.as_tensor(keep)]
        g_buf = spare = None  # shapes changed
    for k, i in enumerate(active):
        results[int(i)] = InvMMResult(
            int(i), math.inf, False, settings.steps, state.mu[k].cpu().numpy().reshape(shape),
            state.logvar[k].cpu().numpy().reshape(shape), sims[int(i)], losses[int(i)], ws[int(i)],
            _coeffs(soft_prompt, int(i)),
        )  # fmt: skip
    return [results[i] for i in range(n)]


@dataclass(frozen=True)
class StepInfo:
    """What a progress display needs after one optimisation step."""

    step: int
    active: np.ndarray  # target indices still being inverted
    losses: np.ndarray  # their x0 loss this step
    weights: np.ndarray  # their normality weight w after this step
    similarities: np.ndarray | None  # at check steps: the minimum check similarity


class _Clock:
    """Accumulates wall time per section into ``out`` (synchronizing a GPU at each lap)."""

    def __init__(self, out: dict[str, float] | None, device: torch.device) -> None:
        self.out, self.cuda = out, device.type == "cuda"
        self.t = self.t0 = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.out is None:
            return
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.out[name] = self.out.get(name, 0.0) + now - self.t
        self.out["total"] = self.out.get("total", 0.0) + now - self.t
        self.t = now


def _coeffs(sp: SoftPrompt | None, row: int) -> np.ndarray | None:
    return None if sp is None else sp.log_coeffs[row].detach().cpu().numpy()


def _check(
    state: inv.InversionState,
    denoiser: Denoiser | ConditionalDenoiser,
    ab: torch.Tensor,
    s: InvMMSettings,
    similarity: Similarity,
    active: np.ndarray,
    gen: torch.Generator,
    soft_prompt: SoftPrompt | None = None,
) -> np.ndarray:
    """Minimum similarity over ``check_noises`` DDIM samples from q, per active target (text
    models: the best guidance scale's minimum, so >= beta iff some scale succeeds)."""
    n, k = state.n, s.check_noises
    dev = state.mu.device
    z = torch.randn((n, k, state.d), generator=gen, device=dev)
    noise = (state.mu[:, None] + z * torch.exp(0.5 * state.logvar)[:, None]).reshape(
        n * k, *state.shape
    )
    idx = torch.as_tensor(np.repeat(active, k), device=dev)
    if soft_prompt is None:
        x = ddim_sample(denoiser, noise, ab, s.ddim_steps, clip=s.clip)  # type: ignore[arg-type]
        sim = similarity(x, idx).reshape(n, k).float()
        return np.asarray(sim.min(dim=1).values.cpu().numpy(), dtype=np.float64)
    with torch.no_grad():
        cond = soft_prompt.cond(torch.as_tensor(active, device=dev)).repeat_interleave(k, 0)
    uncond = soft_prompt.uncond.expand(n * k, -1, -1)
    both = torch.cat([uncond, cond])
    per_scale = []
    for scale in s.guidance_scales or (1.0,):

        def cfg(x: torch.Tensor, t: torch.Tensor, g: float = float(scale)) -> torch.Tensor:
            e_u, e_c = denoiser(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)  # type: ignore[call-arg]
            return e_u + g * (e_c - e_u)

        x = ddim_sample(cfg, noise, ab, s.ddim_steps, clip=s.clip, batch=len(noise))
        per_scale.append(similarity(x, idx).reshape(n, k).float().min(dim=1).values)
    best = torch.stack(per_scale, 1).max(dim=1).values
    return np.asarray(best.cpu().numpy(), dtype=np.float64)


def sscd_similarity(
    target_images: torch.Tensor,
    embedder: Any,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Similarity:
    """Cosine similarity of the embedder's descriptors (SSCD by default in memlens) between
    each generated sample and its target. ``target_images`` (N, C, H, W) in [-1, 1];
    ``decode`` maps model-space samples to such images (VAE decode for latent models; none
    for pixel models)."""
    target_emb = torch.from_numpy(embedder.embed(pixels_to_uint8(target_images)))

    def f(samples: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        images = decode(samples) if decode is not None else samples
        e = torch.from_numpy(embedder.embed(pixels_to_uint8(images)))
        return (e * target_emb[index.cpu()]).sum(1)

    return f


def pixels_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(M, C, H, W) in [-1, 1] -> (M, H, W, 3) uint8 (grey images repeated to RGB)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def kl_scores(results: Sequence[InvMMResult]) -> np.ndarray:
    """The scores as an array (+inf where the inversion failed)."""
    return np.array([r.score for r in results], dtype=np.float64)


def with_overrides(base: InvMMSettings, **kw: Any) -> InvMMSettings:
    """``base`` with the given fields replaced (None values ignored)."""
    return replace(base, **{k: v for k, v in kw.items() if v is not None})
