"""Contact sheets of the synthetic gallery: every attribute value, and one of each kind of dirt.

    python -m moepipe.scrape.sources.synthetic.preview docs/preview.png   # also writes docs/preview-dirt.png
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFile, ImageFont

from moepipe.config import SyntheticSource
from moepipe.images import sniff_kind
from moepipe.scrape.sources.base import Post
from moepipe.scrape.sources.synthetic.gallery import DIRT_KINDS, iter_posts
from moepipe.scrape.sources.synthetic.render import render_avatar
from moepipe.scrape.sources.synthetic.spec import EXPRESSIONS, EYE_COLORS, HAIR_COLORS, HAIRSTYLES, AvatarSpec

TILE, GAP = 128, 4
_ACCESSORY_CYCLE: tuple[tuple[str, ...], ...] = (
    (), ("hair_ribbon",), ("glasses",), (), ("cat_ears",), ("hat",), ("cat_ears", "hair_ribbon"), ("glasses", "hat"),
)


def preview_specs(count: int = 48) -> list[AvatarSpec]:
    """Specs that together show every hair colour, hairstyle, eye colour, expression and accessory."""
    hair, eyes = tuple(HAIR_COLORS), tuple(EYE_COLORS)
    specs = []
    for i in range(count):
        style = HAIRSTYLES[(i // 2 + i) % len(HAIRSTYLES)]
        boy = i % 4 == 3 and style != "twintails"
        specs.append(AvatarSpec(
            hair_color=hair[i % len(hair)], hairstyle=style, eye_color=eyes[(i * 5 + i // 6) % len(eyes)],
            expression=EXPRESSIONS[(i // 3 + i) % len(EXPRESSIONS)], gender="1boy" if boy else "1girl",
            accessories=_ACCESSORY_CYCLE[(i + i // 8) % len(_ACCESSORY_CYCLE)], blush=i % 3 == 0,
        ))
    return specs


def avatar_sheet(columns: int = 8, rows: int = 6, seed: int = 7) -> Image.Image:
    """A grid of clean avatars, TILE px each with GAP px between."""
    sheet = Image.new("RGB", (columns * (TILE + GAP) - GAP, rows * (TILE + GAP) - GAP), (255, 255, 255))
    for i, spec in enumerate(preview_specs(columns * rows)):
        tile = render_avatar(spec, TILE, np.random.default_rng([seed, i]))
        sheet.paste(tile, ((i % columns) * (TILE + GAP), (i // columns) * (TILE + GAP)))
    return sheet


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the bitmap font has one size
        return ImageFont.load_default()


def _placeholder(lines: list[str]) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE), (236, 236, 240))
    draw = ImageDraw.Draw(tile)
    for k in range(-TILE, TILE, 12):  # hatching says 'no picture here'
        draw.line([(k, 0), (k + TILE, TILE)], fill=(222, 222, 228), width=3)
    draw.multiline_text((TILE // 2, TILE // 2), "\n".join(lines), fill=(90, 60, 70), font=_font(12),
                        anchor="mm", align="center", spacing=4)
    return tile


def _partial_decode(data: bytes) -> Image.Image:
    """Decode what survives of a truncated file (Pillow fills the rest grey)."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def dirt_sheet(seed: int = 0) -> Image.Image:
    """One row: a clean post, then the first post of each dirt kind, each captioned."""
    cfg = SyntheticSource(kind="synthetic", limit=200, seed=seed)
    first: dict[str | None, Post] = {}
    for post in iter_posts(cfg, "synthetic"):
        first.setdefault(post.extra["truth"]["dirt"], post)
    caption_h = 34
    kinds: list[str | None] = [None, *DIRT_KINDS]
    sheet = Image.new("RGB", (len(kinds) * (TILE + GAP) - GAP, TILE + caption_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for column, kind in enumerate(kinds):
        post = first.get(kind)
        if post is None:
            continue
        data, truth = post.data or b"", post.extra["truth"]
        detail = f"post {post.post_id}"
        if kind == "corrupt":
            magic = (sniff_kind(data[:16]) or "no").upper()
            tile = _placeholder(["corrupt", f"{magic} magic bytes,", "then random bytes"])
        elif kind == "truncated":
            tile = _partial_decode(data).resize((TILE, TILE))
            detail = f"{len(data)} bytes, cut short"
        else:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            tile = Image.new("RGB", (TILE, TILE), (245, 245, 245))
            tile.paste(image, ((TILE - image.width) // 2, (TILE - image.height) // 2))
            if kind == "tiny":
                detail = f"{image.width} px"
            elif truth["of"] is not None:
                detail = f"post {post.post_id} = copy of {truth['of']}"
        x = column * (TILE + GAP)
        sheet.paste(tile, (x, 0))
        draw.text((x + TILE // 2, TILE + 4), kind or "clean", fill=(40, 30, 50), font=_font(12), anchor="ma")
        draw.text((x + TILE // 2, TILE + 19), detail, fill=(110, 100, 120), font=_font(10), anchor="ma")
    return sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG for the avatar grid")
    parser.add_argument("--dirt", type=Path, default=None, help="PNG for the dirt row (default: OUT-dirt.png)")
    args = parser.parse_args(argv)
    dirt_out = args.dirt or args.out.with_name(f"{args.out.stem}-dirt{args.out.suffix}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    avatar_sheet().save(args.out, optimize=True)
    dirt_sheet().save(dirt_out, optimize=True)
    print(f"wrote {args.out} and {dirt_out}")


if __name__ == "__main__":
    main()
