"""Drawing avatars from an exported generator: seeds, attributes, truncation, edits, pictures.

Everything that turns a trained generator into images goes through `AvatarModel`: the evaluate
stage, `moepipe generate`, and the MLflow pyfunc model. A seed fixes an avatar's latent (the same
seed gives the same face whatever the batch), attributes are vocabulary tags, and truncation
psi trades variety for typicality.

Conditional generators take attributes as label vectors. Unconditional ones take them as latent
edits (InterFaceGAN): each tag has a unit normal n and offset b of a linear boundary in z space,
and asking for the tag moves z along n until its signed distance n.z + b reaches
``edit_distance`` (z that is already that far on the tag's side stays where it is).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, PngImagePlugin

from moepipe.errors import UserError

EDIT_DISTANCE = 3.0  # signed distance past a tag's boundary that an edit aims for (z ~ N(0, I))


@dataclass
class Directions:
    """Linear attribute boundaries in z space: tags (T,), normals (T, z_dim) unit, offsets (T,)."""

    tags: list[str]
    normals: np.ndarray
    offsets: np.ndarray
    accuracy: dict[str, float] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        from moepipe.images import atomic_write

        buffer = io.BytesIO()
        np.savez(buffer, tags=np.array(self.tags, dtype=str), normals=self.normals.astype(np.float32),
                 offsets=self.offsets.astype(np.float32),
                 accuracy=np.array([self.accuracy.get(t, np.nan) for t in self.tags], np.float32))
        atomic_write(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> "Directions":
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
        self.meta = {k: v for k, v in meta.items() if k != "state_dict"}
        self.directions = directions if not self.conditional else None
        self.device = next(generator.parameters()).device

    @classmethod
    def load(cls, path: Path, directions: Path | None = None, device: str = "cpu") -> "AvatarModel":
        """Load generator.pt (and, for an unconditional model, a directions file if it exists)."""
        from moepipe.train.loop import load_generator

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such generator file")
        generator, meta = load_generator(path, device)
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
                raise UserError(f"this model takes no attributes (unconditional, no edit directions); got {unknown[0]!r}")
            raise UserError(f"unknown attribute {unknown[0]!r}; known: {', '.join(self.attributes)}")
        for name, group in self.groups.items():
            chosen = [t for t in tags if t in group.get("tags", [])]
            if len(chosen) > 1 and not group.get("multi", False):
                raise UserError(f"attributes {chosen[0]!r} and {chosen[1]!r} are both {name}; pick one")
        return list(dict.fromkeys(tags))

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

    @torch.no_grad()
    def render(self, z: torch.Tensor, attributes: Sequence[Sequence[str]] | None = None,
               truncation: float | Sequence[float] = 1.0, batch_size: int = 64) -> np.ndarray:
        """z (N, z_dim), one tag list per row -> (N, R, R, 3) uint8 RGB."""
        n = z.shape[0]
        attributes = list(attributes) if attributes is not None else [[] for _ in range(n)]
        psi = torch.as_tensor(truncation, dtype=torch.float32).expand(n).clone() if n else torch.zeros(0)
        if not self.conditional:
            z = self.edit(z, attributes)
        labels = self.label_vectors(attributes) if self.conditional else None
        out = np.zeros((n, self.resolution, self.resolution, 3), np.uint8)
        stylegan = hasattr(self.generator, "synthesis")
        for start in range(0, n, batch_size):
            part = slice(start, start + batch_size)
            zb, pb = z[part].to(self.device), psi[part].to(self.device)
            lb = labels[part].to(self.device) if labels is not None else None
            if stylegan:
                images = self.generator(zb, lb, truncation_psi=pb, noise_mode="const")
            else:  # DCGAN has no w_avg: psi scales z toward the prior's mode
                images = self.generator(zb * pb.reshape(-1, 1), lb)
            out[part] = to_uint8(images)
        return out

    def draw(self, seeds: Sequence[int], attributes: Sequence[str] | str | None = None,
             truncation: float = 1.0) -> np.ndarray:
        """The avatars of `seeds`, all with the same attributes: (N, R, R, 3) uint8."""
        tags = self.parse_attributes(attributes)
        return self.render(self.latents(seeds), [tags] * len(seeds), truncation)

    def interpolate(self, seed_a: int, seed_b: int, steps: int, attributes: Sequence[str] | str | None = None,
                    truncation: float = 1.0) -> np.ndarray:
        """`steps` avatars on the spherical path from seed_a's latent to seed_b's: (steps, R, R, 3)."""
        tags = self.parse_attributes(attributes)
        a, b = self.latents([seed_a, seed_b])
        return self.render(slerp(a, b, torch.linspace(0, 1, steps)), [tags] * steps, truncation)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between vectors a and b (D,) at fractions t (K,) -> (K, D)."""
    cos = torch.clamp(torch.dot(a, b) / (a.norm() * b.norm() + 1e-12), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-6:
        return a.lerp(b, t[:, None]) if t.ndim else a.lerp(b, t)
    t = t[:, None]
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, R, R) in [-1, 1] -> (N, R, R, 3) uint8."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def grid(images: np.ndarray, columns: int, captions: Sequence[str] | None = None,
         caption_width: int = 150, gap: int = 2) -> Image.Image:
    """Tile (N, R, R, 3) uint8 into rows of `columns`; optional caption per row on the left."""
    n, size = len(images), images.shape[1]
    rows = max(1, -(-n // columns))
    left = caption_width if captions else 0
    canvas = Image.new("RGB", (left + columns * (size + gap) - gap, rows * (size + gap) - gap), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(images):
        r, c = divmod(i, columns)
        canvas.paste(Image.fromarray(tile), (left + c * (size + gap), r * (size + gap)))
    for r, caption in enumerate(captions or []):
        draw.multiline_text((4, r * (size + gap) + 2), caption, fill=(40, 40, 40), spacing=1)
    return canvas


def png_bytes(image: np.ndarray | Image.Image, text: Mapping[str, str] | None = None) -> bytes:
    """PNG file bytes with tEXt chunks (e.g. model version, seed, attributes)."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, str(value))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
