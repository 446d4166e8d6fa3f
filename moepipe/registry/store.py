"""The MLflow store that registration writes to: reachability, a cross-process lock, the
experiment and registered model it needs, and MLflow's process-wide URIs while it works."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from moepipe.config import RegisterConfig
from moepipe.errors import UserError, redact


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?")[0])


def is_local_store(uri: str) -> bool:
    scheme = urlsplit(uri).scheme
    return scheme in ("sqlite", "file", "") or len(scheme) == 1  # a bare path (or a Windows drive)


def store_seen_from(uri: str, folder: Path) -> str:
    """URI as a process working in FOLDER opens it: a relative embedded store (`sqlite:///mlflow.db`,
    a bare folder) becomes absolute, so a caller running elsewhere (a flow run whose working
    directory is not the checkout) reads the store that the stage there writes."""
    sqlite = _sqlite_path(uri)
    if sqlite is not None:
        if sqlite.is_absolute():
            return uri
        query = uri.partition("?")[2]
        return f"sqlite:///{(folder / sqlite).resolve()}" + (f"?{query}" if query else "")
    if is_local_store(uri) and not uri.startswith(("sqlite:", "file:")) and not Path(uri).is_absolute():
        return str((folder / uri).resolve())
    return uri


def check_store(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with one line when the tracking store cannot be reached."""
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        import httpx

        try:
            status = httpx.get(uri.rstrip("/") + "/health", timeout=timeout_s).status_code
        except httpx.HTTPError as error:
            raise UserError(f"MLflow tracking server {redact(uri)} is unreachable "
                            f"({type(error).__name__}: {error or 'no answer'})") from None
        if status >= 400:
            raise UserError(f"MLflow tracking server {redact(uri)}: GET /health answered HTTP {status} "
                            "(is this the server's base URL?)")
    sqlite = _sqlite_path(uri)
    if sqlite is not None and not sqlite.resolve().parent.is_dir():
        raise UserError(f"MLflow tracking store {uri}: folder {sqlite.parent} does not exist")


@contextlib.contextmanager
def store_lock(uri: str, timeout_s: float = 600.0) -> Iterator[bool]:
    """Hold an exclusive file lock for a local store (yields True), else do nothing (yields False)."""
    sqlite = _sqlite_path(uri)
    if sqlite is not None:
        path = Path(f"{sqlite}.lock")
    elif is_local_store(uri) and not uri.startswith("sqlite:"):
        path = Path(uri.removeprefix("file://").removeprefix("file:")) / ".moepipe-register.lock"
    else:
        yield False
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:  # a separate open file description per caller: threads exclude too
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"{path}: another registration has held this lock for over "
                                    f"{timeout_s:.0f} s") from None
                time.sleep(0.1)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def artifact_root(cfg: RegisterConfig, uri: str) -> str | None:
    """Artifact location of a new experiment: as given if a URI, absolute file URI for a local store."""
    location = cfg.artifact_location
    if "://" in location or location.startswith("file:"):
        return location
    if is_local_store(uri):
        return Path(location).resolve().as_uri()
    return None  # a tracking server decides (e.g. its proxied mlflow-artifacts root)


def ensure_experiment(client: Any, cfg: RegisterConfig, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(cfg.experiment)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        return client.create_experiment(cfg.experiment, artifact_location=artifact_root(cfg, uri))
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(cfg.experiment).experiment_id


def ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, description="Chibi anime avatar generator (moepipe). Aliases: champion = the best "
                                  "version that passes the gates, challenger = the latest one that did not win.")
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


@contextlib.contextmanager
def mlflow_globals(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at `uri`, without exporting them.

    Some MLflow internals (model version sources, fluent logging) read only the globals, so they
    are set (and stay set: in-process callers then load what was registered, and concurrent
    registrations in threads never see them flip). But setting them also exports
    MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, which subprocesses started later would inherit and
    follow to this store instead of their own; those two variables are put back afterwards.
    """
    import mlflow

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in names}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
