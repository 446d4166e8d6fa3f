"""The Prefect `pipeline` flow on the real dvc.yaml with tiny params, in a temporary git copy.

Every stage runs (in DVC's order), then every stage is fresh; the summary artifact carries the
evaluation, the promotion decision and the sample grid; bad params stop the run at once; the
incremental scrape of the fixed synthetic source finds nothing new and changes nothing;
`prefect deploy --all` registers prefect.yaml's deployments with a Prefect server; a fresh MLflow
server gets the model although DVC finds `register` fresh; and nightly-retrain, started by the
scheduler on the stack's worker, trains through a second deployment on a second work pool.

Services: the local stack of tests/conftest.py — its Prefect server and process worker, an S3
DVC remote on its SeaweedFS, and its MLflow server with artifacts in S3 (see `services`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import boto3
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
SUMMARY = "moepipe-pipeline-summary"


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, env=env or os.environ.copy(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def dvc(cwd: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd)


def tiny_params(params: dict) -> dict:
    params["scrape"]["sources"][0]["limit"] = 60
    params["curate"]["output_size"] = 32
    params["preprocess"]["resolution"] = 16
    params["train"].update(steps=4, width=8, z_dim=16, batch_size=8, checkpoint_every=2, sample_every=2,
                           device="cpu", threads=1)
    params["evaluate"] = {**params.get("evaluate", {}), "samples": 16, "batch_size": 16, "kid_subsets": 4,
                          "control_samples": 1, "grid_columns": 4, "interpolation_steps": 3,
                          "classifier": {"epochs": 1, "batch_size": 8}}
    params["register"]["gates"] = {}  # a 4-step generator passes no quality gate; promotion is what is tested
    return params


@pytest.fixture(scope="module")
def services(local_stack, tmp_path_factory):
    """Prefect API, DVC remote and client environment of the local stack (tests/conftest.py):
    S3 remote on SeaweedFS, MLflow server with S3 artifacts, Prefect server + process worker."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    stack_env = dict(local_stack.env)
    names = set(stack_env) | {"MLFLOW_TRACKING_URI", "PREFECT_HOME"}
    saved = {name: os.environ.pop(name, None) for name in names}
    os.environ.update({**stack_env, "PREFECT_HOME": str(home)})
    try:
        with temporary_settings(updates={PREFECT_HOME: str(home), PREFECT_SERVER_ANALYTICS_ENABLED: False,
                                         PREFECT_API_URL: stack_env["PREFECT_API_URL"]}):
            bucket = stack_env["MOEPIPE_DVC_BUCKET"]
            yield {"env": {**stack_env, "PREFECT_HOME": str(home)},
                   "remote": f"s3://{bucket}/e2e-flow-{uuid.uuid4().hex[:8]}",
                   "endpoint": stack_env["AWS_ENDPOINT_URL"]}
            # Send the runs' last logs and events now: at exit, with no API URL left, Prefect
            # would start a temporary server just to deliver them.
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=30, at_exit=False)
            EventsWorker.drain_all(timeout=30, at_exit=False)
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


@pytest.fixture(scope="module")
def project(tmp_path_factory, services) -> Path:
    """A git repository holding the files of this one, with tiny params and its own DVC remote."""
    dest = tmp_path_factory.mktemp("flow-project") / "moepipe"
    listed = run(["git", "ls-files", "-co", "--exclude-standard"], ROOT).split()
    for name in listed:
        if name.startswith(("tests/", "bench/", "docs/")) or not (ROOT / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    params = tiny_params(yaml.safe_load((dest / "params.yaml").read_text()))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / "dvc.lock").unlink(missing_ok=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    run(["git", "init", "-q"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", "copy"], dest, env)
    dvc(dest, "remote", "add", "--local", "--default", "e2e", services["remote"])
    if services["endpoint"]:
        dvc(dest, "remote", "modify", "--local", "e2e", "endpointurl", services["endpoint"])
    return dest


@pytest.fixture
def built(project) -> Path:
    """The project after one pipeline run (the first test's, when it ran before)."""
    if not (project / "dvc.lock").is_file():
        from flows.pipeline import pipeline

        pipeline(repo=str(project), retry_delay_s=0)
    return project


def summary_of(state) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            key=ArtifactFilterKey(any_=[SUMMARY])))
    assert len(found) == 1
    return found[0].data


def outcomes(result: dict) -> dict[str, str]:
    return {step["step"]: step["outcome"] for step in result["steps"]}


def test_pipeline_flow_builds_everything_then_finds_it_fresh(project, services):
    from flows.dvc_stages import pipeline_stages
    from flows.pipeline import pipeline

    stages = [stage.name for stage in pipeline_stages(project)]
    assert stages[:4] == ["scrape", "curate", "preprocess", "train"] and "register" in stages
    assert stages.index("evaluate") < stages.index("register")

    state = pipeline(repo=str(project), retry_delay_s=0, return_state=True)
    first = state.result()
    assert list(outcomes(first)) == ["dvc pull", *stages, "dvc push"]
    assert set(outcomes(first).values()) == {"ran"}, outcomes(first)
    summary = summary_of(state)
    (project.parent / "summary.md").write_text(summary)  # to look at after a failure
    assert summary.startswith("# moepipe pipeline: succeeded")
    assert "## Evaluation (`reports/evaluate/metrics.json`)" in summary and "| fd |" in summary
    register = json.loads((project / "reports/register.json").read_text())  # what the register stage decided
    assert f"**moe-generator v{register['version']} → {register['decision']}**" in summary
    assert register["reasons"] and all(f"- {reason}" in summary for reason in register["reasons"])
    from mlflow import MlflowClient

    tracking_uri = services["env"].get("MLFLOW_TRACKING_URI") or f"sqlite:///{project}/mlflow.db"
    version = MlflowClient(tracking_uri).get_model_version(register["model"], str(register["version"]))
    assert version.run_id == register["run_id"]  # registered in the stack's MLflow server
    assert register["decision"] == "champion"  # the first version that passes the (empty) gates
    assert MlflowClient(tracking_uri).get_model_version_by_alias(register["model"], "champion").version == version.version
    env = services["env"]
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])

    def keys(bucket: str, prefix: str = "") -> list[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    remote_prefix = services["remote"].split("/", 3)[3]
    assert len(keys(env["MOEPIPE_DVC_BUCKET"], remote_prefix)) > 50  # images, arrays and models pushed
    artifacts = keys(env["MOEPIPE_MLFLOW_BUCKET"])
    assert any(register["run_id"] in key for key in artifacts)  # the run's pictures and model card
    assert any(key.endswith("generator.pt") for key in artifacts)  # the logged model's weights
    assert "![sample grid](data:image/png;base64," in summary
    assert json.loads(dvc(project, "status", "--cloud", "--json") or "{}") == {}  # all pushed

    second = pipeline(repo=str(project), retry_delay_s=0)
    assert {outcomes(second)[name] for name in stages} == {"fresh"}, outcomes(second)


def test_bad_params_stop_the_run_at_their_stage_without_retrying(built):
    from flows.dvc_stages import PermanentFailure
    from flows.pipeline import pipeline

    params = built / "params.yaml"
    good = params.read_text()
    bad = yaml.safe_load(good)
    bad["train"]["beta1"] = 2  # a train key dvc.yaml tracks (Adam's beta1 must be < 1)
    params.write_text(yaml.safe_dump(bad, sort_keys=False))
    try:
        state = pipeline(repo=str(built), pull=False, push=False, retry_delay_s=0, return_state=True)
        with pytest.raises(PermanentFailure, match="train.beta1"):
            state.result()
        summary = summary_of(state)
    finally:
        params.write_text(good)
    assert "failed at `train`" in summary and "moepipe: error: " in summary and "not retried" in summary
    assert "| scrape | skipped (fresh) |" in summary  # its params section did not change
    assert "| train | **failed** | " in summary and " | 1 | " in summary.split("| train |")[1].splitlines()[0]
    assert "| evaluate | not run |" in summary


def test_incremental_scrape_of_the_fixed_source_finds_nothing_new(built):
    from flows.scrape import scrape

    result = scrape(repo=str(built), retry_delay_s=0)
    assert result["new_posts"] == 0 and result["posts_before"] > 0
    assert "scrape" not in dvc(built, "status", "scrape")  # same data/raw: nothing to rebuild


def wait_for_scheduled_run(client, deployment_id, timeout_s: float = 300.0):
    """A run of the deployment, created by Prefect's scheduler, in a final state (the first to get
    there: a run whose slot passed while nobody polled may be skipped for the next one)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout_s
    while True:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        final = [run for run in runs if run.state is not None and run.state.is_final()]
        if final:
            return min(final, key=lambda run: run.expected_start_time)
        states = [(str(run.expected_start_time), run.state.name if run.state else None) for run in runs]
        assert time.monotonic() < deadline, f"no scheduled run of the deployment finished: {states}"
        time.sleep(2)


def test_prefect_deploy_all_registers_the_deployments_and_a_worker_runs_one(built, services):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    env = {**os.environ, **services["env"], "MOEPIPE_REPO": str(built)}
    prefect = str(Path(sys.executable).parent / "prefect")
    run([prefect, "--no-prompt", "deploy", "--all"], built, env)
    with get_client(sync_client=True) as client:
        deployments = {deployment.name: deployment for deployment in client.read_deployments()}
        retrain, scrape = deployments["nightly-retrain"], deployments["incremental-scrape"]
        try:
            assert retrain.entrypoint == "flows/pipeline.py:pipeline"
            assert scrape.entrypoint == "flows/scrape.py:scrape"
            assert retrain.work_pool_name == scrape.work_pool_name == "moepipe-process"
            assert [(s.schedule.cron, s.schedule.timezone) for s in retrain.schedules] == [("0 3 * * *", "UTC")]
            assert scrape.schedules[0].schedule.cron == "30 */6 * * *"
            step = {"prefect.deployments.steps.set_working_directory": {"directory": str(built)}}
            assert retrain.pull_steps == scrape.pull_steps == [step]
            assert {"repo", "params", "stages", "pull", "push", "remote", "train_on"} <= set(
                retrain.parameter_openapi_schema["properties"])

            # A short interval schedule: Prefect's scheduler creates the run, and the stack's process
            # worker runs it in the checkout the pull step enters, within a bounded time.
            # Every 60 s, anchored so the first run falls due ~5 s from now and the next one long
            # after this test has paused the deployment (pausing deletes runs not yet started).
            from datetime import datetime, timedelta

            from prefect.client.schemas.schedules import IntervalSchedule

            anchor = datetime.now(UTC) - timedelta(seconds=55)
            schedule = IntervalSchedule(interval=timedelta(seconds=60), anchor_date=anchor)
            client.create_deployment_schedules(scrape.id, [(schedule, True)])
            flow_run = wait_for_scheduled_run(client, scrape.id)
            assert flow_run.auto_scheduled  # made by the scheduler, not by this test
            client.pause_deployment(scrape.id)
            assert flow_run.state.is_completed(), flow_run.state
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
                key=ArtifactFilterKey(any_=["moepipe-scrape-summary"])))
            assert "**0 new posts**" in artifacts[0].data
        finally:  # leave a shared Prefect server without schedules that would start runs later
            for deployment in (retrain, scrape):
                client.delete_deployment(deployment.id)


# -- the registry follows the store --------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fresh_mlflow(tmp_path) -> Iterator[str]:
    """An MLflow tracking server that has never seen this project: its own SQLite backend and
    artifact folder, on a free loopback port; stopped afterwards."""
    from moepipe.stack.health import probe_mlflow
    from moepipe.stack.process import is_running, launch, stop
    from moepipe.stack.service import python_module, service_env

    url = f"http://127.0.0.1:{free_port()}"
    argv = python_module("mlflow") + [
        "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--serve-artifacts",
        "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--host", "127.0.0.1",
        "--port", url.rsplit(":", 1)[1], "--workers", "1"]
    env = service_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                       "DO_NOT_TRACK": "true"})
    log = tmp_path / "mlflow.log"
    record = launch("fresh-mlflow", argv, env, log, tmp_path, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while (reason := probe_mlflow(url)) is not None:
            assert is_running(record) and time.monotonic() < deadline, f"{reason}:\n{log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield url
    finally:
        stop(record)


def test_a_store_lacking_the_generator_gets_it_although_dvc_finds_register_fresh(built, fresh_mlflow, monkeypatch):
    """As `make repro` then the stack: the project is up to date in its embedded store; the flow
    against a fresh MLflow server finds every stage fresh, and registers into the server anyway."""
    from mlflow import MlflowClient

    from flows.pipeline import pipeline
    from moepipe.registry.register import sha256_file

    def champion_sha256(uri: str) -> str:
        version = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("moe-generator", "champion")
        return version.tags["moepipe.generator_sha256"]

    began = time.monotonic()
    # The checkout's embedded store (sqlite:///mlflow.db): whatever earlier tests left stale runs, and
    # register runs either as stale or because this new store lacks the generator. The flow runs with
    # this test's working directory, not the checkout's: the store is found relative to the stage.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert outcomes(pipeline(repo=str(built), pull=False, push=False, retry_delay_s=0))["register"] == "ran"
    generator = sha256_file(built / "models/generator.pt")
    assert champion_sha256(f"sqlite:///{built / 'mlflow.db'}") == generator
    embedded = time.monotonic()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_mlflow)  # for the flow and the stage commands it starts
    state = pipeline(repo=str(built), pull=False, push=False, retry_delay_s=0, return_state=True)
    steps = [(step["step"], step["outcome"]) for step in state.result()["steps"]]
    assert {outcome for _, outcome in steps[:-2]} == {"fresh"}  # DVC: nothing to do
    assert steps[-3:] == [("register", "fresh"), ("registry check", "ran"), ("register", "ran")]
    summary = summary_of(state)
    assert "| registry check | ran |" in summary and f"{fresh_mlflow} lacks this generator" in summary
    assert f"registered into {fresh_mlflow}: the store lacked this generator" in summary

    assert champion_sha256(fresh_mlflow) == generator
    champion = MlflowClient(fresh_mlflow).get_model_version_by_alias("moe-generator", "champion")
    assert json.loads((built / "reports/register.json").read_text())["version"] == int(champion.version)
    assert json.loads(dvc(built, "status", "--json") or "{}") == {}  # dvc.lock records the forced run
    print(f"\nup to date in the embedded store in {embedded - began:.1f} s; "
          f"registered into a fresh MLflow server in {time.monotonic() - embedded:.1f} s")


# -- nightly-retrain through the worker, train through a second deployment -----------------------
TRAIN_POOL = "moepipe-e2e-train"
TRAIN_DEPLOYMENT = "train-cpu"


def commented_deployment(text: str, name: str) -> dict:
    """The deployment that prefect.yaml describes in comments (`# - name: NAME` and the commented
    lines under it), uncommented and parsed."""
    lines = text.splitlines()
    start = next(number for number, line in enumerate(lines) if line.strip() == f"# - name: {name}")
    margin = lines[start][:lines[start].index("#")]
    block = []
    for line in lines[start:]:
        if not line.startswith(margin + "# "):
            break
        block.append(margin + line[len(margin) + 2:])
    return yaml.safe_load("\n".join(block))[0]


@contextlib.contextmanager
def process_worker(pool: str, repo: Path, services: dict, state: Path) -> Iterator[None]:
    """A second process worker on POOL, as on another machine: its own PREFECT_HOME, and
    MOEPIPE_REPO naming its own checkout REPO; stopped (with its flow runs) afterwards."""
    from moepipe.stack.prefect_server import workers
    from moepipe.stack.process import is_running, launch, stop
    from moepipe.stack.service import python_module, service_env

    name = f"{pool}-worker"
    (state / "prefect-home").mkdir(parents=True, exist_ok=True)
    env = service_env({**services["env"], "PREFECT_HOME": str(state / "prefect-home"), "MOEPIPE_REPO": str(repo),
                       "PREFECT_WORKER_QUERY_SECONDS": "2"})
    argv = python_module("prefect") + ["worker", "start", "--pool", pool, "--type", "process", "--name", name,
                                       "--install-policy", "never"]
    log = state / "worker.log"
    record = launch(name, argv, env, log, state, cwd=repo)
    try:
        deadline = time.monotonic() + 90
        while not any(worker["name"] == name and worker["status"] == "ONLINE"
                      for worker in workers(services["env"]["PREFECT_API_URL"], pool)):
            assert is_running(record) and time.monotonic() < deadline, f"worker not online:\n{log.read_text()[-2000:]}"
            time.sleep(1)
        yield
    finally:
        stop(record)


def wait_for_run_to_start(client, deployment_id, timeout_s: float = 180.0):
    """The first run of the deployment that the scheduler created and a worker has taken up."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout_s
    while True:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        started = [run for run in runs if run.state is not None and not run.state.is_scheduled()]
        if started:
            return min(started, key=lambda run: run.expected_start_time)
        states = [(str(run.expected_start_time), run.state.name if run.state else None) for run in runs]
        assert time.monotonic() < deadline, f"no scheduled run of the deployment started: {states}"
        time.sleep(1)


def wait_for_final_state(client, flow_run_id, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        flow_run = client.read_flow_run(flow_run_id)
        if flow_run.state is not None and flow_run.state.is_final():
            return flow_run
        assert time.monotonic() < deadline, f"flow run {flow_run.name} still {flow_run.state.name}"
        time.sleep(2)


def test_nightly_retrain_runs_on_the_worker_and_trains_through_a_second_deployment(built, services, tmp_path):
    """The scheduler starts nightly-retrain (prefect.yaml) on the stack's worker; its train stage
    runs as a run of prefect.yaml's commented train deployment, on a second work pool served by a
    second worker with its own checkout (both CPU), and comes back through the S3 DVC remote."""
    from datetime import datetime, timedelta

    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        DeploymentFilter,
        DeploymentFilterId,
    )
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    from flows.offload import read_handback
    from moepipe.registry.register import sha256_file

    began = time.monotonic()
    # The other machine: a checkout at the same commit, sharing only the DVC remote and the Prefect API.
    other = tmp_path / "train-host" / "moepipe"
    run(["git", "clone", "-q", str(built), str(other)], tmp_path)
    shutil.copyfile(built / ".dvc/config.local", other / ".dvc/config.local")
    # A train-only param changes (Adam's beta2), so train and the stages after it are stale.
    params = yaml.safe_load((built / "params.yaml").read_text())
    params["train"]["beta2"] = 0.99
    retrain_params = tmp_path / "retrain-params.yaml"
    retrain_params.write_text(yaml.safe_dump(params, sort_keys=False))

    text = (built / "prefect.yaml").read_text()
    config = yaml.safe_load(text)
    nightly = next(deployment for deployment in config["deployments"] if deployment["name"] == "nightly-retrain")
    trainer_spec = commented_deployment(text, "train-gpu")
    assert trainer_spec["entrypoint"] == "flows/offload.py:pipeline_stage"
    assert trainer_spec["parameters"] == {"stage": "train"}
    trainer_spec.update(name=TRAIN_DEPLOYMENT, work_pool={"name": TRAIN_POOL})
    target = f"pipeline-stage/{TRAIN_DEPLOYMENT}"
    nightly["parameters"] = {"train_on": target, "params": str(retrain_params), "retry_delay_s": 0}
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump({**config, "deployments": [nightly, trainer_spec]}, sort_keys=False))
    deploy = [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--prefect-file",
              str(prefect_file), "-n"]
    env = {**os.environ, **services["env"]}
    env.pop("MOEPIPE_REPO", None)

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=TRAIN_POOL, type="process",
                                               base_job_template=ProcessWorker.get_default_base_job_template()),
                                overwrite=True)
        try:
            run(deploy + ["nightly-retrain"], built, {**env, "MOEPIPE_REPO": str(built)})
            run(deploy + [TRAIN_DEPLOYMENT], built, env)  # MOEPIPE_REPO unset: the train worker's own
            retrain = client.read_deployment_by_name("pipeline/nightly-retrain")
            trainer = client.read_deployment_by_name(target)
            assert retrain.work_pool_name == "moepipe-process" and trainer.work_pool_name == TRAIN_POOL
            assert retrain.parameters == nightly["parameters"]
            assert trainer.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
                "directory": "{{ $MOEPIPE_REPO }}"}}]
            with process_worker(TRAIN_POOL, other, services, tmp_path / "train-worker"):
                # Every 30 s, the first run due ~10 s from now (a slot that passes before the scheduler
                # gets to it is skipped); paused as soon as a worker took a run up, so there is one.
                anchor = datetime.now(UTC) - timedelta(seconds=20)
                schedule = IntervalSchedule(interval=timedelta(seconds=30), anchor_date=anchor)
                client.create_deployment_schedules(retrain.id, [(schedule, True)])
                scheduled = time.monotonic()
                flow_run = wait_for_run_to_start(client, retrain.id)
                client.pause_deployment(retrain.id)
                started = time.monotonic()
                flow_run = wait_for_final_state(client, flow_run.id, timeout_s=480)
                finished = time.monotonic()
                train_runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[trainer.id])))

            assert flow_run.auto_scheduled  # made by the scheduler, not by this test
            assert flow_run.state.is_completed(), f"{flow_run.state.name}: {flow_run.state.message}"
            summaries = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]), key=ArtifactFilterKey(any_=[SUMMARY])))
            summary = summaries[0].data
            (tmp_path / "nightly-summary.md").write_text(summary)
            assert summary.startswith("# moepipe pipeline: succeeded")
            assert f"| train | ran on {target} |" in summary
            assert "| evaluate | ran |" in summary and "| register | ran |" in summary

            # The train stage ran as the one run of the second deployment, on the second pool.
            assert len(train_runs) == 1, [(r.name, r.state.name) for r in train_runs]
            train_run = train_runs[0]
            assert train_run.state.is_completed() and train_run.work_pool_name == TRAIN_POOL
            assert train_run.parameters["stage"] == "train" and train_run.parent_task_run_id is not None
            assert read_handback(train_run.id)["outcome"] == "ran"
        finally:  # leave the shared Prefect server without these deployments and the pool
            for name in ("pipeline/nightly-retrain", target):
                try:
                    client.delete_deployment(client.read_deployment_by_name(name).id)
                except ObjectNotFound:
                    pass
            client.delete_work_pool(TRAIN_POOL)

    # Trained over there (with the new beta2), pushed to S3, pulled back here.
    generator = built / "models/generator.pt"
    assert sha256_file(other / "models/generator.pt") == sha256_file(generator)
    lock = yaml.safe_load((built / "dvc.lock").read_text())["stages"]
    assert lock["train"]["params"]["params.yaml"]["train.beta2"] == 0.99
    md5 = next(out["md5"] for out in lock["train"]["outs"] if out["path"] == "models/generator.pt")
    stack_env = services["env"]
    s3 = boto3.client("s3", endpoint_url=stack_env["AWS_ENDPOINT_URL"], aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
                      region_name=stack_env["AWS_DEFAULT_REGION"])
    prefix = services["remote"].split("/", 3)[3]
    s3.head_object(Bucket=stack_env["MOEPIPE_DVC_BUCKET"], Key=f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}")

    # Registered in the stack's MLflow, and the champion alias is the one the register stage reports.
    register = json.loads((built / "reports/register.json").read_text())
    mlflow = MlflowClient(stack_env["MLFLOW_TRACKING_URI"], registry_uri=stack_env["MLFLOW_TRACKING_URI"])
    version = mlflow.get_model_version(register["model"], str(register["version"]))
    assert version.tags["moepipe.generator_sha256"] == sha256_file(generator)
    champion = mlflow.get_model_version_by_alias(register["model"], "champion")
    assert int(champion.version) == register["champion"]
    if register["decision"] == "champion":
        assert champion.version == version.version
    due = (flow_run.expected_start_time - anchor).total_seconds() - 20  # s after the schedule was made
    print(f"\nnightly-retrain: scheduled run due after ~{due:.0f} s, started {started - scheduled:.1f} s after "
          f"its schedule was made, ran {finished - started:.1f} s; whole test {time.monotonic() - began:.1f} s")
