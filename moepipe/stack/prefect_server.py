"""The Prefect server (own PREFECT_HOME and SQLite database in the state dir) and one process
worker polling the `moepipe-process` work pool."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx

from moepipe.errors import UserError
from moepipe.stack.health import TIMEOUT_S, probe_prefect
from moepipe.stack.layout import (
    HOST,
    PREFECT_SERVER,
    PREFECT_WORKER,
    REPO_LIMIT,
    WORK_POOL,
    WORKER_NAME,
    Ports,
    StateDir,
    urls,
)
from moepipe.stack.service import ServiceSpec, python_module, service_env

SERVER_START_TIMEOUT_S = 120.0  # the first start migrates a fresh database
WORKER_START_TIMEOUT_S = 60.0


def _home(state: StateDir) -> str:
    home = state.data("prefect")
    home.mkdir(parents=True, exist_ok=True)
    return str(home)


def server_spec(state: StateDir, ports: Ports, ui: bool = True) -> ServiceSpec:
    home = _home(state)
    api_url = urls(ports)["prefect_api"]
    env = service_env({
        "PREFECT_HOME": home,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(ports.prefect),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
    })
    argv = python_module("prefect") + ["server", "start", "--host", HOST, "--port", str(ports.prefect),
                                       "--analytics-off", "--ui" if ui else "--no-ui"]
    return ServiceSpec(
        name=PREFECT_SERVER, argv=argv, env=env, url=api_url,
        probe=lambda: probe_prefect(api_url), start_timeout_s=SERVER_START_TIMEOUT_S,
        cwd=state.data("prefect"),
    )


def worker_spec(state: StateDir, ports: Ports, client_env: dict[str, str],
                online_since: datetime | None = None) -> ServiceSpec:
    """The worker gets the whole client environment: the flow runs it starts talk to the stack.
    It runs in the current directory, which is also its MOEPIPE_REPO (the checkout that
    prefect.yaml's pull step enters) when that is unset and this is a moepipe checkout."""
    api_url = urls(ports)["prefect_api"]
    env = service_env({**client_env, "PREFECT_HOME": _home(state), "PREFECT_API_URL": api_url})
    if "MOEPIPE_REPO" not in env and (Path.cwd() / "dvc.yaml").is_file():
        env["MOEPIPE_REPO"] = str(Path.cwd())
    argv = python_module("prefect") + ["worker", "start", "--pool", WORK_POOL, "--type", "process",
                                       "--name", WORKER_NAME, "--install-policy", "never"]
    return ServiceSpec(
        name=PREFECT_WORKER, argv=argv, env=env, url=f"pool {WORK_POOL}",
        probe=lambda: probe_worker(api_url, online_since), start_timeout_s=WORKER_START_TIMEOUT_S,
        cwd=Path.cwd(),
    )


def ensure_work_pool(api_url: str) -> bool:
    """Create the process work pool if missing (with Prefect's default job template for the
    process worker type); True if it was created."""
    from prefect.workers.process import ProcessWorker

    body = {"name": WORK_POOL, "type": "process",
            "description": "moepipe flows as local subprocesses (CPU)",
            "base_job_template": ProcessWorker.get_default_base_job_template()}
    return _create(api_url, "/work_pools/", body, f"work pool {WORK_POOL}")


def ensure_repo_limit(api_url: str) -> bool:
    """Create the global concurrency limit REPO_LIMIT (1 slot) if missing: flows that share a
    checkout (scrape and retrain) take turns on it; True if it was created."""
    body = {"name": REPO_LIMIT, "limit": 1}
    return _create(api_url, "/v2/concurrency_limits/", body, f"concurrency limit {REPO_LIMIT}")


def _create(api_url: str, path: str, body: dict, what: str) -> bool:
    """POST a Prefect object; False if it already exists (409), UserError naming it on failure."""
    response = _call("post", api_url + path, body)
    if response.status_code == 409:
        return False
    if response.status_code >= 300:
        raise UserError(f"Prefect API {api_url}: cannot create {what}: "
                        f"HTTP {response.status_code} {response.text[:200]}")
    return True


def workers(api_url: str, pool: str = WORK_POOL) -> list[dict]:
    """Workers that the Prefect API knows for a pool (name, status, last_heartbeat_time)."""
    response = _call("post", f"{api_url}/work_pools/{pool}/workers/filter", {})
    if response.status_code == 404:
        raise UserError(f"Prefect API {api_url}: work pool {pool} does not exist")
    response.raise_for_status()
    return response.json()


def probe_worker(api_url: str, online_since: datetime | None = None) -> str | None:
    """None if our worker is ONLINE (with a heartbeat after online_since, when given)."""
    try:
        found = [w for w in workers(api_url) if w.get("name") == WORKER_NAME]
    except (httpx.HTTPError, OSError) as error:
        return f"Prefect API {api_url} unreachable ({error})"
    except UserError as error:
        return str(error)
    if not found:
        return f"no worker {WORKER_NAME} registered on pool {WORK_POOL}"
    worker = found[0]
    if worker.get("status") != "ONLINE":
        return f"worker {WORKER_NAME} is {worker.get('status', 'unknown')}"
    if online_since is not None:
        heartbeat = datetime.fromisoformat(worker["last_heartbeat_time"])
        if heartbeat < online_since:
            return f"worker {WORKER_NAME} has not sent a heartbeat since it was started"
    return None


def _call(method: str, url: str, body: dict) -> httpx.Response:
    return httpx.request(method, url, json=body, timeout=TIMEOUT_S * 3, trust_env=False)
