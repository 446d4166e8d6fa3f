"""Differentiable augmentation of D's inputs (DiffAugment, Zhao et al. 2020) with an ADA-style
per-sample probability p and its adaptive controller (Karras et al. 2020, "Training GANs with
Limited Data").

Augmenting only D's real inputs teaches D that the augmented images are real and the generator
then learns to produce them; augmenting real *and* fake batches with a differentiable transform
avoids that leak because G's gradient passes through the same transform D sees. Each call draws
fresh parameters, so real and fake batches are augmented alike in distribution, not in values.

Images are (N, C, H, W) in [-1, 1]. Value conventions for that range:
  * brightness adds a per-sample shift in [-0.5, 0.5). This is the official DiffAugment range,
    whose reference implementations also feed [-1, 1] images (StyleGAN2, BigGAN), i.e. ±0.25 of
    the full [0, 1] scale. Saturation and contrast scale deviations from a mean and so do not
    depend on the value range.
  * translation and cutout fill with 0, mid grey in [-1, 1] — also what the official code does
    on its [-1, 1] inputs. A black (-1) fill would be a cue D could learn to read as "augmented".

Randomness comes from the global RNG of the images' device, so one ``torch.manual_seed`` makes a
run repeatable; the deterministic primitives ``translate`` and ``cutout`` take explicit offsets
so tests (and anyone reproducing a draw) can pin them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

BRIGHTNESS_SHIFT = 0.5  # half-width of the uniform additive shift, in [-1, 1] image units
SATURATION_RANGE = (0.0, 2.0)  # multiplier of the deviation from the per-pixel channel mean
CONTRAST_RANGE = (0.5, 1.5)  # multiplier of the deviation from the per-image mean
TRANSLATION_RATIO = 0.125  # largest shift as a fraction of the side
CUTOUT_RATIO = 0.5  # side of the cut square as a fraction of the image side
DEFAULT_POLICY = "color,translation,cutout"


def _uniform(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    # Draw in float32 (bf16 has only 8 mantissa bits), then cast so the arithmetic below keeps the
    # input dtype: a float32 operand would silently promote a bf16 batch to float32.
    draw = torch.rand(x.shape[0], 1, 1, 1, device=x.device)
    return (low + (high - low) * draw).to(x.dtype)


def _same_format(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


def _offsets(length: int, start: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(N, length) position of every pixel index relative to a per-sample start (N,)."""
    return torch.arange(length, device=device)[None, :] - start.to(device).long()[:, None]


def adjust_brightness(x: torch.Tensor) -> torch.Tensor:
    """Add one random value per sample: (N, C, H, W) -> same."""
    return x + _uniform(x, -BRIGHTNESS_SHIFT, BRIGHTNESS_SHIFT)


def adjust_saturation(x: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's deviation from its channel mean (0 = greyscale): (N, C, H, W) -> same."""
    grey = x.mean(dim=1, keepdim=True)
    return torch.lerp(grey, x, _uniform(x, *SATURATION_RANGE))


def adjust_contrast(x: torch.Tensor) -> torch.Tensor:
    """Scale the deviation from the per-image mean: (N, C, H, W) -> same."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return torch.lerp(mean, x, _uniform(x, *CONTRAST_RANGE))


def translate(x: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor) -> torch.Tensor:
    """Move each image's content by whole pixels, filling uncovered pixels with 0.

    x (N, C, H, W); shift_y, shift_x (N,) integer — positive moves content down / right:
    out[n, :, i, j] = x[n, :, i - shift_y[n], j - shift_x[n]], or 0 outside the source.
    Differentiable w.r.t. x (a gather, so each output pixel gets its source's gradient).
    """
    n, _, h, w = x.shape
    rows = _offsets(h, shift_y, x.device)  # (N, H) source row of each output row
    cols = _offsets(w, shift_x, x.device)  # (N, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    rows, cols = rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]
    # Indexing the (N, H, W, C) view keeps channels innermost, so a channels_last input is read
    # contiguously and the permuted result is channels_last again.
    moved = x.permute(0, 2, 3, 1)[batch, rows, cols].masked_fill(~inside[..., None], 0)
    return _same_format(moved.permute(0, 3, 1, 2), x)


def random_translation(x: torch.Tensor, ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
    """Translate each sample by integers drawn uniformly from [-round(side*ratio), +round(side*ratio)]."""
    n, _, h, w = x.shape
    max_y, max_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shift_y = torch.randint(-max_y, max_y + 1, (n,), device=x.device)
    shift_x = torch.randint(-max_x, max_x + 1, (n,), device=x.device)
    return translate(x, shift_y, shift_x)


def cutout_size(height: int, width: int, ratio: float = CUTOUT_RATIO) -> tuple[int, int]:
    """Side lengths (rows, cols) of the cut rectangle for an image of the given size."""
    return max(1, int(height * ratio + 0.5)), max(1, int(width * ratio + 0.5))


def cutout(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Set a (size[0] x size[1]) rectangle to 0 per sample; parts outside the image are dropped.

    x (N, C, H, W); top, left (N,) integer corner of each rectangle (may be negative or past
    the edge). The mask is constant, so gradient flows to every pixel that was not cut.
    """
    _, _, h, w = x.shape
    rows, cols = _offsets(h, top, x.device), _offsets(w, left, x.device)  # (N, H), (N, W)
    cut = ((rows >= 0) & (rows < size[0]))[:, :, None] & ((cols >= 0) & (cols < size[1]))[:, None, :]
    return _same_format(x.masked_fill(cut[:, None, :, :], 0), x)


def random_cutout(x: torch.Tensor, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Cut one rectangle of ``cutout_size`` per sample with its centre anywhere in the image.

    Centres near an edge leave part of the rectangle outside, so the cut area varies — as in
    DiffAugment, where the centre (not the rectangle) is uniform over the image.
    """
    n, _, h, w = x.shape
    size = cutout_size(h, w, ratio)
    # Even sides have no centre pixel; allowing one extra position keeps the placement symmetric.
    centre_y = torch.randint(0, h + (1 - size[0] % 2), (n,), device=x.device)
    centre_x = torch.randint(0, w + (1 - size[1] % 2), (n,), device=x.device)
    return cutout(x, centre_y - size[0] // 2, centre_x - size[1] // 2, size)


TRANSFORMS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], ...]] = {
    "color": (adjust_brightness, adjust_saturation, adjust_contrast),
    "translation": (random_translation,),
    "cutout": (random_cutout,),
}


def parse_policy(policy: str) -> tuple[str, ...]:
    """'color, translation' -> ('color', 'translation'); '' or 'none' -> (). Unknown names raise."""
    names = tuple(part.strip() for part in policy.split(",") if part.strip())
    if names == ("none",):
        return ()
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown:
        raise ValueError(
            f"unknown augmentation {unknown[0]!r} in policy {policy!r}; expected a comma-separated "
            f"subset of {sorted(TRANSFORMS)}"
        )
    return names


def diff_augment(x: torch.Tensor, policy: str = DEFAULT_POLICY, p: float = 1.0) -> torch.Tensor:
    """Apply the policy's transforms in order, each to each sample independently with probability p.

    x (N, C, H, W) in [-1, 1], any float dtype and memory format -> same shape, dtype, format.
    p = 1 is classic DiffAugment; p = 0 returns x itself and draws nothing from the RNG.
    The transformed values are not clamped (neither are DiffAugment's): D sees them as is.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation probability must be in [0, 1] (got {p})")
    if p == 0.0:
        return x
    for name in parse_policy(policy):
        for transform in TRANSFORMS[name]:
            if p == 1.0:
                x = transform(x)
                continue
            # Transform the whole batch and select: simpler than gathering the chosen samples,
            # and the RNG draws stay the same whatever the selection.
            chosen = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
            x = torch.where(chosen, transform(x), x)
    return x


class AdaptiveAugment:
    """The augmentation probability p and, when ``adaptive``, its ADA controller.

    Every ``interval`` calls of ``update``, the overfitting heuristic r_t = E[sign(D(x_real))]
    over the accumulated real logits is compared with ``target``: above it means D is
    separating reals too confidently, so p rises; below, p falls. Each adjustment is
    sign(r_t - target) * images / (speed_kimg * 1000), where images is the number of logits
    accumulated (batch * interval), so p can go 0 -> 1 in ``speed_kimg`` thousand images.

    With ``adaptive=False`` p stays at ``initial_p`` (fixed-p augmentation) while r_t is still
    measured for logging. Under DDP pass the all-gathered real logits so every rank agrees on p.
    """

    def __init__(
        self,
        target: float = 0.6,
        speed_kimg: float = 500.0,
        interval: int = 4,
        initial_p: float = 0.0,
        max_p: float = 1.0,
        adaptive: bool = True,
    ) -> None:
        if not 0.0 <= max_p <= 1.0 or not 0.0 <= initial_p <= max_p:
            raise ValueError(f"need 0 ≤ initial_p ≤ max_p ≤ 1 (got {initial_p}, {max_p})")
        if speed_kimg <= 0 or interval < 1:
            raise ValueError(f"need speed_kimg > 0 and interval ≥ 1 (got {speed_kimg}, {interval})")
        self.target, self.speed_kimg, self.interval = target, speed_kimg, interval
        self.max_p, self.adaptive = max_p, adaptive
        self.p = float(initial_p)
        self.rt: float | None = None
        self._sign_sum: torch.Tensor | float = 0.0
        self._count = 0
        self._calls = 0

    def update(self, real_logits: torch.Tensor) -> float:
        """Accumulate sign(real_logits) (N,) or (N, 1); adjust p every ``interval`` calls. Returns p."""
        signs = torch.sign(real_logits.detach().reshape(-1).float()).sum()
        # Kept on the logits' device between adjustments: reading it every step would
        # synchronise the GPU each iteration for a value needed once per interval.
        self._sign_sum = self._sign_sum + signs
        self._count += real_logits.numel()
        self._calls += 1
        if self._calls >= self.interval:
            self._adjust()
        return self.p

    def _adjust(self) -> None:
        total = float(self._sign_sum)
        if self._count:
            self.rt = total / self._count
            if self.adaptive:
                step = math.copysign(1.0, self.rt - self.target) if self.rt != self.target else 0.0
                self.p += step * self._count / (self.speed_kimg * 1000.0)
                self.p = min(max(self.p, 0.0), self.max_p)
        self._sign_sum, self._count, self._calls = 0.0, 0, 0

    def augment(self, x: torch.Tensor, policy: str = DEFAULT_POLICY) -> torch.Tensor:
        """``diff_augment`` at the current p."""
        return diff_augment(x, policy, self.p)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values, including the partial accumulation, for an exact resume."""
        return {
            "p": self.p,
            "rt": self.rt,
            "sign_sum": float(self._sign_sum),
            "count": self._count,
            "calls": self._calls,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = float(state["p"])
        self.rt = None if state["rt"] is None else float(state["rt"])
        self._sign_sum = float(state["sign_sum"])
        self._count = int(state["count"])
        self._calls = int(state["calls"])

    def __repr__(self) -> str:
        mode = "adaptive" if self.adaptive else "fixed"
        return f"AdaptiveAugment({mode}, p={self.p:.4f}, rt={self.rt}, target={self.target})"
