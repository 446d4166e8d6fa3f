"""The evaluate stage's pictures: a sample sheet, an attribute sweep and latent interpolations.

All drawing goes through `AvatarModel` (moepipe/generate/avatar.py); this module only decides which
seeds and attributes each tile shows and lays the tiles out with `moepipe.images.grid`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from moepipe.generate.avatar import AvatarModel, slerp
from moepipe.images import grid

SHEET_ROWS = 4  # rows of the sample sheet, and of the seed grid shown when a model takes no attributes
INTERPOLATION_ROWS = 4  # seed pairs in the interpolation picture


def sample_sheet(images: np.ndarray, columns: int, rows: int = SHEET_ROWS) -> Image.Image:
    """The first rows × columns of (N, R, R, 3) uint8 scored samples as one picture."""
    return grid(images[:columns * rows], columns)


def _swapped(tags: Sequence[str], group: Mapping[str, Any], value: str) -> list[str]:
    """`tags` with `value` asked for in `group`: a single-choice group's other values are dropped."""
    if group.get("multi"):
        return list(dict.fromkeys([*tags, value]))
    return [tag for tag in tags if tag not in group["tags"]] + [value]


def attribute_sweep(model: AvatarModel, groups: Mapping[str, Mapping[str, Any]], base: Sequence[str],
                    seed: int, truncation: float, fallback_seeds: Sequence[int], columns: int) -> Image.Image:
    """One row per attribute group, one column per value, all from the latent of `seed`.

    Each tile asks for `base` (a real label set, so the other attributes stay typical) with the
    row's group set to the column's value; rows shorter than the longest are padded with white.
    Unconditional models sweep only the tags they have edit directions for; a model that takes
    no attributes gets a grid of `fallback_seeds` instead.
    """
    known = set(model.attributes)
    rows = {name: [tag for tag in group["tags"] if tag in known] for name, group in groups.items()}
    rows = {name: tags for name, tags in rows.items() if tags}
    if not rows:
        images = model.render(model.latents(list(fallback_seeds)), None, truncation)
        return grid(images, columns)
    base = [tag for tag in base if tag in known]
    width = max(len(tags) for tags in rows.values())
    requests = [_swapped(base, groups[name], tag) for name, tags in rows.items() for tag in tags]
    z = model.latents([seed]).expand(len(requests), -1)
    drawn = iter(model.render(z, requests, truncation))
    blank = np.full((model.resolution, model.resolution, 3), 255, np.uint8)
    tiles = [next(drawn) if i < len(tags) else blank for tags in rows.values() for i in range(width)]
    captions = [name.replace("_", " ") for name in rows]
    return grid(np.stack(tiles), width, captions)


def interpolation_strips(model: AvatarModel, pairs: Sequence[tuple[int, int]], steps: int,
                         attributes: Sequence[Sequence[str]], truncation: float) -> Image.Image:
    """One row per seed pair: `steps` avatars on the spherical path between their latents.

    Row i asks for attributes[i] all along, so only the latent changes across a row.
    """
    t = torch.linspace(0, 1, steps)
    paths, requests = [], []
    for (seed_a, seed_b), tags in zip(pairs, attributes):
        a, b = model.latents([seed_a, seed_b])
        paths.append(slerp(a, b, t))
        requests += [list(tags)] * steps
    images = model.render(torch.cat(paths), requests, truncation)
    return grid(images, steps)
