"""DVC as moepipe drives it: the project's remote and the S3 endpoint it reaches, `dvc` run as a
subprocess (output streamed, stoppable by a watch), and one line when DVC or a transfer fails.

The one module that talks to DVC: `moepipe remote push|pull` (moepipe/cli.py) and the Prefect
flows (flows/dvc_stages.py, flows/dvc_tasks.py, which add the DAG and the retry policy) use it.

DVC moves the data (`dvc push`, `dvc pull`); this module decides what to say and whether to try
again. An S3 endpoint that does not answer is found before DVC starts (`preflight`: one unsigned
request, a few seconds), and while DVC runs (`EndpointWatch`: a probe every few seconds; DVC is
stopped after two misses in a row). Without the watch, DVC goes on to try every remaining file
against the dead endpoint, each through botocore's retries and backoff: minutes for a hundred
files, hours for many. A transfer that DVC gives up on by itself is condensed to one line naming
the endpoint. All are transient: `moepipe remote push|pull` exits 75 (EX_TEMPFAIL) and the flows
retry.

Nothing is half-written by a transfer that stops midway: DVC stores each object whole (one S3
PUT, or a multipart upload, which exists only once completed) and a directory's listing (.dir)
only after every file in it, so a retry skips what arrived and no directory looks complete early.
"""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from moepipe.errors import TransientError, UserError
from moepipe.s3 import probe_s3_endpoint

PREFLIGHT_TIMEOUT_S = 5.0
WATCH_INTERVAL_S = 4.0  # between probes while a transfer runs
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # botocore's order
_MAX_REASON = 300

LineSink = Callable[[str, str], None]  # (stream name "stdout" | "stderr", line without newline)


@dataclass(frozen=True)
class Remote:
    """A DVC remote; `endpoint` is the S3 endpoint URL it uses (None: AWS S3, or not an S3 remote)."""

    name: str
    url: str
    endpoint: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    def describe(self) -> str:
        """'S3 endpoint http://127.0.0.1:8333 (remote s3store, s3://moepipe-dvc/store)'."""
        if not self.is_s3:
            return f"DVC remote {self.name} ({self.url})"
        return f"S3 endpoint {self.endpoint or 'of AWS S3'} (remote {self.name}, {self.url})"


def open_repo(repo: Path):
    """The DVC project at REPO (a dvc.repo.Repo; close it, e.g. with `with`); UserError if none."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        return Repo(str(repo))
    except DvcException as error:
        raise UserError(f"cannot open the DVC project at {repo}: {error}") from None


def _remotes(repo: Path, name: str | None) -> tuple[str | None, dict[str, dict]]:
    """(NAME, else the default remote, else None; every configured remote's settings by name)."""
    with open_repo(repo) as dvc_repo:  # DVC reads and validates its config as it opens the project
        remotes = {key: dict(value) for key, value in dvc_repo.config.get("remote", {}).items()}
        chosen = name or dvc_repo.config.get("core", {}).get("remote")
    if chosen is not None and chosen not in remotes:
        raise UserError(f"no DVC remote named {chosen!r} (configured: {', '.join(sorted(remotes)) or 'none'})")
    return chosen, remotes


def remote_name(repo: Path, name: str | None = None) -> str | None:
    """The DVC remote to pull from and push to: NAME, else the project's default remote, else None
    (none set). UserError for a name that is not configured or a folder that is no DVC project."""
    return _remotes(repo, name)[0]


def resolve(repo: Path, name: str | None = None, environ: Mapping[str, str] | None = None) -> Remote:
    """The remote NAME of the DVC project at REPO, else its default remote, with the endpoint DVC
    will use: the remote's `endpointurl`, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL."""
    environ = os.environ if environ is None else environ
    chosen, remotes = _remotes(repo, name)
    if chosen is None:
        raise UserError(f"{repo}: no default DVC remote (set one with `dvc remote default NAME`)")
    settings = remotes[chosen]
    url = str(settings.get("url", ""))
    endpoint = settings.get("endpointurl") or next(
        (environ[variable] for variable in ENDPOINT_VARIABLES if environ.get(variable)), None)
    return Remote(chosen, url, str(endpoint) if endpoint and url.startswith("s3://") else None)


def preflight(remote: Remote, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Raise TransientError, one line naming the endpoint, unless the remote's S3 endpoint answers.
    AWS S3 itself and other kinds of remote are left to DVC."""
    if not remote.is_s3 or remote.endpoint is None:
        return
    reason = probe_s3_endpoint(remote.endpoint, timeout_s)
    if reason is not None:
        raise TransientError(f"{remote.describe()} is unreachable: {reason}; nothing was transferred, "
                             "run it again once the endpoint answers")


class EndpointWatch:
    """Called every second or so while a transfer runs: returns why to stop it once the remote's S3
    endpoint has missed `misses` probes in a row (`interval_s` apart), else None."""

    def __init__(self, remote: Remote, interval_s: float = WATCH_INTERVAL_S, misses: int = 2,
                 timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
        self.remote = remote
        self.interval_s = interval_s
        self.misses = misses
        self.timeout_s = timeout_s
        self._failures = 0
        self._next = time.monotonic() + interval_s

    def __call__(self) -> str | None:
        if self.remote.endpoint is None or time.monotonic() < self._next:
            return None
        reason = probe_s3_endpoint(self.remote.endpoint, self.timeout_s)
        self._next = time.monotonic() + self.interval_s
        self._failures = self._failures + 1 if reason else 0
        if self._failures < self.misses:
            return None
        return (f"{self.remote.describe()} became unreachable during the transfer: {reason}; objects that "
                "arrived are complete, run it again to transfer the rest")


def wait_watched(process: subprocess.Popen, watch: Callable[[], str | None] | None, poll_s: float = 1.0) -> str | None:
    """Wait for PROCESS; if WATCH gives a reason first, stop the process (SIGTERM, then SIGKILL after
    5 s) and return that reason. DVC keeps nothing half-written when stopped (see above)."""
    while True:
        try:
            process.wait(timeout=poll_s)
            return None
        except subprocess.TimeoutExpired:
            pass
        reason = watch() if watch is not None else None
        if reason is not None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            return reason


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
    """Run a command (a shell string runs through the shell, as DVC runs `cmd:`), streaming lines
    to ON_LINE. WATCH, polled while it runs, can stop it by giving a reason (wait_watched)."""
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

    # Each reader runs in a copy of this context, so that a line ON_LINE logs goes where the
    # caller's logging goes (e.g. a Prefect task run: its settings live in context variables,
    # which new threads do not inherit).
    readers = [threading.Thread(target=contextvars.copy_context().run, args=(pump, name, getattr(process, name)),
                                daemon=True) for name in ("stdout", "stderr")]
    for reader in readers:
        reader.start()
    try:
        stopped = wait_watched(process, watch)
        returncode = process.wait()
    except BaseException:
        process.kill()  # interrupted or cancelled: nothing left running behind the caller
        process.wait()
        raise
    finally:
        for reader in readers:
            reader.join()
    return ProcessRun(args, returncode, list(kept["stdout"]), list(kept["stderr"]),
                      time.monotonic() - started, stopped)


def run_dvc(repo: Path, args: Sequence[str], on_line: LineSink | None = None,
            watch: Callable[[], str | None] | None = None) -> ProcessRun:
    """`dvc ARGS` in REPO with this interpreter's DVC."""
    return run_process([sys.executable, "-m", "dvc", *args], repo, on_line, watch=watch)


def closing_line(run: ProcessRun) -> str:
    """DVC's closing line on stdout, e.g. "3 files pushed" or "Everything is up to date."; "" if none."""
    lines = [line.strip() for line in run.stdout if line.strip()]
    return lines[-1] if lines else ""


def dvc_reason(stderr: Sequence[str], returncode: int) -> str:
    """DVC's own reason for a failure, from its stderr: the last `ERROR:` line, one line."""
    lines = [line.strip() for line in stderr if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    reason = errors[-1] if errors else (lines[-1] if lines else f"dvc exited with status {returncode}")
    reason = reason.removeprefix("unexpected error - ")
    return reason if len(reason) <= _MAX_REASON else reason[:_MAX_REASON - 1] + "…"


def failure_line(remote: Remote, stderr: Sequence[str], returncode: int) -> str:
    """A failed transfer in one line that names the endpoint and says what is safe to do."""
    return (f"{remote.describe()}: {dvc_reason(stderr, returncode)}; objects that arrived are complete, "
            "run it again to transfer the rest")


def transfer_reason(remote: Remote, run: ProcessRun) -> str | None:
    """Why a watched `dvc push|pull` on REMOTE failed, in one line naming the endpoint; None if it
    did not: the watch's reason when the watch stopped it, else DVC's own (failure_line)."""
    if run.stopped:
        return run.stopped
    if run.returncode != 0:
        return failure_line(remote, run.stderr, run.returncode)
    return None


def run_transfer(repo: Path, remote: Remote, args: Sequence[str], on_line: LineSink | None = None) -> ProcessRun:
    """`dvc ARGS` in REPO, a push or pull to REMOTE, after a preflight of its S3 endpoint and
    watched while it runs (EndpointWatch).

    Raises TransientError, one line naming the endpoint, when the endpoint does not answer or the
    transfer fails; the `moepipe remote` command and the flows' dvc pull/push steps both run this."""
    preflight(remote)
    run = run_dvc(repo, args, on_line, watch=EndpointWatch(remote))
    reason = transfer_reason(remote, run)
    if reason is not None:
        raise TransientError(reason)
    return run


def transfer(repo: Path, action: str, name: str | None = None, targets: Sequence[str] = (),
             jobs: int | None = None) -> str:
    """`dvc push|pull` in REPO to the remote NAME (default: the default one) through run_transfer;
    returns "dvc ACTION: " and DVC's closing line (e.g. "3 files pushed").

    Raises TransientError with one line naming the endpoint when the endpoint does not answer or
    the transfer fails; UserError when there is no such remote."""
    if action not in ("push", "pull"):
        raise ValueError(f"action must be push or pull, not {action!r}")
    remote = resolve(repo, name)
    step = f"dvc {action}"
    try:
        run = run_transfer(repo, remote, [action, "--remote", remote.name,
                                          *(["--jobs", str(jobs)] if jobs else []), *targets])
    except TransientError as error:
        raise TransientError(f"{step}: {error}") from None
    return f"{step}: {closing_line(run) or 'done'} ({remote.describe()})"


class ObjectStore:
    """DVC objects by md5, one at a time, without a checkout: from the project's cache, else from
    its remote (preflighted once), where a fetched object is kept in the cache as `dvc fetch`
    would. For `moepipe lineage`, which reads a model's manifest at the hash its run recorded.

    Call it with an md5 (a directory listing's ends in .dir); None when neither store has it. The
    project is opened at the first call (UserError if REPO is none) and held until `close`; use it
    as a context manager."""

    def __init__(self, repo: Path, name: str | None = None) -> None:
        self.repo = repo
        self.name = name
        self._dvc = None
        self._remote_odb = None
        self._remote: Remote | None = None
        self._no_remote = False

    def __call__(self, oid: str) -> bytes | None:
        if self._dvc is None:
            self._dvc = open_repo(self.repo)
        cache = self._dvc.cache.local
        if cache.exists(oid):
            with cache.fs.open(cache.oid_to_path(oid), "rb") as handle:
                return handle.read()
        odb = self._odb()
        if odb is None:
            return None
        try:
            if not odb.exists(oid):
                return None
            data = odb.fs.cat_file(odb.oid_to_path(oid))
        except Exception as error:  # whichever filesystem the remote is, its failure in one line
            first = (str(error).strip().splitlines() or [""])[0]
            raise TransientError(f"{self._remote.describe()}: cannot read DVC object {oid} "
                                 f"({type(error).__name__}{': ' + first if first else ''})") from None
        cache.add_bytes(oid, data)
        return data

    def _odb(self):
        if self._remote_odb is None and not self._no_remote:
            try:
                self._remote = resolve(self.repo, self.name)
            except UserError:
                if self.name is not None:
                    raise
                self._no_remote = True  # no default remote: the cache is all there is
                return None
            preflight(self._remote)
            self._remote_odb = self._dvc.cloud.get_remote_odb(self._remote.name, "fetch")
        return self._remote_odb

    def close(self) -> None:
        if self._dvc is not None:
            self._dvc.close()
            self._dvc = None

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
