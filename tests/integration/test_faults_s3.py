"""S3 down during `dvc push` or MLflow artifact logging (the local stack of tests/conftest.py, its
SeaweedFS stopped and started again): one line naming the endpoint within seconds, exit status 75;
once S3 is back a retry completes, and nothing was lost or half-written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from moepipe.stack.health import s3_client

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SEAWEEDFS = "seaweedfs"


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    """Run argv; on timeout, kill its whole process group (the dvc it started too) and fail."""
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{argv} still ran after {timeout} s")
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def ok(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = run(argv, cwd, env)
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def stack_with_s3_back(local_stack):
    """The local stack; whatever the test did to SeaweedFS, it runs again afterwards."""
    yield local_stack
    local_stack.stack.up()


def remote_objects(env: dict[str, str], bucket: str, prefix: str) -> dict[str, bytes]:
    client = s3_client(env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def assert_whole(objects: dict[str, bytes]) -> None:
    """DVC names each object by the md5 of its content: a partial object would not match its name."""
    for key, content in objects.items():
        digest = "".join(key.split("/files/md5/")[1].split("/")).removesuffix(".dir")
        assert hashlib.md5(content).hexdigest() == digest, f"{key} is not whole"


def stop_when_objects_arrive(stack, env: dict[str, str], bucket: str, prefix: str, count: int) -> threading.Thread:
    """Stop SeaweedFS (only it) as soon as COUNT objects are in the remote: S3 going away mid-push."""
    client = s3_client(env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                       timeout_s=1, read_timeout_s=2)

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0) >= count:
                stack.stop(SEAWEEDFS)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_dvc_push_with_s3_down_is_one_line_and_a_retry_completes(stack_with_s3_back, tmp_path, monkeypatch):
    stack, stack_env = stack_with_s3_back
    endpoint, bucket = stack_env["AWS_ENDPOINT_URL"], stack_env["MOEPIPE_DVC_BUCKET"]
    prefix = f"faults-{uuid.uuid4().hex[:8]}"
    url = f"s3://{bucket}/{prefix}"
    env = {**os.environ, **stack_env}
    dvc = [sys.executable, "-m", "dvc"]
    moepipe = [sys.executable, "-m", "moepipe"]
    repo = tmp_path / "repo"
    repo.mkdir()
    ok(["git", "init", "-q"], repo, env)
    ok([*dvc, "init", "-q"], repo, env)
    shutil.copyfile(ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # remote s3store, with its timeouts
    ok([*dvc, "remote", "modify", "--local", "s3store", "url", url], repo, env)
    ok([*dvc, "remote", "modify", "--local", "s3store", "read_timeout", "10"], repo, env)  # a bounded test
    data = repo / "data"
    (data / "nested").mkdir(parents=True)
    files = {f"part-{n:03d}.bin": os.urandom(20_000 + n) for n in range(120)}
    files["nested/notes.txt"] = "ちび avatars\n".encode()
    for name, content in files.items():
        (data / name).write_bytes(content)
    ok([*dvc, "add", "-q", "data"], repo, env)

    # S3 down before the push: the preflight says so in one line, within seconds, exit 75.
    assert stack.stop(SEAWEEDFS).state == "stopped"
    began = time.monotonic()
    result = run([*moepipe, "remote", "push", "--repo", str(repo)], repo, env)
    unreachable = (f"S3 endpoint {endpoint} (remote s3store, {url}) is unreachable: connection refused; "
                   "nothing was transferred, run it again once the endpoint answers")
    assert (result.returncode, result.stderr.splitlines()) == (75, [f"moepipe: error: dvc push: {unreachable}"])
    assert time.monotonic() - began < 20
    # The flows' dvc push step: the same line, as a retryable failure.
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
        temporary_settings,
    )

    from flows.dvc_stages import StepFailed
    from flows.dvc_tasks import dvc_push

    for name, value in stack_env.items():
        monkeypatch.setenv(name, value)
    with temporary_settings(updates={PREFECT_API_URL: stack_env["PREFECT_API_URL"], PREFECT_HOME: str(tmp_path),
                                     PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):
        with pytest.raises(StepFailed) as failed:
            dvc_push(repo=str(repo), remote="s3store")  # a task run of its own, outside a flow
    assert str(failed.value) == f"dvc push failed: {unreachable}" and failed.value.retryable

    # S3 going away in the middle of the push: the watch stops DVC (which would otherwise try each
    # remaining file through botocore's retries) and says so in one line naming the endpoint.
    stack.up()
    watcher = stop_when_objects_arrive(stack, stack_env, bucket, prefix, count=5)
    began = time.monotonic()
    result = run([*moepipe, "remote", "push", "--repo", str(repo), "--jobs", "1"], repo, env)
    watcher.join(timeout=30)
    assert result.returncode == 75, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"moepipe: error: dvc push: S3 endpoint {endpoint} (remote s3store, {url}) became unreachable during the "
        "transfer: connection refused; objects that arrived are complete, run it again to transfer the rest"]
    assert time.monotonic() - began < 30

    stack.up()
    partial = remote_objects(stack_env, bucket, prefix)
    assert_whole(partial)
    assert 5 <= len(partial) < len(files) and not [key for key in partial if key.endswith(".dir")]

    result = run([*moepipe, "remote", "push", "--repo", str(repo)], repo, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dvc push: ") and f"S3 endpoint {endpoint}" in result.stdout
    pushed = remote_objects(stack_env, bucket, prefix)
    assert_whole(pushed)
    assert len(pushed) == len(files) + 1 and partial.items() <= pushed.items()  # + the .dir listing

    clone = tmp_path / "clone"  # a fresh checkout: the git-tracked files and the per-checkout config
    clone.mkdir()
    ok(["git", "init", "-q"], clone, env)
    ok([*dvc, "init", "-q"], clone, env)
    for name in (".dvc/config", ".dvc/config.local", "data.dvc"):
        shutil.copyfile(repo / name, clone / name)
    ok([*moepipe, "remote", "pull", "--repo", str(clone)], clone, env)
    for name, content in files.items():
        assert (clone / "data" / name).read_bytes() == content, name
    pulled = [path.relative_to(clone / "data").as_posix() for path in (clone / "data").rglob("*") if path.is_file()]
    assert sorted(pulled) == sorted(files)


@pytest.fixture(scope="module")
def tiny_generator(prepared16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step generator with the reports `moepipe register` logs."""
    from moepipe.config import TrainConfig
    from moepipe.train.loop import train

    root = tmp_path_factory.mktemp("faults-model")
    train(TrainConfig(width=8, z_dim=16, batch_size=8, steps=2, deterministic=True, threads=1, device="cpu",
                      precision="fp32", checkpoint_every=10, log_every=1, sample_every=2, sample_columns=3),
          0, prepared16, root / "models", reports=root / "reports/train", echo=lambda _: None)
    (root / "reports/evaluate").mkdir(parents=True)
    (root / "reports/evaluate/metrics.json").write_text(json.dumps({"fd": 3.0, "precision": 0.5, "recall": 0.5}))
    return root


def test_register_with_s3_down_is_one_line_and_a_retry_registers(stack_with_s3_back, tiny_generator, tmp_path,
                                                                   monkeypatch):
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from moepipe.cli import app
    from moepipe.registry.promotion import COMPLETE_TAG

    stack, stack_env = stack_with_s3_back
    uri, endpoint = stack_env["MLFLOW_TRACKING_URI"], stack_env["MLFLOW_S3_ENDPOINT_URL"]
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_LOGGING_LEVEL", "MLFLOW_TRACKING_URI"):
        # `moepipe register` sets defaults for these in os.environ (and MLflow the URI): afterwards,
        # put each back as it was, set or not.
        monkeypatch.setenv(name, "recorded")
        monkeypatch.delenv(name)
    for name, value in stack_env.items():
        monkeypatch.setenv(name, value)
    model = f"faults-{uuid.uuid4().hex[:8]}"
    (tmp_path / "params.yaml").write_text(f"register:\n  model_name: {model}\n  experiment: {model}\n")
    root = tiny_generator
    argv = ["register", "--params", str(tmp_path / "params.yaml"), "--model", str(root / "models/generator.pt"),
            "--metrics", str(root / "reports/evaluate/metrics.json"), "--evaluate-dir", str(root / "reports/evaluate"),
            "--train-reports", str(root / "reports/train"), "--classifier", str(tmp_path / "none.pt"),
            "--directions", str(tmp_path / "none.npz"), "--report", str(tmp_path / "register.json")]

    assert stack.stop(SEAWEEDFS).state == "stopped"
    began = time.monotonic()
    result = CliRunner().invoke(app, argv)
    assert (result.exit_code, result.stderr.splitlines()) == (75, [
        f"moepipe: error: MLflow server {uri} could not store artifacts: its artifact store, S3 endpoint "
        f"{endpoint}, is unreachable: connection refused; no model version was completed; "
        "run register again once it is back"]), result.output
    assert time.monotonic() - began < 40
    assert not (tmp_path / "register.json").exists()
    client = MlflowClient(uri, registry_uri=uri)
    assert [v for v in client.search_model_versions(f"name = '{model}'") if v.tags.get(COMPLETE_TAG) == "true"] == []

    stack.up()
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "register.json").read_text())
    version = client.get_model_version(model, str(report["version"]))
    assert version.tags.get(COMPLETE_TAG) == "true"
    model_files = client.list_logged_model_artifacts(version.source.removeprefix("models:/"))  # in S3 again
    assert "MLmodel" in {item.path for item in model_files}, model_files
