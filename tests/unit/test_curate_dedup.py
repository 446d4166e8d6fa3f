"""Perceptual hashes and the multi-index near-duplicate search."""

import io
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from moepipe.curate.dedup import Candidate, NearDuplicateIndex, chunk_spans, deduplicate, hamming, phash


def _flip_bits(value: int, count: int, rng: random.Random) -> int:
    for bit in rng.sample(range(64), count):
        value ^= 1 << bit
    return value


@pytest.mark.parametrize("radius", [0, 1, 6, 10, 32])
def test_chunks_tile_the_hash_exactly(radius):
    spans = chunk_spans(radius)
    assert len(spans) == radius + 1
    assert sum(width for _, width in spans) == 64
    assert [shift for shift, _ in spans] == [sum(w for _, w in spans[:i]) for i in range(len(spans))]
    assert max(w for _, w in spans) - min(w for _, w in spans) <= 1


# Chunks are 64 / (radius + 1) bits wide, so random hashes share one with probability about
# (radius + 1) / 2**(64 / (radius + 1)): ~1.3% of pairs at the default radius 6, ~20% at 10.
@pytest.mark.parametrize("radius, most", [(2, 0.01), (6, 0.05), (10, 0.35)])
def test_index_finds_every_pair_brute_force_finds_with_far_fewer_comparisons(radius, most):
    rng = random.Random(radius)
    hashes = [rng.getrandbits(64) for _ in range(1500)]
    # Plant near copies at every distance up to and just past the radius.
    for i in range(300):
        hashes.append(_flip_bits(hashes[i], i % (radius + 3), rng))
    index = NearDuplicateIndex(radius)
    found = set()
    for j, value in enumerate(hashes):
        found |= {(i, j) for _, i in index.within(value)}
        index.add(value, j)
    brute = {(i, j) for j in range(len(hashes)) for i in range(j) if hamming(hashes[i], hashes[j]) <= radius}
    assert brute and found == brute
    all_pairs = len(hashes) * (len(hashes) - 1) // 2
    assert index.comparisons < most * all_pairs


def test_within_is_sorted_by_distance_and_respects_the_radius():
    index = NearDuplicateIndex(4)
    base = 0xFFFF_0000_FFFF_0000
    rng = random.Random(1)
    for distance in (4, 0, 2, 5, 9):
        index.add(_flip_bits(base, distance, rng), f"d{distance}")
    assert [key for _, key in index.within(base)] == ["d0", "d2", "d4"]
    assert index.nearest(base) == (0, "d0")
    assert NearDuplicateIndex(4).nearest(base) is None


def _picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (128, 128), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.integers(0, 100, 2)
        w, h = rng.integers(10, 60, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse((int(x), int(y), int(x + w), int(y + h)), fill=fill, outline=(0, 0, 0), width=3)
    return image


def test_phash_is_close_for_reencodes_and_resizes_and_far_for_other_pictures():
    image = _picture(0)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70)
    jpeg = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    resized = image.resize((96, 96)).resize((128, 128))
    assert 0 <= phash(image) < 2**64
    assert hamming(phash(image), phash(jpeg)) <= 4
    assert hamming(phash(image), phash(resized)) <= 4
    assert min(hamming(phash(image), phash(_picture(s))) for s in range(1, 20)) > 12


def test_deduplicate_keeps_one_per_group_preferring_larger_then_earlier():
    candidates = [
        Candidate("a", "sha-a", 0b0000, area=100),
        Candidate("b", "sha-b", 0b0001, area=400),   # near a, larger: wins the group
        Candidate("c", "sha-c", 0xFFFF_FFFF_0000_0000, area=100),
        Candidate("d", "sha-c", 0x0F0F_0F0F_0F0F_0F0F, area=100),   # same stored crop as c
        Candidate("e", "sha-e", 0xFFFF_FFFF_0000_0003, area=100),   # near c, same size, later
    ]
    kept, dropped = deduplicate(candidates, radius=3)
    assert kept == ["b", "c"]
    assert (dropped["a"].reason, dropped["a"].of, dropped["a"].distance) == ("near_duplicate", "b", 1)
    assert (dropped["d"].reason, dropped["d"].of) == ("duplicate", "c")
    assert (dropped["e"].reason, dropped["e"].of, dropped["e"].distance) == ("near_duplicate", "c", 2)
    assert deduplicate(candidates, radius=3) == (kept, dropped)
