"""Flow `pipeline`: dvc pull → every dvc.yaml stage in DAG order → dvc push → summary artifact.

The stage list and its order come from DVC (`dvc.repo.Repo(...).index`), never from this file.
Each stage is one task running `dvc repro --single-item <stage>`: DVC skips a fresh stage and
records lineage in dvc.lock. The `register` stage, when dvc.yaml has one, is the one that
promotes a model; this flow only reports its decision (reports/register.json). One thing DVC
cannot see is which MLflow store that stage wrote to: when it finds `register` fresh, the flow
asks the store the stage would use whether it holds this generator, and runs the stage again
(`dvc repro --force`) when it does not (flows/registration.py).

Retries (Prefect's job): dvc pull/push 3 times and scrape 3 times (network, S3), train once (it
resumes from its checkpoints), other stages not at all (deterministic local work); `retries`
overrides per stage. A stage that ends with `moepipe: error: ...` (bad params, missing input) is
never retried. Every run, also a failed one, leaves the markdown artifact `moepipe-pipeline-summary`.

Training on another work pool: `train_on="pipeline-stage/train-gpu"` runs the train stage as a
run of that deployment (flows/offload.py; see prefect.yaml) instead of in this process.

    python -m flows.pipeline                       # one run, ephemeral Prefect API
    prefect deployment run pipeline/nightly-retrain -p stages='["preprocess","train"]'
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from prefect import flow

from flows.dvc_stages import PermanentFailure, StageInfo, pipeline_stages, resolve_remote, select_stages
from flows.dvc_tasks import (
    DEFAULT_STAGE_RETRIES,
    TRANSFER_RETRIES,
    dvc_pull,
    dvc_push,
    repro_stage,
    retry_options,
    stage_options,
)
from flows.offload import OFFLOADED_STAGE, offload_stage
from flows.registration import REGISTER_STAGE, follow_store
from flows.runlog import RunLog, flow_run_name

SUMMARY_KEY = "moepipe-pipeline-summary"


def use_params(root: Path, params: str | None) -> str:
    """Make PARAMS the run's params.yaml (as `dvc exp run -S` edits it); returns what is used."""
    target = root / "params.yaml"
    if not params:
        return "params.yaml"
    source = Path(params) if Path(params).is_absolute() else root / params
    if not source.is_file():
        raise PermanentFailure("params", f"params file not found: {source}")
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return str(params)


def run_facts(root: Path, params: str, remote: str | None, planned: list[StageInfo]) -> list[str]:
    return [f"repo `{root}`", f"params `{params}`",
            f"remote `{remote}`" if remote else "no DVC remote (data stays local)",
            f"stages: {', '.join(stage.name for stage in planned) or 'none'}",
            f"flow run `{flow_run_name()}`"]


@flow(name="pipeline", description="dvc pull → dvc.yaml stages in DAG order → dvc push, with a summary artifact")
def pipeline(repo: str = ".", params: str | None = None, stages: list[str] | None = None,
             pull: bool = True, push: bool = True, remote: str | None = None,
             train_on: str | None = None, retries: dict[str, int] | None = None,
             retry_delay_s: float = 10.0) -> dict[str, Any]:
    """Bring the DVC pipeline up to date and version its outputs.

    Args:
        repo: the project checkout (a git + DVC repository); a deployment's pull step enters it.
        params: a params file to run with, copied over the repo's params.yaml; default: params.yaml.
        stages: stage names to bring up to date (in DAG order; none of their upstream stages
            unless named); default: every stage in dvc.yaml.
        pull: `dvc pull` first, so outputs made elsewhere are reused instead of rebuilt.
        push: `dvc push` at the end, so other machines and runs can reuse the outputs.
        remote: DVC remote for pull/push; default: the repo's default remote. Without any
            remote, pull and push are skipped.
        train_on: a deployment ("flow-name/deployment-name") that runs the train stage on
            another work pool, e.g. a GPU pool; needs a DVC remote. Default: train runs here.
        retries: per-stage retry counts overriding {"scrape": 3, "train": 1}; others 0.
        retry_delay_s: first retry delay; doubles with each further try (with jitter).
    """
    root = Path(repo).resolve()
    log = RunLog(root, "moepipe pipeline", SUMMARY_KEY)
    policy = {**DEFAULT_STAGE_RETRIES, **(retries or {})}
    planned: list[StageInfo] = []

    def steps() -> None:
        used_params = use_params(root, params)
        known = pipeline_stages(root)
        log.stages = {stage.name: stage for stage in known}
        planned.extend(select_stages(known, stages))
        remote_name = resolve_remote(root, remote) if (pull or push or train_on) else None
        log.facts = run_facts(root, used_params, remote_name, planned)
        if train_on and remote_name is None:
            raise PermanentFailure("pipeline", f"train_on={train_on!r} needs a DVC remote to hand data over")
        transfer = retry_options(TRANSFER_RETRIES, retry_delay_s)
        targets = [stage.name for stage in planned] if stages else None
        if pull and remote_name:
            log.call("dvc pull", dvc_pull, transfer, repo=str(root), remote=remote_name, targets=targets,
                     with_deps=bool(stages))
        elif pull:
            log.note("dvc pull", "skipped", "no DVC remote configured")
        for stage in planned:
            if train_on and stage.name == OFFLOADED_STAGE:
                offload_stage(log, root, stage, train_on, remote_name, retry_delay_s)
                continue
            tries = policy.get(stage.name, 0)
            result = log.call(stage.name, repro_stage, stage_options(stage.name, tries, retry_delay_s),
                              repo=str(root), stage=stage.name)
            if stage.name == REGISTER_STAGE and result["outcome"] != "ran":
                follow_store(log, root, stage, tries, retry_delay_s)
        if push and remote_name:
            log.call("dvc push", dvc_push, transfer, repo=str(root), remote=remote_name, targets=targets)
        elif push:
            log.note("dvc push", "skipped", "no DVC remote configured")

    return log.run(steps, lambda: [stage.name for stage in planned] + ["dvc push"] * push, step="pipeline")

if __name__ == "__main__":
    import json

    outcome = pipeline(repo=sys.argv[1] if len(sys.argv) > 1 else ".")
    print(json.dumps([(step["step"], step["outcome"]) for step in outcome["steps"]]))
