"""Accessories (cat ears, ribbons, hats, glasses), hair ties and the outfit below the chin."""

from __future__ import annotations

import math

from moepipe.scrape.sources.synthetic.canvas import RGB, Canvas, Point, arc_points, mirror, mix, path, shade
from moepipe.scrape.sources.synthetic.face import EYE_X, EYE_Y
from moepipe.scrape.sources.synthetic.hair import HairPalette, cap_point

WHITE = (255, 255, 255)
EAR_PINK = (255, 178, 190)


def draw_cat_ears(c: Canvas, pal: HairPalette) -> None:
    """Two triangles rising from the cap; their bases get covered by the front hair."""
    for s in (-1, 1):
        base0 = cap_point(-math.pi / 2 + 0.3 * s, -0.1)
        base1 = cap_point(-math.pi / 2 + 1.0 * s, -0.1)
        tip = (1.02 * s, -1.42)
        c.poly([base0, tip, base1], pal.base, pal.line, 0.035)
        cx, cy = (base0[0] + base1[0] + tip[0]) / 3, (base0[1] + base1[1] + tip[1]) / 3
        inner = [(cx + (px - cx) * 0.6, cy + (py - cy) * 0.6 - 0.03) for px, py in (base0, tip, base1)]
        c.poly(inner, mix(EAR_PINK, pal.base, 0.2))


def draw_ribbon(c: Canvas, at: Point, color: RGB, size: float = 1.0, tilt: float = 0.0) -> None:
    """A bow: two loops and two tails around a knot, centred at `at` (head units)."""
    x, y = at
    s = 0.2 * size
    line = shade(color, 0.55)
    dark = shade(color, 0.8)
    for d in (-1, 1):
        tail = [(x, y), (x + d * 0.5 * s, y + 1.45 * s), (x + d * 0.15 * s, y + 1.25 * s)]
        c.poly(tail, dark, line, 0.02)
    for d in (-1, 1):
        loop = path((x, y), ((x + d * 0.7 * s, y - (1.2 - tilt * d) * s), (x + d * 1.2 * s, y - 0.5 * s)),
                    ((x + d * 1.35 * s, y + 0.4 * s), (x, y)))
        c.poly(loop, color, line, 0.022)
        c.line(path((x + d * 0.2 * s, y - 0.1 * s), ((x + d * 0.7 * s, y - 0.5 * s), (x + d * 0.95 * s, y - 0.15 * s))),
               dark, 0.02)
    c.ellipse(x, y, 0.28 * s, 0.3 * s, color, line, 0.02)


def draw_hair_ties(c: Canvas, points: list[Point], color: RGB) -> None:
    for x, y in points:
        c.ellipse(x, y, 0.08, 0.08, color, shade(color, 0.55), 0.02)
        c.ellipse(x - 0.02, y - 0.025, 0.025, 0.02, mix(color, WHITE, 0.6))


def draw_hat(c: Canvas, color: RGB, side: int, style: int) -> None:
    """A beret (style 0) or a sun hat with a ribbon band (style 1), sitting on the crown."""
    line = shade(color, 0.5)
    if style == 0:
        cx, cy = 0.12 * side, -0.98
        body = path((cx - 0.8, cy + 0.18), ((cx - 0.95, cy - 0.32), (cx - 0.1 * side, cy - 0.36)),
                    ((cx + 0.95, cy - 0.36), (cx + 0.86, cy + 0.1)), ((cx, cy + 0.02), (cx - 0.8, cy + 0.18)))
        c.poly(body, color, line, 0.03)
        c.band(path((cx - 0.8, cy + 0.18), ((cx, cy + 0.02), (cx + 0.86, cy + 0.1))),
               path((cx - 0.78, cy + 0.08), ((cx, cy - 0.07), (cx + 0.84, cy + 0.0))), shade(color, 0.78))
        stalk = [(cx - 0.05, cy - 0.34), (cx - 0.02, cy - 0.5), (cx + 0.06, cy - 0.5), (cx + 0.06, cy - 0.34)]
        c.poly(stalk, color, line, 0.02)
        shine = path((cx - 0.55, cy - 0.2), ((cx - 0.3, cy - 0.33), (cx + 0.05, cy - 0.3)))
        c.line(shine, mix(color, WHITE, 0.4), 0.04)
        return
    brim = mix(color, (250, 236, 200), 0.5)
    c.poly(arc_points(0, -0.86, 1.32, 0.24, 0, 2 * math.pi, steps=40), brim, shade(brim, 0.55), 0.03)
    crown = path((-0.66, -0.86), ((-0.7, -1.42), (0.0, -1.42)), ((0.7, -1.42), (0.66, -0.86)))
    c.poly(crown, brim, shade(brim, 0.55), 0.03)
    hatband = (path((-0.67, -1.0), ((0.0, -0.96), (0.67, -1.0))), path((-0.66, -0.86), ((0.0, -0.82), (0.66, -0.86))))
    c.band(*hatband, color)
    c.ellipse(0.5 * side, -0.93, 0.1, 0.08, color, shade(color, 0.55), 0.02)


def draw_glasses(c: Canvas, color: RGB, round_frames: bool) -> None:
    """Thin frames around both eyes with a bridge and temples; a glint in each lens's corner."""
    # Frames clear of the eyes and thin: rims crossing an eye hide it from face detectors.
    width = 0.026
    for s in (-1, 1):
        x, y = EYE_X * s, EYE_Y + 0.02
        if round_frames:
            c.ellipse(x, y, 0.3, 0.31, None, color, width)
        else:
            c.draw.rounded_rectangle(c.box(x, y, 0.3, 0.3), radius=c.w(0.12), outline=color, width=c.w(width))
        c.line([(x + 0.16, y + 0.24), (x + 0.24, y + 0.14)], WHITE, 0.025)
        c.line([(x + 0.3 * s, y - 0.06), (0.98 * s, y - 0.12)], color, width)
    c.line(path((-0.12, EYE_Y - 0.02), ((0.0, EYE_Y - 0.08), (0.12, EYE_Y - 0.02))), color, width)


def draw_outfit(c: Canvas, gender: str, cloth: RGB, accent: RGB, skin: RGB, skin_shadow: RGB, line: RGB) -> None:
    """Neck, tiny shoulders and a collar: a sailor collar for girls, shirt and tie for boys."""
    c.poly([(-0.17, 0.7), (0.17, 0.7), (0.18, 1.15), (-0.18, 1.15)], skin, line, 0.025)
    c.poly(path((-0.17, 0.86), ((0.0, 0.98), (0.17, 0.86)), (0.17, 0.78), (-0.17, 0.78)), skin_shadow)
    right = path((0.2, 1.02), ((0.62, 1.04), (0.8, 1.3)), (0.95, 2.3))
    body = list(reversed(mirror(right))) + right
    c.poly(body, cloth, shade(cloth, 0.5), 0.03)
    if gender == "1girl":
        collar_color = mix(accent, (30, 40, 90), 0.5)
        flap = path((0.2, 1.0), ((0.62, 1.02), (0.82, 1.3)), (0.35, 1.42), (0.0, 1.5))
        collar = list(reversed(mirror(flap))) + flap
        c.poly(collar, collar_color, shade(collar_color, 0.5), 0.025)
        c.line(path((0.28, 1.08), ((0.6, 1.1), (0.72, 1.28)), (0.32, 1.36), (0.0, 1.42)), WHITE, 0.025)
        c.line(mirror(path((0.28, 1.08), ((0.6, 1.1), (0.72, 1.28)), (0.32, 1.36), (0.0, 1.42))), WHITE, 0.025)
        c.poly([(-0.2, 1.0), (0.2, 1.0), (0.0, 1.3)], skin, line, 0.02)
        draw_ribbon(c, (0.0, 1.36), accent, size=0.85)
    else:
        c.poly([(-0.22, 1.02), (0.22, 1.02), (0.0, 1.5)], WHITE, shade(cloth, 0.5), 0.02)
        c.poly([(-0.2, 1.0), (0.2, 1.0), (0.0, 1.24)], skin, line, 0.02)
        for s in (-1, 1):
            c.poly([(0.0, 1.24), (0.2 * s, 1.0), (0.3 * s, 1.12), (0.06 * s, 1.32)], WHITE, shade(cloth, 0.55), 0.02)
        c.poly([(-0.05, 1.26), (0.05, 1.26), (0.08, 1.7), (0.0, 1.8), (-0.08, 1.7)], accent, shade(accent, 0.5), 0.02)
        c.ellipse(0.0, 1.27, 0.06, 0.05, accent, shade(accent, 0.5), 0.02)
