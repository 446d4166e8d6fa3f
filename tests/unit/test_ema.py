"""Unit tests for moepipe.train.ema: averaging arithmetic, buffers, rampup, state round trip,
standing statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from moepipe.train.ema import EMA, standing_statistics


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def perturb(model: nn.Module) -> None:
    """Change every parameter and run a training-mode forward so the BatchNorm stats move."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(8, 3))


def test_one_update_with_beta_half_is_the_midpoint():
    model = tiny_model()
    ema = EMA(model, beta=0.5, rampup=None)
    before = [p.detach().clone() for p in model.parameters()]
    perturb(model)
    assert ema.update(model, step=10, batch_size=4) == 0.5
    for averaged, old, new in zip(ema.module.parameters(), before, model.parameters()):
        torch.testing.assert_close(averaged, (old + new.detach()) / 2, rtol=0, atol=1e-7)


def test_buffers_are_copied_not_averaged():
    model = tiny_model()
    ema = EMA(model, beta=0.9, rampup=None)
    perturb(model)
    ema.update(model, step=1, batch_size=8)
    for averaged, current in zip(ema.module.buffers(), model.buffers()):
        assert torch.equal(averaged, current)
    assert ema.module[1].num_batches_tracked.item() == 1


def test_ema_module_is_frozen_and_in_eval_mode():
    model = tiny_model().train()
    model(torch.randn(8, 3)).sum().backward()  # give the source model grads to (not) copy
    ema = EMA(model)
    assert not ema.module.training and all(not m.training for m in ema.module.modules())
    assert all(not p.requires_grad and p.grad is None for p in ema.module.parameters())
    ema.update(model, step=5, batch_size=8)
    assert not ema.module.training and model.training
    assert all(p.requires_grad for p in model.parameters()), "the source model is untouched"


def test_beta_zero_equals_the_model():
    model = tiny_model()
    ema = EMA(model, beta=0.0)
    perturb(model)
    ema.update(model, step=100, batch_size=8)
    for averaged, current in zip(ema.module.state_dict().values(), model.state_dict().values()):
        assert torch.equal(averaged, current)


def test_start_step_copies_before_averaging():
    model = tiny_model()
    ema = EMA(model, beta=0.99, rampup=None, start_step=3)
    perturb(model)
    assert ema.update(model, step=2, batch_size=8) == 0.0
    assert all(torch.equal(a, p) for a, p in zip(ema.module.parameters(), model.parameters()))
    assert ema.update(model, step=3, batch_size=8) == 0.99


def test_rampup_shortens_the_horizon_early():
    ema = EMA(tiny_model(), beta=0.999, rampup=0.05)
    batch = 32
    assert ema.beta_at(0, batch) == 0.0  # first update copies, as in StyleGAN2-ADA
    half_life = batch * math.log(0.5) / math.log(0.999)  # ~22.2k images
    early = ema.beta_at(100, batch)  # 3200 images seen -> horizon 160 images
    assert early == pytest.approx(0.5 ** (batch / (0.05 * 100 * batch)))
    betas = [ema.beta_at(step, batch) for step in (10, 100, 1000, 10_000, 100_000)]
    assert all(a < b for a, b in zip(betas[:3], betas[1:4])) and max(betas) <= 0.999
    assert ema.beta_at(int(half_life / 0.05 / batch) + 1, batch) == pytest.approx(0.999)


def test_state_round_trip():
    model = tiny_model()
    ema = EMA(model, beta=0.9, rampup=None)
    perturb(model)
    ema.update(model, step=1, batch_size=4)
    restored = EMA(tiny_model(), beta=0.9, rampup=None)
    restored.load_state_dict(ema.state_dict())
    for a, b in zip(restored.module.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)
    assert restored.last_beta == ema.last_beta == 0.9
    perturb(model)
    ema.update(model, step=2, batch_size=4)
    restored.update(model, step=2, batch_size=4)
    assert all(torch.equal(a, b) for a, b in zip(restored.module.parameters(), ema.module.parameters()))


def test_rejects_mismatched_models_and_bad_beta():
    ema = EMA(tiny_model(), beta=0.5, rampup=None)
    with pytest.raises(ValueError, match="parameters"):
        ema.update(nn.Linear(3, 2), step=1, batch_size=1)
    with pytest.raises(ValueError, match="beta"):
        EMA(tiny_model(), beta=1.0)


def test_standing_statistics_measure_the_average_model_itself():
    model = tiny_model()
    perturb(model)
    ema = EMA(model, beta=0.5)
    perturb(model)
    ema.update(model, step=1, batch_size=8)  # weights: a midpoint; BatchNorm stats: the model's
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    batches = [(torch.randn(16, 3),) for _ in range(4)]
    measured = standing_statistics(ema.module, batches)

    hidden = torch.cat([ema.module[0](x) for (x,) in batches])
    norm = measured[1]
    # The plain average of the four batches' statistics (equal batch sizes: the pooled mean).
    torch.testing.assert_close(norm.running_mean, hidden.mean(0))
    variances = torch.stack([ema.module[0](x).var(0, unbiased=True) for (x,) in batches])
    torch.testing.assert_close(norm.running_var, variances.mean(0))
    assert not torch.allclose(norm.running_mean, ema.module[1].running_mean)
    assert int(norm.num_batches_tracked) == 4 and norm.momentum == ema.module[1].momentum
    assert not measured.training
    # The average itself is untouched (a resumed run must go on exactly as before).
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_standing_statistics_leave_a_model_without_batchnorm_alone():
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    calls = []
    assert standing_statistics(model, ((calls.append(1) or torch.randn(2, 3),) for _ in range(3))) is model
    assert calls == []
