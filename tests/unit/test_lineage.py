"""`moepipe lineage` on a two-version history: a temporary git + DVC project runs the real dvc.yaml's
scrape → curate → preprocess stages on a tiny synthetic gallery, a version is registered, an
opt-out entry is added, `dvc repro` runs again and a second version is registered. Each version
must list the posts of its own data version, read from the DVC cache (or remote) at the hash its
run recorded, whatever the working tree holds now."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from moepipe.cli import app
from moepipe.config import TrainConfig, parse_params
from moepipe.manifest import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(width=8, z_dim=16, batch_size=8, steps=2, deterministic=True, threads=1, device="cpu",
            precision="fp32", checkpoint_every=10, log_every=1, sample_every=2, sample_columns=3)


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(name, None)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def dvc_project(root: Path, uri: str) -> None:
    """The data stages of this repository's dvc.yaml (less the moepipe code deps, which the
    installed package provides) and its params.yaml, on 16 synthetic posts."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    data_stages = {}
    for name in ("scrape", "curate", "preprocess"):
        stage = dict(stages[name])
        stage["deps"] = [dep for dep in stage["deps"] if not str(dep).startswith("moepipe")]
        data_stages[name] = stage
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": data_stages}, sort_keys=False))
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["scrape"]["sources"] = [{"kind": "synthetic", "limit": 16, "seed": 3}]  # with dirt: curate rejects some
    params["curate"].update(output_size=64, workers=1, contact_sheet_max=4)
    params["preprocess"].update(resolution=16, val_fraction=0.25)
    params["register"].update(tracking_uri=uri, artifact_location=str(root / "mlartifacts"))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copyfile(ROOT / "exclude.txt", root / "exclude.txt")
    run(["git", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)


def register_version(root: Path, uri: str, generator: Path, trained: Path, fd: float) -> dict:
    from moepipe.registry.register import register

    params = parse_params(yaml.safe_load((root / "params.yaml").read_text()))
    metrics = generator.with_suffix(".json")
    metrics.write_text(json.dumps({"fd": fd, "precision": 0.6, "recall": 0.5}))
    return register(params.registry, uri, generator=generator, metrics_json=metrics,
                    evaluate_dir=trained / "reports/evaluate", train_reports=trained / "reports/train",
                    dvc_lock=root / "dvc.lock", data_reports=root / "reports",
                    curated_manifest=root / "data/curated/manifest.jsonl", params=params,
                    out_report=generator.with_suffix(".register.json"))


@pytest.fixture(scope="module")
def history(prepared16: Path, tmp_path_factory: pytest.TempPathFactory):
    """(project root, tracking URI, {version: (its curated posts, its generator file)}, the opted-out post)."""
    import mlflow

    from moepipe.train.loop import train

    root = tmp_path_factory.mktemp("project")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    trained = tmp_path_factory.mktemp("trained")
    train(TrainConfig(**TINY), 0, prepared16, trained / "models", reports=trained / "reports/train",
          echo=lambda _: None)
    (trained / "reports/evaluate").mkdir(parents=True)
    dvc_project(root, uri)

    def posts() -> set[tuple[str, str]]:
        return {(r["source"], str(r["post_id"])) for r in read_jsonl(root / "data/curated/manifest.jsonl")}

    def generator(step: int) -> Path:
        payload = torch.load(trained / "models/generator.pt", weights_only=True)
        payload["step"] = step  # another file, another sha256
        path = trained / f"generator-{step}.pt"
        torch.save(payload, path)
        return path

    versions = {}
    run([sys.executable, "-m", "dvc", "repro", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "data v1"], root)
    versions[1] = (posts(), generator(1))
    assert register_version(root, uri, versions[1][1], trained, fd=10.0)["version"] == 1

    opted_out = sorted(versions[1][0])[2]
    with open(root / "exclude.txt", "a", encoding="utf-8") as handle:
        handle.write(f"post:{opted_out[0]}:{opted_out[1]}  # asked to be left out\n")
    output = run([sys.executable, "-m", "dvc", "repro"], root)
    assert "Running stage 'scrape'" in output and "Running stage 'curate'" in output  # exclude.txt is a dep
    assert json.loads((root / "data/raw/report.json").read_text())["excluded"] == 1
    run(["git", "commit", "-qam", "data v2: one opt-out"], root)
    versions[2] = (posts(), generator(2))
    assert register_version(root, uri, versions[2][1], trained, fd=8.0)["version"] == 2
    yield root, uri, versions, opted_out
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def lineage(root: Path, uri: str, *args: str, repo: Path | None = None):
    runner = CliRunner()
    params = root / "params.yaml"
    return runner.invoke(app, ["lineage", *args, "--params", str(params), "--repo", str(repo or root)],
                         env={"MLFLOW_TRACKING_URI": uri})


def chain(root: Path, uri: str, target: str, repo: Path | None = None) -> dict:
    result = lineage(root, uri, target, "--json", "--limit", "0", repo=repo)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_each_version_lists_the_posts_of_its_own_data_version(history) -> None:
    root, uri, versions, opted_out = history
    first, second = chain(root, uri, "models:/moe-generator/1"), chain(root, uri, "models:/moe-generator/2")
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    curated_now = next(out["md5"] for out in lock["stages"]["curate"]["outs"] if out["path"] == "data/curated")
    assert second["data"]["data/curated"] == curated_now != first["data"]["data/curated"]
    assert set(first["data"]) == {"data/raw", "data/curated", "data/prepared"}
    for number, found in ((1, first), (2, second)):
        posts = found["posts"]
        assert {(row["source"], row["post_id"]) for row in posts["rows"]} == versions[number][0]
        assert posts["total"] == len(versions[number][0]) == sum(posts["by_split"].values())
        assert posts["manifest"] == f"data/curated@{found['data']['data/curated']}/manifest.jsonl"
        assert found["model"] == {"name": "moe-generator", "version": number,
                                  "aliases": ["champion"] if number == 2 else []}
        assert found["run"]["git_commit"] and len(found["run"]["generator_sha256"]) == 64
    assert opted_out in {(row["source"], row["post_id"]) for row in first["posts"]["rows"]}
    assert opted_out not in {(row["source"], row["post_id"]) for row in second["posts"]["rows"]}
    row = first["posts"]["rows"][0]
    assert set(row) == {"source", "post_id", "split", "rating", "artists", "license", "url", "source_url"}
    assert row["rating"] == "general" and row["split"] in ("train", "val")


def test_a_png_a_generator_file_and_an_alias_lead_to_their_version(history, tmp_path: Path) -> None:
    root, uri, versions, _ = history
    drawn = tmp_path / "avatar.png"
    made = CliRunner().invoke(app, ["generate", "--model", "models:/moe-generator/2", "--n", "1", "--out", str(drawn),
                                    "--params", str(root / "params.yaml")], env={"MLFLOW_TRACKING_URI": uri})
    assert made.exit_code == 0, made.output
    by_png = chain(root, uri, str(drawn))
    assert (by_png["model"]["version"], by_png["found_by"]) == (2, "PNG text")
    by_file = chain(root, uri, str(versions[2][1]))
    assert (by_file["model"], by_file["found_by"]) == ({"name": "moe-generator", "version": 2, "aliases": ["champion"]},
                                                       "generator sha256")
    assert chain(root, uri, str(versions[1][1]))["model"]["version"] == 1
    by_alias = chain(root, uri, "models:/moe-generator@champion")
    assert (by_alias["model"]["version"], by_alias["found_by"]) == (2, "alias champion")


def test_the_text_chain_and_its_limit(history) -> None:
    root, uri, versions, _ = history
    result = lineage(root, uri, "models:/moe-generator/1", "--limit", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    total = len(versions[1][0])
    assert lines[0] == "models:/moe-generator/1  [found by model URI]"
    assert lines[1] == "model    moe-generator v1"
    assert any(line.startswith("posts    " + f"{total} in data/curated@") for line in lines)
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["source", "post_id", "split"])
    assert len(lines[header + 1:header + 4]) == 3 and lines[header + 1].split()[0] == "synthetic"
    assert lines[-1] == f"  … {total - 3} more (--limit 0 lists all)"


def test_a_version_whose_data_left_the_cache_comes_from_the_remote_or_fails_in_one_line(history,
                                                                                       tmp_path: Path) -> None:
    root, uri, _, _ = history
    copy = tmp_path / "project"
    shutil.copytree(root, copy, symlinks=True)
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], copy)
    run([sys.executable, "-m", "dvc", "push", "-q"], copy)  # today's outputs: version 2's data
    shutil.rmtree(copy / ".dvc/cache")
    second = chain(root, uri, "models:/moe-generator/2", repo=copy)
    assert second["posts"]["total"] > 0
    assert list((copy / ".dvc/cache/files/md5").rglob("*.dir"))  # what was read is cached, as dvc fetch would
    first = lineage(root, uri, "models:/moe-generator/1", repo=copy)
    missing = chain(root, uri, "models:/moe-generator/1")["data"]["data/curated"]
    assert first.exit_code == 1 and first.stdout == ""
    assert first.stderr.count("\n") == 1 and f"data/curated (DVC md5 {missing}) is not in the DVC cache" in first.stderr
    assert "dvc pull" in first.stderr


@pytest.mark.parametrize(("target", "message"), [
    ("models:/moe-generator/9", "models:/moe-generator/9: no version 9 of registered model 'moe-generator'"),
    ("models:/moe-generator@nobody", "registered model 'moe-generator' has no alias 'nobody'"),
    ("no-such-file.pt", "no-such-file.pt: neither a file nor a model URI"),
])
def test_targets_that_name_no_version_are_one_line(history, target: str, message: str) -> None:
    root, uri, _, _ = history
    result = lineage(root, uri, target)
    assert result.exit_code == 1 and message in result.stderr and result.stderr.count("\n") == 1


def test_unregistered_files_and_unsigned_pngs_are_one_line(history, tmp_path: Path) -> None:
    from PIL import Image

    root, uri, versions, _ = history
    stranger = tmp_path / "generator.pt"
    stranger.write_bytes(versions[1][1].read_bytes() + b"\0")
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    assert "no registered version has generator sha256" in lineage(root, uri, str(stranger)).stderr
    assert "the PNG names no registered model version" in lineage(root, uri, str(plain)).stderr


def test_the_data_hashes_a_run_carries_are_the_producing_stages(tmp_path: Path) -> None:
    from moepipe.registry.register import dvc_hashes

    # While `dvc repro` runs register, its own lock entry (last) still lists the previous run's inputs.
    lock = {"schema": "2.0", "stages": {
        "curate": {"outs": [{"path": "data/curated", "md5": "new.dir"}]},
        "train": {"deps": [{"path": "data/curated", "md5": "new.dir"}], "outs": [{"path": "models/generator.pt",
                                                                                  "md5": "new"}]},
        "register": {"deps": [{"path": "models/generator.pt", "md5": "old"}, {"path": "data/extra", "md5": "x"}]},
    }}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert dvc_hashes(tmp_path / "dvc.lock") == {"dvc.md5.data/curated": "new.dir", "dvc.md5.models/generator.pt": "new",
                                                "dvc.md5.data/extra": "x"}
