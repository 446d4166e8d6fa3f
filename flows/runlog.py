"""Bookkeeping shared by the flows: run each step as a task, time it, record what became of it,
and publish the summary artifact whether the run succeeds or fails."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from prefect import Task

from flows.dvc_stages import StageInfo, StepFailed
from flows.dvc_tasks import failure_of
from flows.report import Failure, StepRecord, publish, render_summary
from moepipe.stack.layout import REPO_LIMIT


class StepStopped(Exception):
    """Raised by RunLog.call when a step failed for good; carries the step's own exception."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class RunLog:
    """The steps of one flow run, in order, and the failure that stopped it (if any)."""

    def __init__(self, repo: Path, title: str, key: str) -> None:
        self.repo = repo
        self.title = title
        self.key = key
        self.facts: list[str] = []
        self.extra: list[str] = []
        self.records: list[StepRecord] = []
        self.failure: Failure | None = None
        self.stages: dict[str, StageInfo] = {}  # every dvc.yaml stage, for metrics files and outputs
        self.results = True  # the summary shows evaluation, promotion and samples

    def call(self, step: str, task: Task, options: dict[str, Any] | None = None, **arguments: Any) -> dict[str, Any]:
        """Run TASK (with retry OPTIONS) and record it as STEP; raise StepStopped when it fails."""
        started = time.monotonic()
        state = task.with_options(**(options or {}))(**arguments, return_state=True)
        seconds = time.monotonic() - started
        if state.is_completed():
            result = state.result()
            self.records.append(StepRecord(step, result["outcome"], seconds, result.get("attempts"),
                                           result.get("detail", "")))
            return result
        error = failure_of(state) or RuntimeError(state.message or f"{step} ended {state.name}")
        self.records.append(StepRecord(step, "failed", seconds, getattr(error, "attempts", None)))
        self.fail(step, error)
        raise StepStopped(error)

    def note(self, step: str, outcome: str, detail: str = "", seconds: float | None = None) -> None:
        """Record a step that ran without a task of its own, or was skipped."""
        self.records.append(StepRecord(step, outcome, seconds, None, detail))

    def fail(self, step: str, error: BaseException) -> None:
        if self.failure is not None:
            return
        if isinstance(error, StepFailed):
            self.failure = Failure(error.step or step, error.reason, error.last_line, error.retryable)
        else:
            self.failure = Failure(step, f"{type(error).__name__}: {error}", "", True)

    def not_run(self, steps: list[str]) -> None:
        done = {record.step for record in self.records}
        self.records += [StepRecord(step, "not run") for step in steps if step not in done]

    def run(self, body: Callable[[], None], remaining: Callable[[], list[str]], step: str = "flow",
            exclusive: bool = True) -> dict[str, Any]:
        """Run BODY (holding the repo's turn when EXCLUSIVE) and publish the summary, also when it
        fails: then the failure is recorded, the steps REMAINING() names are marked not run, and
        the step's own exception is raised again (the flow run fails with its message)."""
        with repo_turn() if exclusive else nullcontext():
            try:
                body()
            except Exception as error:
                failure = error.error if isinstance(error, StepStopped) else error
                self.fail(step, failure)
                self.not_run(remaining())
                self.publish()
                raise failure from None
        self.publish()
        return self.result()

    def markdown(self) -> str:
        return render_summary(self.title, self.repo, self.records, self.facts, self.failure, self.extra,
                              self.stages, self.results)

    def publish(self) -> str:
        """Attach the summary to the flow run; returns its markdown."""
        text = self.markdown()
        status = "failed" if self.failure else "succeeded"
        publish(text, self.key, f"{self.title}: {status}")
        return text

    def result(self) -> dict[str, Any]:
        """The flow's return value: each step's outcome, and the failure if any."""
        return {"steps": [record.as_dict() for record in self.records],
                "failure": None if self.failure is None else vars(self.failure)}


REPO_LOCK = REPO_LIMIT


def repo_turn():
    """Hold a slot of the global concurrency limit `moepipe-repo`, so flows sharing a checkout
    (scrape and retrain) take turns. `moepipe stack up` creates it; on another Prefect server,
    create it with `prefect gcl create moepipe-repo --limit 1` (without it Prefect logs a
    warning and lets the run through)."""
    from prefect.concurrency.sync import concurrency

    return concurrency(REPO_LOCK, occupy=1)


def flow_run_name() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.name or "")
