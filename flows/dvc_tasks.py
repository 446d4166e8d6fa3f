"""Prefect tasks around DVC commands, and the retry policy that decides which failures to retry.

Retrying helps with networks and object stores (scrape, dvc pull/push) and with crashes of a
resumable stage (train resumes from its checkpoints); it cannot help a stage that refused bad
params, so a `PermanentFailure` ends the task at once (`retry_condition_fn`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.logging import get_run_logger
from prefect.runtime import task_run as current_task_run
from prefect.states import State
from prefect.tasks import exponential_backoff

from flows.dvc_stages import (
    PermanentFailure,
    StepFailed,
    command_failure,
    dvc_failure,
    repro_outcome,
)
from moepipe.errors import TransientError, UserError
from moepipe.remote import ProcessRun, closing_line, resolve, run_dvc, run_process, run_transfer

TRANSFER_RETRIES = 3  # dvc pull/push: S3-compatible stores drop connections now and then
# Stages whose failures are worth another try unless they refused their input: scrape talks to
# the network, train resumes from its newest checkpoint. Others are deterministic local work.
DEFAULT_STAGE_RETRIES = {"scrape": 3, "train": 1}


def failure_of(state: State) -> BaseException | None:
    """The exception a failed state holds, if it holds one."""
    if isinstance(state.data, BaseException):
        return state.data
    try:
        result = state.result(raise_on_failure=False)
    except Exception:  # an unreadable result store says nothing about the failure
        return None
    return result if isinstance(result, BaseException) else None


def worth_retrying(task: Task, task_run: TaskRun, state: State) -> bool:
    """retry_condition_fn: retry unless the failure is one that another try cannot cure."""
    return getattr(failure_of(state), "retryable", True)


def retry_options(retries: int, delay_s: float) -> dict[str, Any]:
    """Task options: RETRIES tries after the first, exponential backoff from DELAY_S, with jitter."""
    return {"retries": retries, "retry_delay_seconds": exponential_backoff(delay_s) if retries else 0,
            "retry_jitter_factor": 0.5 if retries and delay_s else None,
            "retry_condition_fn": worth_retrying}


def stage_options(stage: str, retries: int, delay_s: float) -> dict[str, Any]:
    """Task options for running STAGE: its retry policy, and a task run named after it."""
    return {**retry_options(retries, delay_s), "task_run_name": f"stage-{stage}"}


def _line_logger():
    """Log each output line of a command to the task run (called in the task's own thread)."""
    logger = get_run_logger()

    def log_line(stream: str, line: str) -> None:
        if line.strip():
            logger.info("%s", line)

    return log_line


def _attempt() -> int:
    return int(current_task_run.run_count or 1)


def _with_attempts(failure: StepFailed) -> StepFailed:
    failure.attempts = _attempt()
    return failure


@task(name="dvc-repro", cache_policy=NO_CACHE, retry_condition_fn=worth_retrying)
def repro_stage(repo: str, stage: str) -> dict[str, Any]:
    """`dvc repro --single-item STAGE`: DVC runs it only when stale and records it in dvc.lock."""
    return _repro(repo, stage, [])


@task(name="dvc-repro-force", cache_policy=NO_CACHE, retry_condition_fn=worth_retrying)
def force_repro_stage(repo: str, stage: str, why: str) -> dict[str, Any]:
    """`dvc repro --force --single-item STAGE`: run a stage that DVC finds fresh, for a reason DVC
    cannot see (WHY, shown as the step's detail); dvc.lock records the run like any other."""
    return {**_repro(repo, stage, ["--force"]), "detail": why}


def _repro(repo: str, stage: str, options: list[str]) -> dict[str, Any]:
    run = run_dvc(Path(repo), ["repro", *options, "--single-item", stage], _line_logger())
    try:
        outcome = repro_outcome(stage, run)
    except StepFailed as failure:
        raise _with_attempts(failure) from None
    return {"outcome": outcome, "seconds": run.seconds, "attempts": _attempt()}


@task(name="stage-command", cache_policy=NO_CACHE, retry_condition_fn=worth_retrying)
def run_stage_command(repo: str, stage: str, cmd: str, wdir: str) -> dict[str, Any]:
    """A stage's own `cmd:` from dvc.yaml over its checked-out outputs (record it with dvc commit)."""
    run = run_process(cmd, Path(repo) / wdir, _line_logger())
    if run.returncode != 0:
        raise _with_attempts(command_failure(stage, run.returncode, run.stderr))
    return {"outcome": "ran", "seconds": run.seconds, "attempts": _attempt()}


def _dvc_step(repo: str, step: str, args: list[str]) -> ProcessRun:
    run = run_dvc(Path(repo), args, _line_logger())
    if run.returncode != 0:
        raise _with_attempts(dvc_failure(step, run))
    return run


def _transfer_step(repo: str, step: str, remote: str, args: list[str]) -> ProcessRun:
    """dvc pull/push after a preflight of the remote's S3 endpoint, watched while it runs (seconds,
    not DVC's retries of every file); any failure is one retryable line naming the endpoint."""
    try:
        return run_transfer(Path(repo), resolve(Path(repo), remote), args, _line_logger())
    except TransientError as error:  # the endpoint or the transfer failed: worth another try
        raise _with_attempts(StepFailed(step, str(error))) from None
    except UserError as error:  # no such remote
        raise _with_attempts(PermanentFailure(step, str(error))) from None


def _targets(targets: list[str] | None, with_deps: bool) -> list[str]:
    return [*(["--with-deps"] if with_deps and targets else []), *(targets or [])]


@task(name="dvc-pull", cache_policy=NO_CACHE, retry_condition_fn=worth_retrying)
def dvc_pull(repo: str, remote: str, targets: list[str] | None = None, with_deps: bool = False) -> dict[str, Any]:
    """`dvc pull`: outputs already in the remote; those not there yet (a first run) are skipped."""
    run = _transfer_step(repo, "dvc pull", remote, ["pull", "--remote", remote, "--allow-missing",
                                                    *_targets(targets, with_deps)])
    return {"outcome": "ran", "seconds": run.seconds, "attempts": _attempt(),
            "detail": closing_line(run)}


@task(name="dvc-push", cache_policy=NO_CACHE, retry_condition_fn=worth_retrying)
def dvc_push(repo: str, remote: str, targets: list[str] | None = None, with_deps: bool = False) -> dict[str, Any]:
    """`dvc push`: every cached output of TARGETS (all stages by default) to the remote."""
    run = _transfer_step(repo, "dvc push", remote, ["push", "--remote", remote, *_targets(targets, with_deps)])
    return {"outcome": "ran", "seconds": run.seconds, "attempts": _attempt(),
            "detail": closing_line(run)}


@task(name="dvc-commit", cache_policy=NO_CACHE)
def dvc_commit(repo: str, stage: str) -> dict[str, Any]:
    """`dvc commit --force STAGE`: record the stage's current deps, params and outputs in dvc.lock."""
    run = _dvc_step(repo, f"dvc commit {stage}", ["commit", "--force", stage])
    return {"outcome": "ran", "seconds": run.seconds, "attempts": _attempt()}
