"""Run one stage (train) as a run of another deployment, e.g. on a GPU work pool.

The two machines share the DVC remote and the Prefect API, not a disk. The hand-off:

1. here:  `dvc push --with-deps train` puts the stage's inputs in the remote;
2. there: flow `pipeline-stage` writes the dvc.lock and params.yaml it was sent, pulls the
          inputs, runs `dvc repro --single-item train`, pushes the outputs, and publishes its
          new dvc.lock as the artifact `moepipe-handback` of its flow run;
3. here:  the flow reads that artifact through the Prefect API, writes dvc.lock and
          `dvc pull train` fetches the model, so lineage and outputs are as if it ran here.

Both checkouts must be at the same commit (dvc.lock records code hashes). Outputs DVC does not
cache (checkpoints, training curves, sample grids) stay on the machine that trained, which is
also where an interrupted training resumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow

from flows.dvc_stages import PermanentFailure, StageInfo, StepFailed, pipeline_stages, resolve_remote
from flows.dvc_tasks import (
    DEFAULT_STAGE_RETRIES,
    TRANSFER_RETRIES,
    dvc_pull,
    dvc_push,
    repro_stage,
    retry_options,
    stage_options,
)
from flows.runlog import RunLog, StepStopped, flow_run_name

OFFLOADED_STAGE = "train"
HANDBACK_KEY = "moepipe-handback"
STAGE_SUMMARY_KEY = "moepipe-stage-summary"


def run_deployment(name: str, parameters: dict[str, Any]):
    """Start a run of deployment NAME and wait for it (a seam the tests replace)."""
    from prefect.deployments import run_deployment as prefect_run_deployment

    return prefect_run_deployment(name=name, parameters=parameters, timeout=None, poll_interval=15)


def read_handback(flow_run_id: Any) -> dict[str, Any] | None:
    """The hand-back a `pipeline-stage` flow run published, or None."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[HANDBACK_KEY])))
    for artifact in artifacts:
        text = str(artifact.data or "")
        start, end = text.find("```json\n"), text.rfind("\n```")
        if start >= 0 and end > start:
            return json.loads(text[start + len("```json\n"):end])
    return None


def offload_stage(log: RunLog, root: Path, stage: StageInfo, deployment: str, remote: str,
                  retry_delay_s: float) -> None:
    """Run STAGE as a run of DEPLOYMENT and bring its dvc.lock entry and outputs back here."""
    transfer = retry_options(TRANSFER_RETRIES, retry_delay_s)
    log.call(f"dvc push (inputs of {stage.name})", dvc_push, transfer, repo=str(root), remote=remote,
             targets=[stage.name], with_deps=True)
    lock = root / "dvc.lock"
    parameters = {"stage": stage.name, "remote": remote,
                  "lockfile": lock.read_text(encoding="utf-8") if lock.is_file() else "",
                  "params_text": (root / "params.yaml").read_text(encoding="utf-8"),
                  "retry_delay_s": retry_delay_s}
    started = time.monotonic()
    child = run_deployment(deployment, parameters)
    seconds = time.monotonic() - started
    state = child.state
    handback = read_handback(child.id) if state is not None and state.is_completed() else None
    if handback is None:
        why = f"{state.name}: {state.message}" if state is not None else "no state"
        error = StepFailed(stage.name, f"run {child.name!r} of {deployment} ended {why}")
        log.note(stage.name, "failed", f"on {deployment}", seconds)
        log.fail(stage.name, error)
        raise StepStopped(error)
    lock.write_text(handback["lockfile"], encoding="utf-8")
    log.note(stage.name, f"{handback['outcome']} on {deployment}", f"flow run `{child.name}`", seconds)
    log.call(f"dvc pull (outputs of {stage.name})", dvc_pull, transfer, repo=str(root), remote=remote,
             targets=[stage.name])


@flow(name="pipeline-stage", description="one dvc.yaml stage with the dvc.lock and params it was sent")
def pipeline_stage(stage: str, remote: str | None = None, lockfile: str = "", params_text: str = "",
                   repo: str = ".", retries: int | None = None, retry_delay_s: float = 10.0) -> dict[str, Any]:
    """Run STAGE here for a `pipeline` run elsewhere (its `train_on`): pull inputs, repro, push.

    Args:
        stage: the dvc.yaml stage to run.
        remote: the DVC remote both sides use; default: the repo's default remote.
        lockfile, params_text: the caller's dvc.lock and params.yaml, written here first.
        repo: this machine's checkout (same commit as the caller's).
        retries: tries after the first; default: the pipeline's policy for STAGE.
    """
    root = Path(repo).resolve()
    log = RunLog(root, f"moepipe stage {stage}", STAGE_SUMMARY_KEY)
    handback: dict[str, Any] = {}

    def steps() -> None:
        remote_name = resolve_remote(root, remote)
        if remote_name is None:
            raise PermanentFailure(stage, "no DVC remote configured to hand data over")
        log.facts = [f"repo `{root}`", f"remote `{remote_name}`", f"flow run `{flow_run_name()}`"]
        if params_text:
            (root / "params.yaml").write_text(params_text, encoding="utf-8")
        if lockfile:
            (root / "dvc.lock").write_text(lockfile, encoding="utf-8")
        log.stages, log.results = {info.name: info for info in pipeline_stages(root)}, False
        transfer = retry_options(TRANSFER_RETRIES, retry_delay_s)
        log.call("dvc pull", dvc_pull, transfer, repo=str(root), remote=remote_name, targets=[stage], with_deps=True)
        tries = DEFAULT_STAGE_RETRIES.get(stage, 0) if retries is None else retries
        result = log.call(stage, repro_stage, stage_options(stage, tries, retry_delay_s), repo=str(root), stage=stage)
        log.call("dvc push", dvc_push, transfer, repo=str(root), remote=remote_name, targets=[stage])
        handback.update(stage=stage, outcome=result["outcome"],
                        lockfile=(root / "dvc.lock").read_text(encoding="utf-8"))

    # This checkout is the other machine's own; the caller holds the turn on its checkout.
    log.run(steps, lambda: ["dvc pull", stage, "dvc push"], step=stage, exclusive=False)
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown=f"# dvc.lock after `{stage}`\n\n```json\n{json.dumps(handback, indent=1)}\n```\n",
        key=HANDBACK_KEY, description=f"dvc.lock after {stage}, for the pipeline run that sent it")
    return handback
