"""Names, ports and file layout of the local stack: the single source of truth that the
`moepipe stack` command, the tests and infra/compose.yaml agree on."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

from moepipe.images import atomic_write
from moepipe.s3 import REGION

HOST = "127.0.0.1"

SEAWEEDFS = "seaweedfs"
MLFLOW = "mlflow"
PREFECT_SERVER = "prefect-server"
PREFECT_WORKER = "prefect-worker"
SERVICES: tuple[str, ...] = (SEAWEEDFS, MLFLOW, PREFECT_SERVER, PREFECT_WORKER)

DVC_BUCKET = "moepipe-dvc"
MLFLOW_BUCKET = "moepipe-mlflow"
BUCKETS: tuple[str, ...] = (DVC_BUCKET, MLFLOW_BUCKET)
DVC_REMOTE = "s3store"
DVC_REMOTE_URL = f"s3://{DVC_BUCKET}/store"
MLFLOW_ARTIFACTS_DESTINATION = f"s3://{MLFLOW_BUCKET}/"
ADMIN_GRPC_OFFSET = 10000
WORK_POOL = "moepipe-process"
REPO_LIMIT = "moepipe-repo"  # global concurrency limit (1 slot): flows sharing a checkout take turns
GPU_WORK_POOL = "moepipe-gpu"  # infra/compose.yaml only: the local stack has no GPU worker
WORKER_NAME = "moepipe-local-worker"

# What `stack up` writes to <state-dir>/env, and what infra/compose.yaml passes to its services.
ENV_NAMES: tuple[str, ...] = (
    "MLFLOW_TRACKING_URI",
    "PREFECT_API_URL",
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "MOEPIPE_DVC_BUCKET",
    "MOEPIPE_MLFLOW_BUCKET",
    "MOEPIPE_WORK_POOL",
)


@dataclass(frozen=True)
class Ports:
    """TCP ports on 127.0.0.1. SeaweedFS needs an HTTP and a gRPC port for each of its parts;
    the defaults are SeaweedFS's own (gRPC = HTTP + 10000). The admin server's gRPC port is
    always admin + 10000: the maintenance worker inside `weed mini` dials that, whatever
    -admin.port.grpc says."""

    s3: int = 8333
    mlflow: int = 5000
    prefect: int = 4200
    master: int = 9333
    volume: int = 9340
    filer: int = 8888
    admin: int = 23646
    s3_grpc: int = 18333
    master_grpc: int = 19333
    volume_grpc: int = 19340
    filer_grpc: int = 18888

    def __post_init__(self) -> None:
        for field, port in zip(self.names(), dataclasses.astuple(self)):
            if not 1 <= int(port) <= 65535:
                raise ValueError(f"port {field}: must be in 1..65535 (got {port})")
        if self.admin > 65535 - ADMIN_GRPC_OFFSET:
            raise ValueError(f"port admin: must be at most {65535 - ADMIN_GRPC_OFFSET} "
                             f"(its gRPC port is admin + {ADMIN_GRPC_OFFSET}; got {self.admin})")
        values = dataclasses.astuple(self) + (self.admin_grpc,)
        duplicates = sorted({p for p in values if values.count(p) > 1})
        if duplicates:
            raise ValueError(f"ports must differ; used more than once: {duplicates}")

    @property
    def admin_grpc(self) -> int:
        return self.admin + ADMIN_GRPC_OFFSET

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(Ports))

    def of(self, service: str) -> dict[str, int]:
        """The ports one service listens on, by name."""
        if service == SEAWEEDFS:
            ports = {name: getattr(self, name) for name in self.names() if name not in ("mlflow", "prefect")}
            return ports | {"admin_grpc": self.admin_grpc}
        if service == MLFLOW:
            return {"mlflow": self.mlflow}
        if service == PREFECT_SERVER:
            return {"prefect": self.prefect}
        return {}

    def with_overrides(self, overrides: dict[str, int]) -> Ports:
        unknown = sorted(set(overrides) - set(self.names()))
        if unknown:
            raise ValueError(f"unknown port name(s) {unknown}; known: {', '.join(self.names())}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def free(cls) -> Ports:
        """Ports that are free right now on 127.0.0.1 (for tests and side-by-side stacks)."""
        sockets: list[socket.socket] = []
        try:
            def grab(port: int = 0) -> int | None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.bind((HOST, port))
                except OSError:
                    sock.close()
                    return None
                sockets.append(sock)
                return sock.getsockname()[1]

            ports = {name: grab() for name in cls.names() if name != "admin"}
            for _ in range(200):  # the admin port needs admin + 10000 free as well
                admin = random.randint(20000, 65535 - ADMIN_GRPC_OFFSET)
                if admin not in ports.values() and grab(admin) and grab(admin + ADMIN_GRPC_OFFSET):
                    return cls(**ports, admin=admin)
            raise OSError("no free pair of ports for the SeaweedFS admin server")
        finally:
            for sock in sockets:
                sock.close()

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def port_in_use(port: int, host: str = HOST) -> bool:
    """True if something listens on host:port (a TIME_WAIT leftover does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def urls(ports: Ports) -> dict[str, str]:
    return {
        "s3": f"http://{HOST}:{ports.s3}",
        "mlflow": f"http://{HOST}:{ports.mlflow}",
        "prefect_api": f"http://{HOST}:{ports.prefect}/api",
    }


def client_env(ports: Ports, access_key: str, secret_key: str) -> dict[str, str]:
    """The variables a client (dvc, mlflow, prefect, boto3) needs to use the stack."""
    address = urls(ports)
    env = {
        "MLFLOW_TRACKING_URI": address["mlflow"],
        "PREFECT_API_URL": address["prefect_api"],
        "AWS_ENDPOINT_URL": address["s3"],
        "MLFLOW_S3_ENDPOINT_URL": address["s3"],
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "MOEPIPE_DVC_BUCKET": DVC_BUCKET,
        "MOEPIPE_MLFLOW_BUCKET": MLFLOW_BUCKET,
        "MOEPIPE_WORK_POOL": WORK_POOL,
    }
    assert tuple(env) == ENV_NAMES
    return env


@dataclass(frozen=True)
class StateDir:
    """Where one stack keeps its data, logs, pid files and secrets."""

    root: Path

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials.json"

    @property
    def s3_identities(self) -> Path:
        return self.root / "s3-identities.json"

    @property
    def ports_file(self) -> Path:
        return self.root / "ports.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def data(self, service: str) -> Path:
        return self.root / service

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def create(self) -> None:
        for folder in (self.root, self.logs, self.run):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # secrets and databases live here


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (0600), atomically, never briefly world-readable."""
    atomic_write(path, text.encode("utf-8"), mode=0o600)


def write_env_file(path: Path, env: dict[str, str]) -> None:
    lines = [f"# moepipe local stack: `set -a; . {path}; set +a` to use it in a shell"]
    lines += [f"{key}={value}" for key, value in env.items()]
    write_private(path, "\n".join(lines) + "\n")


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def read_ports(state: StateDir) -> Ports | None:
    try:
        recorded = json.loads(state.ports_file.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None  # a torn write: the next `up` rewrites it
    try:
        return Ports(**{name: int(value) for name, value in recorded.items() if name in Ports.names()})
    except (TypeError, ValueError):
        return None
