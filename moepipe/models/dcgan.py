"""DCGAN (Radford et al. 2015) as in the pytorch/examples ``dcgan`` example, plus conditioning.

At resolution 64, width 64, z_dim 100 and label_dim 0 both ``main`` stacks are the example's
networks layer for layer (same module order, shapes and state_dict keys), so the example's
checkpoints load unchanged. Each halving/doubling of the resolution removes/adds one stride-2
stage at the wide end, so the last hidden layer always has ``width`` channels.

One deliberate difference: the discriminator returns logits. The example ends in Sigmoid and
trains with BCELoss; BCEWithLogits(logit) is the same function computed stably, and the
non-saturating / hinge / WGAN losses all want the raw logit anyway.
"""

from __future__ import annotations

import torch
from torch import nn

from moepipe.models.layers import (
    check_resolution,
    evaluating,
    module_device,
    resolve_labels,
    sample_latents,
)


def dcgan_init(module: nn.Module) -> None:
    """The example's ``weights_init``: conv N(0, 0.02), BatchNorm weight N(1, 0.02), biases 0.

    Use with ``model.apply(dcgan_init)``. Linear label embeddings are initialised by their owners.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _stage_widths(resolution: int, width: int) -> list[int]:
    """Channels of the hidden 4x4, 8x8, ... feature maps, widest first (64 px: 8w, 4w, 2w, w)."""
    stages = check_resolution(resolution) - 2
    return [width * 2 ** (stages - 1 - i) for i in range(stages)]


class DCGANGenerator(nn.Module):
    """z (N, z_dim) [+ labels (N, label_dim) multi-hot] -> images (N, 3, R, R) in [-1, 1] (Tanh).

    Conditioning concatenates ``embed(labels)`` (N, embed_dim) to z: a multi-hot row becomes the
    sum of its tags' embedding vectors. With label_dim 0 there is no embedding at all.
    """

    def __init__(
        self,
        resolution: int = 64,
        z_dim: int = 100,
        width: int = 64,
        label_dim: int = 0,
        embed_dim: int = 32,
    ) -> None:
        super().__init__()
        self.resolution, self.z_dim, self.label_dim = resolution, z_dim, label_dim
        self.width = width
        self.embed_dim = embed_dim if label_dim else 0
        widths = _stage_widths(resolution, width)
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
            # N(0, 1) puts each tag's code on the same scale as a component of z, so the label
            # signal is not drowned by z at the start of training.
            nn.init.normal_(self.embed.weight, 0.0, 1.0)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z (N, z_dim), labels (N, label_dim) or None (= no tags) -> (N, 3, R, R) in [-1, 1]."""
        if self.embed is not None:
            labels = resolve_labels(labels, z.shape[0], self.label_dim, z.device)
            z = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)
        return self.main(z[:, :, None, None])

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
            psi = torch.as_tensor(truncation_psi, dtype=torch.float32, device=device)
            z = sample_latents(n, self.z_dim, device, generator) * psi.reshape(-1, 1)
            return self(z, resolve_labels(labels, n, self.label_dim, device)).float()


class DCGANDiscriminator(nn.Module):
    """images (N, 3, R, R) [+ labels (N, label_dim)] -> logits (N,) (no Sigmoid).

    Conditional models are projection discriminators (Miyato & Koyama 2018):
    logit = psi(phi(x)) + <embed(y), mean-pooled phi(x)>, phi = ``main`` minus its last conv,
    psi = that last 4x4 conv, embed = Linear(label_dim, features, bias=False), so a multi-hot y
    projects onto the sum of its tags' vectors.
    """

    def __init__(self, resolution: int = 64, width: int = 64, label_dim: int = 0) -> None:
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
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)
        self.apply(dcgan_init)
        self.embed = None
        if label_dim:
            self.embed = nn.Linear(label_dim, widths[-1], bias=False)
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """images (N, 3, R, R) in [-1, 1], labels (N, label_dim) or None -> logits (N,) float32."""
        if self.embed is None or labels is None:
            return self.main(images).flatten().float()
        features = self.main[:-1](images)  # (N, 8w, 4, 4) at 64 px
        logits = self.main[-1](features).flatten()
        labels = resolve_labels(labels, images.shape[0], self.label_dim, images.device)
        projection = (self.embed(labels) * features.mean(dim=(2, 3))).sum(dim=1)
        return (logits + projection).float()
