"""Opening a model to draw from: a generator file, a saved MLflow model folder, or a registered
model's URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH)."""

from __future__ import annotations

import re
from pathlib import Path

from moepipe.config import tracking_uri as config_tracking_uri
from moepipe.errors import UserError
from moepipe.generate.avatar import AvatarModel, Directions
from moepipe.models.export import DIRECTIONS_FILE

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
