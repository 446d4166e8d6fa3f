"""Drawing avatars from an exported generator: seeds, attributes, truncation, edits, pictures.

Everything that turns a trained generator into images goes through `AvatarModel`: the evaluate
stage, `moepipe generate`, and the MLflow pyfunc model. A seed fixes an avatar's latent (the same
seed gives the same face whatever the batch), attributes are vocabulary tags, and truncation
psi trades variety for typicality.

Conditional generators take attributes as label vectors. Unconditional ones take them as latent
edits (InterFaceGAN): each tag has a unit normal n and offset b of a linear boundary in z space,
and asking for the tag moves z along n until its signed distance n.z + b reaches
``edit_distance`` (z that is already that far on the tag's side stays where it is).
`moepipe.evaluate.directions` learns the boundaries. DCGAN truncation scales z toward the prior's mode
before the edit, so an edited avatar still lands at the edit distance whatever psi is;
StyleGAN truncation acts later, in w, and pulls edits toward the average face as well.

A conditional model never sees an empty label group: every group a request leaves out is drawn
from the model's label prior (how often each value occurred in its training data; uniform for
files that recorded none), from a random stream of the avatar's seed alone. So the same seed and
request give the same avatar whatever else is drawn, and asking for one group (or sweeping it
with `vary`) leaves the other groups' draws where they were.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from moepipe.config import tracking_uri as config_tracking_uri
from moepipe.config.model import TRUNCATION_RANGE
from moepipe.data import to_uint8
from moepipe.errors import UserError
from moepipe.images import atomic_write, grid
from moepipe.models.attributes import AttributeLayout, Group
from moepipe.models.dcgan import DCGANGenerator
from moepipe.models.export import DIRECTIONS_FILE, load_generator

EDIT_DISTANCE = 3.0  # signed distance past a tag's boundary that an edit aims for (z ~ N(0, I))
RENDER_BATCH = 16  # rows of every generator forward pass in `render` (see there)
# What `avatar_text` records of where a registered model came from, when known.
PROVENANCE_KEYS = ("model_name", "model_version", "run_id", "generator_sha256")
FILL_STREAM = 0x6D6F65  # second rng seed word of label fills: a stream apart from any other use of the seed


@dataclass
class Directions:
    """Linear attribute boundaries in z space: tags (T,), normals (T, z_dim) unit, offsets (T,)."""

    tags: list[str]
    normals: np.ndarray
    offsets: np.ndarray
    accuracy: dict[str, float] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, tags=np.array(self.tags, dtype=str), normals=self.normals.astype(np.float32),
                 offsets=self.offsets.astype(np.float32),
                 accuracy=np.array([self.accuracy.get(t, np.nan) for t in self.tags], np.float32))
        atomic_write(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> Directions:
        try:
            with np.load(path, allow_pickle=False) as data:
                tags = [str(t) for t in data["tags"]]
                accuracy = {t: float(a) for t, a in zip(tags, data["accuracy"]) if np.isfinite(a)}
                return cls(tags, data["normals"].astype(np.float32), data["offsets"].astype(np.float32), accuracy)
        except (OSError, KeyError, ValueError) as error:
            raise UserError(f"{path}: not a moepipe directions file ({error})") from None


class AvatarModel:
    """An exported generator (generator.pt) ready to draw avatars on request."""

    def __init__(self, generator: torch.nn.Module, meta: Mapping[str, Any],
                 directions: Directions | None = None) -> None:
        self.generator = generator.eval()
        if isinstance(generator, DCGANGenerator):
            # DCGAN's convs run faster channels-last on CPU (oneDNN). Pixels can differ from the
            # contiguous layout by a rare ±1 rounding, so every path draws through this one module.
            self.generator = generator.to(memory_format=torch.channels_last)
        self.meta = {k: v for k, v in meta.items() if k != "state_dict"}
        self.layout = AttributeLayout(self.meta.get("groups") or {}, self.vocabulary)
        # Files before format 2 recorded no prior: their fills are uniform.
        self.label_prior = dict(self.meta.get("label_prior") or {}) or self.layout.uniform_prior()
        self.directions = directions if not self.conditional else None
        # Where a registered model came from (PROVENANCE_KEYS), for `avatar_text`.
        self.provenance: dict[str, str] = {}
        self.device = next(generator.parameters()).device

    @classmethod
    def load(cls, path: Path, directions: Path | None = None, device: str = "cpu") -> AvatarModel:
        """Load generator.pt (and, for an unconditional model, a directions file if it exists)."""
        generator, meta = load_generator(Path(path), device)
        found = Directions.load(directions) if directions is not None and Path(directions).is_file() else None
        return cls(generator, meta, found)

    # -- what it knows -------------------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        return int(self.meta.get("label_dim", 0)) > 0

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])

    @property
    def z_dim(self) -> int:
        return int(self.generator.z_dim)

    @property
    def vocabulary(self) -> list[str]:
        return list(self.meta.get("vocabulary") or [])

    @property
    def groups(self) -> dict[str, dict[str, Any]]:
        return {name: dict(group) for name, group in (self.meta.get("groups") or {}).items()}

    @property
    def attributes(self) -> list[str]:
        """Tags that `attributes` may name: the label vocabulary, or the learned edit directions."""
        if self.conditional:
            return self.vocabulary
        return list(self.directions.tags) if self.directions is not None else []

    def parse_attributes(self, text: str | Sequence[str] | None) -> list[str]:
        """'blue_hair, smile' -> ['blue_hair', 'smile']; an unknown tag is a UserError."""
        if text is None:
            return []
        parts = text.split(",") if isinstance(text, str) else list(text)
        tags = [p.strip().lower().replace(" ", "_") for p in parts if p and p.strip()]
        known = set(self.attributes)
        unknown = [t for t in tags if t not in known]
        if unknown:
            if not known:
                raise UserError(
                    f"this model takes no attributes (unconditional, no edit directions); got {unknown[0]!r}")
            raise UserError(f"unknown attribute {unknown[0]!r}; known: {', '.join(self.attributes)}")
        for name, group in self.groups.items():
            chosen = [t for t in tags if t in group.get("tags", [])]
            if len(chosen) > 1 and not group.get("multi", False):
                raise UserError(f"attributes {chosen[0]!r} and {chosen[1]!r} are both {name}; pick one")
        return list(dict.fromkeys(tags))

    # -- filling and varying label groups ------------------------------------------------------
    def complete_attributes(self, tags: Sequence[str], seed: int) -> list[str]:
        """`tags` plus a prior draw for every group they leave out, from `seed` alone (vocabulary order).

        Zero labels in a group were never seen in training (every real avatar has a hair colour),
        so an unnamed group is sampled instead. Unconditional models get `tags` back unchanged.
        """
        if not self.conditional:
            return list(tags)
        rng = np.random.default_rng([int(seed) % 2**63, FILL_STREAM])
        chosen = set(self.layout.complete(list(tags), self.label_prior, rng))
        return [tag for tag in self.vocabulary if tag in chosen]

    def requests(self, seeds: Sequence[int], tags: Sequence[str]) -> list[list[str]]:
        """The full label set each seed is drawn with when `tags` are asked for."""
        return [self.complete_attributes(tags, seed) for seed in seeds]

    def varied_group(self, name: str, tags: Sequence[str] = ()) -> Group:
        """The attribute group `vary` sweeps; a UserError if it cannot be swept with `tags` asked."""
        if not self.conditional:
            raise UserError("--vary needs a conditional model; this one takes no attribute labels")
        group = next((g for g in self.layout.groups if g.name == name), None)
        if group is None:
            known = ", ".join(g.name for g in self.layout.groups) or "none"
            raise UserError(f"unknown attribute group {name!r}; groups: {known}")
        named = [tag for tag in tags if tag in group.tags]
        if named:
            raise UserError(f"--attributes names {named[0]!r}, a {name} value; "
                            f"--vary {name} draws each {name} in turn")
        return group

    def variations(self, seeds: Sequence[int], name: str,
                   tags: Sequence[str] = ()) -> tuple[list[str], list[list[str]]]:
        """(value names, label sets): for each seed, one set per value of group `name`, seed by seed.

        A row keeps the seed's fill of every other group (the fill draws the swept group too, so
        its value never shifts the others); a multi group's values are "none" and each tag alone.
        """
        group = self.varied_group(name, tags)
        values = ([[]] if group.multi else []) + [[tag] for tag in group.tags]
        rows = []
        for full in self.requests(seeds, tags):
            others = [tag for tag in full if tag not in group.tags]
            rows += [[tag for tag in self.vocabulary if tag in {*others, *value}] for value in values]
        return [value[0] if value else "none" for value in values], rows

    # -- drawing -------------------------------------------------------------------------------
    def latents(self, seeds: Sequence[int]) -> torch.Tensor:
        """(N, z_dim) float32: row i is N(0, I) drawn from seed i alone."""
        rows = [torch.randn(self.z_dim, generator=torch.Generator().manual_seed(int(s) % 2**63)) for s in seeds]
        return torch.stack(rows) if rows else torch.zeros(0, self.z_dim)

    def label_vectors(self, attributes: Sequence[Sequence[str]]) -> torch.Tensor:
        """(N, label_dim) float32 multi-hot (conditional models)."""
        index = {tag: i for i, tag in enumerate(self.vocabulary)}
        labels = torch.zeros(len(attributes), len(self.vocabulary))
        for row, tags in enumerate(attributes):
            for tag in tags:
                labels[row, index[tag]] = 1.0
        return labels

    def edit(self, z: torch.Tensor, attributes: Sequence[Sequence[str]],
             distance: float = EDIT_DISTANCE) -> torch.Tensor:
        """Move each z across its tags' boundaries (unconditional models with directions)."""
        if self.directions is None or not any(attributes):
            return z
        position = {tag: i for i, tag in enumerate(self.directions.tags)}
        normals = torch.from_numpy(self.directions.normals)
        offsets = torch.from_numpy(self.directions.offsets)
        z = z.clone()
        for row, tags in enumerate(attributes):
            for tag in tags:
                n, b = normals[position[tag]], offsets[position[tag]]
                z[row] += torch.clamp(distance - (z[row] @ n + b), min=0.0) * n
        return z

    @torch.inference_mode()
    def render(self, z: torch.Tensor, attributes: Sequence[Sequence[str]] | None = None,
               truncation: float | Sequence[float] = 1.0, batch_size: int = 64) -> np.ndarray:
        """z (N, z_dim), one tag list per row (drawn as given, no fill) -> (N, R, R, 3) uint8 RGB.

        Every forward pass has exactly RENDER_BATCH rows (the last chunk padded): BLAS and oneDNN
        pick kernels, and so summation orders, by batch shape (one row runs a GEMV), and the
        ~1e-6 differences flip a uint8 now and then. At one fixed shape a row's pixels depend on
        neither its position nor its batch mates, so a seed draws the same avatar on every path.
        `batch_size` is kept for callers; the chunk size is fixed.
        """
        n = z.shape[0]
        attributes = list(attributes) if attributes is not None else [[] for _ in range(n)]
        psi = torch.as_tensor(truncation, dtype=torch.float32).expand(n).clone() if n else torch.zeros(0)
        if self.generator.truncation_space == "z":
            # psi scales z (toward the prior's mode) before the edits, so an edit still reaches
            # its distance whatever psi is; the generator then draws at psi 1.
            z, psi = z * psi.reshape(-1, 1), torch.ones_like(psi)
        if not self.conditional:
            z = self.edit(z, attributes)
        labels = self.label_vectors(attributes) if self.conditional else None
        out = np.zeros((n, self.resolution, self.resolution, 3), np.uint8)
        for start in range(0, n, RENDER_BATCH):
            part = slice(start, start + RENDER_BATCH)
            rows = z[part].shape[0]
            zb, pb = _padded(z[part], self.device), _padded(psi[part], self.device)
            lb = _padded(labels[part], self.device) if labels is not None else None
            out[part] = to_uint8(self.generator(zb, lb, truncation_psi=pb, noise_mode="const")[:rows])
        return out

    def draw(self, seeds: Sequence[int], attributes: Sequence[str] | str | None = None,
             truncation: float = 1.0) -> np.ndarray:
        """The avatars of `seeds`, all asked for the same attributes, the rest filled per seed: (N, R, R, 3)."""
        tags = self.parse_attributes(attributes)
        return self.render(self.latents(seeds), self.requests(seeds, tags), truncation)

    def interpolate(self, seed_a: int, seed_b: int, steps: int, attributes: Sequence[str] | str | None = None,
                    truncation: float = 1.0) -> np.ndarray:
        """`steps` avatars on the spherical path from seed_a's latent to seed_b's: (steps, R, R, 3).

        The whole strip has seed_a's label fill, so only the latent changes along it.
        """
        tags = self.complete_attributes(self.parse_attributes(attributes), seed_a)
        a, b = self.latents([seed_a, seed_b])
        return self.render(slerp(a, b, torch.linspace(0, 1, steps)), [tags] * steps, truncation)

    def vary(self, seeds: Sequence[int], group: str, attributes: Sequence[str] | str | None = None,
             truncation: float = 1.0) -> np.ndarray:
        """For each seed, its avatar with every value of `group` (see `variations`): (N * values, R, R, 3)."""
        tags = self.parse_attributes(attributes)
        names, requests = self.variations(seeds, group, tags)
        z = self.latents(seeds).repeat_interleave(len(names), dim=0)
        return self.render(z, requests, truncation)


def _padded(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`rows` (K, ...) on `device`, padded with zero rows to RENDER_BATCH."""
    pad = RENDER_BATCH - rows.shape[0]
    if pad > 0:
        rows = torch.cat([rows, rows.new_zeros((pad, *rows.shape[1:]))])
    return rows.to(device)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between vectors a and b (D,) at fractions t (K,) -> (K, D)."""
    cos = torch.clamp(torch.dot(a, b) / (a.norm() * b.norm() + 1e-12), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-6:
        return a.lerp(b, t[:, None]) if t.ndim else a.lerp(b, t)
    t = t[:, None]
    path = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    # Exact ends: a strip's first and last avatars are the seeds' own, not off by a rounding.
    return torch.where(t == 0, a, torch.where(t == 1, b, path))


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


# -- the `moepipe generate` command ------------------------------------------------------------
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # models:/, runs:/, s3://; not a drive letter


def is_model_uri(model: str) -> bool:
    """Whether `moepipe generate --model` names an MLflow model rather than a file."""
    return bool(_URI.match(model))


def open_avatars(model: str, directions: Path | None = None, tracking_uri: str | None = None,
                 params: Path | None = None) -> AvatarModel:
    """generator.pt, an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...) or folder.

    A path's edit directions default to directions.npz beside it; an MLflow model brings its own.
    `directions`, if given, must exist and replaces them (unconditional models only). A model URI
    is looked up at `tracking_uri`, else at the URI `params` names (moepipe.config.tracking_uri).
    """
    if directions is not None and not Path(directions).is_file():
        raise UserError(f"{directions}: no such directions file")
    if not is_model_uri(model) and not (Path(model) / "MLmodel").is_file():
        path = Path(model)
        beside = path.with_name(DIRECTIONS_FILE)
        return AvatarModel.load(path, directions if directions is not None else beside)
    if tracking_uri is None and is_model_uri(model):
        tracking_uri = config_tracking_uri(params if params is not None else Path("params.yaml"))
    avatars = _load_logged_model(model, tracking_uri)  # a URI, or a saved MLflow model folder
    if directions is not None and not avatars.conditional:
        avatars.directions = Directions.load(directions)
    return avatars


def _load_logged_model(uri: str, tracking_uri: str | None) -> AvatarModel:
    import logging

    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise UserError(f"{uri}: loading MLflow models needs the mlflow package") from None
    if not logging.getLogger().isEnabledFor(logging.INFO):  # database setup chatter, unless -v
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if tracking_uri and tracking_uri != mlflow.get_tracking_uri():  # a global: leave it alone if it agrees
        mlflow.set_tracking_uri(tracking_uri)
    try:
        python_model = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    except (MlflowException, OSError, ImportError, ValueError) as error:
        text = getattr(error, "message", None) or str(error) or error.__class__.__name__
        raise UserError(f"{uri}: {text.strip().splitlines()[0]}") from None
    avatars = getattr(python_model, "avatars", None)
    if not isinstance(avatars, AvatarModel):
        raise UserError(f"{uri}: not a moepipe generator model")
    return avatars  # its provenance was filled in by AvatarGenerator.load_context


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
