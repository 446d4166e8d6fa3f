"""Exact (sha256) and near (perceptual hash) duplicate detection without comparing all pairs.

Near duplicates are found with multi-index hashing: the 64-bit pHash is cut into radius + 1
chunks, and every kept hash is filed under each chunk's value. Two hashes within Hamming
distance `radius` differ in at most `radius` bits, so by pigeonhole at least one of the radius + 1
chunks is identical and the pair meets in that bucket. Only hashes sharing a bucket are compared:
about (radius + 1) / 2**(64 / (radius + 1)) of all pairs for unrelated hashes, ~1.3% at radius 6.
The index stays exact for larger radii but prunes less (~20% of pairs at radius 10).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from PIL import Image

HASH_BITS = 64
Key = TypeVar("Key", bound=Hashable)


def phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash of an image as an unsigned int (imagehash's phash, hash_size 8)."""
    import imagehash

    bits = imagehash.phash(image, hash_size=8).hash.flatten()
    return int.from_bytes(np.packbits(bits.astype(np.uint8)).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two hashes."""
    return (a ^ b).bit_count()


def chunk_spans(radius: int, bits: int = HASH_BITS) -> list[tuple[int, int]]:
    """(shift, width) of radius + 1 contiguous chunks that tile `bits` bits, widths differing by ≤ 1."""
    count = min(radius + 1, bits)
    base, extra = divmod(bits, count)
    spans, shift = [], 0
    for index in range(count):
        width = base + (1 if index < extra else 0)
        spans.append((shift, width))
        shift += width
    return spans


class NearDuplicateIndex(Generic[Key]):
    """Hashes with their keys; `nearest` returns the closest stored hash within `radius`."""

    def __init__(self, radius: int, bits: int = HASH_BITS) -> None:
        if radius < 0:
            raise ValueError(f"radius must be ≥ 0 (got {radius})")
        self.radius = radius
        self.spans = chunk_spans(radius, bits)
        self.buckets: list[dict[int, list[int]]] = [{} for _ in self.spans]
        self.hashes: list[int] = []
        self.keys: list[Key] = []
        self.comparisons = 0  # full Hamming distances computed; the point of the index is to keep this small

    def __len__(self) -> int:
        return len(self.hashes)

    def _chunks(self, value: int) -> Iterable[tuple[int, int]]:
        for index, (shift, width) in enumerate(self.spans):
            yield index, (value >> shift) & ((1 << width) - 1)

    def add(self, value: int, key: Key) -> None:
        slot = len(self.hashes)
        self.hashes.append(value)
        self.keys.append(key)
        for index, chunk in self._chunks(value):
            self.buckets[index].setdefault(chunk, []).append(slot)

    def within(self, value: int) -> list[tuple[int, Key]]:
        """All stored (distance, key) within `radius` of `value`, closest first, then oldest."""
        seen: set[int] = set()
        found: list[tuple[int, int]] = []
        for index, chunk in self._chunks(value):
            for slot in self.buckets[index].get(chunk, ()):
                if slot in seen:
                    continue
                seen.add(slot)
                self.comparisons += 1
                distance = hamming(value, self.hashes[slot])
                if distance <= self.radius:
                    found.append((distance, slot))
        found.sort()
        return [(distance, self.keys[slot]) for distance, slot in found]

    def nearest(self, value: int) -> tuple[int, Key] | None:
        """The closest stored (distance, key) within `radius`, or None."""
        hits = self.within(value)
        return hits[0] if hits else None


def aligned_difference(a: np.ndarray, b: np.ndarray, max_shift: int) -> float:
    """Mean |a - b| (0-255) of two (S, S, C) images at the best offset within ±max_shift px.

    A pHash match only says two pictures share their coarse layout, which every centred chibi
    portrait does; near duplicates (re-encodes, small shifts and rescales) are also equal pixel
    by pixel once aligned, while different characters in the same pose are not.
    """
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    side = a.shape[0]
    m = max_shift
    core = a[m:side - m, m:side - m]
    best = float("inf")
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            shifted = b[m + dy:side - m + dy, m + dx:side - m + dx]
            best = min(best, float(np.abs(core - shifted).mean()))
    return best


@dataclass(frozen=True)
class Candidate(Generic[Key]):
    """An image that passed every other check; `area` in pixels of the original."""

    key: Key
    sha256: str
    phash: int
    area: int


@dataclass(frozen=True)
class Duplicate(Generic[Key]):
    """Why a candidate was dropped: 'duplicate' (same stored crop) or 'near_duplicate' (pHash distance)."""

    reason: str
    of: Key
    distance: int


def deduplicate(candidates: list[Candidate[Key]], radius: int,
                same_picture: Callable[[Key, Key], bool] | None = None,
                ) -> tuple[list[Key], dict[Key, Duplicate[Key]]]:
    """Keep one image of each exact or near-duplicate group; returns (kept keys, dropped key → why).

    `candidates` must come in priority order among equals (earlier wins); the largest image of a
    group wins over that, since it holds the most detail. Greedy: a candidate is dropped when it is
    within `radius` of an already kept one that `same_picture` (if given) confirms, so the result
    is deterministic for a given order.
    """
    ranked = sorted(range(len(candidates)), key=lambda i: (-candidates[i].area, i))
    index: NearDuplicateIndex[Key] = NearDuplicateIndex(radius)
    by_sha: dict[str, Key] = {}
    kept: list[Key] = []
    dropped: dict[Key, Duplicate[Key]] = {}
    for position in ranked:
        candidate = candidates[position]
        if candidate.sha256 in by_sha:
            dropped[candidate.key] = Duplicate("duplicate", by_sha[candidate.sha256], 0)
            continue
        for distance, other in index.within(candidate.phash):
            if same_picture is None or same_picture(candidate.key, other):
                dropped[candidate.key] = Duplicate("near_duplicate", other, distance)
                break
        else:
            by_sha[candidate.sha256] = candidate.key
            index.add(candidate.phash, candidate.key)
            kept.append(candidate.key)
    return kept, dropped
