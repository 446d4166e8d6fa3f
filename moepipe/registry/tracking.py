"""What one registration writes into MLflow: the run's params, curves, pictures, and the model version.

Called by moepipe/registry/register.py with the store already chosen (and locked, for the embedded one).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion

from moepipe.config import RegisterConfig
from moepipe.errors import TransientError, redact
from moepipe.generate.avatar import AvatarModel
from moepipe.registry.promotion import COMPLETE_TAG, FINGERPRINT_TAG
from moepipe.registry.pyfunc import input_example, model_code, package_dir, requirements, signature
from moepipe.s3 import probe_s3_endpoint, s3_transport_reason

MODEL_NAME_IN_RUN = "generator"
VERSION_LINEAGE_TAGS = ("mlflow.source.git.commit", "moepipe.git_dirty", "dvc.md5.data/prepared", FINGERPRINT_TAG)


def training_curves(*tables: Path) -> list[Metric]:
    """Rows of metrics.csv (and throughput.csv) -> one Metric per (column, step), named
    train/<column>, at that step. A missing file gives nothing."""
    now = int(time.time() * 1000)
    metrics = []
    for table in tables:
        if table.is_file():
            metrics += _curves(table, now)
    return metrics


def _curves(table: Path, now: int) -> list[Metric]:
    metrics = []
    with table.open(newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                step = int(float(row.get("step") or ""))
            except ValueError:
                continue
            for column, text in row.items():
                if column in (None, "step") or text in (None, ""):
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                if math.isfinite(value):
                    metrics.append(Metric(f"train/{column}", value, now, step))
    return metrics


def log_pictures_and_reports(client: MlflowClient, run_id: str, *, evaluate_dir: Path, train_reports: Path,
                             metrics_json: Path, data_reports: Path) -> None:
    """Evaluation PNGs + metrics.json under evaluate/, curves + last sample grid under train/,
    data stage reports under data/."""
    for picture in sorted(evaluate_dir.glob("*.png")) if evaluate_dir.is_dir() else []:
        client.log_artifact(run_id, str(picture), "evaluate")
    if metrics_json.is_file():
        client.log_artifact(run_id, str(metrics_json), "evaluate")
    for table in ("metrics.csv", "throughput.csv"):
        if (train_reports / table).is_file():
            client.log_artifact(run_id, str(train_reports / table), "train")
    grids = sorted((train_reports / "samples").glob("step-*.png"))
    if grids:
        client.log_artifact(run_id, str(grids[-1]), "train")
    for stage in ("scrape", "curate", "preprocess"):
        if (data_reports / f"{stage}.json").is_file():
            client.log_artifact(run_id, str(data_reports / f"{stage}.json"), "data")


def log_new_version(client: MlflowClient, cfg: RegisterConfig, experiment_id: str, *, generator: Path,
                    fingerprint: str, metrics: Mapping[str, float], tags: Mapping[str, str],
                    summary: Mapping[str, Any], params: Mapping[str, str], evaluate_dir: Path,
                    train_reports: Path, metrics_json: Path, data_reports: Path,
                    artifacts: Mapping[str, Path | None]) -> ModelVersion:
    """A new run with everything logged, and a complete model version of cfg.model_name."""

    run_tags = {**tags, "moepipe.arch": str(summary.get("arch")), "moepipe.generator_step": str(summary.get("step"))}
    run = client.create_run(experiment_id, run_name=f"{summary.get('arch')}-{summary.get('resolution')}px-"
                                                    f"{fingerprint[:8]}", tags=run_tags)
    run_id = run.info.run_id
    created: ModelVersion | None = None
    try:
        with mlflow.start_run(run_id=run_id, nested=True):  # thread-local active run; FAILED on errors
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
            client.log_batch(run_id, metrics=training_curves(train_reports / "metrics.csv",
                                                             train_reports / "throughput.csv"))
            log_pictures_and_reports(client, run_id, evaluate_dir=evaluate_dir, train_reports=train_reports,
                                     metrics_json=metrics_json, data_reports=data_reports)
            # The version first, its files second: the files can then name their own version.
            logged = mlflow.initialize_logged_model(name=MODEL_NAME_IN_RUN, source_run_id=run_id,
                                                    experiment_id=experiment_id, tags={FINGERPRINT_TAG: fingerprint})
            created = client.create_model_version(
                cfg.model_name, f"models:/{logged.model_id}", run_id=run_id, model_id=logged.model_id,
                tags={k: v for k, v in tags.items() if k in VERSION_LINEAGE_TAGS})
            files = {"generator": str(generator)}
            files.update({key: str(path) for key, path in artifacts.items()
                          if path is not None and Path(path).is_file()})
            avatars = AvatarModel.load(generator, directions=artifacts.get("directions"))
            mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN, python_model=str(model_code()), artifacts=files,
                code_paths=[str(package_dir())], signature=signature(), input_example=input_example(avatars),
                pip_requirements=requirements(), model_id=logged.model_id,
                model_config={"registration": {"model_name": cfg.model_name, "model_version": int(created.version),
                                               "run_id": run_id, "generator_sha256": fingerprint}})
            now = int(time.time() * 1000)
            step = int(summary.get("step") or 0)
            client.log_batch(run_id, metrics=[Metric(k, v, now, step, model_id=logged.model_id)
                                              for k, v in sorted(metrics.items())])
            client.set_model_version_tag(cfg.model_name, created.version, COMPLETE_TAG, "true")
    except BaseException:
        if created is not None:
            try:  # an incomplete version is never promoted, but do not leave it behind either
                client.delete_model_version(cfg.model_name, created.version)
            except Exception:
                pass
        raise
    return client.get_model_version(cfg.model_name, created.version)



def _endpoint_in(error: BaseException) -> str | None:
    """scheme://host:port of the S3 URL a botocore connection error (or its cause) names."""
    from urllib.parse import urlsplit

    seen = error
    while seen is not None:
        url = getattr(seen, "kwargs", {}).get("endpoint_url")
        if url:
            parts = urlsplit(url)
            return f"{parts.scheme}://{parts.netloc}"
        seen = seen.__cause__ or seen.__context__
    return None


def artifact_store_failure(error: BaseException, tracking_uri: str,
                           environ: Mapping[str, str] | None = None) -> TransientError | None:
    """One line for a failure to store artifacts (S3 down behind the MLflow server, or in front of
    this client when it writes to S3 itself), else None. The server answers only HTTP 500 or drops
    the connection, so the S3 endpoint that the environment names (MLFLOW_S3_ENDPOINT_URL,
    AWS_ENDPOINT_URL) is probed to say which store is down."""
    import os

    from mlflow.exceptions import MlflowException


    environ = os.environ if environ is None else environ
    after = "no model version was completed; run register again once it is back"
    direct = _endpoint_in(error)
    if direct is not None:
        return TransientError(f"artifact store S3 endpoint {direct} is unreachable: "
                              f"{s3_transport_reason(error)}; {after}")
    if not (isinstance(error, MlflowException) and "/mlflow-artifacts/" in str(error)):
        return None
    server = f"MLflow server {redact(tracking_uri)}"
    endpoint = environ.get("MLFLOW_S3_ENDPOINT_URL") or environ.get("AWS_ENDPOINT_URL")
    reason = probe_s3_endpoint(endpoint) if endpoint else None
    if reason is not None:
        return TransientError(f"{server} could not store artifacts: its artifact store, S3 endpoint "
                              f"{endpoint}, is unreachable: {reason}; {after}")
    text = str(error)
    answer = "HTTP 500" if " 500" in text else "connection reset" if "reset" in text.lower() else "no answer"
    return TransientError(f"{server} could not store artifacts ({answer}); its artifact store (S3) may be "
                          f"down, see the server's log; {after}")
