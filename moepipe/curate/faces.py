"""Face detection (animeface) and square crops: a face with margin, or the centre of a portrait."""

from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from moepipe.config import FacesConfig


@dataclass(frozen=True)
class FaceBox:
    """A detected face in original-image pixels: top-left corner, size and detector likelihood."""

    x: int
    y: int
    width: int
    height: int
    likelihood: float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "likelihood": round(self.likelihood, 4)}


class _LegacyImaging(ctypes.Structure):
    """Pillow 4.2.1's ImagingMemoryInstance, the layout animeface's C extension is compiled against.

    animeface 2.0.x reads Pillow's C struct straight out of the Image object it is given; the
    Pillow installed here (13) lays that struct out differently, and the extension then silently
    sees an empty image (no face, ever, in microseconds). Handing it a struct in the layout it was
    built for makes it work with any Pillow: the extension reads the struct pointer at the offset
    where ImagingObject keeps it, which is where a ctypes object keeps its buffer pointer.
    """

    _fields_ = [("mode", ctypes.c_char * 7), ("type", ctypes.c_int), ("depth", ctypes.c_int),
                ("bands", ctypes.c_int), ("xsize", ctypes.c_int), ("ysize", ctypes.c_int),
                ("palette", ctypes.c_void_p), ("image8", ctypes.c_void_p), ("image32", ctypes.c_void_p),
                ("image", ctypes.c_void_p), ("block", ctypes.c_void_p), ("pixelsize", ctypes.c_int),
                ("linesize", ctypes.c_int), ("destroy", ctypes.c_void_p)]


@lru_cache(maxsize=1)
def _legacy_layout() -> bool:
    """Whether the installed animeface is a build known to read Pillow 4.2.1's struct layout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("animeface").startswith("2.0.")
    except PackageNotFoundError:
        return False


def _detect_legacy(image: Image.Image) -> list[dict[str, Any]]:
    from animeface import _nvxs

    rgbx = np.zeros((image.height, image.width, 4), np.uint8)  # IMAGING_PIXEL_RGB: 4 bytes a pixel
    rgbx[..., :3] = np.asarray(image.convert("RGB"))
    base, stride = rgbx.ctypes.data, image.width * 4
    rows = (ctypes.c_void_p * image.height)(*(base + y * stride for y in range(image.height)))
    struct = _LegacyImaging(b"RGB", 0, 8, 3, image.width, image.height, None, None,
                            ctypes.addressof(rows), ctypes.addressof(rows), base, 4, stride, None)
    return _nvxs.detect(struct)  # rgbx and rows stay referenced until it returns


def run_detector(image: Image.Image) -> list[FaceBox]:
    """All faces animeface finds in an RGB image, in that image's pixels (tests replace this)."""
    if _legacy_layout():
        results = _detect_legacy(image)
    else:
        import animeface

        results = [{"likelihood": f.likelihood,
                    "face_box": (f.face.pos.x, f.face.pos.y, f.face.pos.width, f.face.pos.height)}
                   for f in animeface.detect(image)]
    return [FaceBox(*(int(v) for v in r["face_box"]), float(r["likelihood"])) for r in results]


def _scaled(image: Image.Image, scale: float) -> Image.Image:
    if scale == 1.0:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def detect_face(image: Image.Image, cfg: FacesConfig) -> FaceBox | None:
    """The most likely face with likelihood ≥ cfg.likelihood and side ≥ cfg.min_face px, or None.

    The detector sees at most cfg.detect_side px on the long side (its cost grows with area).
    Its smallest window is ~43 px, so faces in small pictures are near its limit: when nothing is
    found, one more look at 1.5× is taken if that stays within detect_side. Boxes are returned,
    and size-tested, in the original's pixels.
    """
    scale = min(1.0, cfg.detect_side / max(image.size))
    scales = [scale] + ([scale * 1.5] if max(image.size) * scale * 1.5 <= cfg.detect_side else [])
    for scale in scales:
        best: FaceBox | None = None
        for face in run_detector(_scaled(image, scale)):
            if scale != 1.0:
                face = FaceBox(round(face.x / scale), round(face.y / scale), round(face.width / scale),
                               round(face.height / scale), face.likelihood)
            if face.likelihood < cfg.likelihood or min(face.width, face.height) < cfg.min_face:
                continue
            if best is None or (face.likelihood, face.width * face.height) > (best.likelihood,
                                                                              best.width * best.height):
                best = face
        if best is not None:
            return best
    return None


def _place(start: float, side: int, extent: int) -> int:
    """Slide a window of `side` into [0, extent); if it cannot fit, centre it over the extent."""
    if side <= extent:
        return int(min(max(round(start), 0), extent - side))
    return (extent - side) // 2


def face_square(face: FaceBox, margin: float, width: int, height: int) -> tuple[int, int, int]:
    """(x0, y0, side) of the square around `face` with `margin` × face size on every side.

    The square slides to stay inside the image where it fits; where it is larger than the image
    it is centred on the image and the overflow is padded (see crop_square).
    """
    size = max(face.width, face.height)
    side = max(1, round(size * (1 + 2 * margin)))
    centre_x = face.x + face.width / 2
    centre_y = face.y + face.height / 2
    return _place(centre_x - side / 2, side, width), _place(centre_y - side / 2, side, height), side


def portrait_square(width: int, height: int) -> tuple[int, int, int]:
    """(x0, y0, side) of the centred largest square of a width × height image."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def crop_square(image: Image.Image, x0: int, y0: int, side: int) -> Image.Image:
    """The side × side square at (x0, y0); parts outside the image repeat its edge pixels."""
    left, top = max(x0, 0), max(y0, 0)
    right, bottom = min(x0 + side, image.width), min(y0 + side, image.height)
    inside = image.crop((left, top, right, bottom))
    if inside.size == (side, side):
        return inside
    pixels = np.asarray(inside)
    padded = np.pad(pixels, ((top - y0, y0 + side - bottom), (left - x0, x0 + side - right), (0, 0)),
                    mode="edge")
    return Image.fromarray(padded)


def square_crop(image: Image.Image, face: FaceBox | None, margin: float) -> Image.Image:
    """The square to store, at the original's resolution: around `face` when given, else the centre."""
    if face is not None:
        x0, y0, side = face_square(face, margin, image.width, image.height)
    else:
        x0, y0, side = portrait_square(image.width, image.height)
    return crop_square(image, x0, y0, side)


def resize_square(square: Image.Image, size: int) -> Image.Image:
    """A square image scaled to size × size px (Lanczos; a no-op when already that size)."""
    if square.size == (size, size):
        return square
    return square.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


def normalised_crop(image: Image.Image, face: FaceBox | None, margin: float, size: int) -> Image.Image:
    """The size × size RGB crop stored by curate: around `face` when given, else the centre."""
    return resize_square(square_crop(image, face, margin), size)
