"""The local stack as one object: `Stack(state_dir, ports).up() / .down() / .status()`."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from moepipe.errors import UserError
from moepipe.images import write_json
from moepipe.stack import mlflow_server, prefect_server, seaweedfs
from moepipe.stack.layout import (
    DVC_BUCKET,
    PREFECT_SERVER,
    PREFECT_WORKER,
    SEAWEEDFS,
    SERVICES,
    Ports,
    StateDir,
    client_env,
    port_in_use,
    read_env_file,
    read_ports,
    urls,
    write_env_file,
)
from moepipe.stack.process import ProcessRecord, exit_status, is_running, launch, stop
from moepipe.stack.service import Credentials, ServiceSpec


class StackError(UserError):
    """The stack could not be brought up (port taken, a service failed its health check)."""


@dataclass(frozen=True)
class ServiceReport:
    name: str
    state: str  # up | down (status); started | running (up); stopped | not running (down)
    url: str = ""
    pid: int | None = None
    detail: str = ""
    seconds: float | None = None  # start-up time, for services this `up` started

    @property
    def ok(self) -> bool:
        return self.state in ("up", "started", "running")

    def line(self) -> str:
        parts = [f"{self.name:<15} {self.state:<11}", self.url]
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.seconds is not None:
            parts.append(f"healthy after {self.seconds:.1f} s")
        if self.detail:
            parts.append(self.detail)
        return "  ".join(part for part in parts if part)


class Stack:
    """SeaweedFS (S3), an MLflow server and a Prefect server + process worker on 127.0.0.1,
    with their data, logs, pid files and generated keys under `state_dir`."""

    def __init__(self, state_dir: Path | str = ".stack", ports: Ports | None = None,
                 prefect_ui: bool = True) -> None:
        self.state = StateDir(Path(state_dir).absolute())
        self._requested_ports = ports
        self.prefect_ui = prefect_ui

    @property
    def ports(self) -> Ports:
        """The ports of the running stack if one is recorded, else the requested ones."""
        return read_ports(self.state) or self._requested_ports or Ports()

    def env(self) -> dict[str, str]:
        """The client variables of <state-dir>/env (written by `up`)."""
        try:
            return read_env_file(self.state.env_file)
        except FileNotFoundError:
            raise StackError(f"no stack in {self.state.root}: run `moepipe stack up` first") from None

    def record(self, service: str) -> ProcessRecord | None:
        return ProcessRecord.load(self.state.run, service)

    # -- up ---------------------------------------------------------------------------------------

    def up(self) -> list[ServiceReport]:
        """Start whatever is not running; idempotent. On failure, stops what this call started."""
        self.state.create()
        with self._lock():
            running = {name for name in SERVICES if is_running(self.record(name))}
            recorded = read_ports(self.state)
            ports = recorded if (running and recorded) else (self._requested_ports or recorded or Ports())
            to_start = [name for name in SERVICES if name not in running]
            self._check_ports(ports, to_start)

            credentials = Credentials.load_or_create(self.state)
            env = client_env(ports, credentials.access_key, credentials.secret_key)
            write_json(self.state.ports_file, ports.to_json())
            seaweedfs.write_identities(self.state, credentials)
            write_env_file(self.state.env_file, env)

            reports = {name: ServiceReport(name, "running", self._url(name, ports),
                                           self.record(name).pid) for name in running}
            started: list[ProcessRecord] = []
            try:
                first = [self._spec(name, ports, credentials) for name in to_start if name != PREFECT_WORKER]
                reports |= self._start(first, started)
                address = urls(ports)
                seaweedfs.ensure_buckets(address["s3"], credentials)
                if SEAWEEDFS in to_start:
                    self._wait_until_serving(address["s3"], credentials)
                prefect_server.ensure_work_pool(address["prefect_api"])
                prefect_server.ensure_repo_limit(address["prefect_api"])
                if PREFECT_WORKER in to_start:
                    since = datetime.now(UTC)
                    worker = prefect_server.worker_spec(self.state, ports, env, online_since=since)
                    reports |= self._start([worker], started)
            except BaseException:
                self._stop_all(started)
                raise
            if running and self._requested_ports and self._requested_ports != ports:
                first_running = next(name for name in SERVICES if name in running)
                reports[first_running] = _with_detail(
                    reports[first_running], "kept the ports of the running stack; `down` first to change them")
            return [reports[name] for name in SERVICES]

    def _wait_until_serving(self, endpoint: str, credentials: Credentials) -> None:
        reason = seaweedfs.wait_until_serving(endpoint, credentials, DVC_BUCKET)
        if reason is not None:
            raise StackError(f"{SEAWEEDFS} at {endpoint} answers but stores no object within "
                             f"{seaweedfs.START_TIMEOUT_S:.0f} s ({reason}); see {self.state.log(SEAWEEDFS)}")

    def _spec(self, name: str, ports: Ports, credentials: Credentials) -> ServiceSpec:
        if name == SEAWEEDFS:
            return seaweedfs.spec(self.state, ports, credentials)
        if name == PREFECT_SERVER:
            return prefect_server.server_spec(self.state, ports, ui=self.prefect_ui)
        return mlflow_server.spec(self.state, ports, credentials)

    def _check_ports(self, ports: Ports, to_start: list[str]) -> None:
        for name in to_start:
            for port_name, port in ports.of(name).items():
                if port_in_use(port):
                    option = "admin" if port_name == "admin_grpc" else port_name  # admin_grpc = admin + 10000
                    raise StackError(f"{name}: port {port} ({port_name}) on 127.0.0.1 is already in use; "
                                     f"stop what uses it or choose another with --port {option}=N")

    def _start(self, specs: list[ServiceSpec], started: list[ProcessRecord]) -> dict[str, ServiceReport]:
        """Launch all specs at once, then wait until each is healthy (bounded, per service)."""
        pending = {}
        for spec in specs:
            record = launch(spec.name, spec.argv, spec.env, self.state.log(spec.name), self.state.run,
                            cwd=spec.cwd)
            started.append(record)
            pending[spec.name] = (spec, record, time.monotonic())
        reports = {}
        while pending:
            for name, (spec, record, began) in list(pending.items()):
                waited = time.monotonic() - began
                if not is_running(record):
                    status = exit_status(record)
                    code = f" with status {status}" if status is not None else ""
                    raise StackError(f"{name} exited during start-up{code}; see {record.log}"
                                     f"{_last_line(record.log)}")
                reason = spec.probe()
                if reason is None:
                    reports[name] = ServiceReport(name, "started", spec.url, record.pid, seconds=waited)
                    del pending[name]
                elif waited > spec.start_timeout_s:
                    raise StackError(f"{name} did not become healthy at {spec.url} within "
                                     f"{spec.start_timeout_s:.0f} s ({reason}); see {record.log}")
            if pending:
                time.sleep(0.25)
        return reports

    def _stop_all(self, records: list[ProcessRecord]) -> list[bool]:
        def stop_one(record: ProcessRecord) -> bool:
            stopped = stop(record)
            ProcessRecord.forget(self.state.run, record.service)
            return stopped

        if not records:
            return []
        with ThreadPoolExecutor(max_workers=len(records)) as pool:
            return list(pool.map(stop_one, records))

    # -- down and status ------------------------------------------------------------------------

    def down(self) -> list[ServiceReport]:
        """Stop the processes that `up` started (and only those); harmless when nothing runs."""
        if not self.state.run.is_dir():
            return [ServiceReport(name, "not running") for name in SERVICES]
        with self._lock():
            records = {name: self.record(name) for name in SERVICES}
            present = [record for record in records.values() if record is not None]
            stopped = dict(zip([r.service for r in present], self._stop_all(present)))
            return [ServiceReport(name, "stopped" if stopped.get(name) else "not running",
                                  pid=records[name].pid if stopped.get(name) else None)
                    for name in SERVICES]

    def stop(self, name: str) -> ServiceReport:
        """Stop one service that `up` started and leave the others running; `up` starts it again
        on the same ports (with its data). Tests use it to take a server away from its clients."""
        if name not in SERVICES:
            raise StackError(f"no service named {name!r} (services: {', '.join(SERVICES)})")
        if not self.state.run.is_dir():
            return ServiceReport(name, "not running")
        with self._lock():
            record = self.record(name)
            stopped = record is not None and self._stop_all([record])[0]
            return ServiceReport(name, "stopped" if stopped else "not running",
                                 pid=record.pid if stopped else None)

    def status(self) -> list[ServiceReport]:
        """One report per service: `up` only if its process runs *and* it answers its probe."""
        ports = self.ports
        if not self.state.run.is_dir():
            return [ServiceReport(name, "down", self._url(name, ports),
                                  detail=f"no stack in {self.state.root} (run `moepipe stack up`)")
                    for name in SERVICES]
        credentials = Credentials.load_or_create(self.state) if self.state.credentials.exists() else None
        reports = []
        for name in SERVICES:
            record = self.record(name)
            url = self._url(name, ports)
            if not is_running(record):
                detail = "not running" if record is None else f"process {record.pid} is gone"
                reports.append(ServiceReport(name, "down", url, detail=detail + f"; log {self.state.log(name)}"))
                continue
            reason = self._probe(name, ports, credentials)
            reports.append(ServiceReport(name, "up" if reason is None else "down", url, record.pid,
                                         detail=reason or ""))
        return reports

    def healthy(self) -> bool:
        return all(report.ok for report in self.status())

    def _probe(self, name: str, ports: Ports, credentials: Credentials | None) -> str | None:
        address = urls(ports)
        if name == SEAWEEDFS:
            if credentials is None:
                return f"no keys in {self.state.credentials}"
            return seaweedfs.probe_buckets(address["s3"], credentials)
        if name == PREFECT_WORKER:
            return prefect_server.probe_worker(address["prefect_api"])
        if name == PREFECT_SERVER:
            return prefect_server.probe_prefect(address["prefect_api"])
        return mlflow_server.probe_mlflow(address["mlflow"])

    @staticmethod
    def _url(name: str, ports: Ports) -> str:
        address = urls(ports)
        return {SEAWEEDFS: address["s3"], PREFECT_SERVER: address["prefect_api"],
                PREFECT_WORKER: f"pool {prefect_server.WORK_POOL}"}.get(name, address["mlflow"])

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialize up/down on one state dir (a second `up` waits for the first)."""
        with open(self.state.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _with_detail(report: ServiceReport, detail: str) -> ServiceReport:
    return ServiceReport(report.name, report.state, report.url, report.pid, detail, report.seconds)


def _last_line(log: str) -> str:
    try:
        lines = [line.strip() for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f"; last line: {lines[-1][:300]}" if lines else ""
