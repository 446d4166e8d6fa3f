"""The Prefect flows on a tiny git + DVC project of trivial stages (no training, no network).

One temporary Prefect API for the module (prefect_test_harness, PREFECT_HOME in a temp folder);
a local folder stands in for the S3 remote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from flows.dvc_stages import PermanentFailure, pipeline_stages

STAGE_SCRIPT = '''
import json, sys
from pathlib import Path
import yaml

name = sys.argv[1]
params = yaml.safe_load(Path("params.yaml").read_text())
Path("reports").mkdir(exist_ok=True)
if name == "collect":  # like moepipe scrape: keeps what it has, adds what the source offers
    Path("data/raw").mkdir(parents=True, exist_ok=True)
    manifest = Path("data/raw/manifest.jsonl")
    have = manifest.read_text().splitlines() if manifest.exists() else []
    source = Path("source.txt")
    available = int(source.read_text()) if source.exists() else params["collect"]["count"]
    new = [json.dumps({"post_id": i}) for i in range(len(have), available)]
    manifest.write_text("".join(line + "\\n" for line in have + new))
    Path("reports/collect.json").write_text(json.dumps(
        {"seen": available, "kept": len(new), "already_done": len(have), "rejected": {"dup": 1, "tiny": 0}}))
elif name == "train":
    attempts = Path("attempts.txt")
    attempts.write_text((attempts.read_text() if attempts.exists() else "") + "x")
    mode = params["train"]["mode"]
    if mode == "user_error":
        print("moepipe: error: params.yaml: train.mode: not a mode", file=sys.stderr)
        sys.exit(1)
    if mode == "flaky" and len(attempts.read_text()) <= 2:
        print("ConnectionResetError: the peer went away", file=sys.stderr)
        sys.exit(1)
    rows = len(Path("data/raw/manifest.jsonl").read_text().splitlines())
    Path("models").mkdir(exist_ok=True)
    Path("models/model.txt").write_text(f"model of {rows} posts\\n")
    Path("reports/train.json").write_text(json.dumps({"steps": 3, "rows": rows}))
elif name == "score":
    from PIL import Image
    Path("reports/evaluate").mkdir(parents=True, exist_ok=True)
    Path("reports/evaluate/metrics.json").write_text(json.dumps({"fd": 12.5, "precision": 0.75}))
    Image.new("RGB", (8, 8), (255, 128, 200)).save("reports/evaluate/samples.png")
    Path("reports/register.json").write_text(json.dumps({
        "model": "toy", "version": 1, "decision": "champion", "reasons": ["first version"],
        "primary_metric": {"name": "fd", "value": 12.5, "direction": "minimize"}, "champion": 1}))
'''

# Listed out of DAG order on purpose: the flow must take the order from DVC, not from the file.
DVC_YAML = """
stages:
  score:
    cmd: python stage.py score
    deps: [stage.py, models/model.txt]
    metrics:
      - reports/evaluate/metrics.json: {cache: false}
    plots:
      - reports/evaluate/samples.png: {cache: false}
    outs:
      - reports/register.json: {cache: false}
  collect:
    cmd: python stage.py collect
    deps: [stage.py]
    params: [collect]
    outs: [data/raw]
    metrics:
      - reports/collect.json: {cache: false}
  train:
    cmd: python stage.py train
    deps: [stage.py, data/raw]
    params: [train]
    outs: [models/model.txt]
    metrics:
      - reports/train.json: {cache: false}
"""
SUMMARY = "moepipe-pipeline-summary"


def git_env() -> dict[str, str]:
    return {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}


def sh(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, env=git_env(), capture_output=True, text=True)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def dvc(cwd: Path, *args: str) -> str:
    return sh([sys.executable, "-m", "dvc", *args], cwd)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A temporary Prefect API and PREFECT_HOME for the flows under test."""
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_LOGGING_TO_API_ENABLED,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings(updates={PREFECT_HOME: str(home), PREFECT_LOGGING_TO_API_ENABLED: False,
                                     PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        with prefect_test_harness(server_startup_timeout=60):
            yield


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Path:
    """The toy project, committed, with a local-folder DVC remote (built once, copied per test)."""
    root = tmp_path_factory.mktemp("template") / "project"
    root.mkdir()
    (root / "stage.py").write_text(STAGE_SCRIPT)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text(yaml.safe_dump({"collect": {"count": 5}, "train": {"mode": "ok"}}))
    (root / ".gitignore").write_text("attempts.txt\nsource.txt\n")
    sh(["git", "init", "-q"], root)
    dvc(root, "init", "-q")
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "toy project"], root)
    return root


@pytest.fixture
def project(template, tmp_path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(template, root, symlinks=True)
    dvc(root, "remote", "add", "--default", "store", str(tmp_path / "remote"))
    return root


def set_param(root: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def summary_of(state, key: str = SUMMARY) -> str:
    """The markdown artifact KEY of the flow run behind STATE."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            key=ArtifactFilterKey(any_=[key])))
    assert len(found) == 1, found
    assert found[0].type == "markdown"
    return found[0].data


def outcomes(result: dict) -> dict[str, str]:
    return {step["step"]: step["outcome"] for step in result["steps"]}


def attempts(root: Path) -> int:
    path = root / "attempts.txt"
    return len(path.read_text()) if path.exists() else 0


def test_stage_order_and_metrics_come_from_dvc(project):
    stages = pipeline_stages(project)
    assert [stage.name for stage in stages] == ["collect", "train", "score"]
    assert stages[0].metrics == ("reports/collect.json",)
    assert stages[2].upstream == ("train",)
    assert stages[0].cmd == "python stage.py collect"


def test_summary_marks_results_of_stages_that_did_not_complete(project):
    from flows.report import StepRecord, staleness

    stages = {stage.name: stage for stage in pipeline_stages(project)}
    failed = [StepRecord("collect", "fresh"), StepRecord("train", "failed"), StepRecord("score", "not run")]
    assert "earlier run" in staleness("reports/evaluate/metrics.json", failed, stages)
    assert staleness("reports/collect.json", failed, stages) == ""
    assert staleness("data/raw/manifest.jsonl", failed, stages) == ""  # inside an output folder
    assert staleness("reports/undeclared.json", failed, stages) == ""  # no stage claims it
    offloaded = [StepRecord("score", "ran on pipeline-stage/gpu")]
    assert staleness("reports/evaluate/metrics.json", offloaded, stages) == ""


def test_pipeline_runs_every_stage_then_reports_fresh_ones_as_skipped(prefect_api, project):
    from flows.pipeline import pipeline

    first = pipeline(repo=str(project), retry_delay_s=0)
    assert list(outcomes(first)) == ["dvc pull", "collect", "train", "score", "dvc push"]
    assert set(outcomes(first).values()) == {"ran"}
    assert (project / "models/model.txt").read_text() == "model of 5 posts\n"
    assert "train:" in (project / "dvc.lock").read_text()  # DVC recorded the lineage
    assert any((project.parent / "remote").rglob("*")), "dvc push sent nothing to the remote"

    state = pipeline(repo=str(project), retry_delay_s=0, return_state=True)
    second = state.result()
    assert [outcomes(second)[name] for name in ("collect", "train", "score")] == ["fresh"] * 3
    summary = summary_of(state)
    assert summary.startswith("# moepipe pipeline: succeeded")
    assert "| collect | skipped (fresh) |" in summary
    assert "seen 5 · kept 5 · already_done 0 · rejected: dup 1" in summary  # counts from its metrics file
    assert "| fd | 12.5 |" in summary and "| precision | 0.75 |" in summary
    assert "**toy v1 → champion** — fd 12.5 (minimize); champion now v1" in summary
    assert "- first version" in summary
    assert "![sample grid](data:image/png;base64," in summary
    assert "Everything is up to date." in summary  # dvc pull found nothing missing

    (project / "more-posts.yaml").write_text(yaml.safe_dump({"collect": {"count": 7}, "train": {"mode": "ok"}}))
    third = pipeline(repo=str(project), params="more-posts.yaml", stages=["collect"], pull=False, push=False)
    assert outcomes(third) == {"collect": "ran"}  # only the named stage; no pull, no push
    assert yaml.safe_load((project / "params.yaml").read_text())["collect"]["count"] == 7
    assert len((project / "data/raw/manifest.jsonl").read_text().splitlines()) == 7


def test_a_stage_refusing_its_params_fails_at_once_with_a_summary(prefect_api, project):
    from flows.pipeline import pipeline

    set_param(project, "train", "mode", "user_error")
    state = pipeline(repo=str(project), pull=False, push=False, retries={"train": 3}, retry_delay_s=0,
                     return_state=True)
    assert state.is_failed()
    with pytest.raises(PermanentFailure, match="train.mode: not a mode"):
        state.result()
    assert attempts(project) == 1  # not retried
    summary = summary_of(state)
    assert summary.startswith("# moepipe pipeline: failed at `train`")
    assert "> **`train` failed:** moepipe: error: params.yaml: train.mode: not a mode" in summary
    assert "not retried" in summary
    assert "| train | **failed** |" in summary and "| score | not run |" in summary
    assert "| collect | ran |" in summary


def test_a_transient_failure_is_retried(prefect_api, project):
    from flows.pipeline import pipeline

    set_param(project, "train", "mode", "flaky")
    result = pipeline(repo=str(project), pull=False, push=False, retries={"train": 2}, retry_delay_s=0)
    assert attempts(project) == 3
    train = next(step for step in result["steps"] if step["step"] == "train")
    assert train["outcome"] == "ran" and train["attempts"] == 3


def test_a_transient_failure_that_persists_reports_its_last_stderr_line(prefect_api, project):
    from flows.dvc_stages import StepFailed
    from flows.pipeline import pipeline

    set_param(project, "train", "mode", "flaky")
    state = pipeline(repo=str(project), pull=False, push=False, retries={"train": 1}, retry_delay_s=0,
                     return_state=True)
    with pytest.raises(StepFailed):
        state.result()
    assert attempts(project) == 2
    summary = summary_of(state)
    assert "last stderr line: `ConnectionResetError: the peer went away`" in summary
    assert "retries were exhausted" in summary


def test_unknown_stage_or_missing_remote_fails_before_any_work(prefect_api, project):
    from flows.pipeline import pipeline

    state = pipeline(repo=str(project), stages=["nope"], return_state=True)
    with pytest.raises(PermanentFailure, match="no stage named 'nope'.*collect, train, score"):
        state.result()
    assert "failed at `pipeline`" in summary_of(state)

    dvc(project, "remote", "remove", "store")
    state = pipeline(repo=str(project), train_on="pipeline-stage/train-gpu", return_state=True)
    with pytest.raises(PermanentFailure, match="needs a DVC remote"):
        state.result()
    assert not (project / "data").exists()  # refused before any stage ran


def test_scrape_flow_versions_new_posts_and_counts_them(prefect_api, project):
    from flows.scrape import scrape

    first = scrape(repo=str(project), stage="collect", retry_delay_s=0)
    assert (first["posts_before"], first["new_posts"]) == (0, 5)
    (project / "source.txt").write_text("8")  # the source grew by 3 posts
    state = scrape(repo=str(project), stage="collect", retry_delay_s=0, return_state=True)
    second = state.result()
    assert (second["posts_before"], second["new_posts"], second["posts_after"]) == (5, 3, 8)
    assert outcomes(second) == {"dvc pull": "ran", "collect": "ran", "dvc commit": "ran", "dvc push": "ran"}
    assert "**3 new posts** (5 → 8 in `data/raw/manifest.jsonl`)" in summary_of(state, "moepipe-scrape-summary")
    status = json.loads(dvc(project, "status", "--json", "collect"))
    assert status == {}, status  # dvc.lock records the grown data/raw
    again = scrape(repo=str(project), stage="collect", retry_delay_s=0)
    assert again["new_posts"] == 0


def test_train_on_runs_the_stage_as_another_deployment_and_brings_it_back(prefect_api, project, monkeypatch,
                                                                          tmp_path):
    import flows.offload
    from flows.offload import pipeline_stage
    from flows.pipeline import pipeline

    other = tmp_path / "gpu-checkout"
    sh(["git", "clone", "-q", str(project), str(other)], tmp_path)
    shutil.copyfile(project / ".dvc/config", other / ".dvc/config")
    calls = []

    def fake_run_deployment(name, parameters):
        calls.append((name, parameters))
        state = pipeline_stage(**parameters, repo=str(other), return_state=True)
        return SimpleNamespace(id=state.state_details.flow_run_id, name="gpu-run", state=state)

    monkeypatch.setattr(flows.offload, "run_deployment", fake_run_deployment)
    result = pipeline(repo=str(project), train_on="pipeline-stage/train-gpu", retry_delay_s=0)
    assert calls[0][0] == "pipeline-stage/train-gpu" and calls[0][1]["stage"] == "train"
    assert outcomes(result)["train"] == "ran on pipeline-stage/train-gpu"
    assert outcomes(result)["score"] == "ran"
    assert attempts(other) == 1 and attempts(project) == 0  # trained over there, not here
    assert (project / "models/model.txt").read_text() == "model of 5 posts\n"  # pulled back
    # Its lineage is in this checkout's dvc.lock (uncached outputs such as reports stay over there).
    train_lock = [yaml.safe_load((root / "dvc.lock").read_text())["stages"]["train"] for root in (project, other)]
    assert train_lock[0] == train_lock[1]
    assert "models/model.txt" not in dvc(project, "status", "train")


def test_a_fresh_register_stage_runs_again_only_when_its_store_lacks_the_generator(prefect_api, project,
                                                                                    monkeypatch):
    """DVC cannot see which MLflow store `register` wrote to; the flow asks the store (here a stand-in
    answer; tests/unit/test_registry.py asks a real one) and forces the stage only when it lacks it."""
    import flows.registration
    from flows.pipeline import pipeline
    from flows.registration import StoreCheck

    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("  score:", "  register:"))  # writes reports/register.json
    sh(["git", "commit", "-qam", "score is the register stage"], project)
    first = pipeline(repo=str(project), pull=False, push=False, retry_delay_s=0)
    assert outcomes(first)["register"] == "ran" and "registry check" not in outcomes(first)  # nothing to ask

    asked = []

    def store_holding(version):
        def store_check(root, wdir="."):
            asked.append((root, wdir))
            return StoreCheck("http://127.0.0.1:5999", "toy", version)
        return store_check

    def steps(result):
        return [(step["step"], step["outcome"], step["detail"]) for step in result["steps"]]

    report = project / "reports/register.json"
    written = report.stat().st_mtime_ns
    monkeypatch.setattr(flows.registration, "store_check", store_holding(1))
    held = pipeline(repo=str(project), pull=False, push=False, retry_delay_s=0)
    assert steps(held)[-2:] == [("register", "fresh", ""),
                                ("registry check", "ran", "http://127.0.0.1:5999 holds it as toy v1")]
    assert asked == [(project, ".")] and report.stat().st_mtime_ns == written  # not registered again

    monkeypatch.setattr(flows.registration, "store_check", store_holding(None))
    state = pipeline(repo=str(project), pull=False, push=False, retry_delay_s=0, return_state=True)
    reason = "registered into http://127.0.0.1:5999: the store lacked this generator"
    assert steps(state.result())[-3:] == [("register", "fresh", ""),
                                          ("registry check", "ran", "http://127.0.0.1:5999 lacks this generator"),
                                          ("register", "ran", reason)]
    assert report.stat().st_mtime_ns != written  # the stage ran again
    summary = summary_of(state)
    assert summary.startswith("# moepipe pipeline: succeeded") and "| register | ran | " in summary
    assert reason in summary
    assert json.loads(dvc(project, "status", "--json")) == {}  # dvc.lock records the forced run
