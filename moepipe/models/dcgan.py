"""DCGAN (Radford et al. 2015) with attribute conditioning in every layer and an auxiliary classifier.

Two generator bodies, chosen by ``block``:

- ``"upconv"`` (default): each stage is nearest-neighbour upsampling then a 3x3 convolution
  (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts"): transposed convolutions with
  a 4x4 kernel and stride 2 overlap unevenly and leave a checkerboard on flat areas such as skin
  and hair, which is most of a chibi avatar. Every BatchNorm is conditional (BigGAN): its gain
  and bias are linear functions of the shared code ``[label embedding, z]``, so the requested
  hairstyle or expression reaches the layers that draw it instead of only the 4x4 input.
- ``"transposed"``: the pytorch/examples network layer for layer (at resolution 64, width 64,
  z_dim 100 and label_dim 0 the example's checkpoints load unchanged), with labels embedded and
  concatenated to z at the input only. Generator files written before the upconv body (format
  ``moepipe-generator/1``) are rebuilt with it.

The label embedding has one table per attribute group (``label_groups``, the sizes of the
groups in vocabulary order), concatenated: a hairstyle and an eye colour live in separate
dimensions of the code.

The discriminator returns logits; conditional discriminators add the projection term (Miyato &
Koyama 2018) and an auxiliary classifier head (AC-GAN, Odena et al. 2017) that reads the
attribute logits (N, label_dim) of an image from the same features.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from moepipe.models.layers import (
    LabelEmbedding,
    MinibatchStd,
    check_resolution,
    evaluating,
    module_device,
    resolve_labels,
    sample_latents,
)

BLOCKS = ("upconv", "transposed")


def dcgan_init(module: nn.Module) -> None:
    """The example's ``weights_init``: conv N(0, 0.02), BatchNorm weight N(1, 0.02), biases 0.

    Use with ``model.apply(dcgan_init)``. Linear label embeddings are initialised by their owners.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _stage_widths(resolution: int, width: int) -> list[int]:
    """Channels of the hidden 4x4, 8x8, ... feature maps, widest first (64 px: 8w, 4w, 2w, w)."""
    stages = check_resolution(resolution) - 2
    return [width * 2 ** (stages - 1 - i) for i in range(stages)]


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine; gain 1 + a(code) and bias b(code) per sample instead.

    x (N, C, H, W), code (N, D) -> (N, C, H, W). a and b start at zero, so an untrained layer is
    a plain BatchNorm.
    """

    def __init__(self, channels: int, code_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.affine = nn.Linear(code_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        gain, bias = self.affine(code).to(x.dtype).chunk(2, dim=1)
        return self.norm(x) * (1.0 + gain[:, :, None, None]) + bias[:, :, None, None]


class UpBlock(nn.Module):
    """(N, C_in, H, W), code -> (N, C_out, 2H, 2W): nearest upsample, 3x3 conv, CBN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, code_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.norm = ConditionalBatchNorm2d(out_channels, code_dim)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return F.relu(self.norm(x, code))


class DCGANGenerator(nn.Module):
    """z (N, z_dim) [+ labels (N, label_dim) multi-hot] -> images (N, 3, R, R) in [-1, 1] (Tanh).

    ``label_groups`` gives the sizes of the attribute groups in vocabulary order (one embedding
    table each); None treats the whole vocabulary as one group. With label_dim 0 there is no
    embedding and the upconv body's BatchNorms are conditioned on z alone.
    """

    def __init__(
        self,
        resolution: int = 64,
        z_dim: int = 100,
        width: int = 64,
        label_dim: int = 0,
        embed_dim: int = 32,
        label_groups: Sequence[int] | None = None,
        block: str = "upconv",
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS} (got {block!r})")
        self.resolution, self.z_dim, self.label_dim = resolution, z_dim, label_dim
        self.width, self.block = width, block
        widths = _stage_widths(resolution, width)
        if block == "transposed":
            self._build_transposed(widths, z_dim, label_dim, embed_dim)
            return
        self.embed = LabelEmbedding(label_dim, embed_dim, label_groups) if label_dim else None
        code_dim = z_dim + (self.embed.out_features if self.embed is not None else 0)
        self.input = nn.Linear(code_dim, widths[0] * 16)
        self.input_norm = ConditionalBatchNorm2d(widths[0], code_dim)
        # The last stage keeps `width` channels up to full resolution: a 3-channel conv alone at
        # R px would have to draw outlines, irises and highlights from nothing.
        outs = widths[1:] + [widths[-1]]
        self.blocks = nn.ModuleList(UpBlock(a, b, code_dim) for a, b in zip(widths, outs))
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, 1, 1)
        self.apply(dcgan_init)
        nn.init.normal_(self.input.weight, 0.0, 0.02)
        nn.init.zeros_(self.input.bias)

    def _build_transposed(self, widths: list[int], z_dim: int, label_dim: int, embed_dim: int) -> None:
        self.embed_dim = embed_dim if label_dim else 0
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim + self.embed_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(dcgan_init)
        self.embed = None
        if label_dim:
            self.embed = nn.Linear(label_dim, embed_dim, bias=False)
            # N(0, 1) puts each tag's code on the same scale as a component of z.
            nn.init.normal_(self.embed.weight, 0.0, 1.0)

    truncation_space = "z"  # psi scales z toward the prior's mode (there is no learned average)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                truncation_psi: float | torch.Tensor = 1.0, noise_mode: str = "const") -> torch.Tensor:
        """z (N, z_dim), labels (N, label_dim) or None (= no tags) -> (N, 3, R, R) in [-1, 1].

        ``truncation_psi`` (a float or one per row) scales z first; ``noise_mode`` is accepted
        for the shared generator signature (DCGAN draws no noise).
        """
        if not isinstance(truncation_psi, (int, float)) or truncation_psi != 1.0:
            psi = torch.as_tensor(truncation_psi, dtype=z.dtype, device=z.device)
            z = z * (psi.reshape(-1, 1) if psi.ndim else psi)
        code = z
        if self.embed is not None:
            labels = resolve_labels(labels, z.shape[0], self.label_dim, z.device)
            code = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)
        if self.block == "transposed":
            return self.main(code[:, :, None, None])
        x = self.input(code).reshape(z.shape[0], -1, 4, 4)
        x = F.relu(self.input_norm(x, code))
        for block in self.blocks:
            x = block(x, code)
        return torch.tanh(self.to_rgb(x))

    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        truncation_psi: float | torch.Tensor = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """n images (n, 3, R, R) in [-1, 1], in eval mode and without autograd.

        DCGAN has no learned latent average, so truncation scales z toward the prior's mode:
        z * psi (psi 0 gives one "average" face per label set, psi 1 the untruncated model).
        psi is a float or an (n,) tensor, one per image.
        """
        with evaluating(self):
            device = module_device(self)
            z = sample_latents(n, self.z_dim, device, generator)
            return self(z, resolve_labels(labels, n, self.label_dim, device), truncation_psi).float()


class DCGANDiscriminator(nn.Module):
    """images (N, 3, R, R) [+ labels (N, label_dim)] -> logits (N,) (no Sigmoid).

    Conditional models are projection discriminators (Miyato & Koyama 2018):
    logit = psi(phi(x)) + <embed(y), mean-pooled phi(x)>, phi = ``main`` minus its last conv,
    psi = that last 4x4 conv, embed = Linear(label_dim, features, bias=False), so a multi-hot y
    projects onto the sum of its tags' vectors. They also have an auxiliary classifier
    ``classify``: a linear head on the flattened 4x4 features phi(x) -> attribute logits
    (N, label_dim); ``forward(..., with_attributes=True)`` returns both from one pass.
    """

    def __init__(self, resolution: int = 64, width: int = 64, label_dim: int = 0, minibatch_std: bool = False) -> None:
        super().__init__()
        self.resolution, self.label_dim, self.width = resolution, label_dim, width
        widths = _stage_widths(resolution, width)[::-1]
        layers: list[nn.Module] = [
            nn.Conv2d(3, widths[0], 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [
                nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        # minibatch_std: the last conv also sees the spread of the 4x4 features over groups of
        # samples (StyleGAN), so a batch of near-identical fakes is told apart from real ones.
        self.mbstd = MinibatchStd() if minibatch_std else None
        layers.append(nn.Conv2d(widths[-1] + (1 if minibatch_std else 0), 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)
        self.apply(dcgan_init)
        self.embed = self.attribute_head = None
        if label_dim:
            self.embed = nn.Linear(label_dim, widths[-1], bias=False)
            nn.init.normal_(self.embed.weight, 0.0, 0.02)
            self.attribute_head = nn.Linear(widths[-1] * 16, label_dim)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None, with_attributes: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, R, R) in [-1, 1], labels (N, label_dim) or None -> logits (N,) float32.

        ``with_attributes``: also the auxiliary attribute logits (N, label_dim) float32.
        """
        features = self.main[:-1](images)  # (N, 8w, 4, 4) at 64 px
        logits = self.main[-1](self.mbstd(features) if self.mbstd is not None else features).flatten()
        if self.embed is None:
            logits = logits.float()
            return (logits, logits.new_zeros(images.shape[0], 0)) if with_attributes else logits
        if labels is not None:
            labels = resolve_labels(labels, images.shape[0], self.label_dim, images.device)
            logits = logits + (self.embed(labels) * features.mean(dim=(2, 3))).sum(dim=1)
        if not with_attributes:
            return logits.float()
        return logits.float(), self.attribute_head(features.flatten(1)).float()
