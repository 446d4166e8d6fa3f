"""DVC as the flows see it: the stage list in DAG order, which stages to run, and whether a
failed step is worth another try.

Nothing here knows Prefect. Running `dvc`, resolving the remote and wording DVC's failures is
moepipe.remote's. Failures are `StepFailed` (running the step again may help: a crash, a flaky
network, another dvc process holding the repository lock) or `PermanentFailure` (it cannot: a
stage's one-line `moepipe: error: ...` about bad params or missing input, an unknown stage or
remote, an invalid dvc.yaml).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from moepipe.errors import ERROR_PREFIX, EX_TEMPFAIL, UserError
from moepipe.remote import ProcessRun, dvc_reason, open_repo, remote_name

_EXITED_WITH = re.compile(r"exited with (-?\d+)")


class StepFailed(RuntimeError):
    """A step (dvc pull, a stage, dvc push) failed; running it again may help."""

    retryable = True

    def __init__(self, step: str, reason: str, last_line: str = "") -> None:
        self.step = step
        self.reason = reason
        self.last_line = last_line
        self.attempts = 1
        detail = f" (last stderr line: {last_line})" if last_line and last_line not in reason else ""
        super().__init__(f"{step} failed: {reason}{detail}")


class PermanentFailure(StepFailed):
    """A failure that running the step again cannot cure; never retried."""

    retryable = False


@dataclass(frozen=True)
class StageInfo:
    """One dvc.yaml stage as DVC resolved it; paths are relative to the repository root."""

    name: str
    cmd: str
    wdir: str
    outs: tuple[str, ...]
    metrics: tuple[str, ...]
    upstream: tuple[str, ...]


def _open_repo(repo: Path):
    try:
        return open_repo(repo)
    except UserError as error:
        raise PermanentFailure("dvc", str(error)) from None


def pipeline_stages(repo: Path) -> list[StageInfo]:
    """Every dvc.yaml stage in DAG order; independent stages keep their dvc.yaml order."""
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.stage import PipelineStage

    with _open_repo(repo) as dvc_repo:
        try:
            index = dvc_repo.index
            stages = [stage for stage in index.stages if isinstance(stage, PipelineStage)]
            graph = index.graph
        except DvcException as error:
            raise PermanentFailure("dvc.yaml", str(error)) from None
        position = {stage: number for number, stage in enumerate(stages)}
        # DVC's edges point from a stage to the stages it depends on; run dependencies first.
        upstream_first = graph.reverse(copy=True).subgraph(stages)
        ordered = nx.lexicographical_topological_sort(upstream_first, key=lambda stage: position[stage])
        root = Path(dvc_repo.root_dir)

        def relative(path: str) -> str:
            return Path(os.path.relpath(path, root)).as_posix()

        def address(stage) -> str:  # Stage.addressing is relative to the cwd; dvc runs at the root
            dvcfile = relative(stage.dvcfile.path)
            return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"

        return [StageInfo(
            name=address(stage),
            cmd=stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd),
            wdir=relative(stage.wdir),
            outs=tuple(relative(out.fs_path) for out in stage.outs),
            metrics=tuple(relative(out.fs_path) for out in stage.outs if out.metric),
            upstream=tuple(sorted(address(dep) for dep in graph.successors(stage)
                                  if isinstance(dep, PipelineStage))),
        ) for stage in ordered]


def select_stages(stages: list[StageInfo], names: list[str] | None) -> list[StageInfo]:
    """The named stages in DAG order (all when NAMES is empty); an unknown name is an error."""
    if not names:
        return list(stages)
    known = {stage.name for stage in stages}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise PermanentFailure("pipeline", f"no stage named {', '.join(map(repr, unknown))} in dvc.yaml "
                                           f"(stages: {', '.join(stage.name for stage in stages)})")
    return [stage for stage in stages if stage.name in names]


def resolve_remote(repo: Path, remote: str | None) -> str | None:
    """The DVC remote to pull from and push to: REMOTE, else the default one, else None (none set);
    an unknown remote is a PermanentFailure (moepipe.remote.remote_name)."""
    try:
        return remote_name(repo, remote)
    except UserError as error:
        raise PermanentFailure("dvc remote", str(error)) from None


def repro_outcome(stage: str, run: ProcessRun) -> str:
    """What `dvc repro --single-item STAGE` did: "ran", "restored" (run cache) or "fresh"."""
    if run.returncode != 0:
        raise dvc_failure(stage, run)
    text = "\n".join(run.stdout + run.stderr)
    if f"Running stage '{stage}'" in text:
        return "ran"
    if "is cached - skipping run" in text:
        return "restored"
    return "fresh"


def command_failure(step: str, returncode: int, stderr: list[str]) -> StepFailed:
    """Classify a failed stage command by its exit status and its own stderr lines: EX_TEMPFAIL is
    retried even when the command also printed an error line (e.g. a source that stayed
    unreachable through the fetcher's own retries); another `moepipe: error:` line is not."""
    lines = [line.strip() for line in stderr if line.strip()]
    user_errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    last = lines[-1] if lines else ""
    if returncode == EX_TEMPFAIL:
        return StepFailed(step, f"the command asked to be retried (exit status {returncode})", last)
    if user_errors:
        return PermanentFailure(step, user_errors[-1], user_errors[-1])
    return StepFailed(step, f"the command exited with status {returncode}", last)


def dvc_failure(step: str, run: ProcessRun) -> StepFailed:
    """Classify a failed `dvc repro`: the stage's command failed, the repo was locked, or DVC refused."""
    errors = [number for number, line in enumerate(run.stderr) if line.startswith("ERROR:")]
    # The stage's own stderr comes before DVC's closing "ERROR: failed to reproduce ..." line.
    own = run.stderr[:errors[0]] if errors else run.stderr
    dvc_error = run.stderr[errors[-1]].removeprefix("ERROR:").strip() if errors else ""
    if "failed to reproduce" in dvc_error or "failed to run" in dvc_error:
        exited = _EXITED_WITH.search(dvc_error)
        return command_failure(step, int(exited.group(1)) if exited else run.returncode, own)
    if "lock" in dvc_error.lower():
        return StepFailed(step, f"dvc: {dvc_error}", dvc_error)
    lines = [line.strip() for line in run.stderr if line.strip()]
    return PermanentFailure(step, f"dvc: {dvc_reason(run.stderr, run.returncode)}", lines[-1] if lines else "")
