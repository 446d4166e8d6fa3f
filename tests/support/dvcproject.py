"""A copy of this repository on which `dvc repro` runs the whole DAG with tiny params (about a
minute on 2 cores), for the e2e tests of the pipeline (tests/e2e/test_dvc_repro.py,
tests/e2e/test_determinism.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a command; fail the test with its output when it exits non-zero. Returns stdout + stderr."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def project_env() -> dict[str, str]:
    """The environment for `dvc repro` in a copy: this venv's `moepipe` on PATH, the embedded
    MLflow store (not one the caller's shell names), and a fixed git author and date, so that two
    copies of the same files get the same commit id, as two clones of one commit do."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    return {**clean, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MOEPIPE_QUIET": "1", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
            "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z"}


def tiny_params(params: dict) -> dict:
    """params.yaml shrunk so that the whole DAG runs in about a minute on 2 CPU cores."""
    params["scrape"]["sources"][0]["limit"] = 80
    params["preprocess"]["resolution"] = 32
    params["train"].update(steps=6, width=8, z_dim=16, batch_size=8, checkpoint_every=3, sample_every=3)
    params["evaluate"].update(samples=16, batch_size=16, kid_subsets=4, control_samples=1, grid_columns=4,
                              interpolation_steps=3, classifier={"epochs": 1, "batch_size": 8})
    params["register"]["gates"] = {}  # a 6-step generator passes no quality gate
    return params


def copy_project(dest: Path) -> dict[str, str]:
    """Make dest a git repository of this one's working tree (tracked and untracked, not ignored
    files; not tests/, bench/, docs/) with tiny params and no dvc.lock, in one commit.
    Returns the environment to run `dvc` in it with (project_env)."""
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if name.startswith(("tests/", "bench/", "docs/")) or not (ROOT / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    params = tiny_params(yaml.safe_load((dest / "params.yaml").read_text()))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / "dvc.lock").unlink(missing_ok=True)
    env = project_env()
    run(["git", "init", "-q"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", "copy"], dest, env)
    return env
