"""Unit tests for moepipe.train.losses: gradient directions, known values, penalties, a 1-D GAN."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from moepipe.train.losses import (
    LOSSES,
    GANLoss,
    get_loss,
    gradient_penalty,
    lazy_r1_penalty,
    r1_penalty,
)

NAMES = sorted(LOSSES)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class LinearD(nn.Module):
    """D(x) = <w, x> + b over flattened images: its input gradient is w everywhere."""

    def __init__(self, weight: torch.Tensor, bias: float = 0.3) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.flatten().clone())
        self.bias = nn.Parameter(torch.tensor(bias))

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return images.flatten(1) @ self.weight + self.bias


def unit_weight(shape=(3, 4, 4)) -> torch.Tensor:
    w = torch.randn(shape)
    return w / w.norm()


def logit_grads(loss: GANLoss, real: list[float], fake: list[float]):
    r = torch.tensor(real, requires_grad=True)
    f = torch.tensor(fake, requires_grad=True)
    loss.d_loss(r, f).backward()
    g = torch.tensor(fake, requires_grad=True)
    loss.g_loss(g).backward()
    return r.grad, f.grad, g.grad


@pytest.mark.parametrize("name", NAMES)
def test_gradient_directions(name):
    # Logits inside every loss's active region (hinge is flat beyond its margins).
    d_real, d_fake, g_fake = logit_grads(get_loss(name), [0.5, -0.2, 0.1], [-0.4, 0.3, 0.0])
    assert (d_real < 0).all(), "D must want real logits higher"
    assert (d_fake > 0).all(), "D must want fake logits lower"
    assert (g_fake < 0).all(), "G must want fake logits higher"


@pytest.mark.parametrize("name", NAMES)
def test_scalar_float32_from_any_shape_and_dtype(name):
    loss = get_loss(name)
    real = torch.randn(6, 1, dtype=torch.bfloat16)
    fake = torch.randn(6, dtype=torch.bfloat16)
    for value in (loss.d_loss(real, fake), loss.g_loss(fake.reshape(6, 1))):
        assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value)
    with pytest.raises(ValueError, match="shape"):
        loss.g_loss(torch.zeros(4, 2))


def test_known_values():
    zeros = torch.zeros(5)
    for name in ("nonsaturating", "minimax"):
        assert get_loss(name).d_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert get_loss("nonsaturating").g_loss(zeros).item() == pytest.approx(math.log(2))
    assert get_loss("minimax").g_loss(zeros).item() == pytest.approx(-math.log(2))
    hinge = get_loss("hinge")
    assert hinge.d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert hinge.d_loss(zeros, zeros).item() == pytest.approx(2.0)
    assert hinge.g_loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)
    wgan = get_loss("wgan-gp", drift=0.001)
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])
    assert wgan.d_loss(real, fake).item() == pytest.approx(-0.5 - 2.0 + 0.001 * 5.0)
    assert wgan.g_loss(fake).item() == pytest.approx(0.5)


def test_logistic_losses_stay_finite_at_extreme_logits():
    big = torch.tensor([1e4, -1e4])
    for name in ("nonsaturating", "minimax"):
        loss = get_loss(name)
        assert torch.isfinite(loss.d_loss(big, big)) and torch.isfinite(loss.g_loss(big))


def test_minimax_saturates_where_nonsaturating_does_not():
    # D rejecting the fakes with growing confidence: sigmoid(fake) -> 0.
    rejected = torch.tensor([0.0, -2.0, -5.0, -10.0, -20.0])
    grads = {}
    for name in ("minimax", "nonsaturating"):
        fake = rejected.clone().requires_grad_(True)
        # Sum, not mean, so each entry is the per-sample gradient.
        (get_loss(name).g_loss(fake) * len(rejected)).backward()
        grads[name] = fake.grad.abs()
    assert grads["minimax"][-1] < 1e-8 and grads["nonsaturating"][-1] > 0.999
    assert (grads["minimax"].diff() < 0).all(), "minimax gradient must shrink as D(G(z)) -> 0"
    assert (grads["nonsaturating"].diff() > 0).all(), "nonsaturating gradient grows towards 1"
    assert (grads["nonsaturating"] >= grads["minimax"]).all()


def test_flags_and_errors():
    assert get_loss("wgan-gp").needs_gradient_penalty
    assert get_loss("wgan-gp", gp_weight=5.0).gp_weight == 5.0
    assert not any(get_loss(n).needs_gradient_penalty for n in NAMES if n != "wgan-gp")
    assert set(NAMES) == {"nonsaturating", "minimax", "wgan-gp", "hinge"}
    with pytest.raises(ValueError, match="unknown GAN loss 'lsgan'"):
        get_loss("lsgan")


def test_gradient_penalty_closed_form_for_linear_d():
    real, fake = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    w = unit_weight()
    assert gradient_penalty(LinearD(w), real, fake, None, weight=10.0).item() == pytest.approx(0.0, abs=1e-9)
    scaled = gradient_penalty(LinearD(3.0 * w), real, fake, None, weight=10.0)
    assert scaled.item() == pytest.approx((3.0 - 1.0) ** 2 * 10.0, rel=1e-5)


def test_gradient_penalty_trains_d_only():
    d = LinearD(3.0 * unit_weight())
    gen_param = torch.ones((), requires_grad=True)
    fake = torch.randn(4, 3, 4, 4) * gen_param  # still attached to a "generator"
    gradient_penalty(d, torch.randn(4, 3, 4, 4), fake, None, weight=1.0).backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||: the penalty pulls ||w|| back towards 1.
    expected = 2 * (3.0 - 1.0) * d.weight.detach() / 3.0
    torch.testing.assert_close(d.weight.grad, expected, rtol=1e-4, atol=1e-6)
    assert gen_param.grad is None


def test_gradient_penalty_passes_labels():
    seen = {}

    def d(images, labels):
        seen["labels"] = labels
        return images.flatten(1).sum(1)

    labels = torch.ones(2, 5)
    gradient_penalty(d, torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2), labels)
    assert seen["labels"] is labels


def test_r1_closed_form_for_linear_d():
    w = 2.0 * unit_weight()
    images = torch.randn(6, 3, 4, 4).requires_grad_(True)
    logits = LinearD(w)(images)
    gamma = 10.0
    r1 = r1_penalty(logits, images, gamma)
    assert r1.item() == pytest.approx(gamma / 2 * 4.0, rel=1e-5)
    lazy = lazy_r1_penalty(logits, images, gamma, interval=16)
    assert lazy.item() == pytest.approx(16 * gamma / 2 * 4.0, rel=1e-5)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(logits, images.detach(), gamma)
    with pytest.raises(ValueError, match="interval"):
        lazy_r1_penalty(logits, images, gamma, interval=0)


class TinyD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x).squeeze(1)


@pytest.mark.parametrize("name", NAMES)
def test_toy_gan_moves_generated_mean_towards_real(name):
    real_mean, steps, batch = 2.0, 200, 64
    shift = nn.Parameter(torch.zeros(()))  # G(z) = z + shift
    d = TinyD()
    # In 1-D a critic can only reverse its slope by passing through slope 0, which a unit-norm
    # penalty of weight 10 forbids: G would then follow whichever way the critic first pointed.
    # A weak penalty keeps the toy about the loss's direction, not about that 1-D artefact.
    loss = get_loss(name, gp_weight=0.1)
    opt_g = torch.optim.Adam([shift], lr=0.02, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(d.parameters(), lr=0.05, betas=(0.5, 0.9))
    for _ in range(steps):
        real = torch.randn(batch, 1) * 0.5 + real_mean
        fake = torch.randn(batch, 1) * 0.5 + shift
        d_loss = loss.d_loss(d(real), d(fake.detach()))
        if loss.needs_gradient_penalty:
            d_loss = d_loss + gradient_penalty(d, real, fake, None, loss.gp_weight)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad()
        loss.g_loss(d(fake)).backward()
        opt_g.step()
    assert abs(shift.item() - real_mean) < 0.5 * real_mean, f"{name}: shift {shift.item():.3f}"


def test_gradient_penalty_takes_bf16_fakes_beside_float32_reals():
    # Under bf16 autocast G's output is bf16 while the real batch is float32.
    d = torch.nn.Linear(12, 1)
    penalty = gradient_penalty(lambda x, _labels: d(x.flatten(1)), torch.randn(4, 3, 2, 2),
                               torch.randn(4, 3, 2, 2).bfloat16())
    assert penalty.dtype == torch.float32 and torch.isfinite(penalty)
