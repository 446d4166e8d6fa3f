"""`dvc repro` on a copy of this repository with tiny params: the DAG's promises."""

import json
import sys

import pytest
import yaml

from tests.support.dvcproject import copy_project, run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git repository holding the tracked files of this one, with a small synthetic gallery."""
    dest = tmp_path_factory.mktemp("project")
    return dest, copy_project(dest)


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
