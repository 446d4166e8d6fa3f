"""infra/compose.yaml agrees with the local stack's definitions in moepipe.stack (names, ports,
environment variables, buckets, work pools)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from moepipe.stack import DVC_BUCKET, ENV_NAMES, GPU_WORK_POOL, MLFLOW_BUCKET, SERVICES, WORK_POOL, Ports
from moepipe.stack.layout import MLFLOW_ARTIFACTS_DESTINATION, client_env

COMPOSE = Path(__file__).resolve().parents[2] / "infra" / "compose.yaml"
# local stack service -> compose service
COUNTERPARTS = {"seaweedfs": "seaweedfs", "mlflow": "mlflow", "prefect-server": "prefect-server",
                "prefect-worker": "prefect-worker-cpu"}
CLIENTS = ("create-buckets", "mlflow", "prefect-worker-cpu", "prefect-worker-gpu")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def default(value: str) -> str:
    """`${NAME:-default}` -> default (what compose uses when NAME is unset)."""
    if value.startswith("${") and ":-" in value:
        return value[value.index(":-") + 2:value.rindex("}")]
    return value


def published(service: dict) -> dict[int, int]:
    """{container port: host port} of a service's `ports` entries."""
    ports = {}
    for entry in service.get("ports", []):
        host, container = entry.rsplit(":", 2)[-2:]
        ports[int(container)] = int(host)
    return ports


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_every_local_service_has_a_counterpart(compose):
    assert set(COUNTERPARTS) == set(SERVICES)
    assert set(COUNTERPARTS.values()) | {"postgres", "create-buckets", "prefect-worker-gpu"} == set(compose["services"])


def test_published_ports_are_the_local_defaults(compose):
    ports, services = Ports(), compose["services"]
    assert published(services["seaweedfs"]) == {ports.s3: ports.s3}
    assert published(services["mlflow"]) == {ports.mlflow: ports.mlflow}
    assert published(services["prefect-server"]) == {ports.prefect: ports.prefect}
    assert int(option(services["mlflow"]["command"], "--port")) == ports.mlflow
    assert int(option(services["prefect-server"]["command"], "--port")) == ports.prefect
    assert f"-s3.port={ports.s3}" in services["seaweedfs"]["command"][0]
    for name in ("seaweedfs", "mlflow", "prefect-server"):  # loopback unless the user opts in
        assert all(entry.startswith("${MOEPIPE_BIND:-127.0.0.1}:") for entry in services[name]["ports"])


def test_client_environment_has_the_env_file_names(compose):
    assert tuple(compose["x-client-env"]) == ENV_NAMES
    assert tuple(client_env(Ports(), "key", "secret")) == ENV_NAMES
    for name in CLIENTS:
        assert set(ENV_NAMES) <= set(compose["services"][name]["environment"]), name

    env, ports = compose["x-client-env"], Ports()
    assert urlparse(env["MLFLOW_TRACKING_URI"]).port == ports.mlflow
    assert urlparse(env["PREFECT_API_URL"]).port == ports.prefect
    assert urlparse(env["PREFECT_API_URL"]).path == "/api"
    assert urlparse(default(env["AWS_ENDPOINT_URL"])).port == ports.s3
    assert env["MLFLOW_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]
    assert (env["MOEPIPE_DVC_BUCKET"], env["MOEPIPE_MLFLOW_BUCKET"]) == (DVC_BUCKET, MLFLOW_BUCKET)
    assert "${AWS_SECRET_ACCESS_KEY:?" in env["AWS_SECRET_ACCESS_KEY"]  # no key in the file


def test_mlflow_proxies_artifacts_to_the_same_bucket_over_postgres(compose):
    command = compose["services"]["mlflow"]["command"]
    assert "--serve-artifacts" in command
    assert option(command, "--artifacts-destination") == MLFLOW_ARTIFACTS_DESTINATION
    assert option(command, "--backend-store-uri").startswith("postgresql://")
    prefect_env = compose["services"]["prefect-server"]["environment"]
    assert prefect_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")


def test_cpu_and_gpu_worker_pools(compose):
    cpu, gpu = compose["services"]["prefect-worker-cpu"], compose["services"]["prefect-worker-gpu"]
    assert option(cpu["command"], "--pool") == WORK_POOL == cpu["environment"]["MOEPIPE_WORK_POOL"]
    assert option(gpu["command"], "--pool") == GPU_WORK_POOL == gpu["environment"]["MOEPIPE_WORK_POOL"]
    assert option(cpu["command"], "--type") == option(gpu["command"], "--type") == "process"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices and all("gpu" in device["capabilities"] for device in devices)
    assert gpu["profiles"] == ["gpu"] and "deploy" not in cpu


def test_bucket_creation_uses_the_moepipe_command(compose):
    from moepipe.stack.cli import stack_app

    command = compose["services"]["create-buckets"]["command"]
    assert command[:3] == ["moepipe", "stack", "create-buckets"]
    assert "create-buckets" in {c.name for c in stack_app.registered_commands}
    assert compose["services"]["mlflow"]["depends_on"]["create-buckets"]["condition"] == \
        "service_completed_successfully"
