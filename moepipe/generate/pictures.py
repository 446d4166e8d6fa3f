"""Pictures of avatars as PNG files: `moepipe generate`'s grids, strips and `--vary` sweeps, and the
PNG text every avatar carries (the same keys wherever it is drawn: `moepipe generate`, the
served model, evaluate's pictures)."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from moepipe.config.model import TRUNCATION_RANGE
from moepipe.errors import UserError
from moepipe.generate.avatar import AvatarModel
from moepipe.images import atomic_write, grid

# What `avatar_text` records of where a registered model came from, when known.
PROVENANCE_KEYS = ("model_name", "model_version", "run_id", "generator_sha256")


def png_bytes(image: np.ndarray | Image.Image, text: Mapping[str, str] | None = None) -> bytes:
    """PNG file bytes with tEXt chunks (e.g. model version, seed, attributes)."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, str(value))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def avatar_text(model: str, seed: int | str, attributes: Sequence[str], drawn: Sequence[str] | str,
                truncation: float, provenance: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The tEXt of an avatar PNG, with the same keys wherever it is drawn (`moepipe generate`, the
    served model): Software, Description (one line for image viewers), model (the path or URI it
    was drawn from), model_name / model_version / run_id / generator_sha256 where `provenance`
    knows them (a registered model), seed, attributes (as asked), drawn_attributes (with the
    groups left out filled; a picture of many avatars passes its own text, see `_drawn`) and
    truncation; then `extra` (seed_b, vary, comment, ...).
    """
    known = {key: str(provenance[key]) for key in PROVENANCE_KEYS if (provenance or {}).get(key)}
    registered = "model_name" in known and "model_version" in known
    shown = f"{known['model_name']} v{known['model_version']}" if registered else model
    asked = list(attributes)
    filled = "" if isinstance(drawn, str) or list(drawn) == asked else f" (drawn: {', '.join(drawn)})"
    return {
        "Software": "moepipe",
        "Description": f"{shown}: seed {seed}, attributes {', '.join(asked) or 'none'}{filled}, "
                       f"truncation {truncation:g}",
        "model": model,
        **known,
        "seed": str(seed),
        "attributes": ",".join(asked),
        "drawn_attributes": drawn if isinstance(drawn, str) else ",".join(drawn),
        "truncation": f"{truncation:g}",
        **{key: str(value) for key, value in extra.items()},
    }


@dataclass
class _Pictures:
    """What `write_pictures` writes: avatars, their tiling, and the tEXt of the whole and of each."""

    images: np.ndarray
    columns: int
    whole: dict[str, str]
    frames: list[tuple[dict[str, str], str]]  # (tEXt, file name) per avatar
    what: str  # for the summary line
    captions: list[str] | None = None
    headers: list[str] | None = None


# `text(seed, asked, drawn, **extra)` of `write_pictures`: avatar_text with the model's part filled in.
_Text = Callable[..., dict[str, str]]


def _check_options(n: int, columns: int, steps: int, truncation: float, interpolate_to: int | None,
                   vary: str | None) -> None:
    if n < 1:
        raise UserError(f"--n must be at least 1 (got {n})")
    if columns < 1:
        raise UserError(f"--columns must be at least 1 (got {columns})")
    if steps < 2:
        raise UserError(f"--steps must be at least 2 (got {steps})")
    low, high = TRUNCATION_RANGE
    if not low <= truncation <= high:
        raise UserError(f"--truncation must be in [{low:g}, {high:g}] (got {truncation:g})")
    if vary is not None and interpolate_to is not None:
        raise UserError("--vary and --interpolate draw different pictures; pick one")


def _drawn(seeds: Sequence[int], requests: Sequence[Sequence[str]]) -> str:
    """The label sets actually drawn, one line per avatar, for the tEXt of a whole picture."""
    return "\n".join(f"{seed}: {','.join(full)}" for seed, full in zip(seeds, requests))


def _seed_range(seeds: Sequence[int]) -> str:
    return f"{seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])


def _grid_pictures(avatars: AvatarModel, text: _Text, tags: list[str], seeds: list[int],
                   truncation: float, columns: int) -> _Pictures:
    requests = avatars.requests(seeds, tags)
    images = avatars.render(avatars.latents(seeds), requests, truncation)
    whole = text(_seed_range(seeds), tags, _drawn(seeds, requests),
                 comment=f"avatar i (row by row, {min(columns, len(seeds))} columns) has seed {seeds[0]} + i")
    frames = [(text(s, tags, full), f"avatar_{s:06d}.png") for s, full in zip(seeds, requests)]
    what = f"{len(seeds)} avatar(s), seeds {whole['seed']}"
    return _Pictures(images, min(columns, len(seeds)), whole, frames, what)


def _strip_pictures(avatars: AvatarModel, text: _Text, tags: list[str], seed: int, seed_b: int,
                    steps: int, truncation: float) -> _Pictures:
    images = avatars.interpolate(seed, seed_b, steps, tags, truncation)
    drawn = avatars.complete_attributes(tags, seed)
    whole = text(seed, tags, drawn, seed_b=str(seed_b), steps=str(steps))
    frames = [(text(seed, tags, drawn, seed_b=str(seed_b), t=f"{i / (steps - 1):.4g}"),
               f"interpolation_{seed}_{seed_b}_{i:03d}.png") for i in range(steps)]
    return _Pictures(images, steps, whole, frames, f"interpolation {seed} → {seed_b} in {steps} steps")


def _vary_pictures(avatars: AvatarModel, text: _Text, tags: list[str], seeds: list[int],
                   truncation: float, group: str) -> _Pictures:
    names, requests = avatars.variations(seeds, group, tags)
    images = avatars.vary(seeds, group, tags, truncation)
    cells = [(s, j, name) for s in seeds for j, name in enumerate(names)]
    whole = text(_seed_range(seeds), tags, _drawn([s for s, _, _ in cells], requests), vary=group,
                 values=",".join(names),
                 comment=f"row i has seed {seeds[0]} + i, column j {group} value j; all else fixed per row")
    frames = []
    for (s, j, name), full in zip(cells, requests):
        asked = tags + ([name] if name != "none" else [])
        frames.append((text(s, asked, full, vary=group), f"vary_{group}_{s:06d}_{j:02d}_{name}.png"))
    what = f"{len(seeds)} seed(s) × {len(names)} {group} values, seeds {whole['seed']}"
    return _Pictures(images, len(names), whole, frames, what, [f"seed {s}" for s in seeds], names)


def write_pictures(avatars: AvatarModel, model: str, *, out: Path | None, singles: Path | None = None,
                   n: int = 16, seed: int = 0, attributes: str | None = None, truncation: float = 1.0,
                   columns: int = 8, interpolate_to: int | None = None, steps: int = 8,
                   vary: str | None = None) -> str:
    """Draw avatars seed, seed+1, ... (a grid), an interpolation strip seed → interpolate_to, or
    for each seed one avatar per value of group `vary` (a grid: one row per seed) as PNGs.

    `out` gets one picture, `singles` one PNG per avatar; every PNG carries the tEXt of
    `avatar_text`: model, seed, attributes (as asked), drawn_attributes (with the groups left out
    filled), truncation and, for a registered model, its name, version and run.
    Returns a one-line summary.
    """
    _check_options(n, columns, steps, truncation, interpolate_to, vary)
    tags = avatars.parse_attributes(attributes)
    if out is None and singles is None:
        out = Path("avatars.png")

    def text(seed: int | str, asked: Sequence[str], drawn: Sequence[str] | str, **extra: str) -> dict[str, str]:
        return avatar_text(model, seed, asked, drawn, truncation, avatars.provenance, **extra)

    seeds = [seed + i for i in range(n)]
    if vary is not None:
        pictures = _vary_pictures(avatars, text, tags, seeds, truncation, vary)
    elif interpolate_to is not None:
        pictures = _strip_pictures(avatars, text, tags, seed, interpolate_to, steps, truncation)
    else:
        pictures = _grid_pictures(avatars, text, tags, seeds, truncation, columns)
    written = _write(pictures, out, singles)
    shown = f" with {', '.join(tags)}" if tags else ""
    return f"generate: {pictures.what}{shown} at truncation {truncation:g} → {'; '.join(written)}"


def _write(pictures: _Pictures, out: Path | None, singles: Path | None) -> list[str]:
    """Write the whole picture to `out` and each avatar into `singles`; what was written, for the summary."""

    written = []
    try:
        if out is not None:
            width = max((len(c) for c in pictures.captions or []), default=0) * 6 + 8
            picture = grid(pictures.images, pictures.columns, pictures.captions, width,
                           headers=pictures.headers)
            atomic_write(Path(out), png_bytes(picture, pictures.whole))
            written.append(str(out))
        if singles is not None:
            for image, (meta, name) in zip(pictures.images, pictures.frames):
                atomic_write(Path(singles) / name, png_bytes(image, meta))
            written.append(f"{len(pictures.frames)} file(s) in {singles}")
    except OSError as error:
        raise UserError(f"{error.filename or out or singles}: cannot write ({error.strerror or error})") from None
    return written
