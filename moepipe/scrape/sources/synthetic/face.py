"""The face: skin shape, big eyes for each expression, mouth, nose and blush."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from moepipe.scrape.sources.synthetic.canvas import RGB, Canvas, Point, arc_points, mix, path, shade

EYE_X, EYE_Y = 0.42, 0.26   # eye centres, head units (chibi eyes sit low and wide apart)
EYE_RX, EYE_RY = 0.215, 0.265
MOUTH_Y = 0.66
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class SkinPalette:
    base: RGB
    shadow: RGB
    line: RGB
    blush: RGB

    @classmethod
    def of(cls, base: RGB) -> SkinPalette:
        return cls(base, mix(base, (226, 150, 150), 0.35), (150, 92, 84), (255, 128, 140))


@dataclass(frozen=True)
class EyePalette:
    dark: RGB
    base: RGB
    light: RGB
    ring: RGB
    pupil: RGB

    @classmethod
    def of(cls, base: RGB) -> EyePalette:
        return cls(shade(base, 0.6), base, mix(base, WHITE, 0.5), shade(base, 0.45), shade(base, 0.24))


def face_shape() -> list[Point]:
    """Round top, soft cheeks and a small rounded chin."""
    top = arc_points(0, 0, 1.0, 0.95, math.pi, 2 * math.pi, steps=32)
    bottom = []
    for k in range(1, 32):
        t = math.pi * k / 32
        bottom.append((math.cos(t) * (1.0 - 0.16 * math.sin(t) ** 3), 0.92 * math.sin(t)))
    return top + bottom


def draw_face(c: Canvas, skin: SkinPalette) -> None:
    for s in (-1, 1):
        c.ellipse(0.97 * s, 0.2, 0.13, 0.17, skin.base, skin.line, 0.025)
    c.poly(face_shape(), skin.base, skin.line, 0.03)


def _iris(c: Canvas, x: float, y: float, rx: float, ry: float, pal: EyePalette) -> None:
    """Iris with a vertical gradient: shadowed under the lid, glowing at the bottom."""
    x0, y0, x1, y1 = (int(round(v)) for v in c.box(x, y, rx, ry))
    w, h = max(2, x1 - x0), max(2, y1 - y0)
    t = np.linspace(0.0, 1.0, h)[:, None]
    stops = np.array([pal.dark, pal.base, pal.light], dtype=np.float32)
    upper = stops[0] + (stops[1] - stops[0]) * np.clip(t / 0.35, 0, 1)
    column = np.where(t < 0.6, upper, stops[1] + (stops[2] - stops[1]) * np.clip((t - 0.6) / 0.4, 0, 1))
    gradient = Image.fromarray(np.repeat(column[:, None, :], w, axis=1).astype(np.uint8), "RGB")
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse([0, 0, w - 1, h - 1], fill=255)
    c.image.paste(gradient, (x0, y0), mask)
    c.ellipse(x, y, rx, ry, None, pal.ring, 0.028)


def _lash(c: Canvas, x: float, y: float, rx: float, ry: float, side: int, thick: float,
          color: RGB, flick: bool, start: float = math.pi + 0.12, end: float = 2 * math.pi - 0.12) -> None:
    """Upper lash line over an eye, thicker at the outer corner; a flick there for girls."""
    inner, outer = [], []
    steps = 16
    for k in range(steps + 1):
        a = start + (end - start) * k / steps
        u = k / steps if side > 0 else 1 - k / steps  # 0 at the nose side, 1 at the outer corner
        t = thick * (0.35 + 0.65 * u)
        inner.append((x + math.cos(a) * (rx - t * 0.25), y + math.sin(a) * (ry - t * 0.25)))
        outer.append((x + math.cos(a) * (rx + t), y + math.sin(a) * (ry + t)))
    c.band(inner, outer, color)
    if flick:
        corner = outer[-1] if side > 0 else outer[0]
        base = inner[-1] if side > 0 else inner[0]
        tip = (x + side * (rx + 0.11), y - ry * 0.22)
        c.poly([corner, tip, base], color)
        lash_tick = path((x + side * rx * 0.72, y - ry * 0.78),
                         ((x + side * rx * 1.02, y - ry * 1.02), (x + side * (rx + 0.06), y - ry * 1.08)))
        c.line(lash_tick, color, 0.028)


def _open_eye(c: Canvas, x: float, side: int, pal: EyePalette, lash: RGB, girl: bool, skin: SkinPalette,
              half_lidded: bool) -> None:
    rx, ry, y = EYE_RX, EYE_RY, EYE_Y
    c.ellipse(x, y, rx, ry, WHITE)
    _iris(c, x, y + 0.02, rx * 0.8, ry * 0.88, pal)
    c.ellipse(x, y + 0.06, rx * 0.34, ry * 0.42, pal.pupil)
    c.ellipse(x, y + 0.16, rx * 0.46, ry * 0.16, pal.light)
    c.ellipse(x - rx * 0.32, y - ry * 0.22, rx * 0.3, ry * 0.28, WHITE)
    c.ellipse(x + rx * 0.3, y + ry * 0.42, rx * 0.13, ry * 0.11, WHITE)
    if half_lidded:
        # A heavy flat lid over the top third reads as a blank, unimpressed look.
        lid = y - ry * 0.3
        c.poly([(x - rx - 0.05, y - ry - 0.06), (x + rx + 0.05, y - ry - 0.06), (x + rx + 0.05, lid),
                (x - rx - 0.05, lid)], skin.base)
        droop = 0.025 * side  # outer corners hang slightly: sleepy rather than angry
        c.poly([(x - rx - 0.01, lid - 0.035 - droop), (x + rx + 0.01, lid - 0.035 + droop),
                (x + rx + 0.01, lid + 0.025 + droop), (x - rx - 0.01, lid + 0.025 - droop)], lash)
    else:
        _lash(c, x, y, rx, ry, side, 0.085 if girl else 0.05, lash, girl)
    lower = arc_points(x, y, rx * 0.98, ry * 1.02, math.pi / 2 - 0.7 * side, math.pi / 2 - 0.2 * side, steps=6)
    c.line(lower, mix(lash, skin.base, 0.35), 0.022)


def _round_eye(c: Canvas, x: float, side: int, pal: EyePalette, lash: RGB, girl: bool) -> None:
    """Wide-open surprised eye: white all round a small iris."""
    rx, ry, y = EYE_RX * 0.95, EYE_RY * 0.98, EYE_Y
    c.ellipse(x, y, rx, ry, WHITE)
    _iris(c, x, y + 0.02, rx * 0.58, ry * 0.62, pal)
    c.ellipse(x, y + 0.03, rx * 0.2, ry * 0.24, pal.pupil)
    c.ellipse(x - rx * 0.16, y - ry * 0.12, rx * 0.15, ry * 0.14, WHITE)
    _lash(c, x, y, rx, ry, side, 0.06 if girl else 0.04, lash, girl)


def _closed_eye(c: Canvas, x: float, side: int, lash: RGB, girl: bool) -> None:
    """Happy closed eye: an arch like ^."""
    y = EYE_Y + 0.1
    rx, ry = EYE_RX * 0.85, EYE_RY * 0.55
    t = 0.06
    inner = arc_points(x, y, rx, ry, math.pi + 0.2, 2 * math.pi - 0.2, steps=16)
    outer = arc_points(x, y, rx + t, ry + t, math.pi + 0.2, 2 * math.pi - 0.2, steps=16)
    c.band(inner, outer, lash)
    if girl:
        end = outer[-1] if side > 0 else outer[0]
        c.poly([end, (x + side * (rx + 0.12), y - 0.02), (end[0] - 0.02 * side, end[1] + 0.05)], lash)


def draw_eyes(c: Canvas, expression: str, pal: EyePalette, lash: RGB, girl: bool, skin: SkinPalette) -> None:
    for side in (-1, 1):
        x = EYE_X * side
        if expression == "closed_eyes":
            _closed_eye(c, x, side, lash, girl)
        elif expression == "surprised":
            _round_eye(c, x, side, pal, lash, girl)
        else:
            _open_eye(c, x, side, pal, lash, girl, skin, expression == "expressionless")


def draw_brows(c: Canvas, expression: str, color: RGB) -> None:
    """Raised brows, drawn over the fringe as anime does, only when they carry the expression."""
    if expression != "surprised":
        return
    for side in (-1, 1):
        c.line(path((EYE_X * side - 0.12, -0.16), ((EYE_X * side, -0.25), (EYE_X * side + 0.12, -0.17))), color, 0.035)


def draw_mouth(c: Canvas, expression: str, skin: SkinPalette) -> None:
    inside, tongue = (150, 44, 58), (240, 120, 132)
    line = shade(skin.line, 0.85)
    y = MOUTH_Y
    c.line([(-0.015, 0.47), (0.0, 0.49)], skin.shadow, 0.03)  # the nose: a hint, as in chibi art
    if expression == "smile":
        c.line(path((-0.1, y - 0.02), ((0.0, y + 0.08), (0.1, y - 0.02))), line, 0.03)
    elif expression == "expressionless":
        c.line([(-0.06, y + 0.01), (0.06, y + 0.01)], line, 0.028)
    elif expression == "laughing":
        shape = path((-0.12, y - 0.04), ((0.0, y - 0.02), (0.12, y - 0.04)), ((0.11, y + 0.14), (0.0, y + 0.14)),
                     ((-0.11, y + 0.14), (-0.12, y - 0.04)))
        c.poly(shape, inside, line, 0.025)
        c.poly(path((-0.07, y + 0.11), ((0.0, y + 0.02), (0.07, y + 0.11)), ((0.0, y + 0.14), (-0.07, y + 0.11))),
               tongue)
        c.line(shape, line, 0.025)
    elif expression == "closed_eyes":
        shape = path((-0.1, y - 0.02), ((0.0, y + 0.0), (0.1, y - 0.02)), ((0.06, y + 0.1), (0.0, y + 0.1)),
                     ((-0.06, y + 0.1), (-0.1, y - 0.02)))
        c.poly(shape, inside, line, 0.025)
    else:  # surprised
        c.ellipse(0.0, y + 0.04, 0.055, 0.07, inside, line, 0.025)


def draw_blush(c: Canvas, skin: SkinPalette) -> None:
    def mask(draw: ImageDraw.ImageDraw, canvas: Canvas) -> None:
        for s in (-1, 1):
            draw.ellipse(canvas.box(0.62 * s, 0.52, 0.17, 0.08), fill=255)

    c.soft(skin.blush, mask, 0.035, opacity=0.75)
    for s in (-1, 1):
        for k in range(3):
            x = 0.62 * s + (k - 1) * 0.07
            c.line([(x + 0.025, 0.48), (x - 0.015, 0.56)], shade(skin.blush, 0.85), 0.018)
