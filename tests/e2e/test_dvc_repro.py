"""`dvc repro` on a copy of this repository with tiny params: the DAG's promises."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git repository holding the tracked files of this one, with a small synthetic gallery."""
    dest = tmp_path_factory.mktemp("project")
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if name.startswith(("tests/", "bench/", "docs/")) or not (ROOT / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["scrape"]["sources"][0]["limit"] = 80
    params["preprocess"]["resolution"] = 32
    params["train"].update(steps=6, width=8, z_dim=16, batch_size=8, checkpoint_every=3, sample_every=3)
    params["evaluate"].update(samples=16, batch_size=16, kid_subsets=4, control_samples=1, grid_columns=4,
                              interpolation_steps=3, classifier={"epochs": 1, "batch_size": 8})
    params["register"]["gates"] = {}  # a 6-step generator passes no quality gate
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / "dvc.lock").unlink(missing_ok=True)
    clean = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env = {**clean, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MOEPIPE_QUIET": "1", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    run(["git", "init", "-q"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", "copy"], dest, env)
    return dest, env


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_repro_builds_then_is_a_no_op_then_reruns_only_preprocess(project):
    dest, env = project
    first = run([sys.executable, "-m", "dvc", "repro"], dest, env)
    model_stages = ["train", "classifier", "directions", "evaluate", "register"]
    assert ran_stages(first)[:3] == ["scrape", "curate", "preprocess"]
    assert sorted(ran_stages(first)[3:]) == sorted(model_stages) and ran_stages(first)[-1] == "register"
    for name in ("data/raw/manifest.jsonl", "data/curated/manifest.jsonl", "data/prepared/train_images.npy",
                 "reports/scrape.json", "reports/curate.json", "reports/preprocess.json",
                 "models/generator.pt", "reports/train/metrics.csv", "reports/train/samples/latest.png",
                 "models/classifier.pt", "models/directions.npz", "reports/evaluate/metrics.json",
                 "reports/evaluate/sweep.png", "reports/register.json", "mlflow.db"):
        assert (dest / name).is_file(), name
    registered = json.loads((dest / "reports/register.json").read_text())
    assert (registered["version"], registered["decision"]) == (1, "champion")  # in the embedded store

    second = run([sys.executable, "-m", "dvc", "repro"], dest, env)
    assert ran_stages(second) == []
    assert "Data and pipelines are up to date" in second

    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["preprocess"]["resolution"] = 16
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run([sys.executable, "-m", "dvc", "repro", "preprocess"], dest, env)
    assert ran_stages(third) == ["preprocess"]  # scrape and curate are not touched
    import numpy as np

    assert np.load(dest / "data/prepared/train_images.npy", mmap_mode="r").shape[1:] == (16, 16, 3)
    fourth = run([sys.executable, "-m", "dvc", "repro"], dest, env)
    assert sorted(ran_stages(fourth)) == sorted(model_stages)  # the model (and its scores) follow the new data
    assert json.loads((dest / "reports/register.json").read_text())["version"] == 2
    metrics = run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], dest, env)
    assert "reports/curate.json" in metrics
    plots = run([sys.executable, "-m", "dvc", "plots", "show", "-o", "plots_html"], dest, env)
    assert (dest / "plots_html" / "index.html").is_file(), plots
