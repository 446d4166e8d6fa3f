"""Register stage: one MLflow run per trained and evaluated generator, a model version, promotion.

The pieces: this module (stores, lineage, the stage), moepipe/registry/tracking.py (what goes into a run),
moepipe/registry/pyfunc.py (the served model), moepipe/registry/promotion.py (champion rules and their concurrency
argument), moepipe/registry/modelcard.py (the markdown card).

`register` logs everything that explains a generator into one run of `register.experiment`:
all params (dotted names), lineage tags (git commit and dirty flag, DVC md5 hashes of the data
and model from dvc.lock, sha256 of generator.pt), the training curves from metrics.csv (with
their step numbers), the evaluation metrics, the evaluation pictures and last training sample
grid, a model card, and the model itself as an MLflow pyfunc (moepipe/registry/pyfunc.py). The model
becomes a version of `register.model_name`, and moepipe/registry/promotion.py decides whether that
version is the new `champion` or a `challenger`.

Order of writes: the model version is created first, pointing at a pending MLflow LoggedModel,
and only then are the model's files written into that LoggedModel, so the files can name their
own version number (it is in the MLmodel `model_config` and in every PNG the model draws). A
version is marked complete (`moepipe.complete`) only after all its files and metrics are in
place. A failed registration deletes its version; one killed outright leaves an incomplete version
that never counts as a candidate and that the next registration of the same generator removes
(embedded store only: with a shared server it might be another process's work in progress).
When storing artifacts fails because S3 is down (behind the MLflow server, or in front of this
client), `register` ends in one line naming the endpoint, a TransientError: the CLI exits 75 and
the flows retry (moepipe/registry/tracking.py: artifact_store_failure).

Idempotent: the generator's sha256 identifies a registration. Registering the same generator.pt
again creates no run or version; it re-checks the decision with the current gates and champion
and refreshes the model card and the version's decision tags. `registered_version` asks a store
whether it holds a generator (the pipeline flow uses it: DVC cannot see which store the register
stage wrote to, flows/registration.py).

The embedded default store is `sqlite:///mlflow.db` with artifacts under `register.artifact_location`
(made absolute); a whole registration holds a file lock next to the sqlite file. With a tracking
server, the server chooses the artifact root unless artifact_location is itself a URI (s3://...).

Side effect: `register` sets MLflow's global tracking and registry URIs (and so the
MLFLOW_TRACKING_URI variable of this process) to `tracking_uri`, because parts of MLflow's logging
and registry code read only the global.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from moepipe.config import Params, RegisterConfig
from moepipe.errors import UserError, redact
from moepipe.images import write_json
from moepipe.models.export import generator_summary
from moepipe.registry.modelcard import data_card, model_card
from moepipe.registry.store import (
    _sqlite_path,
    check_store,
    ensure_experiment,
    ensure_registered_model,
    mlflow_globals,
    store_lock,
)
from moepipe.reports import Report

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
DATA_PREFIXES = ("data/", "models/")  # dvc.lock paths whose hashes are lineage, not code


# -- inputs and lineage ------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def read_metrics(path: Path) -> dict[str, float]:
    """metrics.json -> {name: finite float}; nested objects flatten to dotted names."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such metrics file (run `moepipe evaluate` first)") from None
    except ValueError as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected an object of metric name -> number")
    flat = {}
    for key, value in flatten(data).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[key] = float(value)
    return flat


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted names; a dict whose keys are not all plain names stays one value."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(re.fullmatch(r"[\w\-. :/]+", str(k)) for k in value):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def flat_params(params: Params) -> dict[str, str]:
    """Every param as a dotted name (params.yaml keys) -> string; lists as JSON."""
    result = {}
    for key, value in flatten(params.model_dump(mode="json", by_alias=True)).items():
        text = value if isinstance(value, str) else json.dumps(value)
        result[key] = text if len(text) <= MAX_PARAM_LENGTH else text[:MAX_PARAM_LENGTH - 1] + "…"
    return result


def git_state(where: Path) -> dict[str, str]:
    """Commit and dirty flag of the repository at `where` (dvc.lock, which DVC rewrites, is ignored)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=20,
                              check=True).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    dirty = [path for path in changed if not path.endswith("dvc.lock")]
    return {"git_commit": commit, "git_dirty": "true" if dirty else "false"}


def dvc_hashes(dvc_lock: Path) -> dict[str, str]:
    """{'dvc.md5.data/prepared': md5, ...} for the data and model paths recorded in dvc.lock."""
    if not dvc_lock.is_file():
        return {}
    try:
        lock = yaml.safe_load(dvc_lock.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return {}
    hashes: dict[str, str] = {}
    produced: set[str] = set()
    # What the producing stage recorded wins over another stage's deps: while `dvc repro` runs the
    # register stage, its own lock entry (listed last) still holds the previous run's inputs.
    for kind in ("outs", "deps"):
        for stage in (lock.get("stages") or {}).values():
            for entry in stage.get(kind) or []:
                path, md5 = str(entry.get("path", "")), entry.get("md5")
                if (md5 and path.startswith(DATA_PREFIXES) and not path.endswith("checkpoints")
                        and re.fullmatch(r"[\w./ -]+", path) and path not in produced):
                    hashes[f"dvc.md5.{path}"] = str(md5)
                    if kind == "outs":
                        produced.add(path)
    return hashes


def lineage(dvc_lock: Path, generator: Path, fingerprint: str) -> dict[str, str]:
    """Tags tying the run to code (git), data (DVC md5s) and the exact generator file (sha256)."""
    root = dvc_lock.resolve().parent if dvc_lock.exists() else Path.cwd()
    git = git_state(root)
    tags = {"mlflow.source.git.commit": git["git_commit"], "moepipe.git_dirty": git["git_dirty"],
            **dvc_hashes(dvc_lock), "moepipe.generator_sha256": fingerprint}
    try:
        relative = generator.resolve().relative_to(root).as_posix()
    except ValueError:
        relative = None
    recorded = tags.get(f"dvc.md5.{relative}") if relative else None
    if recorded:
        actual = hashlib.md5(generator.read_bytes()).hexdigest()
        tags["moepipe.dvc_lock_matches_generator"] = "true" if actual == recorded else "false"
    return tags


# -- the stage ---------------------------------------------------------------------------------
def registered_version(cfg: RegisterConfig, tracking_uri: str, fingerprint: str) -> int | None:
    """The complete version of cfg.model_name registered from the generator whose sha256 is
    FINGERPRINT, in the store at TRACKING_URI; None when that store lacks one.

    Read only: an embedded store that does not exist yet is not created (it lacks every generator).
    An unreachable tracking server is a UserError (one line).
    """
    sqlite = _sqlite_path(tracking_uri)
    if sqlite is not None and not sqlite.is_file():
        return None
    check_store(tracking_uri)
    from mlflow import MlflowClient

    from moepipe.registry.promotion import COMPLETE_TAG, FINGERPRINT_TAG, Registry

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    for version in Registry(client, cfg).versions():
        if version.tags.get(FINGERPRINT_TAG) == fingerprint and version.tags.get(COMPLETE_TAG) == "true":
            return int(version.version)
    return None


def register(cfg: RegisterConfig, tracking_uri: str, *, generator: Path, metrics_json: Path, evaluate_dir: Path,
             train_reports: Path, classifier: Path | None = None, directions: Path | None = None,
             dvc_lock: Path = Path("dvc.lock"), data_reports: Path = Path("reports"),
             curated_manifest: Path = Path("data/curated/manifest.jsonl"), params: Params,
             out_report: Path, lock_timeout_s: float = 600.0) -> dict[str, Any]:
    """Log, register and promote one generator; writes `out_report` and returns the same decision dict."""
    generator = Path(generator)
    if not generator.is_file():
        raise UserError(f"{generator}: no such generator file (run `moepipe train` first)")
    metrics = read_metrics(Path(metrics_json))
    if cfg.primary_metric not in metrics:
        raise UserError(f"{metrics_json}: no {cfg.primary_metric!r} (register.primary_metric); "
                        f"has {', '.join(sorted(metrics)) or 'no numbers'}")
    fingerprint = sha256_file(generator)
    check_store(tracking_uri)

    from mlflow import MlflowClient

    # Lazy: they import mlflow, which reads its logging settings on first import (quiet_mlflow sets them).
    from moepipe.registry.promotion import COMPLETE_TAG, FINGERPRINT_TAG, Registry, promote
    from moepipe.registry.tracking import artifact_store_failure, log_new_version

    tags = lineage(Path(dvc_lock), generator, fingerprint)
    summary = generator_summary(generator)
    with mlflow_globals(tracking_uri), store_lock(tracking_uri, lock_timeout_s) as locked:
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        experiment_id = ensure_experiment(client, cfg, tracking_uri)
        ensure_registered_model(client, cfg.model_name)
        version, warnings = None, []
        for existing in Registry(client, cfg).versions():
            if existing.tags.get(FINGERPRINT_TAG) != fingerprint:
                continue
            if existing.tags.get(COMPLETE_TAG) == "true":
                version = existing
            elif locked:  # left by an interrupted registration; nobody else can be writing it
                client.delete_model_version(cfg.model_name, existing.version)
        reused = version is not None
        if version is None:
            try:
                version = log_new_version(
                    client, cfg, experiment_id, generator=generator, fingerprint=fingerprint, metrics=metrics,
                    tags=tags, summary=summary, params=flat_params(params), evaluate_dir=Path(evaluate_dir),
                    train_reports=Path(train_reports), metrics_json=Path(metrics_json),
                    data_reports=Path(data_reports), artifacts={"classifier": classifier, "directions": directions})
            except Exception as error:
                failure = artifact_store_failure(error, tracking_uri)  # one line; the CLI exits 75
                if failure is None:
                    raise
                raise failure from error
        logged = dict(client.get_run(version.run_id).data.metrics)
        changed = sorted(k for k, v in metrics.items() if k in logged and not math.isclose(v, logged[k], rel_tol=1e-9))
        if reused and changed:
            warnings.append(f"{metrics_json} differs from the metrics logged with v{version.version} "
                            f"({', '.join(changed[:5])}); the logged ones decide")
        decision = promote(client, cfg, version)
        number = int(version.version)
        report = {
            "model": cfg.model_name, "version": number, "model_uri": f"models:/{cfg.model_name}/{number}",
            "run_id": version.run_id, "decision": decision.decision, "reasons": decision.reasons,
            "primary_metric": {"name": cfg.primary_metric, "value": logged.get(cfg.primary_metric),
                               "direction": cfg.direction, "min_improvement": cfg.min_improvement},
            "metrics": {k: logged[k] for k in sorted(metrics) if k in logged},
            "previous_champion": None if decision.previous_champion is None else {
                "version": decision.previous_champion, "value": decision.previous_value},
            "champion": decision.champion, "reused": reused, "generator_sha256": fingerprint,
            "git_commit": tags.get("mlflow.source.git.commit"), "tracking_uri": redact(tracking_uri),
            "warnings": warnings,
        }
        card = model_card(name=cfg.model_name, version=number, run_id=version.run_id, fingerprint=fingerprint,
                          generator=summary, params=params, data=data_card(Path(curated_manifest), Path(data_reports)),
                          metrics=report["metrics"], decision=report, lineage=tags)
        client.log_text(version.run_id, card, "model_card.md")
        client.update_model_version(
            cfg.model_name, str(number),
            description=f"{summary['arch']} {summary['resolution']} px, {cfg.primary_metric} "
                        f"{logged.get(cfg.primary_metric, float('nan')):.4g}; {decision.decision}: "
                        + "; ".join(decision.reasons))

    write_json(Path(out_report), report)
    return report


def register_stage(params: Params, *, generator: Path, metrics_json: Path, evaluate_dir: Path,
                   train_reports: Path, classifier: Path, directions: Path, out_report: Path) -> Report:
    """`moepipe register`: `register` at params' tracking URI ($MLFLOW_TRACKING_URI first), with
    MLflow's HTTP retries short and its chatter off unless the root logger is at DEBUG (-v).

    `classifier` and `directions` ship with the model when the files exist.
    """
    verbose = logging.getLogger().level <= logging.DEBUG
    quiet_mlflow(verbose)
    result = register(params.registry, params.registry.resolved_tracking_uri(), generator=generator,
                      metrics_json=metrics_json, evaluate_dir=evaluate_dir, train_reports=train_reports,
                      classifier=classifier if Path(classifier).is_file() else None,
                      directions=directions if Path(directions).is_file() else None, params=params,
                      out_report=out_report)
    return Report(result, summary_line(result))


def quiet_mlflow(verbose: bool) -> None:
    """Fail within seconds, not minutes of retries, when a tracking server is down; keep MLflow's
    INFO lines and artifact progress bars for `verbose`. Explicit environment settings win."""
    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20"),
                        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                        ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", str(verbose).lower()),
                        ("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")):
        os.environ.setdefault(name, value)
    import mlflow  # noqa: F401 - configures its loggers on first import, after the settings above

    logging.getLogger("mlflow").setLevel(logging.INFO if verbose else logging.WARNING)


def summary_line(report: dict[str, Any]) -> str:
    """'register: moe-generator v3 → champion (fd 10.2 < 12.5 - 0 (champion v2)) run 1a2b3c4d…'."""
    again = ", already registered" if report.get("reused") else ""
    return (f"register: {report['model']} v{report['version']} → {report['decision']} "
            f"({'; '.join(report['reasons'])}{again}) run {report['run_id'][:8]}…")
