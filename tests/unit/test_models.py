"""Unit tests for moepipe.models: shapes, ranges, conditioning, StyleGAN mechanics, DCGAN parity.

Kept cheap (tiny widths, 32 px) except the layer-for-layer DCGAN check, which must use the
pytorch/examples configuration (64 px, width 64, z_dim 100).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moepipe.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    StyleDiscriminator,
    StyleGenerator,
    build_models,
)
from moepipe.models.layers import MinibatchStd, ModulatedConv2d

LABELS = 5
TINY = {
    "dcgan": {"width": 8, "z_dim": 16, "embed_dim": 8},
    "stylegan": {"z_dim": 16, "w_dim": 16, "channel_base": 256, "channel_max": 16,
                 "mapping_layers": 2},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tensors are tiny: a second OpenMP thread only adds barrier waits, which dominate
    # when the test machine's cores are shared with other jobs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(arch: str, resolution: int = 32, label_dim: int = LABELS, **kwargs):
    return build_models(arch, resolution, label_dim, **{**TINY[arch], **kwargs})


def multi_hot(n: int, label_dim: int = LABELS, seed: int = 1) -> torch.Tensor:
    y = (torch.rand(n, label_dim, generator=torch.Generator().manual_seed(seed)) < 0.5).float()
    y[:, 0] = 1.0  # every row has at least one tag, so label embeddings get gradients
    return y


def calibrate_batchnorm(generator: nn.Module) -> None:
    """Set BatchNorm running stats from one batch.

    An untrained DCGAN's default running stats (0, 1) do not match its tiny N(0, 0.02)
    activations, so in eval mode it would render near-constant images.
    """
    for module in generator.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the stats exactly
    generator.train()
    with torch.no_grad():
        generator(torch.randn(64, generator.z_dim), multi_hot(64))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------
# DCGAN against the pytorch/examples networks
# --------------------------------------------------------------------------------------------


def reference_generator(nz=100, ngf=64, nc=3) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh(),
    )


def reference_discriminator(ndf=64, nc=3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
    )


def layer_signature(module: nn.Module) -> tuple:
    sig = [type(module).__name__]
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                 "num_features", "negative_slope"):
        if hasattr(module, attr):
            sig.append((attr, getattr(module, attr)))
    if getattr(module, "bias", None) is not None and isinstance(module, nn.modules.conv._ConvNd):
        sig.append("bias")
    return tuple(sig)


@pytest.mark.parametrize(
    ("ours", "reference", "inputs"),
    [
        (lambda: DCGANGenerator(64, z_dim=100, width=64, block="transposed"), reference_generator,
         lambda: torch.randn(4, 100, 1, 1)),
        (lambda: DCGANDiscriminator(64, width=64), reference_discriminator,
         lambda: torch.rand(4, 3, 64, 64) * 2 - 1),
    ],
    ids=["generator", "discriminator"],
)
def test_dcgan_matches_pytorch_example_layer_for_layer(ours, reference, inputs):
    ours, reference = ours(), reference()
    assert [layer_signature(m) for m in ours.main] == [layer_signature(m) for m in reference]
    assert [p.shape for p in ours.parameters()] == [p.shape for p in reference.parameters()]
    assert n_params(ours) == n_params(reference)
    assert not any(isinstance(m, nn.Sigmoid) for m in ours.modules())

    ours.load_state_dict({f"main.{k}": v for k, v in reference.state_dict().items()})
    for train in (True, False):
        ours.train(train), reference.train(train)
        x = inputs()
        with torch.no_grad():
            expected = reference(x.clone())
            got = ours(x.clone().flatten(1) if x.ndim == 4 and x.shape[2] == 1 else x.clone())
        assert torch.allclose(got, expected.reshape(got.shape), atol=1e-6)


def test_dcgan_init_follows_the_example():
    generator, discriminator = DCGANGenerator(64, block="transposed"), DCGANDiscriminator(64)
    convs = [m for m in [*generator.modules(), *discriminator.modules()]
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.mean().item()) < 1e-3 and abs(weights.std().item() - 0.02) < 1e-3
    bn = torch.cat([m.weight for m in generator.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(bn.mean().item() - 1.0) < 5e-3 and abs(bn.std().item() - 0.02) < 5e-3


@pytest.mark.parametrize(("resolution", "strided"), [(32, 3), (64, 4), (128, 5)])
def test_dcgan_stage_count_follows_resolution(resolution, strided):
    generator, discriminator = tiny("dcgan", resolution, label_dim=0, block="transposed")
    transposed = [m for m in generator.main if isinstance(m, nn.ConvTranspose2d)]
    assert sum(m.stride == (2, 2) for m in transposed) == strided
    assert transposed[-2].out_channels == TINY["dcgan"]["width"]
    upconv, _ = tiny("dcgan", resolution, label_dim=0)
    assert len(upconv.blocks) == strided  # one 2x upsampling per doubling from 4x4
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in upconv.modules())
    assert upconv.blocks[-1].conv.out_channels == TINY["dcgan"]["width"]
    convs = [m for m in discriminator.main if isinstance(m, nn.Conv2d)]
    assert sum(m.stride == (2, 2) for m in convs) == strided


# --------------------------------------------------------------------------------------------
# Every architecture
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["dcgan", "stylegan"])
@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_shapes_and_output_range(arch, resolution):
    generator, discriminator = tiny(arch, resolution)
    assert (generator.resolution, generator.label_dim) == (resolution, LABELS)
    z, y = torch.randn(3, generator.z_dim), multi_hot(3)
    # 5x z: the [-1, 1] promise must hold for atypical latents, not just typical ones.
    images = generator(z * 5, y)
    assert images.shape == (3, 3, resolution, resolution)
    assert images.min() >= -1.0 and images.max() <= 1.0
    logits = discriminator(images, y)
    assert logits.shape == (3,) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ["dcgan", "stylegan"])
def test_conditioning_changes_generator_and_discriminator(arch):
    generator, discriminator = tiny(arch)
    calibrate_batchnorm(generator)
    generator.eval(), discriminator.eval()
    z = torch.randn(4, generator.z_dim)
    y_a, y_b = multi_hot(4, seed=1), multi_hot(4, seed=2)
    y_b[:, 1] = 1 - y_a[:, 1]  # guarantee every row differs in at least one tag
    kwargs = {"noise_mode": "const"} if arch == "stylegan" else {}
    with torch.no_grad():
        same = generator(z, y_a, **kwargs)
        assert torch.equal(same, generator(z, y_a, **kwargs))
        changed = generator(z, y_b, **kwargs)
        assert (same - changed).abs().flatten(1).amax(1).min() > 1e-2
        images = torch.rand(4, 3, 32, 32) * 2 - 1
        assert (discriminator(images, y_a) - discriminator(images, y_b)).abs().min() > 1e-6


@pytest.mark.parametrize("arch", ["dcgan", "stylegan"])
def test_unconditional_models_have_no_label_parameters(arch):
    generator, discriminator = tiny(arch, label_dim=0)
    conditional_g, conditional_d = tiny(arch)
    for plain, conditional in ((generator, conditional_g), (discriminator, conditional_d)):
        assert not [name for name, _ in plain.named_parameters() if "embed" in name]
        assert [name for name, _ in conditional.named_parameters() if "embed" in name]
        assert n_params(plain) < n_params(conditional)
    z = torch.randn(2, generator.z_dim)
    images = generator(z, torch.zeros(2, 0))
    assert discriminator(images).shape == (2,)
    with pytest.raises(ValueError, match="labels must have shape"):
        conditional_g(z, torch.zeros(2, LABELS + 1))


@pytest.mark.parametrize("arch", ["dcgan", "stylegan"])
def test_gradients_reach_every_parameter(arch):
    generator, discriminator = tiny(arch)
    z, y = torch.randn(4, generator.z_dim), multi_hot(4)
    kwargs = {"style_mix_prob": 0.9} if arch == "stylegan" else {}
    fake = generator(z, y, **kwargs)
    logits, attributes = discriminator(fake, y, with_attributes=True)
    loss = logits.mean() + attributes.mean() + discriminator(torch.rand_like(fake), y).mean()
    loss.backward()
    for name, param in [*generator.named_parameters(), *discriminator.named_parameters()]:
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", ["dcgan", "stylegan"])
def test_channels_last_matches_contiguous(arch):
    generator, discriminator = tiny(arch)
    generator.eval(), discriminator.eval()
    z, y = torch.randn(4, generator.z_dim), multi_hot(4)
    kwargs = {"noise_mode": "const"} if arch == "stylegan" else {}
    with torch.no_grad():
        images = generator(z, y, **kwargs)
        logits = discriminator(images, y)
        assert torch.allclose(
            discriminator(images.contiguous(memory_format=torch.channels_last), y), logits,
            atol=1e-5)
        generator.to(memory_format=torch.channels_last)
        discriminator.to(memory_format=torch.channels_last)
        assert torch.allclose(generator(z, y, **kwargs), images, atol=1e-5)
        channels_last = images.contiguous(memory_format=torch.channels_last)
        assert torch.allclose(discriminator(channels_last, y), logits, atol=1e-5)


@pytest.mark.parametrize("arch", ["dcgan", "stylegan"])
def test_bfloat16_autocast_runs(arch):
    generator, discriminator = tiny(arch)
    z, y = torch.randn(4, generator.z_dim), multi_hot(4)
    kwargs = {"noise_mode": "const"} if arch == "stylegan" else {}
    with torch.no_grad():
        reference = generator(z, y, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = generator(z, y, **kwargs)
        logits = discriminator(images, y)
    assert torch.isfinite(images).all() and logits.dtype == torch.float32
    assert (images.float() - reference).abs().max() < 0.05  # bf16 rounding, not a different net
    logits.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in generator.parameters())


# --------------------------------------------------------------------------------------------
# Factory and sampling
# --------------------------------------------------------------------------------------------


def test_build_models_routes_options_and_rejects_unknown_ones():
    generator, discriminator = build_models("dcgan", 32, 3, width=8, d_width=4, z_dim=12)
    assert (generator.width, discriminator.width, generator.z_dim) == (8, 4, 12)
    generator, discriminator = build_models("stylegan", 32, 0, channel_base=128, channel_max=8,
                                            g_channel_max=4, mbstd_group=2)
    assert isinstance(generator, StyleGenerator) and isinstance(discriminator, StyleDiscriminator)
    assert generator.blocks[0].const.shape[0] == 4 and discriminator.fc.out_features == 8
    assert discriminator.mbstd.group_size == 2
    with pytest.raises(TypeError, match="widht"):
        build_models("dcgan", 32, 0, widht=8)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_models("biggan", 32, 0)
    with pytest.raises(ValueError, match=r"resolution must be a power of two from 16 to 256 px \(got 48\)"):
        build_models("dcgan", 48, 0)


@pytest.mark.parametrize("arch", ["dcgan", "stylegan"])
@pytest.mark.parametrize("resolution", [8, 48, 512])
def test_networks_follow_the_config_rule_for_resolution(arch, resolution):
    with pytest.raises(ValueError) as caught:
        build_models(arch, resolution, 0)
    assert str(caught.value) == f"resolution must be a power of two from 16 to 256 px (got {resolution})"
    generator, _ = tiny(arch, 16, label_dim=0)  # the smallest supported side builds
    assert generator.resolution == 16


@pytest.mark.parametrize("arch", ["dcgan", "stylegan"])
def test_sample_is_seeded_in_range_and_keeps_training_mode(arch):
    generator, _ = tiny(arch)
    calibrate_batchnorm(generator)
    generator.train()
    first = generator.sample(3, multi_hot(3), generator=torch.Generator().manual_seed(7))
    again = generator.sample(3, multi_hot(3), generator=torch.Generator().manual_seed(7))
    assert first.shape == (3, 3, 32, 32) and not first.requires_grad
    assert torch.equal(first, again)
    assert first.min() >= -1 and first.max() <= 1
    assert generator.training
    unlabeled = generator.sample(2, truncation_psi=0.0)  # labels None = no tags
    assert torch.allclose(unlabeled[0], unlabeled[1], atol=1e-6)
    seed = torch.Generator().manual_seed(3)
    per_image = generator.sample(3, truncation_psi=torch.tensor([0.0, 1.0, 0.0]), generator=seed)
    assert torch.allclose(per_image[0], per_image[2], atol=1e-6)
    assert not torch.allclose(per_image[0], per_image[1], atol=1e-3)


@pytest.mark.parametrize("arch", ["dcgan", "stylegan"])
def test_double_backward_for_r1_and_path_length_penalties(arch):
    generator, discriminator = tiny(arch)
    y = multi_hot(4)
    real = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(real, y).sum(), real, create_graph=True)
    grad.square().sum().backward()  # R1
    # Biases of the last layer do not affect the input gradient, so some grads stay None.
    grads = [p.grad for p in discriminator.parameters() if p.grad is not None]
    assert len(grads) > len(list(discriminator.parameters())) // 2
    assert all(torch.isfinite(g).all() for g in grads)
    if arch == "stylegan":
        ws = generator.sample_ws(torch.randn(4, 16), y).detach().requires_grad_(True)
        images = generator.synthesis(ws)
        (grad,) = torch.autograd.grad((images * torch.randn_like(images)).sum(), ws,
                                      create_graph=True)
        grad.square().sum().backward()  # path length
        assert torch.isfinite(generator.blocks[-1].conv1.conv.weight.grad).all()


# --------------------------------------------------------------------------------------------
# StyleGAN mechanics
# --------------------------------------------------------------------------------------------


def test_w_avg_tracks_in_training_mode_only():
    generator, _ = tiny("stylegan")
    z, y = torch.randn(8, 16), multi_hot(8)
    start = generator.mapping.w_avg.clone()
    generator.eval()
    generator(z, y)
    assert torch.equal(generator.mapping.w_avg, start)
    generator.train()
    _, ws = generator(z, y, return_ws=True)
    assert not torch.equal(generator.mapping.w_avg, start)
    expected = ws[:, 0].detach().mean(0) * (1 - 0.995) + start * 0.995
    assert torch.allclose(generator.mapping.w_avg, expected, atol=1e-6)


def test_truncation_to_zero_gives_one_image_and_respects_cutoff():
    generator, _ = tiny("stylegan")
    generator.train()
    for _ in range(3):
        generator(torch.randn(8, 16))  # give w_avg a non-trivial value
    generator.eval()
    z, y = torch.randn(4, 16), multi_hot(4)
    y[:] = y[0]
    images = generator(z, y, truncation_psi=0.0, noise_mode="const")
    assert torch.allclose(images, images[:1].expand_as(images), atol=1e-6)
    assert not torch.allclose(generator(z, y, noise_mode="const")[0],
                              generator(z, y, noise_mode="const")[1])
    _, ws = generator(z, y, truncation_psi=0.0, truncation_cutoff=2, return_ws=True)
    assert torch.allclose(ws[:, :2], generator.mapping.w_avg.expand(4, 2, -1))
    assert not torch.allclose(ws[0, 2:], ws[1, 2:])


def test_style_mixing_uses_two_ws_with_a_crossover():
    generator, _ = tiny("stylegan")
    num_ws = generator.num_ws
    z = torch.randn(16, 16)
    ws = generator.sample_ws(z, multi_hot(16, seed=3), style_mix_prob=1.0)
    assert ws.shape == (16, num_ws, 16)
    for sample in ws:
        distinct = torch.unique(sample, dim=0)
        assert len(distinct) == 2
        crossover = next(i for i in range(num_ws) if not torch.equal(sample[i], sample[0]))
        assert 1 <= crossover < num_ws
        assert all(torch.equal(sample[i], sample[crossover]) for i in range(crossover, num_ws))
    unmixed = generator.sample_ws(z, style_mix_prob=0.0)
    assert torch.equal(unmixed, unmixed[:, :1].expand_as(unmixed))
    generator.eval()  # forward mixes only while training
    _, ws = generator(z, style_mix_prob=1.0, return_ws=True)
    assert torch.equal(ws, ws[:, :1].expand_as(ws))


def test_noise_modes():
    generator, _ = tiny("stylegan")
    for block in generator.blocks:  # noise starts at zero strength; make it visible
        for layer in (block.conv0, block.conv1):
            if layer is not None:
                nn.init.constant_(layer.noise.strength, 0.5)
    generator.eval()
    ws = generator.sample_ws(torch.randn(2, 16))
    assert torch.equal(generator.synthesis(ws, "const"), generator.synthesis(ws, "const"))
    assert not torch.equal(generator.synthesis(ws, "random"), generator.synthesis(ws, "random"))
    assert not torch.equal(generator.synthesis(ws, "none"), generator.synthesis(ws, "const"))
    with pytest.raises(ValueError, match="noise_mode"):
        generator.synthesis(ws, "sometimes")


def test_demodulation_keeps_unit_variance_whatever_the_style_scale():
    conv = ModulatedConv2d(64, 64, 3, w_dim=32)
    x = torch.randn(8, 64, 16, 16)
    w = torch.randn(8, 32)
    plain = ModulatedConv2d(64, 64, 3, w_dim=32, demodulate=False)
    plain.load_state_dict(conv.state_dict())
    raw_stds = []
    for scale in (0.1, 1.0, 10.0):
        with torch.no_grad():
            conv.affine.bias.fill_(scale), plain.affine.bias.fill_(scale)
            assert abs(conv(x, w * scale).std().item() - 1.0) < 0.1
            raw_stds.append(plain(x, w * scale).std().item())
    assert raw_stds[2] > 10 * raw_stds[0]  # without demodulation the scale would leak through


def test_fused_modulated_conv_equals_the_batched_form():
    for kwargs in ({"demodulate": True, "up": True}, {"demodulate": False}):
        batched = ModulatedConv2d(6, 5, 3, w_dim=4, **kwargs)
        fused = ModulatedConv2d(6, 5, 3, w_dim=4, fused=True, **kwargs)
        fused.load_state_dict(batched.state_dict())
        x, w = torch.randn(3, 6, 8, 8), torch.randn(3, 4)
        assert torch.allclose(batched(x, w), fused(x, w), atol=1e-5)


def test_minibatch_std_handles_batches_not_divisible_by_the_group():
    layer = MinibatchStd(group_size=4)
    x = torch.randn(6, 8, 4, 4)
    y = layer(x)
    assert y.shape == (6, 9, 4, 4)
    # Group size 3 (largest divisor of 6 not above 4): samples 0, 2, 4 share a statistic.
    stat = y[:, -1, 0, 0]
    assert torch.allclose(stat[0::2], stat[0].expand(3)) and stat[0] != stat[1]
    expected = (x[0::2].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    assert torch.allclose(stat[0], expected)
    assert torch.equal(y[:, :8], x)
    assert layer(torch.randn(1, 8, 4, 4)).shape == (1, 9, 4, 4)


@pytest.mark.parametrize("arch", ["dcgan", "stylegan"])
def test_every_generator_answers_the_same_call_signature(arch):
    options = {"width": 8} if arch == "dcgan" else {"channel_base": 256, "channel_max": 32}
    G, _ = build_models(arch, 16, 3, **options)
    G.eval()
    z, labels = torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(0)), torch.eye(3)[[0, 1, 2, 0]]
    with torch.no_grad():
        full = G(z, labels, truncation_psi=1.0, noise_mode="const")
        flat = G(z, labels, truncation_psi=torch.zeros(4), noise_mode="const")
        half = G(z, labels, truncation_psi=torch.tensor([1.0, 1.0, 0.0, 0.0]), noise_mode="const")
    assert full.shape == (4, 3, 16, 16) and G.truncation_space in ("z", "w")
    assert torch.allclose(flat[0], flat[3], atol=1e-5)  # psi 0: one image per label set, whatever z
    assert not torch.allclose(full[0], full[3], atol=1e-3)
    assert torch.allclose(half[:2], full[:2], atol=1e-5) and torch.allclose(half[2:], flat[2:], atol=1e-5)


def test_dcgan_minibatch_std_makes_the_logit_depend_on_the_batch_and_d_width_is_its_own():
    _, plain = build_models("dcgan", 16, 0, width=8)
    _, mbstd = build_models("dcgan", 16, 0, width=8, d_width=12, minibatch_std=True)
    assert mbstd.width == 12 and mbstd.main[-1].in_channels == 12 * 2 + 1
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    other = torch.cat([x[:4], torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))])
    for D, depends in ((plain, False), (mbstd, True)):
        D.eval()
        with torch.no_grad():
            same = torch.allclose(D(x)[:4], D(other)[:4], atol=1e-6)
        assert same is not depends
