"""Image bytes: type by magic bytes, dimensions before decode, content hashes, atomic files.

Shared by scrape (validating downloads), curate (decoding) and the sources. Nothing here trusts a
file name, a URL or a Content-Type header.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "gif": ".gif"}


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


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes so that `path` holds either nothing or the whole content, even after kill -9."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
