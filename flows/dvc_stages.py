"""DVC as the flows see it: the stage list in DAG order, and `dvc` commands run as subprocesses.

Nothing here knows Prefect. Failures are `StepFailed` (running the step again may help: a
crash, a flaky network, another dvc process holding the repository lock) or `PermanentFailure`
(it cannot: a stage's one-line `moepipe: error: ...` about bad params or missing input, an
unknown stage or remote, an invalid dvc.yaml).
"""

from __future__ import annotations

import contextvars
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from moepipe.remote import Remote, dvc_reason, failure_line, wait_watched

USER_ERROR_PREFIX = "moepipe: error:"
# sysexits.h EX_TEMPFAIL, "try again later": a stage that exits with it is retried even when it
# also printed a `moepipe: error:` line (e.g. a source that stayed unreachable through the
# fetcher's own retries).
EX_TEMPFAIL = 75
_EXITED_WITH = re.compile(r"exited with (-?\d+)")

LineSink = Callable[[str, str], None]  # (stream name "stdout" | "stderr", line without newline)


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


@dataclass
class ProcessRun:
    """A finished command: exit status, the tails of its output, wall time in seconds."""

    args: list[str] | str
    returncode: int
    stdout: list[str]
    stderr: list[str]
    seconds: float
    stopped: str | None = None  # why a watch stopped it (wait_watched), if one did


def command_env() -> dict[str, str]:
    """The environment for dvc and stage commands: this interpreter's scripts (`moepipe`) first."""
    scripts = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {**os.environ, "PATH": f"{scripts}{os.pathsep}{path}" if path else scripts,
            "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}


def run_process(args: list[str] | str, cwd: Path, on_line: LineSink | None = None,
                tail: int = 200, watch: Callable[[], str | None] | None = None) -> ProcessRun:
    """Run a command (a shell string runs through the shell, as DVC runs `cmd:`), streaming lines.
    WATCH, polled while it runs, can stop it by giving a reason (moepipe.remote.wait_watched)."""
    started = time.monotonic()
    process = subprocess.Popen(args, cwd=cwd, env=command_env(), shell=isinstance(args, str), text=True,
                               errors="replace", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, bufsize=1)
    kept: dict[str, deque[str]] = {"stdout": deque(maxlen=tail), "stderr": deque(maxlen=tail)}

    def pump(name: str, stream) -> None:
        for raw in stream:
            line = raw.rstrip("\r\n")
            kept[name].append(line)
            if on_line is not None:
                on_line(name, line)

    # Each reader runs in a copy of this context, so that a line it logs goes to this run's
    # Prefect API (settings live in context variables, which new threads do not inherit).
    readers = [threading.Thread(target=contextvars.copy_context().run, args=(pump, name, getattr(process, name)),
                                daemon=True) for name in ("stdout", "stderr")]
    for reader in readers:
        reader.start()
    try:
        stopped = wait_watched(process, watch)
        returncode = process.wait()
    except BaseException:
        process.kill()  # a cancelled flow must not leave a stage running behind it
        process.wait()
        raise
    finally:
        for reader in readers:
            reader.join()
    return ProcessRun(args, returncode, list(kept["stdout"]), list(kept["stderr"]),
                      time.monotonic() - started, stopped)


def run_dvc(repo: Path, args: list[str], on_line: LineSink | None = None,
            watch: Callable[[], str | None] | None = None) -> ProcessRun:
    """`dvc ARGS` in REPO with this interpreter's DVC."""
    return run_process([sys.executable, "-m", "dvc", *args], repo, on_line, watch=watch)


def _open_repo(repo: Path):
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        return Repo(str(repo))
    except DvcException as error:
        raise PermanentFailure("dvc", f"cannot open the DVC project at {repo}: {error}") from None


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
    """The DVC remote to pull from and push to: REMOTE, else the default one, else None (none set)."""
    with _open_repo(repo) as dvc_repo:
        config = dvc_repo.config
        remotes = sorted(config.get("remote", {}))
        name = remote or config.get("core", {}).get("remote")
    if name is not None and name not in remotes:
        raise PermanentFailure("dvc remote", f"no DVC remote named {name!r} "
                                             f"(configured: {', '.join(remotes) or 'none'})")
    return name


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
    """Classify a failed stage command by its exit status and its own stderr lines."""
    lines = [line.strip() for line in stderr if line.strip()]
    user_errors = [line for line in lines if line.startswith(USER_ERROR_PREFIX)]
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
    lines = [line for line in run.stderr if line.strip()]
    reason = dvc_error or (lines[-1].strip() if lines else f"dvc exited with status {run.returncode}")
    return PermanentFailure(step, f"dvc: {reason}", lines[-1].strip() if lines else "")


def transfer_failure(step: str, run: ProcessRun, remote: Remote | None = None) -> StepFailed:
    """A failed dvc pull/push: the remote exists (checked first), so the store or network failed.
    With REMOTE, the reason is one line naming its endpoint (moepipe.remote.failure_line)."""
    if run.stopped:
        return StepFailed(step, run.stopped)
    if remote is not None:
        reason = failure_line(remote, run.stderr, run.returncode)
        return StepFailed(step, reason, dvc_reason(run.stderr, run.returncode))
    lines = [line.strip() for line in run.stderr if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    reason = errors[-1] if errors else f"dvc exited with status {run.returncode}"
    return StepFailed(step, f"dvc: {reason}", lines[-1] if lines else "")
