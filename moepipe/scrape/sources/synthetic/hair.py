"""Hair: the back layer (silhouette of each hairstyle) and the front layer (cap, bangs, side locks)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from moepipe.scrape.sources.synthetic.canvas import RGB, Canvas, Point, arc_points, mirror, mix, path, shade

# The skull the hair sits on: slightly larger than the face, centred a little higher.
CAP_CY, CAP_RX, CAP_RY = -0.06, 1.12, 1.06

FRINGE_EDGE = 0.74  # the fringe spans x in [-FRINGE_EDGE, FRINGE_EDGE], inside the side locks

# How far the side locks framing the face hang, head units below the head centre.
_LOCK_LENGTH = {"short_hair": 0.45, "long_hair": 1.3, "twintails": 0.85, "ponytail": 0.6, "bob_cut": 0.8}


@dataclass(frozen=True)
class HairPalette:
    base: RGB
    back: RGB    # the inside of the hair, seen behind the head: darker than the outside
    shadow: RGB
    line: RGB
    shine: RGB

    @classmethod
    def of(cls, base: RGB) -> HairPalette:
        light = sum(base) / 3 > 200
        # Very light hair needs a cool grey shadow, or it vanishes into a pastel background.
        shadow = mix(base, (120, 120, 170), 0.35) if light else shade(base, 0.72)
        line = shade(mix(base, (40, 30, 60), 0.35), 0.55 if light else 0.6)
        return cls(base, mix(base, shadow, 0.7), shadow, line, mix(base, (255, 255, 255), 0.5))


def cap_point(angle: float, grow: float = 0.0) -> Point:
    return (math.cos(angle) * (CAP_RX + grow), CAP_CY + math.sin(angle) * (CAP_RY + grow))


def tie_points(hairstyle: str, side: int) -> list[Point]:
    """Where twintails and ponytails are gathered: hair ties and ribbons go there."""
    if hairstyle == "twintails":
        return [(-0.98, -0.66), (0.98, -0.66)]
    if hairstyle == "ponytail":
        return [(0.7 * side, -1.0)]
    return []


def _back_shape(style: str, gender: str) -> list[Point]:
    """The silhouette behind the head, including what shows below the chin."""
    if style == "long_hair":
        top = arc_points(0, -0.05, 1.17, 1.1, math.pi, 2 * math.pi)
        right = path(top[-1], ((1.32, 0.6), (1.36, 1.35)), (1.30, 1.78), (1.08, 1.66), (0.86, 1.86), (0.6, 1.7))
        return top + right[1:] + list(reversed(mirror(right[1:])))
    if style == "bob_cut":
        top = arc_points(0, -0.05, 1.2, 1.12, math.pi, 2 * math.pi)
        right = path(top[-1], ((1.3, 0.45), (1.2, 0.86)), ((1.12, 0.95), (0.9, 0.9)))
        return top + right[1:] + list(reversed(mirror(right[1:])))
    boy = gender == "1boy"
    nape = 0.55 if boy else (0.62 if style == "short_hair" else 0.78)
    top = arc_points(0, -0.05, 1.15, 1.09, math.pi, 2 * math.pi)
    right = path(top[-1], ((1.14, 0.35), (0.98 if boy else 1.04, nape)), ((0.9, nape + 0.1), (0.7, nape)))
    return top + right[1:] + list(reversed(mirror(right[1:])))


def _tail_shape(style: str) -> list[Point]:
    """One twintail or ponytail on the right side (mirror it for the left)."""
    if style == "twintails":
        return path((0.82, -0.8), ((1.32, -0.98), (1.44, -0.4)), ((1.62, 0.5), (1.36, 1.5)),
                    (1.3, 1.62), ((1.26, 0.55), (1.06, -0.1)), (0.86, -0.45))
    return path((0.5, -1.02), ((1.02, -1.34), (1.42, -0.82)), ((1.72, 0.1), (1.44, 1.12)),
                (1.36, 1.22), ((1.38, 0.2), (1.1, -0.42)), (0.84, -0.7))


def draw_back(c: Canvas, style: str, gender: str, pal: HairPalette, side: int) -> None:
    """Everything of the hair that lies behind the face and body."""
    if style in ("twintails", "ponytail"):
        tail = _tail_shape(style)
        tails = [tail, mirror(tail)] if style == "twintails" else [tail if side > 0 else mirror(tail)]
        for shape in tails:
            c.poly(shape, pal.base, pal.line, 0.03)
            s = 1 if shape[0][0] > 0 else -1
            strand = path((0.95 * s, -0.7), ((1.45 * s, -0.2), (1.42 * s, 0.9)))
            c.line(strand, pal.shadow, 0.03)
            c.line(path((1.1 * s, -0.6), ((1.28 * s, 0.3), (1.3 * s, 1.2))), pal.shine, 0.025)
    c.poly(_back_shape(style, gender), pal.back, pal.line, 0.03)


def _bangs(style: str, gender: str, count: int, jitter: list[float], sweep: float) -> list[Point]:
    """The lower edge of the fringe from right to left: notches up in the hair, tips down."""
    blunt = style == "bob_cut"
    spiky = gender == "1boy" and style == "short_hair"
    edge = FRINGE_EDGE
    width = 2 * edge / count
    tip_y, notch_y = (0.02, -0.1) if blunt else ((-0.02, -0.42) if spiky else (0.0, -0.34))
    points: list[Point] = [(edge, -0.04)]
    for k in range(count):
        x_tip = edge - (k + 0.5) * width
        centre = 1.0 - abs(x_tip) / edge  # middle strands hang a little longer
        tip = (x_tip + sweep * (0.5 + centre), tip_y + 0.05 * centre + 0.05 * jitter[k])
        notch_x = edge - (k + 1) * width
        bend = sweep + (0.06 if x_tip > 0 else -0.06)
        mid = ((points[-1][0] + tip[0]) / 2 + bend, (points[-1][1] + tip[1]) / 2)
        points += path(points[-1], (mid, tip), steps=5)[1:]
        if k < count - 1:
            notch = (notch_x, notch_y + 0.05 * jitter[k + 1])
            mid = ((tip[0] + notch[0]) / 2 - bend * 0.5, (tip[1] + notch[1]) / 2)
            points += path(tip, (mid, notch), steps=5)[1:]
    points.append((-edge, -0.04))
    return points


def _side_lock(style: str, gender: str) -> list[Point]:
    """The right lock framing the face, from the cap down to its tip and back up inside."""
    length = _LOCK_LENGTH[style] - (0.1 if gender == "1boy" else 0.0)
    start = cap_point(0.14)
    if style == "bob_cut":
        return path(start, ((1.14, 0.5), (1.1, length)), (0.84, length + 0.02), ((0.8, 0.35), (FRINGE_EDGE, -0.04)))
    return path(start, ((1.12, length * 0.55), (0.96, length)), ((0.84, length * 0.45), (FRINGE_EDGE, -0.04)))


def front_shape(style: str, gender: str, bangs: list[Point]) -> list[Point]:
    """The front hair as one polygon: cap over the top, right lock, fringe, left lock."""
    angles = [math.pi - 0.14 + (math.pi + 0.28) * k / 32 for k in range(33)]
    if gender == "1boy" and style == "short_hair":
        # Tufts sticking out of the outline tell a boy's short cut from a bowl cut.
        cap = [cap_point(a, 0.13 if k % 5 == 3 and 2 < k < 30 else 0.0) for k, a in enumerate(angles)]
    else:
        cap = [cap_point(a) for a in angles]
    right = _side_lock(style, gender)
    left = list(reversed(mirror(right)))
    return cap + right[1:] + bangs + left[:-1]


def draw_front(c: Canvas, style: str, gender: str, pal: HairPalette, count: int,
               jitter: list[float], sweep: float, skin_shadow: RGB) -> None:
    """Cap, fringe and side locks, with the fringe's shadow on the forehead and a shine band."""
    bangs = _bangs(style, gender, count, jitter, sweep)
    shape = front_shape(style, gender, bangs)
    c.band(bangs, [(x * 0.97, y + 0.08) for x, y in bangs], skin_shadow)
    c.poly(shape, pal.base, pal.line, 0.03)
    inner = arc_points(0, CAP_CY, CAP_RX * 0.8, CAP_RY * 0.8, math.pi * 1.2, math.pi * 1.8, steps=12)
    outer = arc_points(0, CAP_CY, CAP_RX * 0.67, CAP_RY * 0.67, math.pi * 1.2, math.pi * 1.8, steps=12)
    zigzag = [(x, y + (0.07 if k % 2 else 0.0)) for k, (x, y) in enumerate(outer)]
    c.band(inner, zigzag, pal.shine)
    for k in range(1, count):
        x = FRINGE_EDGE - k * 2 * FRINGE_EDGE / count
        strand = path((x * 0.75, -0.72), ((x * 0.92, -0.5), (x + sweep * 0.3, -0.36 + 0.05 * jitter[k])))
        c.line(strand, pal.line, 0.018)


def draw_ahoge(c: Canvas, pal: HairPalette, side: int) -> None:
    """The single rebellious strand on top of the head that anime gives cheerful characters."""
    root = cap_point(-math.pi / 2 + 0.08 * side, -0.04)
    shape = path(root, ((0.05 * side, -1.5), (0.34 * side, -1.44)),
                 ((0.12 * side, -1.36), (root[0] - 0.1 * side, root[1])))
    c.poly(shape, pal.base, pal.line, 0.025)
