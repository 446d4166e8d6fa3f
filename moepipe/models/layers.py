"""Building blocks shared by the generator and discriminator networks.

Everything here is plain PyTorch (no custom CUDA kernels, no upfirdn2d), so the same code runs
on CPU, on CUDA under ``torch.autocast(dtype=torch.bfloat16)``, and with channels_last tensors.

Equalized learning rate (Karras et al. 2018): weights are stored as N(0, 1) / lr_multiplier and
scaled by ``lr_multiplier / sqrt(fan_in)`` at every call, so Adam's per-parameter step size is
the same relative change for every layer regardless of its fan-in.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from moepipe.config.data import check_resolution as _supported_resolution

LRELU_SLOPE = 0.2
# sqrt(2) restores unit second moment after a leaky ReLU (He init), so equalized layers stay
# variance-preserving without per-layer init tuning.
LRELU_GAIN = math.sqrt(2.0)


def check_resolution(resolution: int) -> int:
    """Validate an image side length by the config's rule; returns log2(resolution)."""
    return int(math.log2(_supported_resolution(resolution)))


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector of x (along dim) to unit root-mean-square."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(x: torch.Tensor, bias: torch.Tensor | None, activation: str | None) -> torch.Tensor:
    """Add a per-channel bias (channel = dim 1) then apply ``activation`` (None or 'lrelu')."""
    if bias is not None:
        # Cast so a bf16 activation under autocast is not promoted back to float32 by the bias.
        x = x + bias.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
    elif activation is not None:
        raise ValueError(f"unknown activation {activation!r}")
    return x


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, 2H, 2W), bilinear: a cheap stand-in for StyleGAN2's FIR filter."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate: (N, in_features) -> (N, out_features)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_multiplier: float = 1.0,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        # Stored divided by lr_multiplier so the effective initial bias is bias_init.
        self.bias = (
            nn.Parameter(torch.full([out_features], bias_init / lr_multiplier)) if bias else None
        )
        self.weight_gain = lr_multiplier / math.sqrt(max(in_features, 1))
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain)
        bias = None if self.bias is None else self.bias * self.bias_gain
        return bias_act(x, bias, self.activation)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """Conv with equalized learning rate, 'same' padding: (N, C_in, H, W) -> (N, C_out, H', W').

    ``down=True`` average-pools by 2 *before* the conv: 4x cheaper than conv-then-pool, and the
    box filter doubles as the anti-aliasing StyleGAN2 gets from its blur kernel.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str | None = None,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.activation, self.down = activation, down
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        x = F.conv2d(x, self.weight * self.weight_gain, padding=self.padding)
        return bias_act(x, self.bias, self.activation)

    def extra_repr(self) -> str:
        k = self.weight.shape[-1]
        return f"{self.in_channels}, {self.out_channels}, kernel_size={k}, down={self.down}"


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution: (N, C_in, H, W), w (N, w_dim) -> (N, C_out, H', W').

    Each sample's kernel is the shared weight scaled per input channel by its style
    (``affine(w)``); with ``demodulate`` each output channel is then rescaled so that a
    unit-variance input gives unit-variance output whatever the style's magnitude. That replaces
    AdaIN's instance normalisation, which caused StyleGAN1's droplet artefacts.

    Two mathematically identical formulations:
    - default: scale the activations by the styles, run one ordinary conv with the shared weight,
      scale the output by the demodulation coefficients. Batch-friendly, works with channels_last
      and autocast, and is the fastest on CPU and for training batches.
    - ``fused=True``: build the (N, C_out, C_in, k, k) per-sample kernels and run one grouped conv
      (groups=N). Fewer activation-sized temporaries; useful for single-image inference.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        w_dim: int,
        demodulate: bool = True,
        up: bool = False,
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.demodulate, self.up, self.fused = demodulate, up, fused
        # bias_init=1 starts every style at ~1, i.e. an unmodulated conv.
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # Styles and demodulation coefficients stay float32: rsqrt of a sum of squares over
        # C_in*k*k terms is where bf16 loses the most precision, and these are tiny tensors.
        styles = self.affine(w).float()  # (N, C_in)
        weight = self.weight.float() * self.weight_gain  # (C_out, C_in, k, k)
        dcoefs = None
        if self.demodulate:
            # sum_{i,k} (W_oik s_i)^2 = (s^2) @ (sum_k W_oik^2)^T, without an (N, C_out, C_in, k, k)
            # temporary. Autocast would run this matmul in bf16, hence the local opt-out.
            with torch.autocast(device_type=x.device.type, enabled=False):
                dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
        if self.up:
            x = upsample2x(x)
        if self.fused:
            return self._fused_conv(x, weight, styles, dcoefs)
        x = x * styles.to(x.dtype)[:, :, None, None]
        x = F.conv2d(x, weight, padding=self.padding)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype)[:, :, None, None]
        return x

    def _fused_conv(self, x, weight, styles, dcoefs):
        n, _, h, w_ = x.shape
        kernels = weight.unsqueeze(0) * styles[:, None, :, None, None]  # (N, C_out, C_in, k, k)
        if dcoefs is not None:
            kernels = kernels * dcoefs[:, :, None, None, None]
        kernels = kernels.reshape(n * self.out_channels, self.in_channels, *weight.shape[2:])
        x = x.reshape(1, n * self.in_channels, h, w_)
        x = F.conv2d(x, kernels, padding=self.padding, groups=n)
        return x.reshape(n, self.out_channels, *x.shape[2:])

    def extra_repr(self) -> str:
        k = self.weight.shape[-1]
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={k}, "
            f"demodulate={self.demodulate}, up={self.up}, fused={self.fused}"
        )


class LabelEmbedding(nn.Module):
    """Multi-hot labels (N, label_dim) -> codes (N, groups x dim): one table per attribute group.

    ``group_sizes`` splits the vocabulary into its groups (in vocabulary order); each group's
    part of the row goes through its own Linear(size, dim), and the codes are concatenated, so
    two groups never share a dimension. None (or sizes that do not add up to label_dim) keeps
    one table for the whole vocabulary. Tables start N(0, 1): each code is on z's scale.
    """

    def __init__(self, label_dim: int, dim: int, group_sizes: Sequence[int] | None = None) -> None:
        super().__init__()
        sizes = [int(s) for s in group_sizes] if group_sizes else []
        if not sizes or sum(sizes) != label_dim or min(sizes) < 1:
            sizes = [label_dim]
        self.group_sizes = sizes
        self.tables = nn.ModuleList(nn.Linear(size, dim, bias=False) for size in sizes)
        for table in self.tables:
            nn.init.normal_(table.weight, 0.0, 1.0)
        self.out_features = dim * len(sizes)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        parts = labels.split(self.group_sizes, dim=1)
        return torch.cat([table(part) for table, part in zip(self.tables, parts)], dim=1)


class NoiseInjection(nn.Module):
    """Add per-pixel Gaussian noise with a learned per-channel strength: (N, C, H, W) -> same.

    ``noise_mode``: 'random' (fresh noise each call, training), 'const' (a fixed noise map stored
    in the state_dict, so a given w always renders the same image) or 'none'.
    """

    NOISE_MODES = ("random", "const", "none")

    def __init__(self, channels: int, resolution: int) -> None:
        super().__init__()
        # Zero init as in StyleGAN2: the network starts deterministic and learns how much
        # stochastic detail (hair strands, texture) each layer wants.
        self.strength = nn.Parameter(torch.zeros(channels))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if noise_mode == "none":
            return x
        if noise_mode == "random":
            n, _, h, w = x.shape
            noise = torch.randn(n, 1, h, w, device=x.device, dtype=x.dtype)
        elif noise_mode == "const":
            noise = self.noise_const.to(x.dtype)
        else:
            raise ValueError(f"noise_mode must be one of {self.NOISE_MODES} (got {noise_mode!r})")
        return x + noise * self.strength.to(x.dtype)[None, :, None, None]


class MinibatchStd(nn.Module):
    """Append the minibatch standard deviation as extra channels: (N, C, H, W) -> (N, C+F, H, W).

    Lets the discriminator see batch-level statistics, so a generator that collapses to a few
    modes is penalised. Samples are grouped as in StyleGAN2 (sample i belongs to group i % (N/G)).
    When N is not a multiple of ``group_size`` the largest divisor of N not above it is used,
    instead of failing on the last, smaller batch of an epoch.
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = max(d for d in range(1, min(self.group_size, n) + 1) if n % d == 0)
        f = self.num_channels
        y = x.float().reshape(g, -1, f, c // f, h, w)  # (G, N/G, F, C/F, H, W)
        y = (y - y.mean(dim=0)).square().mean(dim=0)  # variance over each group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # (N/G, F)
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w).to(x.dtype)  # (N, F, H, W)
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


# --------------------------------------------------------------------------------------------
# Sampling helpers shared by every generator's ``sample``
# --------------------------------------------------------------------------------------------


def sample_latents(
    n: int,
    z_dim: int,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(n, z_dim) standard normal on ``device``, drawn from ``generator`` when given.

    Drawn on the generator's own device then moved, so a CPU torch.Generator seeded from a
    request gives the same z whether the model runs on CPU or CUDA.
    """
    source = generator.device if generator is not None else device
    return torch.randn(n, z_dim, generator=generator, device=source).to(device)


def resolve_labels(
    labels: torch.Tensor | None, n: int, label_dim: int, device: torch.device
) -> torch.Tensor | None:
    """Check labels against ``label_dim``; None means "no tags" (all zeros) for conditional models.

    Returns (n, label_dim) float on ``device``, or None for an unconditional model.
    """
    if labels is None:
        return torch.zeros(n, label_dim, device=device) if label_dim else None
    if labels.ndim != 2 or labels.shape[1] != label_dim or labels.shape[0] != n:
        raise ValueError(
            f"labels must have shape ({n}, {label_dim}) (got {tuple(labels.shape)})"
        )
    return labels.to(device=device, dtype=torch.float32) if label_dim else None


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put ``module`` in eval mode and disable autograd, restoring its mode after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU if it has none)."""
    return next(module.parameters(), torch.empty(0)).device
