"""The MLflow pyfunc model: rows of (seed, attributes, truncation) -> base64 PNG avatars.

Input rows: `seed` (long), `attributes` (comma-separated vocabulary tags, may be empty or
missing), `truncation` (double psi in [0, 2], missing = 1.0). A conditional model draws every
attribute group a row leaves out from its label prior, by the row's seed (same row, same avatar;
see moepipe/generate/avatar.py). Output: a DataFrame with one column `image`, each cell a base64-encoded
PNG whose tEXt chunks (`avatar_text`, the keys `moepipe generate` writes too) name the registered
model (model = models:/NAME/VERSION, model_name, model_version, run_id), the seed, the attributes
as asked, the attributes drawn (`drawn_attributes`, with the fill) and the truncation.

The registered version number reaches the PNGs honestly: the registry step creates the model
version *before* it writes the model's files (the version's source is a pending MLflow
LoggedModel, which is filled in afterwards), so the version is known when the MLmodel file is
written and travels in `model_config` (see moepipe/registry/register.py).

The model carries its own copy of the moepipe package (`code_paths`): a registered version keeps
the code that made it, so `mlflow models serve -m models:/moe-generator@champion --env-manager
local` works wherever torch and mlflow are installed, and old versions stay loadable after the
network code changes. In a process that already imported moepipe (tests, `moepipe generate`)
Python keeps that import; the copy is only used by fresh processes such as the scoring server.
"""

from __future__ import annotations

import base64
import math
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from moepipe.config.model import TRUNCATION_RANGE
from moepipe.errors import UserError
from moepipe.generate.avatar import AvatarModel
from moepipe.generate.pictures import PROVENANCE_KEYS, avatar_text, png_bytes
from moepipe.models.export import DIRECTIONS_FILE, GENERATOR_FILE

MAX_ROWS = 256  # avatars per request; a bigger batch is a client mistake, not a reason to OOM
# Third-party packages that moepipe's generator code imports (pinned to what logged the model).
RUNTIME_PACKAGES = ["mlflow", "torch", "numpy", "pillow", "pandas", "pydantic", "pyyaml", "rich"]
ARTIFACT_NAMES = {"generator": GENERATOR_FILE, "directions": DIRECTIONS_FILE, "classifier": "classifier.pt"}


def signature() -> ModelSignature:
    """seed long (required), attributes string, truncation double -> image string (base64 PNG)."""
    inputs = Schema([
        ColSpec("long", "seed"),
        ColSpec("string", "attributes", required=False),
        ColSpec("double", "truncation", required=False),
    ])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("string", "image")]))


def input_example(avatars: AvatarModel) -> pd.DataFrame:
    """Two rows a reader of the model page can copy: no attributes, and one known tag."""
    tag = avatars.attributes[0] if avatars.attributes else ""
    return pd.DataFrame({"seed": [0, 1], "attributes": ["", tag], "truncation": [1.0, 0.7]})


def requirements() -> list[str]:
    """pip pins of RUNTIME_PACKAGES as installed here (local version suffixes like +cpu dropped)."""
    pins = []
    for package in RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={metadata.version(package).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return pins


def package_dir() -> Path:
    """The moepipe package folder, logged as the model's code."""
    return Path(__file__).resolve().parent


def model_code() -> Path:
    """The models-from-code file MLflow runs to build the model (no pickled Python objects)."""
    return package_dir() / "pyfunc_model.py"


class AvatarGenerator(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of AvatarModel; after load_context, `self.avatars` is the loaded AvatarModel."""

    def load_context(self, context: Any) -> None:
        registration = dict((context.model_config or {}).get("registration") or {})
        provenance = {key: str(registration[key]) for key in PROVENANCE_KEYS if registration.get(key)}
        registered = "model_name" in provenance and "model_version" in provenance
        # The PNGs' `model`: a saved but unregistered model knows no name to give.
        self.model_uri = f"models:/{provenance['model_name']}/{provenance['model_version']}" if registered \
            else "unregistered"
        artifacts = context.artifacts
        self.avatars = AvatarModel.load(Path(artifacts["generator"]), directions=artifacts.get("directions"))
        self.avatars.provenance = provenance  # what the PNGs (and `moepipe generate` of this model) record

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """DataFrame rows (seed, attributes, truncation) -> DataFrame column `image` (base64 PNG)."""
        rows = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "seed" not in rows.columns:
            raise MlflowException.invalid_parameter_value("missing column 'seed'")
        if len(rows) > MAX_ROWS:
            raise MlflowException.invalid_parameter_value(f"{len(rows)} rows; at most {MAX_ROWS} per request")
        seeds = [_seed(value, i) for i, value in enumerate(rows["seed"])]
        texts = list(rows["attributes"]) if "attributes" in rows.columns else [""] * len(rows)
        psis = list(rows["truncation"]) if "truncation" in rows.columns else [1.0] * len(rows)
        tags, truncations = [], []
        for i, (text, psi) in enumerate(zip(texts, psis)):
            try:
                tags.append(self.avatars.parse_attributes(_text(text)))
            except UserError as error:
                raise MlflowException.invalid_parameter_value(f"row {i}: {error}") from None
            truncations.append(_truncation(psi, i))
        drawn = [self.avatars.complete_attributes(row_tags, seed) for row_tags, seed in zip(tags, seeds)]
        images = self.avatars.render(self.avatars.latents(seeds), drawn, truncations) if seeds else []
        encoded = [
            base64.b64encode(png_bytes(image, avatar_text(self.model_uri, seed, row_tags, full, psi,
                                                          self.avatars.provenance))).decode("ascii")
            for image, seed, row_tags, full, psi in zip(images, seeds, tags, drawn, truncations)
        ]
        return pd.DataFrame({"image": encoded})


def _seed(value: Any, row: int) -> int:
    try:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise MlflowException.invalid_parameter_value(f"row {row}: seed must be an integer (got {value!r})") from None


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _truncation(value: Any, row: int) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 1.0
    try:
        psi = float(value)
    except (TypeError, ValueError):
        psi = math.nan
    low, high = TRUNCATION_RANGE
    if not low <= psi <= high:
        raise MlflowException.invalid_parameter_value(
            f"row {row}: truncation must be in [{low:g}, {high:g}] (got {value!r})")
    return psi
