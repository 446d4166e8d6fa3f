"""Image bytes: type by magic bytes, dimensions before decode, content hashes, atomic files
(and the JSON reports written with them), tile grids.

Shared by scrape (validating downloads), curate (decoding) and the sources. Nothing here trusts a
file name, a URL or a Content-Type header.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

if TYPE_CHECKING:
    import numpy as np

EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "gif": ".gif"}
HEADER_HEIGHT = 14  # px of the column-header band of `grid`


class ImageError(ValueError):
    """Bytes that are not an acceptable image. `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def sniff_kind(head: bytes) -> str | None:
    """Image type from the first bytes: 'jpeg', 'png', 'webp', 'gif' or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


@dataclass(frozen=True)
class ImageHeader:
    kind: str
    width: int
    height: int


def read_header(data: bytes, max_pixels: int) -> ImageHeader:
    """Type and dimensions from the header only, refusing decompression bombs before decoding."""
    kind = sniff_kind(data[:16])
    if kind is None:
        raise ImageError("not_image", "magic bytes match no JPEG, PNG, WebP or GIF")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # lazy: parses the header only
                width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("too_many_pixels", "declared size is a decompression bomb") from None
    except Exception as error:  # Pillow raises many types for broken headers
        raise ImageError("corrupt", f"header unreadable ({type(error).__name__})") from None
    if width <= 0 or height <= 0:
        raise ImageError("corrupt", "zero-sized image")
    if width * height > max_pixels:
        raise ImageError("too_many_pixels", f"{width}x{height} exceeds {max_pixels} pixels")
    return ImageHeader(kind, width, height)


def decode_rgb(data: bytes, max_pixels: int = 40_000_000) -> Image.Image:
    """Fully decode to RGB (first frame of animations); raises ImageError for broken files."""
    read_header(data, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "P", "PA"):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return image.convert("RGB")
    except ImageError:
        raise
    except Exception as error:
        raise ImageError("corrupt", f"decode failed ({type(error).__name__})") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes, *, fsync: bool = True, mode: int | None = None) -> None:
    """Write bytes so that `path` holds either nothing or the whole content, even after kill -9.

    The bytes go to a temporary file beside `path` (.tmp-*, see remove_partials) that is renamed
    over it. `fsync=False` skips flushing them to disk first: other processes still never see a
    partial file, but a power cut may leave an empty one, so only for outputs that a crashed run
    redoes anyway and where an fsync per file costs more than making it (curated crops).
    `mode` sets the file's permissions (e.g. 0o600 for secrets) before any byte is written, so
    the content is never briefly readable by others; without it the file gets those of mkstemp
    (0o600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any, *, mode: int | None = None) -> None:
    """A JSON report or state file, atomically: indented by 2, UTF-8, ending in a newline."""
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"), mode=mode)


def remove_partials(folder: Path) -> int:
    """Delete temporary files left by an interrupted atomic_write; returns how many."""
    count = 0
    if folder.is_dir():
        for leftover in folder.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)
            count += 1
    return count


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def grid(images: np.ndarray, columns: int, captions: Sequence[str] | None = None,
         caption_width: int = 150, gap: int = 2, headers: Sequence[str] | None = None) -> Image.Image:
    """Tile (N, R, R, 3) uint8 into rows of `columns`, `gap` px of white between tiles.

    Optional: a caption per row in a `caption_width` px column on the left (multi-line text) and a
    header per column in a band on top (cut to the tile's width, so a long tag cannot run into the
    next). The evaluate pictures, `moepipe generate` and the training sample grids all use it.
    """
    n, size = len(images), images.shape[1]
    rows = max(1, -(-n // columns))
    left, top = caption_width if captions else 0, HEADER_HEIGHT if headers else 0
    canvas = Image.new("RGB", (left + columns * (size + gap) - gap, top + rows * (size + gap) - gap),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(images):
        r, c = divmod(i, columns)
        canvas.paste(Image.fromarray(tile), (left + c * (size + gap), top + r * (size + gap)))
    for r, caption in enumerate(captions or []):
        draw.multiline_text((4, top + r * (size + gap) + 2), caption, fill=(40, 40, 40), spacing=1)
    for c, header in enumerate(headers or []):
        while header and draw.textlength(header) > size:
            header = header[:-1]
        draw.text((left + c * (size + gap), 1), header, fill=(40, 40, 40))
    return canvas
