"""The studio's pictures: one avatar, a grid of seeds, a group sweep, an interpolation (PNG or GIF).

Every picture is drawn by `AvatarModel` (draw, vary, interpolate: the one drawing path) and
carries the PNG text of `avatar_text`, so a file downloaded from the studio names the model,
version, run, seed, attributes and truncation like one written by `moepipe generate`.

Rows of recent avatars are kept per model (`Drawer`). The generator always runs passes of
RENDER_BATCH rows (moepipe/generate/avatar.py says why), so a lone avatar costs as much as a full pass;
the rows a request leaves empty are spent on the next seeds with the same attributes, which is
what the page asks for next (its grid shows the seeds after the one in view). A row's pixels
depend only on its seed, label set and truncation, whatever its batch mates, so a kept row is
byte for byte the avatar a fresh pass would draw.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from moepipe.generate.avatar import RENDER_BATCH, AvatarModel
from moepipe.generate.pictures import avatar_text, png_bytes
from moepipe.images import grid

GAP = 2  # px between the tiles of a grid or strip (moepipe.images.grid's default)
KEPT_ROWS = 1024  # avatars kept per model: 64 px RGB rows, about 12 MB


@dataclass(frozen=True)
class Picture:
    """Encoded picture bytes, their media type, and what the response headers say about them."""

    data: bytes
    media_type: str
    text: Mapping[str, str]
    drawn: list[str]  # the full label set of the (first) avatar, groups left out filled


class Drawer:
    """Draws one model's pictures; `label` is the `model` of their PNG text (models:/NAME/VERSION or a path)."""

    def __init__(self, avatars: AvatarModel, label: str, kept_rows: int = KEPT_ROWS) -> None:
        self.avatars, self.label, self.kept_rows = avatars, label, kept_rows
        self._rows: OrderedDict[tuple[int, tuple[str, ...], float], np.ndarray] = OrderedDict()

    # -- rows ----------------------------------------------------------------------------------
    def seeds(self, seeds: Sequence[int], tags: Sequence[str], truncation: float) -> tuple[np.ndarray, list[list[str]]]:
        """(N, R, R, 3) uint8 avatars of `seeds` asked for `tags` (already parsed), and their full label sets.

        Rows not kept are drawn with `AvatarModel.draw`, the empty rows of its last pass filled
        with the following seeds (kept for the next request).
        """
        requests = self.avatars.requests(seeds, tags)
        keys = [(int(s), tuple(full), float(truncation)) for s, full in zip(seeds, requests)]
        missing = list(dict.fromkeys(s for s, key in zip(seeds, keys) if key not in self._rows))
        if missing:
            following = max(seeds) + 1
            while len(missing) % RENDER_BATCH:
                key = (following, tuple(self.avatars.complete_attributes(tags, following)), float(truncation))
                if key not in self._rows:
                    missing.append(following)
                following += 1
            images = self.avatars.draw(missing, tags, truncation)
            for seed, full, image in zip(missing, self.avatars.requests(missing, tags), images):
                self._keep((seed, tuple(full), float(truncation)), image)
        for key in keys:
            self._rows.move_to_end(key)
        return np.stack([self._rows[key] for key in keys]), requests

    def _keep(self, key: tuple[int, tuple[str, ...], float], image: np.ndarray) -> None:
        self._rows[key] = image
        self._rows.move_to_end(key)
        while len(self._rows) > self.kept_rows:
            self._rows.popitem(last=False)

    def text(self, seed: int | str, asked: Sequence[str], drawn: Sequence[str] | str, truncation: float,
             **extra: str) -> dict[str, str]:
        return avatar_text(self.label, seed, asked, drawn, truncation, self.avatars.provenance, **extra)

    # -- pictures ------------------------------------------------------------------------------
    def avatar(self, seed: int, tags: list[str], truncation: float) -> Picture:
        """One avatar at the model's resolution."""
        images, requests = self.seeds([seed], tags, truncation)
        text = self.text(seed, tags, requests[0], truncation)
        return Picture(png_bytes(images[0], text), "image/png", text, requests[0])

    def grid(self, seed: int, n: int, columns: int, tags: list[str], truncation: float) -> Picture:
        """Seeds seed .. seed + n - 1, row by row in `columns` columns, GAP px apart."""
        seeds = [seed + i for i in range(n)]
        images, requests = self.seeds(seeds, tags, truncation)
        columns = min(columns, n)
        drawn = "\n".join(f"{s}: {','.join(full)}" for s, full in zip(seeds, requests))
        span = f"{seeds[0]}..{seeds[-1]}" if n > 1 else str(seed)
        text = self.text(span, tags, drawn, truncation,
                         comment=f"avatar i (row by row, {columns} columns) has seed {seed} + i")
        return Picture(png_bytes(grid(images, columns, gap=GAP), text), "image/png", text, requests[0])

    def vary(self, seed: int, group: str, tags: list[str], truncation: float) -> Picture:
        """The avatar of `seed` once per value of `group` (a multi group's "none" first), in one row."""
        names, requests = self.avatars.variations([seed], group, tags)
        images = self.avatars.vary([seed], group, tags, truncation)
        drawn = "\n".join(f"{name}: {','.join(full)}" for name, full in zip(names, requests))
        text = self.text(seed, tags, drawn, truncation, vary=group, values=",".join(names),
                         comment=f"tile j is {group} value j; all else fixed by the seed")
        return Picture(png_bytes(grid(images, len(names), gap=GAP), text), "image/png", text, requests[0])

    def interpolation(self, seed: int, seed_b: int, steps: int, tags: list[str],
                      truncation: float) -> tuple[np.ndarray, dict[str, str], list[str]]:
        images = self.avatars.interpolate(seed, seed_b, steps, tags, truncation)
        drawn = self.avatars.complete_attributes(tags, seed)
        return images, self.text(seed, tags, drawn, truncation, seed_b=str(seed_b), steps=str(steps)), drawn

    def interpolation_png(self, seed: int, seed_b: int, steps: int, tags: list[str], truncation: float) -> Picture:
        """The latent path from seed to seed_b in `steps` tiles, one row (seed's label fill throughout)."""
        images, text, drawn = self.interpolation(seed, seed_b, steps, tags, truncation)
        return Picture(png_bytes(grid(images, steps, gap=GAP), text), "image/png", text, drawn)

    def interpolation_gif(self, seed: int, seed_b: int, steps: int, tags: list[str], truncation: float,
                          frame_ms: int) -> Picture:
        """The same path as an endlessly looping GIF, one frame per step, `frame_ms` each.

        Pillow merges a frame identical to the one before it into that one (their durations
        summed), so a path that does not move (truncation 0) plays as fewer, longer frames.
        """
        images, text, drawn = self.interpolation(seed, seed_b, steps, tags, truncation)
        frames = [Image.fromarray(image) for image in images]
        buffer = io.BytesIO()
        frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0,
                       comment=text["Description"].encode("utf-8"))
        return Picture(buffer.getvalue(), "image/gif", text, drawn)
