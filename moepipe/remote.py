"""The DVC remote of a checkout: which S3 endpoint it reaches, whether that answers, and one line
when a transfer fails.

DVC moves the data (`dvc push`, `dvc pull`); this module decides what to say and whether to try
again. An S3 endpoint that does not answer is found before DVC starts (`preflight`: one unsigned
request, a few seconds), and while DVC runs (`EndpointWatch`: a probe every few seconds; DVC is
stopped after two misses in a row). Without the watch, DVC goes on to try every remaining file
against the dead endpoint, each through botocore's retries and backoff: minutes for a hundred
files, hours for many. A transfer that DVC gives up on by itself is condensed to one line naming
the endpoint. All are transient: `moepipe remote push|pull` exits 75 and the flows retry.

Nothing is half-written by a transfer that stops midway: DVC stores each object whole (one S3
PUT, or a multipart upload, which exists only once completed) and a directory's listing (.dir)
only after every file in it, so a retry skips what arrived and no directory looks complete early.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from moepipe.errors import TransientError, UserError

PREFLIGHT_TIMEOUT_S = 5.0
WATCH_INTERVAL_S = 4.0  # between probes while a transfer runs
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # botocore's order
_MAX_REASON = 300


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


def resolve(repo: Path, name: str | None = None, environ: Mapping[str, str] | None = None) -> Remote:
    """The remote NAME of the DVC project at REPO, else its default remote, with the endpoint DVC
    will use: the remote's `endpointurl`, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    environ = os.environ if environ is None else environ
    try:
        with Repo(str(repo)) as dvc_repo:
            remotes = {key: dict(value) for key, value in dvc_repo.config.get("remote", {}).items()}
            chosen = name or dvc_repo.config.get("core", {}).get("remote")
    except DvcException as error:
        raise UserError(f"cannot open the DVC project at {repo}: {error}") from None
    if chosen is None:
        raise UserError(f"{repo}: no default DVC remote (set one with `dvc remote default NAME`)")
    if chosen not in remotes:
        raise UserError(f"no DVC remote named {chosen!r} (configured: {', '.join(sorted(remotes)) or 'none'})")
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
    from moepipe.stack.health import probe_s3_endpoint

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
        from moepipe.stack.health import probe_s3_endpoint

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


def transfer(repo: Path, action: str, remote_name: str | None = None, targets: Sequence[str] = (),
             jobs: int | None = None) -> str:
    """`dvc push|pull` in REPO after a preflight; returns DVC's closing line (e.g. "3 files pushed").

    Raises TransientError with one line naming the endpoint when the endpoint does not answer or
    the transfer fails."""
    if action not in ("push", "pull"):
        raise ValueError(f"action must be push or pull, not {action!r}")
    remote = resolve(repo, remote_name)
    step = f"dvc {action}"
    try:
        preflight(remote)
    except TransientError as error:
        raise TransientError(f"{step}: {error}") from None
    args = [sys.executable, "-m", "dvc", action, "--remote", remote.name,
            *(["--jobs", str(jobs)] if jobs else []), *targets]
    with tempfile.TemporaryFile("w+", errors="replace") as stdout, \
            tempfile.TemporaryFile("w+", errors="replace") as stderr:
        process = subprocess.Popen(args, cwd=repo, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                   text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
        try:
            stopped = wait_watched(process, EndpointWatch(remote))
        except BaseException:
            process.kill()  # interrupted: no dvc left running behind this command
            process.wait()
            raise
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if stopped is not None:
        raise TransientError(f"{step}: {stopped}")
    if process.returncode != 0:
        raise TransientError(f"{step}: {failure_line(remote, err.splitlines(), process.returncode)}")
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return f"{step}: {lines[-1] if lines else 'done'} ({remote.describe()})"
