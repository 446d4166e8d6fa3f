"""Contact sheets: a grid of thumbnails, optionally captioned, for eyeballing a curation run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from moepipe.images import ImageError, atomic_write, decode_rgb, encode_png

TILE = 96  # thumbnail side, px
CAPTION = 12  # caption strip height, px
GAP = 2


def placeholder(text: str, size: int = TILE) -> Image.Image:
    """A grey tile with a word on it, for images that cannot (or should not) be shown."""
    tile = Image.new("RGB", (size, size), (96, 96, 96))
    ImageDraw.Draw(tile).text((4, size // 2 - 6), text, fill=(235, 235, 235), font=ImageFont.load_default())
    return tile


def thumbnail(image: Image.Image, size: int = TILE) -> Image.Image:
    """The whole image scaled to fit a size × size tile, letterboxed on white."""
    copy = image.convert("RGB")
    copy.thumbnail((size, size), Image.Resampling.LANCZOS)
    tile = Image.new("RGB", (size, size), (255, 255, 255))
    tile.paste(copy, ((size - copy.width) // 2, (size - copy.height) // 2))
    return tile


def contact_sheet(tiles: list[tuple[Image.Image, str | None]], columns: int = 8) -> Image.Image:
    """Grid of (image, caption) tiles; captions, when any tile has one, go in a strip below each."""
    captioned = any(caption for _, caption in tiles)
    cell_h = TILE + (CAPTION if captioned else 0)
    columns = max(1, min(columns, len(tiles)))
    rows = max(1, math.ceil(len(tiles) / columns))
    sheet = Image.new("RGB", (columns * (TILE + GAP) + GAP, rows * (cell_h + GAP) + GAP), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for index, (image, caption) in enumerate(tiles):
        x = GAP + (index % columns) * (TILE + GAP)
        y = GAP + (index // columns) * (cell_h + GAP)
        sheet.paste(thumbnail(image), (x, y))
        if caption:
            draw.rectangle((x, y + TILE, x + TILE - 1, y + cell_h - 1), fill=(20, 20, 20))
            draw.text((x + 2, y + TILE), caption[:16], fill=(255, 220, 120), font=font)
    return sheet


def _rejected_tile(raw: Path, entry: dict[str, Any]) -> Image.Image:
    if entry["reason"] in ("rating", "excluded"):
        return placeholder("hidden")  # never render posts refused for their rating or opted out
    try:
        return decode_rgb((raw / entry["raw_file"]).read_bytes())
    except (ImageError, OSError, TypeError):
        return placeholder("undecodable")


def write_contact_sheets(limit: int, raw: Path, out: Path, kept: list[dict[str, Any]],
                         rejected: list[dict[str, Any]]) -> None:
    """out/contact_kept.png and out/contact_rejected.png, up to `limit` tiles each.

    Rejects are taken round-robin over reasons, so a rare reason still shows up on the sheet. Both
    files are always written (dvc.yaml declares them as plots): an empty side, or `limit` 0, gets
    one tile saying so.
    """
    tiles: list[tuple[Image.Image, str | None]] = []
    for record in kept[:limit]:
        with Image.open(out / record["file"]) as image:
            tiles.append((image.convert("RGB"), None))
    atomic_write(out / "contact_kept.png", encode_png(contact_sheet(tiles or [_empty(limit)])))
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for entry in rejected:
        by_reason.setdefault(entry["reason"], []).append(entry)
    queues = [iter(by_reason[reason]) for reason in sorted(by_reason)]
    chosen: list[dict[str, Any]] = []
    while queues and len(chosen) < limit:
        for queue in list(queues):
            entry = next(queue, None)
            if entry is None:
                queues.remove(queue)
            elif len(chosen) < limit:
                chosen.append(entry)
    tiles = [(_rejected_tile(raw, entry), entry["reason"]) for entry in chosen]
    atomic_write(out / "contact_rejected.png", encode_png(contact_sheet(tiles or [_empty(limit)])))


def _empty(limit: int) -> tuple[Image.Image, str | None]:
    return placeholder("none" if limit else "sheets off"), None
