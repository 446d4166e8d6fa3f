"""Per-image quality checks: rating, decode, size, aspect, monochrome and low information.

Thresholds are meant for flat-shaded anime art: large flat colour areas, crisp dark lines and
often a white or plain background. Statistics are measured on the square crop that will be stored,
scaled to STATS_SIDE px: what matters is how the training image looks, not the original file
(a slightly soft 2000 px scan is sharp at 128 px), and every image costs the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from moepipe.config import CurateConfig
from moepipe.images import ImageError, decode_rgb

STATS_SIDE = 128  # side at which statistics are measured, px: the usual stored crop size


class Rejection(Exception):
    """An image refused by a check; `reason` is one of the report's codes."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def check_rating(rating: str | None, allowed: list[str]) -> None:
    """Raise Rejection('rating') unless the post's rating is one of `allowed`."""
    if rating not in allowed:
        raise Rejection("rating", f"{rating!r} not in {allowed}")


def decode(data: bytes) -> Image.Image:
    """Whole-file decode to RGB; truncated or broken files raise Rejection('corrupt')."""
    try:
        return decode_rgb(data)
    except ImageError as error:
        raise Rejection("corrupt", error.detail or error.reason) from None


def check_geometry(width: int, height: int, cfg: CurateConfig) -> None:
    """Raise Rejection for images too small for a crop, or too elongated to hold a portrait."""
    if min(width, height) < cfg.min_side:
        raise Rejection("too_small", f"{width}x{height} < {cfg.min_side}px")
    aspect = max(width, height) / min(width, height)
    if aspect > cfg.max_aspect:
        raise Rejection("bad_aspect", f"aspect {aspect:.2f} > {cfg.max_aspect}")


@dataclass(frozen=True)
class ImageStats:
    """Content statistics of a square crop scaled to STATS_SIDE px.

    colourfulness: mean CIELAB chroma of the most colourful 10% of pixels (Lab units, 0-~130);
        a white background and black lines do not dilute it; greyscale art is ~0.
    colors: distinct colours at 5 bits per channel that each cover at least 0.2% of the crop.
    edge_energy: mean |Laplacian| of the grey crop (0-255 scale); blur and flat fills are low.
    line_art: pixels on thin (≤ 2 px) dark lines per crop width, i.e. the length of 1 px lines in
        crop widths; anime art is outlined, while scenery, shapes, text blocks and photos are not.
    """

    colourfulness: float
    colors: int
    edge_energy: float
    line_art: float

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _lab_chroma(rgb: np.ndarray) -> np.ndarray:
    """CIELAB chroma (D65) of (N, 3) uint8 sRGB pixels, Lab units."""
    c = rgb.astype(np.float32) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805],
                             [0.2126, 0.7152, 0.0722],
                             [0.0193, 0.1192, 0.9505]], dtype=np.float32).T
    xyz /= np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    a = 500.0 * (f[:, 0] - f[:, 1])
    b = 200.0 * (f[:, 1] - f[:, 2])
    return np.hypot(a, b)


def _filter3(grey: np.ndarray, reduce: Any) -> np.ndarray:
    """3×3 np.maximum or np.minimum filter with edge padding (grey-level dilation or erosion)."""
    p = np.pad(grey, 1, mode="edge")
    rows = reduce(reduce(p[:-2], p[1:-1]), p[2:])  # separable: rows, then columns
    return reduce(reduce(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def line_art(grey: np.ndarray, contrast: float = 40.0, darkest: float = 140.0) -> float:
    """Pixels on thin dark lines of a square (S, S) grey image, per image width.

    A black top-hat (3×3 closing minus the image) responds only to dark structures at most 2 px
    wide, so thick text bars, shape borders and colour steps do not count as lines.
    """
    closing = _filter3(_filter3(grey, np.maximum), np.minimum)
    lines = ((closing - grey) > contrast) & (grey < darkest)
    return float(lines.sum()) / grey.shape[1]


def image_stats(crop: Image.Image) -> ImageStats:
    """Colourfulness, colour count, edge energy and line art of a square RGB crop (see ImageStats)."""
    if crop.size != (STATS_SIDE, STATS_SIDE):
        crop = crop.resize((STATS_SIDE, STATS_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    rgb = np.asarray(crop, dtype=np.uint8).reshape(-1, 3)
    chroma = np.sort(_lab_chroma(rgb))
    colourfulness = float(chroma[-max(1, len(chroma) // 10):].mean())

    quantised = (rgb >> 3).astype(np.int32)
    codes = (quantised[:, 0] << 10) | (quantised[:, 1] << 5) | quantised[:, 2]
    counts = np.bincount(codes, minlength=1 << 15)
    colors = int((counts >= max(1, int(0.002 * len(codes)))).sum())

    grey = np.asarray(crop.convert("L"), dtype=np.float32)
    laplacian = (4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1]
                 - grey[1:-1, :-2] - grey[1:-1, 2:])
    return ImageStats(colourfulness, colors, float(np.abs(laplacian).mean()), line_art(grey))


def check_content(stats: ImageStats, cfg: CurateConfig) -> None:
    """Raise Rejection('monochrome' or 'low_information') from a crop's statistics."""
    if stats.colourfulness <= cfg.mono_max_chroma:
        raise Rejection("monochrome", f"colourfulness {stats.colourfulness:.1f} ≤ {cfg.mono_max_chroma}")
    if stats.colors < cfg.min_colors:
        raise Rejection("low_information",
                        f"{stats.colors} colours with ≥ 0.2% of pixels < {cfg.min_colors}")
    if stats.edge_energy < cfg.min_edge_energy:
        raise Rejection("low_information", f"edge energy {stats.edge_energy:.1f} < {cfg.min_edge_energy}")


def check_layout(stats: ImageStats, cfg: CurateConfig) -> None:
    """Raise Rejection('not_avatar') for crops without outlined drawing (used with no face detector)."""
    if stats.line_art < cfg.min_line_art:
        raise Rejection("not_avatar", f"line art {stats.line_art:.2f} < {cfg.min_line_art} widths")
