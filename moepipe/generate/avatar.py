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
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moepipe.data import to_uint8
from moepipe.errors import UserError
from moepipe.images import atomic_write
from moepipe.models.attributes import AttributeLayout, Group
from moepipe.models.dcgan import DCGANGenerator
from moepipe.models.export import load_generator

EDIT_DISTANCE = 3.0  # signed distance past a tag's boundary that an edit aims for (z ~ N(0, I))
# Rows of every generator forward pass in `render` (see there). 4: a lone avatar (the studio, the
# served model) pays for a 4-row pass: studio single-avatar p50 23 ms here against 32 ms with
# 8-row passes, its grid of 8 (two passes) 47 ms against 36 ms (bench/studio_latency.py).
RENDER_BATCH = 4
FILL_STREAM = 0x6D6F65  # second rng seed word of label fills: a stream apart from any other use of the seed
KEPT_FILLS = 4096  # label fills kept per model (a fill costs ~0.1 ms; the studio asks for each several times)


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
        self._fills: OrderedDict[tuple[tuple[str, ...], int], tuple[str, ...]] = OrderedDict()

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
        key = (tuple(tags), int(seed))
        fill = self._fills.get(key)
        if fill is None:
            rng = np.random.default_rng([int(seed) % 2**63, FILL_STREAM])
            chosen = set(self.layout.complete(list(tags), self.label_prior, rng))
            fill = self._fills[key] = tuple(tag for tag in self.vocabulary if tag in chosen)
            if len(self._fills) > KEPT_FILLS:
                self._fills.popitem(last=False)
        else:
            self._fills.move_to_end(key)
        return list(fill)

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
