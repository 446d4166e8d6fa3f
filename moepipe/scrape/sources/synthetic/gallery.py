"""The synthetic gallery: avatar posts with deliberately injected dirt and the ground truth of each.

Every post is a pure function of (seed, limit, dirt rates, resolution, index): post i draws from
its own generator, so posts can be made in any order, or alone, and come out the same.
"""

from __future__ import annotations

import io
import math
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from moepipe.config import SyntheticSource
from moepipe.images import ImageError, decode_rgb, encode_png, read_header
from moepipe.scrape.sources.base import Post
from moepipe.scrape.sources.synthetic.render import render_avatar, render_non_avatar
from moepipe.scrape.sources.synthetic.spec import EYE_COLORS, HAIR_COLORS, AvatarSpec, sample_spec

DIRT_KINDS = ("duplicate", "near_duplicate", "tiny", "monochrome", "non_avatar", "truncated", "corrupt")
COPY_KINDS = ("duplicate", "near_duplicate")  # dirt that repeats an earlier clean post
JPEG_FRACTION = 0.15   # of clean posts stored as JPEG, so decoders and hashes see both formats
JPEG_QUALITY = 92
TINY_SIDES = (24, 48)  # px, inclusive: well under any sensible minimum side
# Near duplicates are checked against this pHash distance when made; curation's default radius
# is 6, so the margin keeps them findable even if a decoder rounds differently.
NEAR_DUPLICATE_MAX_DISTANCE = 4

_ATTEMPTS = 8  # tries at making a broken file; each one all but surely breaks it

# Independent random streams per purpose, so e.g. changing the plan never changes a clean image.
_STREAM_PLAN, _STREAM_CLEAN, _STREAM_DIRT = 1, 2, 3


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([stream, seed % (1 << 64), index])


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


@dataclass(frozen=True)
class Planned:
    """What post `index` will be: clean (dirt None) or one kind of dirt; `of` for copies."""

    index: int
    dirt: str | None
    of: int | None = None


def dirt_counts(cfg: SyntheticSource) -> dict[str, int]:
    """How many posts of each dirt kind a gallery of cfg.limit posts holds (rates rounded half up)."""
    counts = {kind: math.floor(getattr(cfg.dirt, kind) * cfg.limit + 0.5) for kind in DIRT_KINDS}
    # Post 0 stays clean so every copy has an earlier original; rounding up several small rates
    # could otherwise claim the whole of a very small gallery.
    room = max(0, cfg.limit - 1)
    while sum(counts.values()) > room:
        largest = max(DIRT_KINDS, key=lambda kind: (counts[kind], DIRT_KINDS.index(kind)))
        counts[largest] -= 1
    return counts


def plan_gallery(cfg: SyntheticSource) -> list[Planned]:
    """Which indices are dirty, with what, and which earlier clean post each copy repeats."""
    rng = _rng(cfg.seed, _STREAM_PLAN, cfg.limit)
    order = rng.permutation(np.arange(1, cfg.limit)) if cfg.limit > 1 else np.array([], dtype=int)
    kinds: list[str | None] = [None] * cfg.limit
    position = 0
    for kind, count in dirt_counts(cfg).items():
        for _ in range(count):
            kinds[int(order[position])] = kind
            position += 1
    clean = [i for i, kind in enumerate(kinds) if kind is None]
    plan = []
    for i, kind in enumerate(kinds):
        of = None
        if kind in COPY_KINDS:
            earlier = clean[:bisect_left(clean, i)]
            of = earlier[int(rng.integers(len(earlier)))]
        plan.append(Planned(i, kind, of))
    return plan


def clean_post_image(cfg: SyntheticSource, index: int) -> tuple[AvatarSpec, Image.Image, bytes]:
    """The spec, pixels and stored bytes of post `index` as it is when clean."""
    rng = _rng(cfg.seed, _STREAM_CLEAN, index)
    spec = sample_spec(rng)
    as_jpeg = bool(rng.random() < JPEG_FRACTION)
    image = render_avatar(spec, cfg.resolution, rng)
    data = encode_jpeg(image, JPEG_QUALITY) if as_jpeg else encode_png(image)
    return spec, image, data


def _shift(image: Image.Image, dx: int, dy: int) -> Image.Image:
    """Move the content by (dx, dy) px, repeating the edge into the uncovered strip."""
    a = np.asarray(image)
    h, w = a.shape[:2]
    padded = np.pad(a, ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
    y0, x0 = abs(dy) - dy, abs(dx) - dx
    return Image.fromarray(padded[y0:y0 + h, x0:x0 + w])


def _phash_distance(a: Image.Image, b: Image.Image) -> int:
    import imagehash  # scipy behind it is slow to import; only copies need it

    return int(imagehash.phash(a) - imagehash.phash(b))


def make_near_duplicate(original: Image.Image, rng: np.random.Generator) -> bytes:
    """Re-encode, shift 1-3 px or rescale by 3-8% (never larger: the larger copy wins curation)."""
    variant = int(rng.integers(3))
    quality = int(rng.integers(70, 89))
    also_jpeg = bool(rng.random() < 0.5)
    image = original
    if variant == 1:
        dx, dy = (int(v) * (1 if s else -1) for v, s in zip(rng.integers(1, 4, 2), rng.integers(0, 2, 2)))
        image = _shift(original, dx, dy)
    elif variant == 2:
        factor = 1.0 + float(rng.uniform(0.03, 0.08)) * (1 if rng.random() < 0.5 else -1)
        side = max(8, round(original.width * factor))
        image = original.resize((side, side), Image.LANCZOS)
        if side > original.width:
            image = image.resize(original.size, Image.LANCZOS)
    data = encode_jpeg(image, quality) if variant == 0 or also_jpeg else encode_png(image)
    if _phash_distance(decode_rgb(data), original) > NEAR_DUPLICATE_MAX_DISTANCE:
        data = encode_jpeg(original, 85)  # the gentlest change that still alters the bytes
    return data


def make_monochrome(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Greyscale, pencil sketch or line art of an avatar; R = G = B everywhere."""
    grey = image.convert("L")
    variant = int(rng.integers(3))
    if variant == 0:
        out = ImageOps.autocontrast(grey, cutoff=1)
    elif variant == 1:
        # Colour dodge of the grey image by its blurred negative: the classic pencil-sketch look.
        g = np.asarray(grey, np.float32)
        blur = np.asarray(ImageOps.invert(grey).filter(ImageFilter.GaussianBlur(2)), np.float32)
        out = Image.fromarray(np.clip(g * 255.0 / np.maximum(1.0, 255.0 - blur), 0, 255).astype(np.uint8))
    else:
        edges = grey.filter(ImageFilter.FIND_EDGES)
        out = ImageOps.invert(ImageOps.autocontrast(edges, cutoff=1))
    return Image.merge("RGB", (out, out, out))


def _undecodable(data: bytes) -> bool:
    try:
        decode_rgb(data)
    except ImageError:
        return True
    return False


def make_truncated(data: bytes, rng: np.random.Generator) -> bytes:
    """The first 40-80% of an image file: header intact (type and size readable), decode fails."""
    fraction = float(rng.uniform(0.4, 0.8))
    for _ in range(_ATTEMPTS):
        cut = data[: max(64, int(len(data) * fraction))]
        read_header(cut, 1 << 30)  # the header must survive, or this would be 'corrupt' dirt
        if _undecodable(cut):
            return cut
        fraction *= 0.8
    raise RuntimeError("could not truncate an image into an undecodable file")


def make_corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    """The first 16-64 bytes of an image file (so its magic bytes), then random bytes."""
    keep = int(rng.integers(16, 65))
    for _ in range(_ATTEMPTS):
        broken = data[:keep] + rng.bytes(max(16, len(data) - keep))
        if _undecodable(broken):
            return broken
    raise RuntimeError("random bytes after an image header decoded; the decoder is too lenient")


def _colourless(tags: list[str]) -> list[str]:
    return [t for t in tags if t not in HAIR_COLORS and t not in EYE_COLORS]


def _post(cfg: SyntheticSource, label: str, item: Planned) -> Post:
    post_id = str(item.index)

    def post(data: bytes, tags: list[str], attributes: list[str], of: int | None = None) -> Post:
        truth = {"dirt": item.dirt, "of": None if of is None else str(of), "attributes": attributes}
        return Post(source=label, post_id=post_id, tags=tags, rating="general", data=data, extra={"truth": truth})

    if item.dirt is None:
        spec, _, data = clean_post_image(cfg, item.index)
        return post(data, spec.tags(), spec.attributes())
    rng = _rng(cfg.seed, _STREAM_DIRT, item.index)
    if item.dirt in COPY_KINDS:
        assert item.of is not None
        spec, image, data = clean_post_image(cfg, item.of)
        if item.dirt == "near_duplicate":
            data = make_near_duplicate(image, rng)
        return post(data, spec.tags(), spec.attributes(), item.of)
    if item.dirt == "non_avatar":
        data = encode_png(render_non_avatar(cfg.resolution, rng))
        return post(data, ["no_humans", "scenery"], [])
    spec = sample_spec(rng)
    if item.dirt == "tiny":
        side = int(rng.integers(TINY_SIDES[0], TINY_SIDES[1] + 1))
        return post(encode_png(render_avatar(spec, side, rng)), spec.tags(), spec.attributes())
    image = render_avatar(spec, cfg.resolution, rng)
    if item.dirt == "monochrome":
        # Hair and eye colours cannot be seen in a grey picture, so neither tags nor truth claim them.
        tags = _colourless(spec.tags()) + ["monochrome", "greyscale", "sketch"]
        return post(encode_png(make_monochrome(image, rng)), tags, _colourless(spec.attributes()))
    whole = encode_jpeg(image, JPEG_QUALITY) if rng.random() < 0.5 else encode_png(image)
    broken = make_truncated(whole, rng) if item.dirt == "truncated" else make_corrupt(whole, rng)
    return post(broken, spec.tags(), spec.attributes())


def post_at(cfg: SyntheticSource, label: str, index: int) -> Post:
    """Post `index` alone, identical to the one iter_posts yields at that position."""
    if not 0 <= index < cfg.limit:
        raise IndexError(f"post {index} is outside a gallery of {cfg.limit}")
    return _post(cfg, label, plan_gallery(cfg)[index])


def iter_posts(cfg: SyntheticSource, label: str) -> Iterator[Post]:
    """Yield cfg.limit posts, post_id '0', '1', ...; extra['truth'] says which are dirt and why."""
    for item in plan_gallery(cfg):
        yield _post(cfg, label, item)
