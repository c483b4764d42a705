"""Issue 6 §6 duplication oracle: a tiny text-to-image model trained here, on data where a few
captions always come with one repeated image and the others with images drawn from a shared
pool, scores the duplicated captions higher by first-step guidance magnitude (AUC > 0.9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def test_duplicated_captions_have_larger_guidance_magnitude() -> None:
    from memlens.diffusion import tiny_pipeline
    from memlens.metrics.magnitude import detect_magnitude
    from memlens.metrics.roc import auc

    pipe = tiny_pipeline("sd", seed=0)
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    text_encoder.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    memorized = [f"memorized caption number {i}" for i in range(6)]
    ordinary = [f"an ordinary photo {i} of things" for i in range(24)]
    repeated = torch.randn(len(memorized), 4, 8, 8, generator=g)  # one image per caption
    pool = torch.randn(64, 4, 8, 8, generator=g)  # ordinary captions: any of these

    def encode(prompts: list[str]) -> torch.Tensor:
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids  # fmt: skip
        with torch.no_grad():
            return text_encoder(ids)[0]

    e_mem, e_ord, e_null = encode(memorized), encode(ordinary), encode([""])
    ab = pipe.scheduler.alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    for _ in range(1200):
        bs = 32
        dup = torch.rand(bs, generator=g) < 0.25
        mi = torch.randint(0, len(memorized), (bs,), generator=g)
        oi = torch.randint(0, len(ordinary), (bs,), generator=g)
        x0 = torch.where(dup[:, None, None, None], repeated[mi],
                         pool[torch.randint(0, len(pool), (bs,), generator=g)])  # fmt: skip
        states = torch.where(dup[:, None, None], e_mem[mi], e_ord[oi])
        drop = torch.rand(bs, generator=g) < 0.1  # classifier-free guidance training
        states = torch.where(drop[:, None, None], e_null.expand(bs, -1, -1), states)
        t = torch.randint(0, 1000, (bs,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a, s = ab[t].sqrt()[:, None, None, None], (1 - ab[t]).sqrt()[:, None, None, None]
        loss = ((unet(a * x0 + s * eps, t, encoder_hidden_states=states).sample - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    unet.eval()
    res = detect_magnitude(pipe, memorized + ordinary, steps="first", generations=4)
    m = np.array([r.magnitude for r in res])
    labels = np.array([1] * len(memorized) + [0] * len(ordinary))
    assert auc(labels, m) > 0.9, m
