"""`moepipe stack`: real SeaweedFS, MLflow and Prefect servers on loopback (fixture in conftest.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from moepipe.stack import (
    DVC_BUCKET,
    ENV_NAMES,
    MLFLOW_BUCKET,
    SERVICES,
    WORK_POOL,
    Ports,
    Stack,
    StackError,
    Unreachable,
    require_mlflow,
    require_prefect,
)
from moepipe.stack.health import s3_client
from moepipe.stack.layout import REPO_LIMIT, WORKER_NAME, read_ports
from moepipe.stack.process import group_members

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def moepipe(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moepipe", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def bucket_objects(env: dict[str, str], bucket: str) -> dict[str, bytes]:
    client = s3_client(env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def processes_mentioning(path: Path) -> list[int]:
    """Live processes whose command line or environment names `path` (a state dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if str(path).encode() in text:
            found.append(int(entry.name))
    return found


def test_all_services_up_and_healthy(local_stack):
    stack, env = local_stack
    reports = stack.status()
    assert [r.name for r in reports] == list(SERVICES)
    assert all(r.state == "up" for r in reports), [r.line() for r in reports]

    result = moepipe("stack", "status", "--state-dir", str(stack.state.root))
    assert result.returncode == 0, result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [[name, "up"] for name in SERVICES]

    assert tuple(env) == ENV_NAMES
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{stack.ports.mlflow}"
    assert env["PREFECT_API_URL"] == f"http://127.0.0.1:{stack.ports.prefect}/api"
    for secret in (stack.state.env_file, stack.state.credentials, stack.state.s3_identities):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    for name in SERVICES:
        pid = int((stack.state.run / f"{name}.pid").read_text())
        assert pid == stack.record(name).pid and pid in group_members(pid)
        assert stack.state.log(name).stat().st_size > 0


def test_mlflow_artifacts_land_in_the_s3_bucket(local_stack, tmp_path, monkeypatch):
    stack, env = local_stack
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.create_run("0")
    payload = os.urandom(2048)
    (tmp_path / "sample.bin").write_bytes(payload)
    client.log_artifact(run.info.run_id, str(tmp_path / "sample.bin"))
    client.set_terminated(run.info.run_id)

    objects = bucket_objects(env, MLFLOW_BUCKET)
    key = f"0/{run.info.run_id}/artifacts/sample.bin"
    assert objects.get(key) == payload, sorted(objects)
    downloaded = client.download_artifacts(run.info.run_id, "sample.bin", str(tmp_path / "back"))
    assert Path(downloaded).read_bytes() == payload


def test_prefect_api_answers_and_the_pool_has_a_worker(local_stack):
    stack, env = local_stack
    api = env["PREFECT_API_URL"]
    assert httpx.get(f"{api}/health", timeout=5).json() is True
    pool = httpx.get(f"{api}/work_pools/{WORK_POOL}", timeout=5)
    assert pool.status_code == 200 and pool.json()["type"] == "process"
    assert "command" in pool.json()["base_job_template"]["job_configuration"]
    workers = httpx.post(f"{api}/work_pools/{WORK_POOL}/workers/filter", json={}, timeout=5).json()
    assert [(w["name"], w["status"]) for w in workers] == [(WORKER_NAME, "ONLINE")]
    limit = httpx.get(f"{api}/v2/concurrency_limits/{REPO_LIMIT}", timeout=5)  # flows take turns on it
    assert limit.status_code == 200 and limit.json()["limit"] == 1


def test_up_again_is_idempotent(local_stack):
    stack, _ = local_stack
    pids = {name: stack.record(name).pid for name in SERVICES}
    reports = stack.up()
    assert [(r.name, r.state, r.pid) for r in reports] == [(name, "running", pids[name]) for name in SERVICES]
    # Other ports asked of a running stack: it keeps its own, and says so.
    other = Stack(stack.state.root, Ports.free()).up()
    assert {r.state for r in other} == {"running"} and "down` first" in " ".join(r.detail for r in other)
    assert read_ports(stack.state) == stack.ports


def test_dvc_push_and_pull_round_trip_through_the_stack(local_stack, tmp_path):
    """The committed .dvc/config (remote s3store, no endpoint, no keys) + the stack's env only."""
    _, stack_env = local_stack
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, **stack_env}

    def run(*argv: str) -> str:
        result = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
        return result.stdout

    dvc = (sys.executable, "-m", "dvc")
    run("git", "init", "-q")
    run(*dvc, "init", "-q")
    shutil.copyfile(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    data = repo / "data"
    (data / "nested").mkdir(parents=True)
    files = {"big.bin": os.urandom(3 * 1024 * 1024 + 17), "nested/small.txt": "ちび avatars\n".encode(),
             "empty.txt": b""}
    for name, content in files.items():
        (data / name).write_bytes(content)
    run(*dvc, "add", "-q", "data")
    run(*dvc, "push")
    pushed = [key for key in bucket_objects(stack_env, DVC_BUCKET) if key.startswith("store/files/md5/")]
    assert len(pushed) >= len(files)  # one object per distinct file, plus the .dir listing

    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    run(*dvc, "pull")
    for name, content in files.items():
        assert hashlib.sha256((data / name).read_bytes()).digest() == hashlib.sha256(content).digest(), name


def test_status_fails_when_a_service_was_killed_and_up_restarts_it(local_stack):
    stack, _ = local_stack
    victim = stack.record("mlflow")
    os.killpg(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while group_members(victim.pid) and time.monotonic() < deadline:
        time.sleep(0.1)

    states = {r.name: r.state for r in stack.status()}
    assert states == {**{name: "up" for name in SERVICES}, "mlflow": "down"}
    result = moepipe("stack", "status", "--state-dir", str(stack.state.root))
    assert result.returncode == 1
    assert [line for line in result.stdout.splitlines() if " down " in line][0].startswith("mlflow")

    reports = {r.name: r for r in stack.up()}
    assert reports["mlflow"].state == "started" and reports["mlflow"].pid != victim.pid
    assert {reports[name].state for name in SERVICES if name != "mlflow"} == {"running"}
    assert stack.healthy()


def test_down_stops_everything_and_a_second_down_is_harmless(local_stack, monkeypatch, tmp_path):
    stack, env = local_stack
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    from mlflow import MlflowClient

    run_id = MlflowClient().create_run("0").info.run_id
    pids = {name: stack.record(name).pid for name in SERVICES}
    groups = {name: group_members(pid) for name, pid in pids.items()}
    assert len(groups["mlflow"]) >= 2  # the server and its uvicorn worker: both must go

    result = moepipe("stack", "down", "--state-dir", str(stack.state.root))
    assert result.returncode == 0, result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [[name, "stopped"] for name in SERVICES]
    for name, members in groups.items():
        assert not [pid for pid in members if pid in group_members(pids[name])], name
    assert processes_mentioning(stack.state.root) == []
    assert not any(stack.state.run.glob("*.pid"))

    again = moepipe("stack", "down", "--state-dir", str(stack.state.root))
    assert again.returncode == 0 and again.stdout.split().count("not") == len(SERVICES)
    assert moepipe("stack", "status", "--state-dir", str(stack.state.root)).returncode == 1

    # Up again on the same state dir: same ports and keys, and the data survived.
    stack.up()
    assert stack.env() == env
    assert MlflowClient().get_run(run_id).info.run_id == run_id


def test_a_port_in_use_is_one_line_and_starts_nothing(tmp_path):
    ports = Ports.free()
    state = tmp_path / "stack"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports.mlflow))
        squatter.listen()
        args = [f"--port={name}={value}" for name, value in ports.to_json().items()]
        result = moepipe("stack", "up", "--state-dir", str(state), *args)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"moepipe: error: mlflow: port {ports.mlflow} (mlflow) on 127.0.0.1 is already in use; "
        "stop what uses it or choose another with --port mlflow=N"]
    assert processes_mentioning(state) == []
    assert not any((state / "run").glob("*"))


def test_a_service_failing_at_start_up_stops_the_others(tmp_path, monkeypatch):
    """The S3 port taken between the check and the start: weed exits, and the MLflow and Prefect
    servers that were starting beside it are stopped again."""
    ports = Ports.free()
    stack = Stack(tmp_path / "stack", ports, prefect_ui=False)
    monkeypatch.setattr(Stack, "_check_ports", lambda self, ports, names: None)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports.s3))
        squatter.listen()
        with pytest.raises(StackError, match=r"seaweedfs exited during start-up with status 1; see .*logs/seaweedfs.log; last line: .*not available"):
            stack.up()
    assert processes_mentioning(stack.state.root) == []
    assert not any(stack.state.run.glob("*.json"))
    assert {r.state for r in stack.down()} == {"not running"}


def test_unreachable_servers_are_one_line_naming_the_url(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{dead}"
    with pytest.raises(Unreachable, match=rf"MLflow tracking server at {url} is unreachable: connection refused"):
        require_mlflow(url)
    with pytest.raises(Unreachable, match=rf"Prefect API at {url}/api is unreachable: connection refused"):
        require_prefect(f"{url}/api")

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        began = time.monotonic()
        with pytest.raises(Unreachable, match=rf"{silent_url} is unreachable: no answer \(timed out\)"):
            require_mlflow(silent_url, timeout_s=0.5)
        assert time.monotonic() - began < 5

    env_file = tmp_path / "env"
    env_file.write_text(f"MLFLOW_TRACKING_URI={url}\nPREFECT_API_URL={url}/api\n")
    result = moepipe("stack", "check", "--env-file", str(env_file), timeout=60)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"mlflow   unreachable  {url}: connection refused",
                                          f"prefect  unreachable  {url}/api: connection refused"]

    result = moepipe("stack", "status", "--state-dir", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert all(" down " in line and "no stack in" in line for line in result.stdout.splitlines())
