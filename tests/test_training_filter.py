"""Training-time mitigation (methods.md §3.5; oracles §3.7 item 6)."""

from __future__ import annotations

import math
import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memlens.metrics.mitigation import (
    DEFAULT_HARD_THRESHOLD,
    filtered_training_loss,
    guidance_magnitudes,
    training_keep_mask,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "training_mitigation.md"


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3))


def _batch(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_oracle_threshold_2_keeps_samples_0_and_2() -> None:
    keep = training_keep_mask([1.0, 2.5, 1.9], threshold=2.0)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [True, False, True]
    assert DEFAULT_HARD_THRESHOLD == 2.0


def test_equal_to_threshold_is_dropped_and_inf_is_dropped() -> None:
    # the reference compares `norm < hard_threshold`: equality is not kept
    assert training_keep_mask(np.array([2.0, 1.999, math.inf]), threshold=2.0).tolist() == [
        False,
        True,
        False,
    ]
    # an infinite threshold keeps every finite magnitude; -inf keeps nothing
    assert training_keep_mask([0.0, 1e30], threshold=math.inf).tolist() == [True, True]
    assert training_keep_mask([0.0], threshold=-math.inf).tolist() == [False]


def test_masked_loss_equals_loss_of_kept_samples_only() -> None:
    model = _tiny_model()
    x, target = _batch()
    pred = model(x)
    out = filtered_training_loss(pred, target, torch.tensor([1.0, 2.5, 1.9]), threshold=2.0)
    assert out.keep.tolist() == [True, False, True]
    assert out.num_kept == 2
    assert out.any_kept
    expected = F.mse_loss(pred[[0, 2]], target[[0, 2]])
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=0)
    # masking does not change the loss of kept samples: same as a batch of only those
    alone = filtered_training_loss(model(x[[0, 2]]), target[[0, 2]], [1.0, 1.9])
    torch.testing.assert_close(out.loss, alone.loss)


def test_gradients_flow_only_from_kept_samples() -> None:
    x, target = _batch()
    model = _tiny_model()
    filtered_training_loss(model(x), target, [1.0, 2.5, 1.9], threshold=2.0).loss.backward()
    filtered_grads = _grads(model)

    reference = _tiny_model()
    F.mse_loss(reference(x[[0, 2]]), target[[0, 2]]).backward()
    torch.testing.assert_close(filtered_grads, _grads(reference))

    # and the dropped sample's input receives no gradient at all
    xin = x.clone().requires_grad_(True)
    filtered_training_loss(_tiny_model()(xin), target, [1.0, 2.5, 1.9]).loss.backward()
    assert xin.grad is not None
    assert torch.all(xin.grad[1] == 0)
    assert torch.all(xin.grad[[0, 2]].abs().sum(dim=1) > 0)


def test_none_kept_gives_zero_loss_with_graph_and_no_step() -> None:
    model = _tiny_model()
    x, target = _batch()
    pred = model(x)
    out = filtered_training_loss(pred, target, [2.0, 3.0, 9.0], threshold=2.0)
    assert not out.any_kept
    assert out.num_kept == 0
    assert out.loss.item() == 0.0
    assert out.loss.requires_grad
    out.loss.backward()  # legal, and every parameter gets an exact zero gradient
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in model.parameters())

    # the documented loop skips the optimizer step: the weights do not move
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    if out.any_kept:
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_none_kept_zero_loss_survives_nonfinite_predictions() -> None:
    pred = torch.tensor([[math.inf, 1.0]], requires_grad=True)
    out = filtered_training_loss(pred, torch.zeros(1, 2), [5.0])
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert pred.grad is not None
    assert torch.all(pred.grad == 0)


def test_callable_magnitudes_get_detached_prediction_without_grad() -> None:
    model = _tiny_model()
    x, target = _batch()
    pred = model(x)
    seen: dict[str, bool] = {}

    def magnitudes(p: torch.Tensor) -> torch.Tensor:
        seen["detached"] = not p.requires_grad
        seen["grad_enabled"] = torch.is_grad_enabled()
        return torch.tensor([0.5, 0.5, 5.0])

    out = filtered_training_loss(pred, target, magnitudes, threshold=1.0)
    assert seen == {"detached": True, "grad_enabled": False}
    assert out.keep.tolist() == [True, True, False]


def test_guidance_magnitudes_match_the_reference_formula() -> None:
    g = torch.Generator().manual_seed(2)
    cond = torch.randn(4, 2, 3, 3, generator=g, requires_grad=True)
    uncond = torch.randn(4, 2, 3, 3, generator=g)
    m = guidance_magnitudes(cond, uncond)
    assert m.shape == (4,)
    assert not m.requires_grad
    expected = (cond.detach() - uncond).reshape(4, -1).norm(p=2, dim=1)
    torch.testing.assert_close(m, expected)
    # linear guidance mock (oracle §3.7 item 2): cond = uncond + a * U with ||U|| = 1 -> a
    u = torch.randn(4, 18, generator=g)
    u = u / u.norm(dim=1, keepdim=True)
    a = torch.tensor([0.5, 1.0, 2.0, 3.0])
    base = torch.randn(4, 18, generator=g)
    torch.testing.assert_close(guidance_magnitudes(base + a[:, None] * u, base), a)


def test_sample_weights_are_masked_with_the_samples() -> None:
    x, target = _batch()
    pred = _tiny_model()(x)
    w = torch.tensor([2.0, 100.0, 0.5])
    out = filtered_training_loss(pred, target, [1.0, 2.5, 1.9], sample_weights=w)
    per = ((pred - target) ** 2).mean(dim=1)
    torch.testing.assert_close(out.loss, (per[[0, 2]] * w[[0, 2]]).mean())


def test_fp16_predictions_reduce_in_float32() -> None:
    x, target = _batch()
    pred = _tiny_model()(x).half()
    out = filtered_training_loss(pred, target.half(), [0.0, 0.0, 0.0])
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, F.mse_loss(pred.float(), target.half().float()))


@pytest.mark.parametrize(
    ("magnitudes", "error", "message"),
    [
        ([1.0, math.nan, 0.5], ValueError, r"magnitudes must not be NaN; NaN at index \[1\]"),
        (torch.tensor([1.0, 2.0]), ValueError, r"magnitudes must have shape \(3,\); got \(2,\)"),
        (np.ones((3, 1)), ValueError, r"magnitudes must have shape \(3,\); got \(3, 1\)"),
        (torch.tensor([True, False, True]), TypeError, "magnitudes must be real numbers"),
        ("abc", TypeError, "magnitudes must be a tensor"),
        (lambda p: [1.0, 2.0], ValueError, r"magnitudes must have shape \(3,\)"),
    ],
)
def test_bad_magnitudes_name_the_argument(
    magnitudes: object, error: type[Exception], message: str
) -> None:
    x, target = _batch()
    with pytest.raises(error, match=message):
        filtered_training_loss(x, target, magnitudes)  # type: ignore[arg-type]


def test_nan_magnitude_in_keep_mask_raises() -> None:
    with pytest.raises(ValueError, match="magnitudes must not be NaN"):
        training_keep_mask(torch.tensor([0.1, float("nan")]))


def test_bad_threshold_and_shapes_name_the_argument() -> None:
    x, target = _batch()
    with pytest.raises(ValueError, match="threshold must not be NaN"):
        filtered_training_loss(x, target, [1.0, 1.0, 1.0], threshold=math.nan)
    with pytest.raises(TypeError, match="threshold must be a real number"):
        filtered_training_loss(x, target, [1.0, 1.0, 1.0], threshold=True)
    with pytest.raises(ValueError, match="target must have the shape of model_pred"):
        filtered_training_loss(x, target[:2], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="sample_weights must have shape"):
        filtered_training_loss(x, target, [1.0, 1.0, 1.0], sample_weights=torch.ones(2))
    with pytest.raises(ValueError, match="cond_pred and uncond_pred must have the same shape"):
        guidance_magnitudes(x, x[:, :2])


def test_documented_training_loop_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    script = tmp_path / "example.py"
    script.write_text(next(b for b in blocks if "class ToyUNet" in b), encoding="utf-8")
    printed: list[str] = []
    namespace = runpy.run_path(str(script), init_globals={"print": printed.append})
    assert len(printed) == 20
    assert any("kept 8/8" not in line for line in printed)  # the example really filters
    out = namespace["out"]
    assert torch.equal(out.keep, out.magnitudes < namespace["threshold"])
