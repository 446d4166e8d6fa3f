"""The register stage follows the tracking store, not only dvc.lock.

DVC judges a stage by its files: after `dvc repro` into the embedded store (sqlite:///mlflow.db),
a run against another store (the stack's MLflow server, a server whose database was reset) finds
`register` fresh, and that store would never get the model. So when DVC has found the stage fresh
(or restored it), the pipeline asks the store the stage would write to, the same way the stage
resolves it ($MLFLOW_TRACKING_URI, else params.yaml's register.tracking_uri, a relative embedded
store taken from the stage's folder), whether it holds a complete version of this generator: the
one whose sha256 the stage recorded in reports/register.json, which is also the version's
`moepipe.generator_sha256` tag. When the store lacks it, the stage runs again as
`dvc repro --force --single-item register`, so dvc.lock records the new report like any run and
the summary says "registered into <store>: the store lacked this generator".

Why ask the store instead of comparing the URI the report names: an address says nothing about
what the store holds (a reset server keeps its URL; a report keeps only a redacted URI), and
registering is idempotent, so the store's own answer is the one to follow. Asking costs one
search of the model's versions, and nothing when the stage ran anyway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.dvc_stages import PermanentFailure, StageInfo, StepFailed
from flows.dvc_tasks import force_repro_stage, retry_options, stage_options, worth_retrying
from flows.report import PROMOTION_REPORT
from flows.runlog import RunLog
from moepipe.config.base import ConfigError
from moepipe.errors import UserError, redact

REGISTER_STAGE = "register"
CHECK_STEP = "registry check"


@dataclass(frozen=True)
class StoreCheck:
    """What the register stage's tracking store holds of this generator."""

    store: str  # the tracking URI the stage uses, redacted
    model: str  # register.model_name
    version: int | None  # the complete version registered from this generator; None: the store lacks it


def store_check(root: Path, wdir: str = ".") -> StoreCheck:
    """Whether the store that `moepipe register` in ROOT/WDIR writes to holds the generator that
    reports/register.json names; a report without a generator hash counts as lacking (registering
    again is idempotent)."""
    from moepipe.config import load_params
    from moepipe.registry.register import registered_version
    from moepipe.registry.store import store_seen_from

    folder = root / wdir
    cfg = load_params(folder / "params.yaml").registry
    uri = cfg.resolved_tracking_uri()
    try:
        report = json.loads((root / PROMOTION_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = None
    fingerprint = report.get("generator_sha256") if isinstance(report, dict) else None
    if not fingerprint:
        return StoreCheck(redact(uri), cfg.model_name, None)
    version = registered_version(cfg, store_seen_from(uri, folder), str(fingerprint))
    return StoreCheck(redact(uri), cfg.model_name, version)


@task(name="registry-check", cache_policy=NO_CACHE, retry_condition_fn=worth_retrying)
def registry_check(repo: str, wdir: str = ".") -> dict[str, Any]:
    """Ask the register stage's tracking store whether it holds this generator (store_check)."""
    try:
        check = store_check(Path(repo), wdir)
    except ConfigError as error:  # params.yaml itself is wrong: another try cannot help
        raise PermanentFailure(CHECK_STEP, str(error)) from None
    except UserError as error:  # e.g. an unreachable tracking server: another try may find it up
        raise StepFailed(CHECK_STEP, str(error)) from None
    lacking = check.version is None
    detail = (f"{check.store} lacks this generator" if lacking
              else f"{check.store} holds it as {check.model} v{check.version}")
    return {"outcome": "ran", "detail": detail, "store": check.store, "lacking": lacking}


def follow_store(log: RunLog, root: Path, stage: StageInfo, retries: int, retry_delay_s: float) -> None:
    """After DVC found the register STAGE fresh: run it anyway when its store lacks this generator.

    Two summary rows: `registry check` (what the store holds), and, only when it lacked the
    generator, STAGE again as `ran` with "registered into <store>: the store lacked this generator".
    """
    check = log.call(CHECK_STEP, registry_check, {**retry_options(retries, retry_delay_s),
                                                  "task_run_name": "registry-check"},
                     repo=str(root), wdir=stage.wdir)
    if check["lacking"]:
        log.call(stage.name, force_repro_stage, stage_options(stage.name, retries, retry_delay_s),
                 repo=str(root), stage=stage.name,
                 why=f"registered into {check['store']}: the store lacked this generator")
