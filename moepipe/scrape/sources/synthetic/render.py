"""Procedural chibi avatars with known attributes, and pictures that are clearly not avatars."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from moepipe.scrape.sources.synthetic import accessories, face, hair
from moepipe.scrape.sources.synthetic.canvas import RGB, Canvas, mix, shade
from moepipe.scrape.sources.synthetic.spec import EYE_COLORS, HAIR_COLORS, AvatarSpec, sample_spec

__all__ = ["AvatarSpec", "sample_spec", "render_avatar", "render_non_avatar", "SUPERSAMPLE"]

SUPERSAMPLE = 4  # drawn this many times larger, then downsampled: Pillow draws without anti-aliasing

_SKINS: tuple[RGB, ...] = ((255, 232, 218), (255, 226, 208), (252, 220, 200), (255, 236, 226))
_CLOTHES: tuple[RGB, ...] = ((250, 250, 252), (62, 70, 120), (236, 226, 206), (120, 150, 210),
                             (70, 70, 80), (240, 190, 205), (150, 196, 170), (180, 150, 120))
_ACCENTS: tuple[RGB, ...] = ((222, 50, 70), (60, 90, 200), (240, 160, 40), (40, 150, 110), (210, 90, 170))
_BRIGHT: tuple[RGB, ...] = ((232, 52, 82), (250, 120, 170), (255, 255, 255), (70, 120, 230), (250, 210, 60),
                            (120, 80, 200), (60, 170, 120))
_FRAMES: tuple[RGB, ...] = ((40, 36, 48), (120, 60, 40), (170, 40, 60), (50, 60, 120))


@dataclass(frozen=True)
class Look:
    """Everything random about a picture that is not an attribute (pose, colours of clothes...).

    Drawn up front in a fixed order, so two specs rendered with equally seeded generators differ
    only where their attributes differ.
    """

    bg_light: RGB
    bg_deep: RGB
    bg_angle: float
    bubbles: tuple[tuple[float, float, float, float], ...]  # (x, y, radius as frame fractions, tone 0..1)
    dx: float
    dy: float
    scale: float
    skin: RGB
    hair_delta: tuple[int, int, int]
    eye_delta: tuple[int, int, int]
    cloth: RGB
    accent: RGB
    ribbon: RGB
    hat: RGB
    frames: RGB
    tie: RGB
    side: int
    bang_count: int
    bang_jitter: tuple[float, ...]
    sweep: float
    hat_style: int
    round_glasses: bool
    ahoge: bool
    tilt: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Look:
        def pick(options: tuple[RGB, ...]) -> RGB:
            return options[int(rng.integers(len(options)))]

        hue = float(rng.random())
        light = _hsv(hue, float(rng.uniform(0.04, 0.2)), float(rng.uniform(0.96, 1.0)))
        deep = _hsv((hue + float(rng.uniform(-0.1, 0.1))) % 1.0, float(rng.uniform(0.25, 0.5)),
                    float(rng.uniform(0.64, 0.9)))
        return cls(
            # A strong gradient in a random direction: the pictures' coarse brightness layouts
            # (what perceptual hashes see) then differ, so distinct avatars are not near duplicates.
            bg_light=light, bg_deep=deep, bg_angle=float(rng.uniform(0, 2 * math.pi)),
            bubbles=tuple((float(x), float(y), float(r), float(t)) for x, y, r, t in zip(
                rng.uniform(0, 1, 4), rng.uniform(0, 1, 4), rng.uniform(0.1, 0.4, 4), rng.uniform(0, 1, 4)
            ))[: int(rng.integers(0, 5))],
            dx=float(rng.uniform(-0.06, 0.06)), dy=float(rng.uniform(-0.03, 0.035)),
            scale=float(rng.uniform(0.88, 1.05)),
            skin=pick(_SKINS),
            hair_delta=tuple(int(v) for v in rng.integers(-10, 11, 3)),  # type: ignore[arg-type]
            eye_delta=tuple(int(v) for v in rng.integers(-8, 9, 3)),  # type: ignore[arg-type]
            cloth=pick(_CLOTHES), accent=pick(_ACCENTS), ribbon=pick(_BRIGHT), hat=pick(_BRIGHT),
            frames=pick(_FRAMES), tie=pick(_ACCENTS),
            side=1 if rng.random() < 0.5 else -1,
            bang_count=int(rng.integers(5, 8)),
            bang_jitter=tuple(float(v) for v in rng.uniform(-1, 1, 8)),
            sweep=float(rng.uniform(-0.06, 0.06)),
            hat_style=int(rng.integers(2)),
            round_glasses=bool(rng.random() < 0.5),
            ahoge=bool(rng.random() < 0.3),
            tilt=float(rng.uniform(-0.14, 0.14)),
        )


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (int(r * 255), int(g * 255), int(b * 255))


def _nudge(color: RGB, delta: tuple[int, ...]) -> RGB:
    return tuple(max(0, min(255, c + d)) for c, d in zip(color, delta))  # type: ignore[return-value]


def _vertical_gradient(size: int, top: RGB, bottom: RGB) -> Image.Image:
    return _gradient(size, top, bottom, math.pi / 2)


def _gradient(size: int, start: RGB, end: RGB, angle: float) -> Image.Image:
    """A linear gradient from `start` to `end` along `angle` (radians, 0 = left to right)."""
    small = max(2, size // SUPERSAMPLE)
    axis = np.linspace(-1.0, 1.0, small, dtype=np.float32)
    t = (axis[None, :] * math.cos(angle) + axis[:, None] * math.sin(angle)) / math.sqrt(2) * 0.5 + 0.5
    a, b = np.asarray(start, np.float32), np.asarray(end, np.float32)
    pixels = a + (b - a) * t[..., None]
    return Image.fromarray(np.round(pixels).astype(np.uint8), "RGB").resize((size, size), Image.BILINEAR)


def render_avatar(attrs: AvatarSpec, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one chibi avatar showing `attrs`; RGB, size x size; same inputs give the same pixels."""
    look = Look.sample(rng)
    side_px = size * SUPERSAMPLE
    image = _gradient(side_px, look.bg_light, look.bg_deep, look.bg_angle)
    draw = ImageDraw.Draw(image)
    for x, y, radius, tone in look.bubbles:
        box = [(x - radius) * side_px, (y - radius) * side_px, (x + radius) * side_px, (y + radius) * side_px]
        draw.ellipse(box, fill=mix(look.bg_light, look.bg_deep, tone))
    c = Canvas(image, side_px * (0.5 + look.dx), side_px * (0.47 + look.dy), side_px * 0.29 * look.scale)

    hair_pal = hair.HairPalette.of(_nudge(HAIR_COLORS[attrs.hair_color], look.hair_delta))
    eye_pal = face.EyePalette.of(_nudge(EYE_COLORS[attrs.eye_color], look.eye_delta))
    skin = face.SkinPalette.of(look.skin)
    girl = attrs.gender == "1girl"
    lash = mix((44, 26, 34), hair_pal.line, 0.25)

    c.tilt = look.tilt
    hair.draw_back(c, attrs.hairstyle, attrs.gender, hair_pal, look.side)
    c.tilt = 0.0  # the body stays upright; only the head leans
    accessories.draw_outfit(c, attrs.gender, look.cloth, look.accent, skin.base, skin.shadow, skin.line)
    c.tilt = look.tilt
    if attrs.has("cat_ears"):
        accessories.draw_cat_ears(c, hair_pal)
    face.draw_face(c, skin)
    if attrs.blush:
        face.draw_blush(c, skin)
    face.draw_eyes(c, attrs.expression, eye_pal, lash, girl, skin)
    face.draw_mouth(c, attrs.expression, skin)
    hair.draw_front(c, attrs.hairstyle, attrs.gender, hair_pal, look.bang_count, list(look.bang_jitter),
                    look.sweep, skin.shadow)
    face.draw_brows(c, attrs.expression, hair_pal.line)
    if look.ahoge and not attrs.has("hat"):
        hair.draw_ahoge(c, hair_pal, look.side)

    ties = hair.tie_points(attrs.hairstyle, look.side)
    if attrs.has("hair_ribbon"):
        for point in ties or [(0.78 * look.side, -0.8)]:
            accessories.draw_ribbon(c, point, look.ribbon, size=1.7 if ties else 2.0, tilt=0.15 * look.side)
    elif ties:
        accessories.draw_hair_ties(c, ties, look.tie)
    if attrs.has("hat"):
        accessories.draw_hat(c, look.hat, look.side, look.hat_style)
    if attrs.has("glasses"):
        accessories.draw_glasses(c, look.frames, look.round_glasses)
    # reducing_gap: a box pre-reduction then Lanczos; as sharp to the eye and twice as fast.
    return image.resize((size, size), Image.LANCZOS, reducing_gap=2.0)


# --------------------------------------------------------------------------------------------
# Pictures that are not avatars: the dirt a face filter should catch
# --------------------------------------------------------------------------------------------

def _landscape(draw: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    sun = (int(rng.uniform(0.15, 0.85) * s), int(rng.uniform(0.1, 0.35) * s))
    radius = int(rng.uniform(0.06, 0.12) * s)
    draw.ellipse([sun[0] - radius, sun[1] - radius, sun[0] + radius, sun[1] + radius], fill=(255, 236, 150))
    for layer in range(3):
        base = rng.uniform(0.45, 0.6) + layer * 0.13
        freq, phase, amp = rng.uniform(1.5, 4.0), rng.uniform(0, 6.3), rng.uniform(0.03, 0.08)
        ridge = [(x, int(s * (base + amp * math.sin(freq * x / s * 6.28 + phase)))) for x in range(0, s + 8, 8)]
        green = _hsv(float(rng.uniform(0.22, 0.4)), 0.45 + 0.1 * layer, 0.75 - 0.15 * layer)
        draw.polygon(ridge + [(s, s), (0, s)], fill=green)
    for _ in range(int(rng.integers(2, 6))):
        x, y = int(rng.uniform(0.05, 0.95) * s), int(rng.uniform(0.7, 0.92) * s)
        h = int(rng.uniform(0.08, 0.16) * s)
        draw.rectangle([x - h // 12, y - h // 2, x + h // 12, y], fill=(110, 74, 50))
        draw.ellipse([x - h // 3, y - h, x + h // 3, y - h // 3], fill=_hsv(float(rng.uniform(0.25, 0.38)), 0.6, 0.5))


def _shapes(draw: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(10, 24))):
        color = _hsv(float(rng.random()), float(rng.uniform(0.4, 0.9)), float(rng.uniform(0.5, 1.0)))
        x0, y0 = rng.uniform(-0.1, 0.9, 2) * s
        w, h = rng.uniform(0.08, 0.4, 2) * s
        box = [float(x0), float(y0), float(x0 + w), float(y0 + h)]
        kind = int(rng.integers(3))
        if kind == 0:
            draw.rectangle(box, fill=color)
        elif kind == 1:
            draw.ellipse(box, fill=color)
        else:
            draw.polygon([(box[0], box[3]), ((box[0] + box[2]) / 2, box[1]), (box[2], box[3])], fill=color)


def _text_page(draw: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    ink = _hsv(float(rng.random()), float(rng.uniform(0.3, 0.8)), float(rng.uniform(0.2, 0.5)))
    stamp = _hsv(float(rng.random()), 0.7, 0.9)
    line_h = int(s * rng.uniform(0.045, 0.07))
    y = int(s * 0.1)
    draw.rectangle([int(s * 0.08), y, int(s * rng.uniform(0.4, 0.8)), y + int(line_h * 1.4)], fill=stamp)
    y += int(line_h * 2.4)
    while y < s * 0.9:
        x = int(s * 0.08)
        while x < s * 0.88:
            word = int(rng.integers(2, 9)) * line_h // 3
            draw.rectangle([x, y, min(x + word, int(s * 0.92)), y + line_h * 2 // 3], fill=ink)
            x += word + line_h // 2
        y += int(line_h * 1.6)


def render_non_avatar(size: int, rng: np.random.Generator) -> Image.Image:
    """A landscape, abstract shapes or a text-like page: colourful, but no face anywhere; RGB."""
    kind = int(rng.integers(3))
    s = size * 2
    if kind == 0:
        image = _vertical_gradient(s, _hsv(float(rng.uniform(0.5, 0.65)), 0.45, 0.95), (250, 240, 230))
        _landscape(ImageDraw.Draw(image), s, rng)
    elif kind == 1:
        image = _vertical_gradient(s, _hsv(float(rng.random()), 0.3, 0.9), _hsv(float(rng.random()), 0.5, 0.8))
        _shapes(ImageDraw.Draw(image), s, rng)
    else:
        paper = _hsv(float(rng.uniform(0.05, 0.15)), float(rng.uniform(0.06, 0.2)), 0.97)
        image = _vertical_gradient(s, paper, shade(paper, 0.9))
        _text_page(ImageDraw.Draw(image), s, rng)
    return image.resize((size, size), Image.LANCZOS)
