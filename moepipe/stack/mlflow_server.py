"""The MLflow tracking server: SQLite backend store in the state dir; artifacts proxied by the
server (`--serve-artifacts`) to the S3 bucket, so clients need only MLFLOW_TRACKING_URI."""

from __future__ import annotations

from moepipe.stack.health import probe_mlflow
from moepipe.stack.layout import HOST, MLFLOW, MLFLOW_ARTIFACTS_DESTINATION, REGION, Ports, StateDir, urls
from moepipe.stack.service import Credentials, ServiceSpec, python_module, service_env

START_TIMEOUT_S = 90.0


def command(state: StateDir, ports: Ports) -> list[str]:
    data = state.data(MLFLOW)
    data.mkdir(parents=True, exist_ok=True)
    return python_module("mlflow") + [
        "server",
        "--backend-store-uri", f"sqlite:///{data / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", MLFLOW_ARTIFACTS_DESTINATION,
        "--host", HOST, "--port", str(ports.mlflow),
        "--workers", "1",  # a local stack serves one user; each worker costs ~300 MB
    ]


def spec(state: StateDir, ports: Ports, credentials: Credentials) -> ServiceSpec:
    address = urls(ports)
    env = service_env({
        "MLFLOW_S3_ENDPOINT_URL": address["s3"],
        "AWS_ACCESS_KEY_ID": credentials.access_key,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        # Background job runners (GenAI judges, trace rollups) are not used by this project.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    })
    return ServiceSpec(
        name=MLFLOW,
        argv=command(state, ports),
        env=env,
        url=address["mlflow"],
        probe=lambda: probe_mlflow(address["mlflow"]),
        start_timeout_s=START_TIMEOUT_S,
        cwd=state.data(MLFLOW),
    )
