"""The local stack: SeaweedFS (S3), an MLflow tracking server, a Prefect server and a process
worker on 127.0.0.1, started and stopped as one (`moepipe stack up|down|status`).

Tests and flows use the Python API; `moepipe.stack.health` holds the client-side checks that
turn an unreachable server into one line naming its URL.
"""

from moepipe.stack.health import Unreachable, probe_environment, require_mlflow, require_prefect, require_s3
from moepipe.stack.layout import (
                                  BUCKETS,
                                  DVC_BUCKET,
                                  DVC_REMOTE,
                                  DVC_REMOTE_URL,
                                  ENV_NAMES,
                                  GPU_WORK_POOL,
                                  HOST,
                                  MLFLOW_BUCKET,
                                  SERVICES,
                                  WORK_POOL,
                                  Ports,
                                  read_env_file,
)
from moepipe.stack.stack import ServiceReport, Stack, StackError

__all__ = [
    "BUCKETS", "DVC_BUCKET", "DVC_REMOTE", "DVC_REMOTE_URL", "ENV_NAMES", "GPU_WORK_POOL", "HOST",
    "MLFLOW_BUCKET", "SERVICES", "WORK_POOL", "Ports", "ServiceReport", "Stack", "StackError",
    "Unreachable", "probe_environment", "read_env_file", "require_mlflow", "require_prefect", "require_s3",
]
