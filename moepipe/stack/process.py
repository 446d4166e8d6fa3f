"""Start detached service processes and stop exactly those again.

A process is identified by its pid *and* its start time (plus the boot id), recorded at launch,
so a pid that the kernel has since handed to an unrelated program is never signalled. Each
service runs as the leader of its own session and process group; stopping it signals the whole
group (MLflow's uvicorn workers, the flow runs of a Prefect worker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from moepipe.images import write_json

PROC = Path("/proc")
_children: dict[int, subprocess.Popen] = {}  # launched by this interpreter: reaped on stop


@dataclass(frozen=True)
class ProcessRecord:
    service: str
    pid: int
    identity: str  # start time of the pid, see start_identity()
    argv: list[str]
    log: str
    started_at: float  # wall clock, seconds since the epoch

    def save(self, run_dir: Path) -> None:
        """Write <service>.pid (just the pid, for humans and tools) and <service>.json."""
        write_json(run_dir / f"{self.service}.json", asdict(self))
        (run_dir / f"{self.service}.pid").write_text(f"{self.pid}\n")

    @classmethod
    def load(cls, run_dir: Path, service: str) -> ProcessRecord | None:
        try:
            return cls(**json.loads((run_dir / f"{service}.json").read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None

    @staticmethod
    def forget(run_dir: Path, service: str) -> None:
        for suffix in (".json", ".pid"):
            (run_dir / f"{service}{suffix}").unlink(missing_ok=True)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from the state on (the command name may hold spaces)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text.rsplit(")", 1)[1].split()


def start_identity(pid: int) -> str | None:
    """A string that differs between two processes that had the same pid; None if no such pid."""
    if PROC.is_dir():
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return None
        try:
            boot = (PROC / "sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            boot = ""
        return f"{boot}:{fields[19]}"  # field 22 of stat: start time in clock ticks since boot
    result = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True)
    return result.stdout.strip() or None


def is_running(record: ProcessRecord | None) -> bool:
    """True if the recorded process still runs (and is the one that was recorded)."""
    if record is None:
        return False
    _reap(record.pid)
    return start_identity(record.pid) == record.identity


def launch(service: str, argv: list[str], env: dict[str, str], log_path: Path, run_dir: Path,
           cwd: Path | None = None) -> ProcessRecord:
    """Start argv detached (own session and process group), output appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n--- moepipe stack: starting {service} at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, preexec_fn=_default_signals,
        )
    _children[process.pid] = process
    identity = start_identity(process.pid) or ""
    record = ProcessRecord(service, process.pid, identity, list(argv), str(log_path), time.time())
    record.save(run_dir)
    return record


def _default_signals() -> None:
    # A shell that starts a background job makes it ignore SIGINT, and ignored signals stay
    # ignored across exec: Prefect's worker turns SIGTERM into SIGINT and would then never stop.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def exit_status(record: ProcessRecord) -> int | None:
    """The exit status if this interpreter launched the process and it has ended, else None."""
    process = _children.get(record.pid)
    return process.poll() if process is not None else None


def _reap(pid: int) -> None:
    """Collect the exit status of a child of this interpreter, so it does not linger as a zombie."""
    process = _children.get(pid)
    if process is not None:
        process.poll()


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is pgid."""
    if not PROC.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def stop(record: ProcessRecord, grace_s: float = 10.0) -> bool:
    """Stop the recorded process group: SIGTERM, then SIGKILL after grace_s. False if it was not
    running. A leader whose pid now belongs to another program is left alone: a pid is not
    reused while its process group still exists, so nothing of ours is left in that case."""
    leader_alive = is_running(record)
    if not leader_alive and (start_identity(record.pid) is not None or not group_members(record.pid)):
        return False  # pid recycled by an unrelated process, or the whole group is gone
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(record.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap(record.pid)
            if not group_members(record.pid):
                _children.pop(record.pid, None)
                return True
            time.sleep(0.1)
    _reap(record.pid)
    return True
