"""Unit tests for moepipe.train.augment: DiffAugment transforms and the ADA p controller."""

from __future__ import annotations

import json

import pytest
import torch

from moepipe.train.augment import (
    BRIGHTNESS_SHIFT,
    DEFAULT_POLICY,
    AdaptiveAugment,
    cutout,
    cutout_size,
    diff_augment,
    parse_policy,
    random_cutout,
    random_translation,
    translate,
)

POLICIES = ["color", "translation", "cutout", DEFAULT_POLICY]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def images(n: int = 4, side: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, side, side) * 2 - 1


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_shape_dtype_format_and_gradient(policy, dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = images().to(dtype).contiguous(memory_format=fmt).requires_grad_(True)
    for p in (1.0, 0.5):
        y = diff_augment(x, policy, p)
        assert y.shape == x.shape and y.dtype == dtype
        assert y.is_contiguous(memory_format=fmt)
    (grad,) = torch.autograd.grad(diff_augment(x, policy, 1.0).float().square().sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_bf16_autocast_keeps_dtypes(policy):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert diff_augment(images().bfloat16(), policy).dtype == torch.bfloat16
        assert diff_augment(images(), policy).dtype == torch.float32


@pytest.mark.parametrize("policy", POLICIES)
def test_changes_at_p1_identity_at_p0(policy):
    x = images(8)
    assert not torch.equal(diff_augment(x, policy, 1.0), x)
    state = torch.get_rng_state()
    assert diff_augment(x, policy, 0.0) is x
    assert torch.equal(torch.get_rng_state(), state), "p=0 must not consume random draws"


def test_same_seed_same_output():
    x = images(8)
    torch.manual_seed(123)
    first = diff_augment(x, DEFAULT_POLICY, 0.7)
    torch.manual_seed(123)
    again = diff_augment(x, DEFAULT_POLICY, 0.7)
    torch.manual_seed(124)
    other = diff_augment(x, DEFAULT_POLICY, 0.7)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_probability_gates_each_sample():
    x = torch.ones(400, 3, 8, 8)
    cut = (diff_augment(x, "cutout", 0.5) == 0).flatten(1).any(dim=1).float().mean().item()
    assert 0.4 < cut < 0.6  # binomial(400, 0.5): 4 standard deviations


def test_brightness_range_in_minus_one_one_units():
    y = diff_augment(torch.zeros(2000, 3, 2, 2), "color", 1.0)
    # Saturation and contrast leave a flat image alone, so only the brightness shift remains.
    per_sample = y.flatten(1)
    assert torch.equal(per_sample.min(dim=1).values, per_sample.max(dim=1).values)
    shifts = per_sample[:, 0]
    assert shifts.min() >= -BRIGHTNESS_SHIFT and shifts.max() < BRIGHTNESS_SHIFT
    assert shifts.max() - shifts.min() > 0.95 * 2 * BRIGHTNESS_SHIFT


def test_saturation_and_contrast_keep_means():
    x = images(64)
    torch.manual_seed(5)
    y = diff_augment(x, "color", 1.0)
    torch.manual_seed(5)
    shift = torch.rand(64, 1, 1, 1) - 0.5  # the brightness draw comes first
    # Contrast keeps the per-image mean, saturation the per-pixel channel mean: so the image
    # mean moves by exactly the brightness shift.
    torch.testing.assert_close(y.mean(dim=(1, 2, 3)), (x + shift).mean(dim=(1, 2, 3)), atol=1e-5, rtol=0)


def test_translate_moves_content_by_the_shift():
    x = torch.zeros(2, 3, 8, 8)
    x[:, :, 5, 1] = 1.0
    y = translate(x, torch.tensor([2, -5]), torch.tensor([-1, 3]))
    assert y[0, :, 7, 0].eq(1).all() and y[0].sum() == 3
    assert y[1, :, 0, 4].eq(1).all() and y[1].sum() == 3
    # Content pushed past the edge is lost, never wrapped around.
    gone = translate(x, torch.tensor([3, 0]), torch.tensor([0, -2]))
    assert gone.sum() == 0


def test_translate_fills_with_mid_grey_and_routes_gradients():
    x = (-torch.ones(1, 3, 6, 6)).requires_grad_(True)
    y = translate(x, torch.tensor([0]), torch.tensor([2]))
    assert y[0, :, :, :2].eq(0).all() and y[0, :, :, 2:].eq(-1).all()
    (grad,) = torch.autograd.grad(y.sum(), x)
    # Each source pixel that is still visible gets gradient 1; the two right columns fell off.
    assert grad[0, :, :, :4].eq(1).all() and grad[0, :, :, 4:].eq(0).all()


def test_random_translation_range_is_an_eighth_of_the_side():
    n, side = 300, 16
    x = torch.zeros(n, 1, side, side)
    x[:, :, 8, 8] = 1.0
    y = random_translation(x)
    flat = y.flatten(1).argmax(dim=1)
    dy, dx = flat // side - 8, flat % side - 8
    assert y.flatten(1).sum(dim=1).eq(1).all(), "the marked pixel stays inside at this shift range"
    for d in (dy, dx):
        assert set(d.tolist()) == {-2, -1, 0, 1, 2}  # round(16 / 8) = 2


def test_cutout_zeroes_a_square_of_the_expected_size():
    assert cutout_size(16, 16) == (8, 8) and cutout_size(15, 9) == (8, 5)
    x = -torch.ones(2, 3, 16, 16)
    y = cutout(x, torch.tensor([4, -3]), torch.tensor([5, 12]), (8, 8))
    expected = torch.zeros(2, 16, 16, dtype=torch.bool)
    expected[0, 4:12, 5:13] = True
    expected[1, 0:5, 12:16] = True  # clipped at the top and right edges
    for c in range(3):
        assert torch.equal(y[:, c] == 0, expected)
    assert y[~expected[:, None].expand_as(y)].eq(-1).all()


def test_random_cutout_sizes():
    n, side = 300, 16
    y = random_cutout(torch.ones(n, 3, side, side))
    cut = y == 0
    assert torch.equal(cut[:, 0], cut[:, 1]) and torch.equal(cut[:, 0], cut[:, 2])
    area = cut[:, 0].flatten(1).sum(dim=1)
    rows, cols = cut[:, 0].any(dim=2).sum(dim=1), cut[:, 0].any(dim=1).sum(dim=1)
    assert torch.equal(area, rows * cols), "the cut region is one rectangle"
    assert area.min() > 0 and area.max() == 64
    # Both axes fully inside for 9 of 17 centre positions each: about 28% full squares.
    assert 0.18 < (area == 64).float().mean() < 0.38


def test_parse_policy():
    assert parse_policy(" color , cutout ") == ("color", "cutout")
    assert parse_policy("") == () and parse_policy("none") == ()
    x = images()
    assert torch.equal(diff_augment(x, "none"), x)
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        parse_policy("color,flip")
    with pytest.raises(ValueError, match="probability"):
        diff_augment(x, "color", 1.5)


def feed(ada: AdaptiveAugment, logits: torch.Tensor, times: int) -> list[float]:
    return [ada.update(logits) for _ in range(times)]


def test_ada_raises_p_when_d_overfits_at_the_expected_rate():
    ada = AdaptiveAugment(target=0.6, speed_kimg=500, interval=4)
    batch = torch.full((8,), 3.0)
    ps = feed(ada, batch, 8)
    step = 8 * 4 / (500 * 1000)
    assert ps[:3] == [0.0, 0.0, 0.0] and ada.rt == 1.0
    assert ps[3] == pytest.approx(step) and ps[7] == pytest.approx(2 * step)


def test_ada_lowers_p_when_d_does_not_overfit():
    ada = AdaptiveAugment(target=0.6, speed_kimg=500, interval=4, initial_p=0.5)
    ps = feed(ada, -torch.ones(8, 1), 4)  # (N, 1) logits are accepted too
    assert ada.rt == -1.0 and ps[-1] == pytest.approx(0.5 - 8 * 4 / 500_000)
    ada = AdaptiveAugment(target=0.5, interval=1, initial_p=0.3)
    ada.update(torch.tensor([1.0, 2.0, 3.0, -1.0]))  # r_t = 0.5 = target: no move
    assert ada.rt == 0.5 and ada.p == 0.3


def test_ada_speed_and_clamping():
    # speed_kimg=0.1: 100 images take p from 0 to 1; batches of 10, adjusting every step.
    ada = AdaptiveAugment(speed_kimg=0.1, interval=1, max_p=0.75)
    ps = feed(ada, torch.ones(10), 12)
    assert ps[4] == pytest.approx(0.5) and ps[-1] == 0.75
    ada = AdaptiveAugment(speed_kimg=0.1, interval=1)
    assert feed(ada, -torch.ones(10), 3)[-1] == 0.0


def test_fixed_mode_keeps_p_and_still_measures_rt():
    ada = AdaptiveAugment(interval=2, initial_p=0.25, adaptive=False)
    feed(ada, torch.ones(4), 2)
    assert ada.p == 0.25 and ada.rt == 1.0
    x = images()
    torch.manual_seed(9)
    a = ada.augment(x, "translation")
    torch.manual_seed(9)
    assert torch.equal(a, diff_augment(x, "translation", 0.25))


def test_ada_state_round_trip_mid_interval():
    logits = [torch.randn(8) + 1.0 for _ in range(10)]
    ada = AdaptiveAugment(speed_kimg=1, interval=4)
    for t in logits[:6]:
        ada.update(t)
    state = json.loads(json.dumps(ada.state_dict()))  # plain values only
    resumed = AdaptiveAugment(speed_kimg=1, interval=4)
    resumed.load_state_dict(state)
    for t in logits[6:]:
        assert resumed.update(t) == ada.update(t)
    assert resumed.state_dict() == ada.state_dict() and ada.p > 0


def test_ada_rejects_bad_settings():
    with pytest.raises(ValueError):
        AdaptiveAugment(initial_p=0.9, max_p=0.5)
    with pytest.raises(ValueError):
        AdaptiveAugment(interval=0)
