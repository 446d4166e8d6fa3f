"""Typed parameters for every stage, loaded from params.yaml.

This package is the only place where defaults live (data stages in ``data.py``, model stages in
``model.py``). Every model forbids unknown keys, so a typo in params.yaml fails before any work
starts, naming the key: ``params.yaml: scrape.rate_per_host: Input should be greater than or
equal to 0 (got -1)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from moepipe.config.base import ConfigError, Strict
from moepipe.config.data import (
    SUPPORTED_RESOLUTIONS,
    CurateConfig,
    DanbooruSource,
    DirtRates,
    FacesConfig,
    FolderSource,
    GelbooruSource,
    LabelGroup,
    LabelsConfig,
    PreprocessConfig,
    ScrapeConfig,
    Source,
    SyntheticSource,
    UrlsSource,
    check_resolution,
)
from moepipe.config.model import (
    TRAIN_PROFILES,
    ClassifierConfig,
    EvaluateConfig,
    Gate,
    RegisterConfig,
    TrainConfig,
)

__all__ = [
    "ClassifierConfig", "ConfigError", "CurateConfig", "EvaluateConfig", "Gate", "DanbooruSource", "DirtRates",
    "FacesConfig", "FolderSource",
    "GelbooruSource", "LabelGroup", "LabelsConfig", "Params", "PreprocessConfig", "RegisterConfig", "ScrapeConfig",
    "Source", "Strict", "SUPPORTED_RESOLUTIONS", "SyntheticSource", "TRAIN_PROFILES", "TrainConfig", "UrlsSource",
    "check_resolution", "load_params", "parse_params", "tracking_uri",
]


# --------------------------------------------------------------------------------------------
# The whole file
# --------------------------------------------------------------------------------------------

class Params(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    seed: int = 0
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    scrape: ScrapeConfig = Field(default_factory=ScrapeConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    # "register" in params.yaml; the attribute name avoids BaseModel.register (ABC registration).
    registry: RegisterConfig = Field(default_factory=RegisterConfig, alias="register")

    @model_validator(mode="after")
    def _crops_cover_the_resolution(self) -> Params:
        # Preprocess resizes the curated crops to preprocess.resolution: smaller crops would be
        # upscaled, and the model would learn interpolation blur as if it were the art.
        size, resolution = self.curate.output_size, self.preprocess.resolution
        if size < resolution:
            raise ValueError(f"curate.output_size {size} is smaller than preprocess.resolution {resolution}; "
                             f"raise curate.output_size to at least {resolution} or lower preprocess.resolution")
        return self


def _format_error(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    loc = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function-"))
    message = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or first["type"] == "missing" else f" (got {got!r})"
    if shown.strip() in message:  # the validator already quoted the value
        shown = ""
    extra = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    # A check across sections (a validator of Params itself) names its keys in the message.
    return f"{path}: {loc + ': ' if loc else ''}{message}{shown}{extra}"


def parse_params(data: Any, path: Path = Path("params.yaml")) -> Params:
    """Validate an already-parsed mapping; raises ConfigError with a one-line message."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_error(path, error)) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml; raises ConfigError with a one-line message."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML") from None
    return parse_params(data, path)


def tracking_uri(params_path: Path | str = "params.yaml") -> str:
    """The MLflow tracking URI: $MLFLOW_TRACKING_URI, else register.tracking_uri of `params_path`
    (its default when the file does not exist)."""
    path = Path(params_path)
    return (load_params(path) if path.is_file() else Params()).registry.resolved_tracking_uri()
