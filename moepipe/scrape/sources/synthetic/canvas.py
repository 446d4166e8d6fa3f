"""Drawing in head units: a supersampled Pillow canvas whose coordinates follow the head.

Every part of an avatar is laid out relative to the head: (0, 0) is its centre, 1.0 its radius,
y grows downward. Moving or scaling the head (jitter) then moves every part with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]
Point = tuple[float, float]

NECK_Y = 0.85  # the head tilts about this point below its centre


def mix(a: RGB, b: RGB, t: float) -> RGB:
    """Linear blend from colour a (t=0) to b (t=1)."""
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def shade(color: RGB, factor: float) -> RGB:
    """Darken (factor < 1) towards black; hair shadows stay saturated that way."""
    return tuple(max(0, min(255, int(round(c * factor)))) for c in color)  # type: ignore[return-value]


def quad(p0: Point, p1: Point, p2: Point, steps: int = 8) -> list[Point]:
    """Points of a quadratic Bézier from p0 to p2 pulled towards p1 (p0 excluded)."""
    out = []
    for k in range(1, steps + 1):
        t = k / steps
        a, b, c = (1 - t) ** 2, 2 * (1 - t) * t, t * t
        out.append((a * p0[0] + b * p1[0] + c * p2[0], a * p0[1] + b * p1[1] + c * p2[1]))
    return out


def path(start: Point, *segments: tuple[Point, Point] | Point, steps: int = 8) -> list[Point]:
    """A polyline: a bare point is a corner, a (control, end) pair is a smooth curve to `end`."""
    points = [start]
    for segment in segments:
        if isinstance(segment[0], tuple):
            control, end = segment  # type: ignore[misc]
            points.extend(quad(points[-1], control, end, steps))
        else:
            points.append(segment)  # type: ignore[arg-type]
    return points


def mirror(points: Iterable[Point]) -> list[Point]:
    return [(-x, y) for x, y in points]


def arc_points(cx: float, cy: float, rx: float, ry: float, start: float, end: float, steps: int = 24) -> list[Point]:
    """Points on an ellipse from angle `start` to `end` (radians; y down, so -pi/2 is the top)."""
    return [
        (cx + rx * math.cos(start + (end - start) * k / steps), cy + ry * math.sin(start + (end - start) * k / steps))
        for k in range(steps + 1)
    ]


@dataclass
class Canvas:
    """A supersampled RGB image plus the head frame that maps head units to pixels."""

    image: Image.Image
    cx: float
    cy: float
    r: float
    tilt: float = 0.0  # radians, clockwise, about the neck; ellipses move but stay upright

    def __post_init__(self) -> None:
        self.draw = ImageDraw.Draw(self.image)

    def p(self, x: float, y: float) -> Point:
        if self.tilt:
            cos, sin = math.cos(self.tilt), math.sin(self.tilt)
            y -= NECK_Y
            x, y = x * cos - y * sin, x * sin + y * cos
            y += NECK_Y
        return (self.cx + x * self.r, self.cy + y * self.r)

    def pts(self, points: Sequence[Point]) -> list[Point]:
        return [self.p(x, y) for x, y in points]

    def box(self, x: float, y: float, rx: float, ry: float) -> list[float]:
        """Pixel bounding box of an ellipse centred at (x, y) with radii (rx, ry), head units."""
        x0, y0 = self.p(x - rx, y - ry)
        x1, y1 = self.p(x + rx, y + ry)
        return [x0, y0, x1, y1]

    def w(self, thickness: float) -> int:
        """Line width in pixels for a thickness in head units."""
        return max(1, int(round(thickness * self.r)))

    def poly(self, points: Sequence[Point], fill: RGB | None, line: RGB | None = None, width: float = 0.0) -> None:
        xy = self.pts(points)
        self.draw.polygon(xy, fill=fill)
        if line is not None and width > 0:
            # polygon(width=) draws inside the edge; a closed line is centred and joins cleanly.
            self.draw.line(xy + xy[:2], fill=line, width=self.w(width), joint="curve")

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill: RGB | None,
                line: RGB | None = None, width: float = 0.0) -> None:
        self.draw.ellipse(self.box(x, y, rx, ry), fill=fill, outline=line,
                          width=self.w(width) if line is not None else 0)

    def line(self, points: Sequence[Point], color: RGB, width: float) -> None:
        self.draw.line(self.pts(points), fill=color, width=self.w(width), joint="curve")

    def band(self, inner: Sequence[Point], outer: Sequence[Point], fill: RGB) -> None:
        """Fill the strip between two polylines (a lash line, a closed-eye arc, a hair shine)."""
        self.poly(list(inner) + list(reversed(outer)), fill)

    def soft(self, color: RGB, draw_mask, blur: float, opacity: float = 1.0) -> None:
        """Paint `color` through a blurred mask drawn by draw_mask(canvas_draw, canvas)."""
        mask = Image.new("L", self.image.size, 0)
        draw_mask(ImageDraw.Draw(mask), self)
        bbox = mask.getbbox()
        if bbox is None:
            return
        # Blurring only around the shape is much cheaper than blurring the whole canvas.
        pad = int(3 * blur * self.r) + 2
        x0, y0 = max(0, bbox[0] - pad), max(0, bbox[1] - pad)
        x1, y1 = min(mask.width, bbox[2] + pad), min(mask.height, bbox[3] + pad)
        region = mask.crop((x0, y0, x1, y1)).filter(ImageFilter.GaussianBlur(blur * self.r))
        if opacity < 1.0:
            region = region.point(lambda v: int(v * opacity))
        self.image.paste(color, (x0, y0, x1, y1), region)
