"""StyleGAN2-style "lite" generator and discriminator (Karras et al. 2020) for 16-256 px.

Kept from StyleGAN2: mapping network with lr multiplier 0.01 and a tracked w average
(truncation), modulated + demodulated 3x3 convolutions, per-layer noise, skip-connection toRGB
outputs, style mixing, a residual discriminator with minibatch standard deviation, equalized
learning rate throughout. Simplified for small models and portability: bilinear up- and
average-pool downsampling instead of FIR filters (no custom CUDA ops), per-channel noise
strength, and a tanh on the summed RGB output (see ``StyleGenerator``).

Label conditioning: the mapping network concatenates a normalised label embedding to z (as in
StyleGAN2-ADA) and the discriminator projects a label embedding onto its final features.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moepipe.models.layers import (
    EqualConv2d,
    EqualLinear,
    MinibatchStd,
    ModulatedConv2d,
    NoiseInjection,
    bias_act,
    check_resolution,
    evaluating,
    module_device,
    normalize_2nd_moment,
    resolve_labels,
    sample_latents,
    upsample2x,
)


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature channels used at a given feature-map side: fewer channels at higher resolution."""
    return max(1, min(channel_base // resolution, channel_max))


class MappingNetwork(nn.Module):
    """z (N, z_dim) [+ labels (N, label_dim)] -> ws (N, num_ws, w_dim), float32.

    ``w_avg`` (w_dim,) is an EMA (beta ``w_avg_beta``) of the w's produced in training mode; it
    is the centre that truncation pulls towards. It is the average over all labels, so with a
    conditional model strong truncation also weakens the attributes.
    """

    def __init__(
        self,
        z_dim: int = 128,
        w_dim: int = 128,
        label_dim: int = 0,
        num_ws: int = 1,
        num_layers: int = 4,
        embed_dim: int | None = None,
        lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.995,
    ) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.label_dim, self.num_ws = z_dim, w_dim, label_dim, num_ws
        self.w_avg_beta = w_avg_beta
        embed_dim = (embed_dim or w_dim) if label_dim else 0
        self.embed = EqualLinear(label_dim, embed_dim) if label_dim else None
        features = [z_dim + embed_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(
            *[
                EqualLinear(f_in, f_out, activation="lrelu", lr_multiplier=lr_multiplier)
                for f_in, f_out in zip(features, features[1:])
            ]
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: torch.Tensor,
        labels: torch.Tensor | None = None,
        truncation_psi: float | torch.Tensor = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool | None = None,
    ) -> torch.Tensor:
        """ws (N, num_ws, w_dim); psi may be a float or an (N,) tensor (one per sample).

        ``update_w_avg`` None means "when training"; pass False for extra mapping calls (style
        mixing) so they do not count twice. Truncation applies to the first
        ``truncation_cutoff`` ws only (all when None), leaving fine detail layers untouched.
        """
        # Normalising z (and the label code) keeps the mapping input on the unit sphere scale
        # whatever z_dim is, so the first layer sees balanced z and label parts.
        x = normalize_2nd_moment(z.float())
        if self.embed is not None:
            labels = resolve_labels(labels, z.shape[0], self.label_dim, z.device)
            x = torch.cat([x, normalize_2nd_moment(self.embed(labels).float())], dim=1)
        w = self.layers(x).float()
        if update_w_avg is None:
            update_w_avg = self.training
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if not (isinstance(truncation_psi, (int, float)) and truncation_psi == 1):
            psi = torch.as_tensor(truncation_psi, dtype=ws.dtype, device=ws.device)
            psi = psi.reshape(-1, 1, 1) if psi.ndim else psi
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            truncated = self.w_avg.lerp(ws[:, :cutoff], psi)
            ws = torch.cat([truncated, ws[:, cutoff:]], dim=1)
        return ws


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + noise + bias + lrelu.

    (N, C_in, H, W), w (N, w_dim) -> (N, C_out, H, W), or 2H x 2W with ``up``.
    """

    def __init__(self, in_channels, out_channels, w_dim, resolution, up=False, fused=False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, up=up, fused=fused)
        self.noise = NoiseInjection(out_channels, resolution)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        return bias_act(self.noise(self.conv(x, w), noise_mode), self.bias, "lrelu")


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation (colour should follow the style's magnitude)."""

    def __init__(self, in_channels, w_dim, fused=False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, 3, 1, w_dim, demodulate=False, fused=fused)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return bias_act(self.conv(x, w), self.bias, None)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator; consumes ws (N, num_conv + 1, w_dim).

    The 4x4 block starts from a learned constant; later blocks upsample in their first conv.
    The last w of a block drives its toRGB and is shared with the next block's first conv
    (StyleGAN2's indexing, giving num_ws = 2 * log2(R) - 2).
    """

    def __init__(self, in_channels, out_channels, w_dim, resolution, fused=False):
        super().__init__()
        self.resolution = resolution
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.conv0 = None
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, True, fused)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, False, fused)
        self.torgb = ToRGB(out_channels, w_dim, fused)
        self.num_conv = 1 if self.conv0 is None else 2

    def forward(self, x, img, ws, noise_mode):
        if self.conv0 is None:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
        x = self.conv1(x, ws[:, self.num_conv - 1], noise_mode)
        rgb = self.torgb(x, ws[:, self.num_conv])
        img = rgb if img is None else upsample2x(img).to(rgb.dtype) + rgb
        return x, img


class StyleGenerator(nn.Module):
    """z (N, z_dim) [+ labels (N, label_dim)] -> images (N, 3, R, R).

    Output range: StyleGAN2 leaves the summed skip outputs unbounded and clamps at export. Here
    ``output_tanh=True`` (default) squashes them with tanh so every consumer of ``forward``
    (losses, augmentation, metrics, export) can rely on [-1, 1] as with DCGAN. With
    ``output_tanh=False`` forward is unbounded (original behaviour) and ``sample`` clamps.
    """

    def __init__(
        self,
        resolution: int = 64,
        z_dim: int = 128,
        w_dim: int = 128,
        label_dim: int = 0,
        channel_base: int = 2048,
        channel_max: int = 256,
        mapping_layers: int = 4,
        mapping_lr_multiplier: float = 0.01,
        output_tanh: bool = True,
        fused_modconv: bool = False,
    ) -> None:
        super().__init__()
        log2_res = check_resolution(resolution)
        self.resolution, self.z_dim, self.label_dim = resolution, z_dim, label_dim
        self.w_dim = w_dim
        self.output_tanh = output_tanh
        self.num_ws = 2 * log2_res - 2
        self.mapping = MappingNetwork(
            z_dim, w_dim, label_dim, self.num_ws, mapping_layers,
            lr_multiplier=mapping_lr_multiplier,
        )
        blocks, in_channels = [], 0
        for res in (2**i for i in range(2, log2_res + 1)):
            out_channels = channels_at(res, channel_base, channel_max)
            blocks.append(SynthesisBlock(in_channels, out_channels, w_dim, res, fused_modconv))
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        if output_tanh:
            # The skip outputs sum to std ~2 at init, deep in tanh's flat tails where gradients
            # vanish; shrinking the initial toRGB weights starts the image at std ~0.5. (With
            # equalized lr, Adam still moves these weights at the usual rate.)
            with torch.no_grad():
                for block in self.blocks:
                    block.torgb.conv.weight.mul_(0.5 / math.sqrt(len(self.blocks)))

    def sample_ws(
        self,
        z: torch.Tensor,
        labels: torch.Tensor | None = None,
        style_mix_prob: float = 0.0,
        truncation_psi: float | torch.Tensor = 1.0,
        truncation_cutoff: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mapping plus style mixing: z (N, z_dim) -> ws (N, num_ws, w_dim).

        With probability ``style_mix_prob`` per sample, a crossover layer c in [1, num_ws) is
        drawn and ws[c:] come from a second z (same labels), which regularises the generator
        against correlations between adjacent styles. Applied whenever style_mix_prob > 0: the
        training loop calls this directly (e.g. to get ws for path-length regularisation).
        """
        ws = self.mapping(z, labels, truncation_psi, truncation_cutoff)
        if style_mix_prob <= 0 or self.num_ws < 2:
            return ws
        n, source = z.shape[0], generator.device if generator is not None else z.device
        z2 = torch.randn(z.shape, generator=generator, device=source).to(z)
        ws2 = self.mapping(z2, labels, truncation_psi, truncation_cutoff, update_w_avg=False)
        cutoff = torch.randint(1, self.num_ws, (n, 1), generator=generator, device=source)
        mixed = torch.rand(n, 1, generator=generator, device=source) < style_mix_prob
        cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, self.num_ws)).to(z.device)
        from_second = torch.arange(self.num_ws, device=z.device)[None, :] >= cutoff
        return torch.where(from_second[:, :, None], ws2, ws)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        """ws (N, num_ws, w_dim) -> images (N, 3, R, R); see the class docstring for the range."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"ws must be (N, {self.num_ws}, {self.w_dim}) (got {tuple(ws.shape)})")
        x = img = None
        w_index = 0
        for block in self.blocks:
            block_ws = ws[:, w_index : w_index + block.num_conv + 1]
            x, img = block(x, img, block_ws, noise_mode)
            w_index += block.num_conv
        return torch.tanh(img) if self.output_tanh else img

    truncation_space = "w"  # psi pulls w toward the tracked average w

    def forward(
        self,
        z: torch.Tensor,
        labels: torch.Tensor | None = None,
        truncation_psi: float | torch.Tensor = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
        return_ws: bool = False,
        style_mix_prob: float = 0.0,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """z (N, z_dim), labels (N, label_dim) or None (= no tags) -> images (N, 3, R, R).

        ``style_mix_prob`` only takes effect in training mode. With ``return_ws`` also returns
        the ws (N, num_ws, w_dim) that were rendered.
        """
        mix = style_mix_prob if self.training else 0.0
        ws = self.sample_ws(z, labels, mix, truncation_psi, truncation_cutoff)
        img = self.synthesis(ws, noise_mode)
        return (img, ws) if return_ws else img

    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        truncation_psi: float | torch.Tensor = 1.0,
        generator: torch.Generator | None = None,
        noise_mode: str = "const",
    ) -> torch.Tensor:
        """n images (n, 3, R, R) in [-1, 1], in eval mode and without autograd.

        psi is a float or an (n,) tensor, one per image.
        Noise defaults to 'const' so that a seeded ``generator`` fully determines the images.
        """
        with evaluating(self):
            device = module_device(self)
            z = sample_latents(n, self.z_dim, device, generator)
            labels = resolve_labels(labels, n, self.label_dim, device)
            img = self(z, labels, truncation_psi, noise_mode=noise_mode)
            return img.float().clamp(-1.0, 1.0)


class DiscriminatorBlock(nn.Module):
    """Residual block, halves the resolution: (N, C_in, H, W) -> (N, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activation="lrelu")
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, activation="lrelu", down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1/sqrt(2) keeps the sum of two ~unit-variance branches at unit variance.
        return (self.skip(x) + self.conv1(self.conv0(x))) * math.sqrt(0.5)


class StyleDiscriminator(nn.Module):
    """images (N, 3, R, R) [+ labels (N, label_dim)] -> logits (N,) float32.

    fromRGB, residual blocks down to 4x4, minibatch stddev, 3x3 conv, FC to features h (N, C4),
    then logit = out(h) + <embed(labels), h> / sqrt(C4) (projection conditioning; a multi-hot
    row projects onto the sum of its tags' embeddings). labels None skips the projection.
    Conditional discriminators also have the auxiliary attribute head of the AC-GAN loss.
    """

    def __init__(
        self,
        resolution: int = 64,
        label_dim: int = 0,
        channel_base: int = 2048,
        channel_max: int = 256,
        mbstd_group: int = 4,
        mbstd_channels: int = 1,
    ) -> None:
        super().__init__()
        log2_res = check_resolution(resolution)
        self.resolution, self.label_dim = resolution, label_dim
        ch = [channels_at(2**i, channel_base, channel_max) for i in range(log2_res, 1, -1)]
        self.from_rgb = EqualConv2d(3, ch[0], 1, activation="lrelu")
        self.blocks = nn.Sequential(*[DiscriminatorBlock(a, b) for a, b in zip(ch, ch[1:])])
        features = ch[-1]
        self.mbstd = MinibatchStd(mbstd_group, mbstd_channels)
        self.conv = EqualConv2d(features + mbstd_channels, features, 3, activation="lrelu")
        self.fc = EqualLinear(features * 16, features, activation="lrelu")
        self.out = EqualLinear(features, 1)
        self.embed = EqualLinear(label_dim, features, bias=False) if label_dim else None
        # AC-GAN head: attribute logits (N, label_dim) read from the same features h.
        self.attribute_head = EqualLinear(features, label_dim) if label_dim else None
        self.projection_gain = 1.0 / math.sqrt(features)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None, with_attributes: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, R, R) in [-1, 1], labels (N, label_dim) or None -> logits (N,).

        ``with_attributes``: also the auxiliary attribute logits (N, label_dim) float32.
        """
        x = self.blocks(self.from_rgb(images))
        x = self.conv(self.mbstd(x))
        h = self.fc(x.flatten(1))  # (N, C4)
        logits = self.out(h).squeeze(1)
        if self.embed is not None and labels is not None:
            labels = resolve_labels(labels, images.shape[0], self.label_dim, images.device)
            logits = logits + (self.embed(labels) * h).sum(dim=1) * self.projection_gain
        if not with_attributes:
            return logits.float()
        if self.attribute_head is None:
            return logits.float(), logits.new_zeros(images.shape[0], 0).float()
        return logits.float(), self.attribute_head(h).float()
