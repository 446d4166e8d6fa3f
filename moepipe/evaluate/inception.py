"""The FID Inception-v3 (TensorFlow 2015-12-05 graph), for standard FID from local weights.

Written from scratch (no torchvision) to the layout of pytorch-fid's FID Inception: the
torchvision Inception3 module names, 1008 classes, no auxiliary head, and the block variants
that reproduce the TensorFlow graph — average pools that ignore padding in the A, C and first
E blocks, a max pool in the last E block. That makes the state_dict keys those of pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` (and torch-fidelity's file of the same digest), so a
user who has that file can point `load_fid_inception` at it. Nothing is ever downloaded.

Input handling follows pytorch-fid: images in [0, 1] are bilinearly resized to 299×299
(align_corners=False) and mapped to [-1, 1]; the features are the 2048-d pool3 activations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moepipe.data import to_tensor
from moepipe.errors import UserError

FEATURE_DIM = 2048
INPUT_SIZE = 299


class ConvBN(nn.Module):
    """conv (no bias) → BatchNorm(eps=1e-3) → ReLU; submodules named `conv` and `bn` as in the file."""

    def __init__(self, in_channels: int, out_channels: int, **conv: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves padded zeros out of the mean; torchvision's counts them.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """35×35 block: 1×1, 5×5, double 3×3 and pooled branches → 224 + pool_features channels."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = ConvBN(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = ConvBN(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = ConvBN(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, kernel_size=3, padding=1)
        self.branch_pool = ConvBN(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_tf_avg_pool(x)),
        ], 1)


class BlockB(nn.Module):
    """35→17 reduction: strided 3×3, strided double 3×3 and max pool branches."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = ConvBN(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class BlockC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (1×7 then 7×1) → 768 channels."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = ConvBN(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = ConvBN(c7, c7, **row)
        self.branch7x7_3 = ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), single, double, self.branch_pool(_tf_avg_pool(x))], 1)


class BlockD(nn.Module):
    """17→8 reduction: strided 3×3, 7×7-then-strided-3×3 and max pool branches."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = ConvBN(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = ConvBN(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = ConvBN(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tower = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            tower = layer(tower)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), tower,
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class BlockE(nn.Module):
    """8×8 block with split 1×3 / 3×1 outputs → 2048 channels.

    `max_pool` selects the last block's pooling: the TensorFlow graph that FID is defined by
    max-pools there (probably a bug in that graph, but the reference numbers depend on it).
    """

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        row, col = dict(kernel_size=(1, 3), padding=(0, 1)), dict(kernel_size=(3, 1), padding=(1, 0))
        self.branch1x1 = ConvBN(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = ConvBN(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = ConvBN(384, 384, **row)
        self.branch3x3_2b = ConvBN(384, 384, **col)
        self.branch3x3dbl_1 = ConvBN(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = ConvBN(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, **row)
        self.branch3x3dbl_3b = ConvBN(384, 384, **col)
        self.branch_pool = ConvBN(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = self.branch3x3_1(x)
        split = torch.cat([self.branch3x3_2a(split), self.branch3x3_2b(split)], 1)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        double = torch.cat([self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), split, double, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """(N, 3, H, W) float in [-1, 1] → (N, 2048) pool3 features; `fc` only mirrors the file."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, kernel_size=3)
        self.Mixed_5b = BlockA(192, pool_features=32)
        self.Mixed_5c = BlockA(256, pool_features=64)
        self.Mixed_5d = BlockA(288, pool_features=64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, channels_7x7=128)
        self.Mixed_6c = BlockC(768, channels_7x7=160)
        self.Mixed_6d = BlockC(768, channels_7x7=160)
        self.Mixed_6e = BlockC(768, channels_7x7=192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, 1008)  # the 2015 graph's 1008 ImageNet logits, unused for FID

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))


def _comparable_keys(keys) -> set[str]:
    # Files written before BatchNorm counted its batches lack these buffers; neither way matters here.
    return {key for key in keys if not key.endswith("num_batches_tracked")}


def load_fid_inception(path: Path) -> FIDInceptionV3:
    """The FID Inception-v3 with weights from a local pytorch-fid state_dict file, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"FID Inception weights not found at {path} (pytorch-fid's "
                        f"pt_inception-2015-12-05-6726825d.pth; moepipe never downloads it)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{path}: cannot read FID Inception weights ({error.__class__.__name__})") from error
    model = FIDInceptionV3()
    expected = model.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state_dict of tensors; expected pytorch-fid's FID Inception weights")
    missing = sorted(_comparable_keys(expected) - set(state))
    unexpected = sorted(_comparable_keys(state) - set(expected))
    wrong_shape = sorted(key for key in _comparable_keys(state) & set(expected)
                         if tuple(state[key].shape) != tuple(expected[key].shape))
    if missing or unexpected or wrong_shape:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''} ({len(keys)})"
                           for what, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("wrong shape", wrong_shape)) if keys)
        raise UserError(f"{path}: keys do not match the FID Inception-v3 "
                        f"(pt_inception-2015-12-05) — {detail}")
    model.load_state_dict(state, strict=False)  # strict apart from num_batches_tracked, checked above
    return model.eval()


@torch.no_grad()
def inception_features(model: FIDInceptionV3, images: np.ndarray | torch.Tensor, batch_size: int = 50) -> np.ndarray:
    """(N, 2048) float32 pool3 features of uint8 (N, H, W, 3) images or float (N, 3, H, W) in [-1, 1]."""
    model.eval()
    parts = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if isinstance(batch, torch.Tensor):
            x = batch.float()
        else:
            batch = np.asarray(batch)
            if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
                raise ValueError(f"expected uint8 (N, H, W, 3) images, got {batch.dtype} {batch.shape}")
            # pytorch-fid feeds [0, 1] and maps to [-1, 1] after resizing; resizing is linear, so
            # mapping first gives the same numbers.
            x = to_tensor(batch)
        parts.append(model(x).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, FEATURE_DIM), np.float32)
