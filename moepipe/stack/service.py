"""What the stack needs to know to run one service: its command, environment, URL and probe."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import string
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from moepipe.errors import UserError
from moepipe.images import write_json
from moepipe.stack.layout import StateDir

# Variables that would point a service at another server or profile than the stack's own.
_INHERITED_BLOCKLIST = (
    "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_S3_ENDPOINT_URL", "PREFECT_API_URL",
    "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH", "PREFECT_HOME",
    "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    url: str  # what `status` shows; the probe checks it
    probe: Callable[[], str | None]  # None when healthy, else the reason
    start_timeout_s: float
    cwd: Path | None = None


@dataclass(frozen=True)
class Credentials:
    """S3 keys of the stack, generated once per state dir and kept there (0600)."""

    access_key: str
    secret_key: str

    @classmethod
    def load_or_create(cls, state: StateDir) -> Credentials:
        try:
            data = json.loads(state.credentials.read_text())
            return cls(data["access_key"], data["secret_key"])
        except FileNotFoundError:
            pass
        except (json.JSONDecodeError, KeyError) as error:
            raise UserError(f"{state.credentials}: unreadable ({error}); delete it to make new keys") from None
        alphabet = string.ascii_uppercase + string.digits
        credentials = cls("MOE" + "".join(secrets.choice(alphabet) for _ in range(17)),
                          secrets.token_hex(20))
        write_json(state.credentials, {"access_key": credentials.access_key, "secret_key": credentials.secret_key},
                   mode=0o600)
        return credentials


def service_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The calling environment without variables that would redirect a service, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if key not in _INHERITED_BLOCKLIST}
    env.update(extra)
    return env


def python_module(module: str) -> list[str]:
    """Run a Python module with this interpreter, so services use the project's environment."""
    return [sys.executable, "-m", module]


def find_executable(name: str, package: str) -> str:
    """An executable next to this interpreter (the virtual environment's bin/) or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise UserError(f"`{name}` not found next to {sys.executable} nor on PATH; "
                        f"install the Python package {package}")
    return found
