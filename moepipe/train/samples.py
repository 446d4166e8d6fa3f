"""Sample grids from fixed seeds, one row per attribute combination, captioned."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from moepipe.data import PackedSet, to_uint8
from moepipe.images import grid

GRID_SEED = 1234
CAPTION_WIDTH = 150


def sample_labels(data: PackedSet, label_dim: int, rows: int) -> list[np.ndarray | None]:
    """`rows` distinct label vectors from the training set (fixed choice), or [None] * rows."""
    if not label_dim:
        return [None] * rows
    order = np.random.default_rng(GRID_SEED).permutation(len(data))
    chosen: list[np.ndarray] = []
    seen: set[bytes] = set()
    for row in order:
        vector = np.asarray(data.labels[row], dtype=np.float32)
        if vector.tobytes() not in seen:
            seen.add(vector.tobytes())
            chosen.append(vector)
        if len(chosen) == rows:
            break
    return chosen


def _caption(vector: np.ndarray | None, vocabulary: list[str], max_lines: int) -> str:
    """The row's tags, wrapped to the caption column and cut to the lines that fit the row."""
    if vector is None:
        return ""
    import textwrap

    tags = ", ".join(tag.replace("_", " ") for tag, on in zip(vocabulary, vector) if on)
    lines = textwrap.wrap(tags, width=24)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:21] + "..."
    return "\n".join(lines)


@torch.no_grad()
def sample_grid(generator: torch.nn.Module, rows: list[np.ndarray | None], columns: int,
                device: torch.device, vocabulary: list[str] | None = None) -> Image.Image:
    """Grid image: row r uses label vector rows[r]; column c uses z from seed GRID_SEED + c."""
    seeds = torch.Generator().manual_seed(GRID_SEED)
    z = torch.randn(columns, generator.z_dim, generator=seeds)
    tiles = []
    for vector in rows:
        labels = None if vector is None else torch.from_numpy(np.tile(vector, (columns, 1)))
        images = generator(z.to(device), None if labels is None else labels.to(device), noise_mode="const")
        tiles.append(to_uint8(images))
    size = tiles[0].shape[1]
    captions = None
    if vocabulary is not None and rows[0] is not None:
        captions = [_caption(vector, vocabulary, max_lines=max(1, (size - 2) // 11)) for vector in rows]
    return grid(np.concatenate(tiles), columns, captions, CAPTION_WIDTH)
