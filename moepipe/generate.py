"""Drawing avatars from an exported generator: seeds, attributes, truncation, edits, pictures.

Everything that turns a trained generator into images goes through `AvatarModel`: the evaluate
stage, `moepipe generate`, and the MLflow pyfunc model. A seed fixes an avatar's latent (the same
seed gives the same face whatever the batch), attributes are vocabulary tags, and truncation
psi trades variety for typicality.

Conditional generators take attributes as label vectors. Unconditional ones take them as latent
edits (InterFaceGAN): each tag has a unit normal n and offset b of a linear boundary in z space,
and asking for the tag moves z along n until its signed distance n.z + b reaches
``edit_distance`` (z that is already that far on the tag's side stays where it is).
`moepipe.edits` learns the boundaries. DCGAN truncation scales z toward the prior's mode
before the edit, so an edited avatar still lands at the edit distance whatever psi is;
StyleGAN truncation acts later, in w, and pulls edits toward the average face as well.
"""

from __future__ import annotations

import io
import re
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
        if not hasattr(generator, "synthesis"):
            # DCGAN's transposed convs run ~1.3x faster channels-last on CPU (oneDNN); pixels
            # match the contiguous layout but for a rare ±1 rounding (4e-6 of values measured).
            self.generator = generator.to(memory_format=torch.channels_last)
        self.meta = {k: v for k, v in meta.items() if k != "state_dict"}
        self.directions = directions if not self.conditional else None
        # Where a registered model came from (model_name, model_version, run_id), for PNG text.
        self.provenance: dict[str, str] = {}
        self.device = next(generator.parameters()).device

    @classmethod
    def load(cls, path: Path, directions: Path | None = None, device: str = "cpu") -> "AvatarModel":
        """Load generator.pt (and, for an unconditional model, a directions file if it exists)."""
        from moepipe.train.loop import load_generator

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such generator file")
        try:
            generator, meta = load_generator(path, device)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - truncated, foreign or corrupt: the same user problem
            raise UserError(f"{path}: cannot read the generator ({error.__class__.__name__})") from None
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

    @torch.inference_mode()
    def render(self, z: torch.Tensor, attributes: Sequence[Sequence[str]] | None = None,
               truncation: float | Sequence[float] = 1.0, batch_size: int = 64) -> np.ndarray:
        """z (N, z_dim), one tag list per row -> (N, R, R, 3) uint8 RGB."""
        n = z.shape[0]
        attributes = list(attributes) if attributes is not None else [[] for _ in range(n)]
        psi = torch.as_tensor(truncation, dtype=torch.float32).expand(n).clone() if n else torch.zeros(0)
        stylegan = hasattr(self.generator, "synthesis")
        if not stylegan:  # DCGAN has no w_avg: psi scales z toward the prior's mode, before edits
            z = z * psi.reshape(-1, 1)
        if not self.conditional:
            z = self.edit(z, attributes)
        labels = self.label_vectors(attributes) if self.conditional else None
        out = np.zeros((n, self.resolution, self.resolution, 3), np.uint8)
        for start in range(0, n, batch_size):
            part = slice(start, start + batch_size)
            zb, pb = z[part].to(self.device), psi[part].to(self.device)
            lb = labels[part].to(self.device) if labels is not None else None
            if stylegan:
                images = self.generator(zb, lb, truncation_psi=pb, noise_mode="const")
            else:
                images = self.generator(zb, lb)
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
    path = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    # Exact ends: a strip's first and last avatars are the seeds' own, not off by a rounding.
    return torch.where(t == 0, a, torch.where(t == 1, b, path))


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


# -- the `moepipe generate` command ------------------------------------------------------------
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # models:/, runs:/, s3://; not a drive letter


def is_model_uri(model: str) -> bool:
    """Whether `moepipe generate --model` names an MLflow model rather than a file."""
    return bool(_URI.match(model))


def open_avatars(model: str, directions: Path | None = None, tracking_uri: str | None = None) -> AvatarModel:
    """generator.pt, an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...) or folder.

    A path's edit directions default to directions.npz beside it; an MLflow model brings its own.
    `directions`, if given, must exist and replaces them (unconditional models only).
    """
    if directions is not None and not Path(directions).is_file():
        raise UserError(f"{directions}: no such directions file")
    if not is_model_uri(model) and not (Path(model) / "MLmodel").is_file():
        path = Path(model)
        beside = path.with_name("directions.npz")
        return AvatarModel.load(path, directions if directions is not None else beside)
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
    avatars.provenance = {key: str(getattr(python_model, key)) for key in ("model_name", "model_version", "run_id")
                          if getattr(python_model, key, "")}
    return avatars


def write_pictures(avatars: AvatarModel, model: str, *, out: Path | None, singles: Path | None = None,
                   n: int = 16, seed: int = 0, attributes: str | None = None, truncation: float = 1.0,
                   columns: int = 8, interpolate_to: int | None = None, steps: int = 8) -> str:
    """Draw avatars seed, seed+1, ... (or an interpolation strip seed → interpolate_to) as PNGs.

    `out` gets one picture (grid or strip), `singles` one PNG per avatar; every PNG carries
    tEXt model, seed, attributes and truncation. Returns a one-line summary.
    """
    if n < 1:
        raise UserError(f"--n must be at least 1 (got {n})")
    if columns < 1:
        raise UserError(f"--columns must be at least 1 (got {columns})")
    if steps < 2:
        raise UserError(f"--steps must be at least 2 (got {steps})")
    if not 0 <= truncation <= 2:  # the range the served model accepts (moepipe/pyfunc.py)
        raise UserError(f"--truncation must be in [0, 2] (got {truncation:g})")
    tags = avatars.parse_attributes(attributes)
    if out is None and singles is None:
        out = Path("avatars.png")
    text = {"model": model, **avatars.provenance, "attributes": ",".join(tags), "truncation": f"{truncation:g}",
            "software": "moepipe"}
    if interpolate_to is None:
        seeds = [seed + i for i in range(n)]
        images = avatars.draw(seeds, tags, truncation)
        whole = {**text, "seed": f"{seeds[0]}..{seeds[-1]}" if n > 1 else str(seed),
                 "comment": f"avatar i (row by row, {min(columns, n)} columns) has seed {seed} + i"}
        frames = [({**text, "seed": str(s)}, f"avatar_{s:06d}.png") for s in seeds]
        layout, what = min(columns, n), f"{n} avatar(s), seeds {whole['seed']}"
    else:
        images = avatars.interpolate(seed, interpolate_to, steps, tags, truncation)
        whole = {**text, "seed": str(seed), "seed_b": str(interpolate_to), "steps": str(steps)}
        frames = [({**text, "seed": str(seed), "seed_b": str(interpolate_to), "t": f"{i / (steps - 1):.4g}"},
                   f"interpolation_{seed}_{interpolate_to}_{i:03d}.png") for i in range(steps)]
        layout, what = steps, f"interpolation {seed} → {interpolate_to} in {steps} steps"
    from moepipe.images import atomic_write

    written = []
    try:
        if out is not None:
            atomic_write(Path(out), png_bytes(grid(images, layout), whole))
            written.append(str(out))
        if singles is not None:
            for image, (meta, name) in zip(images, frames):
                atomic_write(Path(singles) / name, png_bytes(image, meta))
            written.append(f"{len(frames)} file(s) in {singles}")
    except OSError as error:
        raise UserError(f"{error.filename or out or singles}: cannot write ({error.strerror or error})") from None
    shown = f" with {', '.join(tags)}" if tags else ""
    return f"generate: {what}{shown} at truncation {truncation:g} → {'; '.join(written)}"
