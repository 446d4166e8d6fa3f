"""The register stage's promises: lineage in one run, champion only if better, idempotent, race-safe,
and a pyfunc model that draws signed PNGs (embedded sqlite store under tmp_path, tiny generator)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from moepipe.config import TrainConfig, parse_params
from moepipe.errors import UserError
from moepipe.registry.promotion import decide
from moepipe.train.loop import train
from tests.support.studio import variant

TINY = dict(width=8, z_dim=16, batch_size=8, steps=2, deterministic=True, threads=1, device="cpu",
            precision="fp32", checkpoint_every=10, log_every=1, sample_every=2, sample_columns=3)


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(prepared16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step conditional DCGAN with its training reports, evaluate pictures and data reports."""
    root = tmp_path_factory.mktemp("trained")
    train(TrainConfig(**TINY), 0, prepared16, root / "models", reports=root / "reports/train", echo=lambda _: None)
    (root / "reports/evaluate").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 120, 160)).save(root / "reports/evaluate/samples.png")
    (root / "reports/curate.json").write_text(json.dumps({"input": 5, "kept": 3, "rejected": {"duplicate": 2}}))
    rows = [{"source": "synthetic", "rating": "general"}] * 2 + [{"source": "danbooru", "rating": "sensitive"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  preprocess:\n    outs:\n    - path: data/prepared\n      hash: md5\n"
        "      md5: 0123456789abcdef0123456789abcdef.dir\n")
    return root


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite file with the schema already created (copied per test: migrations are slow)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(tracking URI, artifact folder) of a fresh store; MLflow's global URIs are reset afterwards."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    yield f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlartifacts"
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def run_register(store, trained: Path, generator: Path, metrics: dict, **register_params):
    from moepipe.registry.register import register

    uri, artifacts = store
    folder = generator.parent
    metrics_json = folder / f"{generator.stem}-metrics.json"
    metrics_json.write_text(json.dumps(metrics))
    params = parse_params({"register": {"artifact_location": str(artifacts), **register_params}})
    return register(params.registry, uri, generator=generator, metrics_json=metrics_json,
                    evaluate_dir=trained / "reports/evaluate", train_reports=trained / "reports/train",
                    dvc_lock=trained / "dvc.lock", data_reports=trained / "reports",
                    curated_manifest=trained / "manifest.jsonl", params=params,
                    out_report=folder / f"{generator.stem}-register.json")


def client_of(store):
    from mlflow import MlflowClient

    return MlflowClient(store[0], registry_uri=store[0])


def alias_version(store, alias: str, name: str = "moe-generator") -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client_of(store).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


GOOD = {"precision": 0.6, "recall": 0.5, "kid": 0.01}


# -- the rules, without a store ----------------------------------------------------------------
def test_decide_rules_in_both_directions() -> None:
    cfg = parse_params({"register": {"min_improvement": 0.5, "gates": {"precision": {"min": 0.3}}}}).registry
    champion = (2, {"fd": 10.0, "precision": 0.5})
    assert decide(cfg, {"fd": 9.4, "precision": 0.4}, champion).decision == "champion"
    equal = decide(cfg, {"fd": 9.5, "precision": 0.4}, champion)
    assert (equal.decision, equal.reasons) == ("challenger", ["fd 9.5 not < 10 - 0.5 (champion v2)"])
    gated = decide(cfg, {"fd": 1.0, "precision": 0.1}, champion)
    assert (gated.decision, gated.reasons) == ("challenger", ["gate precision: 0.1 < min 0.3"])
    assert decide(cfg, {"fd": 12.0, "precision": 0.4}, None).reasons == ["first version passing the gates"]
    assert decide(cfg, {"precision": 0.4}, champion).reasons[0] == "no finite fd"
    maximize = parse_params({"register": {"primary_metric": "recall", "direction": "maximize",
                                          "gates": {"kid": {"max": 0.1}}}}).registry
    assert decide(maximize, {"recall": 0.6, "kid": 0.05}, (1, {"recall": 0.5, "kid": 0.0})).decision == "champion"
    assert decide(maximize, {"recall": 0.9, "kid": 0.2}, None).reasons == ["gate kid: 0.2 > max 0.1"]


# -- registration ------------------------------------------------------------------------------
def test_champion_only_when_better_and_every_decision_is_recorded(store, trained: Path, tmp_path: Path) -> None:
    def step(n: int, fd: float, **extra):
        return run_register(store, trained, variant(trained, tmp_path, n), {"fd": fd, **GOOD, **extra},
                            min_improvement=0.5, gates={"precision": {"min": 0.3}})

    first = step(1, 10.0)
    assert (first["version"], first["decision"], first["reasons"]) == (1, "champion", ["first version passing the gates"])
    worse = step(2, 12.0)
    assert (worse["decision"], worse["reasons"]) == ("challenger", ["fd 12 not < 10 - 0.5 (champion v1)"])
    better = step(3, 8.0)
    assert (better["decision"], better["reasons"]) == ("champion", ["fd 8 < 10 - 0.5 (champion v1)"])
    assert better["previous_champion"] == {"version": 1, "value": 10.0}
    within = step(4, 7.5)  # exactly min_improvement better: not enough
    assert (within["decision"], within["reasons"]) == ("challenger", ["fd 7.5 not < 8 - 0.5 (champion v3)"])
    gated = step(5, 1.0, precision=0.1)
    assert (gated["decision"], gated["reasons"]) == ("challenger", ["gate precision: 0.1 < min 0.3"])
    assert (alias_version(store, "champion"), alias_version(store, "challenger")) == (3, 5)

    client = client_of(store)
    tags = client.get_model_version("moe-generator", "5").tags
    assert tags["moepipe.decision"] == "challenger" and tags["moepipe.reasons"] == "gate precision: 0.1 < min 0.3"
    assert tags["moepipe.complete"] == "true" and tags["moepipe.previous_champion"] == "3"
    assert client.get_model_version("moe-generator", "1").tags["moepipe.replaced_by"] == "3"
    assert json.loads((tmp_path / "generator-5-register.json").read_text())["decision"] == "challenger"


def test_a_run_holds_params_lineage_curves_pictures_and_card(store, trained: Path, tmp_path: Path) -> None:
    from moepipe.registry.register import sha256_file

    generator = variant(trained, tmp_path, 7)
    report = run_register(store, trained, generator, {"fd": 3.0, "control_accuracy.hair_color": 0.7, **GOOD})
    client = client_of(store)
    run = client.get_run(report["run_id"])
    assert run.data.params["train.batch_size"] == "32"  # the params given (profile cpu), flattened
    assert run.data.params["register.primary_metric"] == "fd"
    assert run.data.tags["moepipe.generator_sha256"] == sha256_file(generator) == report["generator_sha256"]
    assert run.data.tags["dvc.md5.data/prepared"] == "0123456789abcdef0123456789abcdef.dir"
    assert run.data.tags["mlflow.source.git.commit"] and run.data.tags["moepipe.git_dirty"] in ("true", "false",
                                                                                                    "unknown")
    assert run.data.metrics["control_accuracy.hair_color"] == 0.7
    curve = client.get_metric_history(report["run_id"], "train/loss_d")
    assert [m.step for m in curve] == [1, 2]
    files = {a.path for folder in ("", "evaluate", "train", "data") for a in client.list_artifacts(report["run_id"], folder)}
    assert {"model_card.md", "evaluate/samples.png", "evaluate/" + f"{generator.stem}-metrics.json",
            "train/step-00000002.png", "train/metrics.csv", "data/curate.json"} <= files
    card = client.download_artifacts(report["run_id"], "model_card.md", str(tmp_path))
    text = Path(card).read_text()
    assert "# Model card: moe-generator v1" in text and "| danbooru | 1 |" in text and "| general | 2 |" in text
    assert "## Intended use" in text and "## Limitations" in text and "dcgan" in text


def test_model_card_states_the_generator_files_facts_not_todays_params(trained: Path) -> None:
    from moepipe.models.export import generator_summary
    from moepipe.registry.modelcard import model_card

    generator = trained / "models/generator.pt"
    params = parse_params({"curate": {"output_size": 128}, "preprocess": {"resolution": 128}})  # changed since
    data = {"images": 3, "by_source": {"synthetic": 3}, "by_rating": {"general": 3},
            "reports": {"preprocess": {"images": {"train": 2, "val": 1}}}}
    common = dict(name="moe-generator", version=1, run_id="r", fingerprint="f", params=params, data=data,
                  metrics={}, decision={"decision": "champion", "reasons": []}, lineage={})
    card = model_card(generator=generator, **common)
    assert card == model_card(generator=generator_summary(generator), **common)  # a file or its summary
    assert "| architecture | dcgan |" in card and "| resolution | 16 px |" in card
    assert "(2 train / 1 val after preprocessing at 16 px)" in card and "128 px" not in card


def test_registering_the_same_generator_again_reuses_its_version(store, trained: Path, tmp_path: Path) -> None:
    generator = variant(trained, tmp_path, 11)
    first = run_register(store, trained, generator, {"fd": 5.0, **GOOD})
    again = run_register(store, trained, generator, {"fd": 5.0, **GOOD}, gates={"precision": {"min": 0.9}})
    assert (again["version"], again["run_id"], again["reused"]) == (first["version"], first["run_id"], True)
    # Re-checked with the new gate; it stays champion only because no version passes the gates.
    assert again["reasons"][0] == "gate precision: 0.6 < min 0.9"
    assert again["decision"] == "champion" and alias_version(store, "champion") == 1
    client = client_of(store)
    assert len(client.search_model_versions("name = 'moe-generator'")) == 1
    assert len(client.search_runs([client.get_experiment_by_name("moepipe").experiment_id])) == 1


def test_a_version_left_incomplete_by_a_killed_registration_is_replaced(store, trained: Path,
                                                                        tmp_path: Path) -> None:
    from moepipe.registry.register import sha256_file

    generator = variant(trained, tmp_path, 13)
    client = client_of(store)
    client.create_registered_model("moe-generator")
    client.create_model_version("moe-generator", str(tmp_path), tags={"moepipe.generator_sha256": sha256_file(generator)})
    report = run_register(store, trained, generator, {"fd": 5.0, **GOOD})
    assert (report["version"], report["reused"], report["decision"]) == (2, False, "champion")
    assert [int(v.version) for v in client.search_model_versions("name = 'moe-generator'")] == [2]


def test_registered_version_says_whether_a_store_holds_a_generator(store, trained: Path, tmp_path: Path) -> None:
    """What the pipeline flow asks before trusting DVC's "register is fresh" (flows/registration.py)."""
    from moepipe.registry.register import registered_version, sha256_file

    cfg = parse_params({}).registry
    generator = variant(trained, tmp_path, 17)
    fingerprint = sha256_file(generator)
    assert registered_version(cfg, store[0], fingerprint) is None  # no model yet
    client = client_of(store)
    client.create_registered_model("moe-generator")
    client.create_model_version("moe-generator", str(tmp_path), tags={"moepipe.generator_sha256": fingerprint})
    assert registered_version(cfg, store[0], fingerprint) is None  # an incomplete version does not count
    report = run_register(store, trained, generator, {"fd": 5.0, **GOOD})
    assert registered_version(cfg, store[0], fingerprint) == report["version"] == 2
    assert registered_version(cfg, store[0], "0" * 64) is None  # another generator
    never_made = tmp_path / "elsewhere" / "mlflow.db"
    assert registered_version(cfg, f"sqlite:///{never_made}", fingerprint) is None
    assert not never_made.parent.exists()  # asking did not create a store


def test_the_flow_asks_the_embedded_store_of_the_checkout_not_of_its_cwd(store, trained: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.registration import StoreCheck, store_check

    report = run_register(store, trained, variant(trained, tmp_path, 19), {"fd": 5.0, **GOOD})
    assert store[0] == f"sqlite:///{tmp_path / 'mlflow.db'}"  # the checkout's sqlite:///mlflow.db
    (tmp_path / "params.yaml").write_text("register:\n  tracking_uri: sqlite:///mlflow.db\n")
    (tmp_path / "reports").mkdir()
    written = tmp_path / "reports/register.json"
    written.write_text(json.dumps(report))
    monkeypatch.chdir(tmp_path.parent)  # a flow run's working directory is not the checkout
    assert store_check(tmp_path) == StoreCheck("sqlite:///mlflow.db", "moe-generator", report["version"])
    written.write_text(json.dumps({**report, "generator_sha256": "0" * 64}))  # a generator it lacks
    assert store_check(tmp_path).version is None
    written.write_text("{}")  # no hash recorded: cannot tell, so register again (idempotent)
    assert store_check(tmp_path).version is None


def test_a_relative_embedded_store_is_seen_from_the_stage_folder(tmp_path: Path) -> None:
    from moepipe.registry.store import store_seen_from

    assert store_seen_from("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert store_seen_from("sqlite:///mlflow.db?timeout=5", tmp_path).endswith("/mlflow.db?timeout=5")
    assert store_seen_from("sqlite:////srv/mlflow.db", tmp_path) == "sqlite:////srv/mlflow.db"
    assert store_seen_from("mlruns", tmp_path) == str(tmp_path.resolve() / "mlruns")
    assert store_seen_from("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"


@pytest.mark.parametrize("locked", [True, False], ids=["file-lock", "no-lock-worst-race"])
def test_concurrent_promotions_end_with_the_best_champion(store, trained: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, locked: bool) -> None:
    """Three registrations at once. Without the lock, each decides against the same (missing)
    champion before any of them writes the alias: the check-then-write race that reconcile repairs."""
    import moepipe.registry.promotion as promotion
    import moepipe.registry.register as registry
    from moepipe.registry.promotion import Registry

    generators = {fd: variant(trained, tmp_path, n) for n, fd in enumerate([7.0, 5.0, 6.0])}
    if not locked:
        monkeypatch.setattr(registry, "store_lock", lambda *a, **k: _unlocked())
        barrier = threading.Barrier(len(generators), timeout=60)
        real_decide = promotion.decide
        monkeypatch.setattr(promotion, "decide", lambda *a: (real_decide(*a), barrier.wait())[0])

    seen, errors, reports, done = [], [], {}, threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(alias_version(store, "champion"))
            time.sleep(0.01)

    def work(fd: float) -> None:
        try:
            reports[fd] = run_register(store, trained, generators[fd], {"fd": fd, **GOOD})
        except BaseException as error:
            errors.append(error)

    watcher = threading.Thread(target=watch)
    workers = [threading.Thread(target=work, args=(fd,)) for fd in generators]
    watcher.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    done.set()
    watcher.join()
    assert not errors, errors
    best = reports[5.0]["version"]
    assert alias_version(store, "champion") == best and reports[5.0]["decision"] == "champion"
    if not locked:  # each decided "champion"; the two worse ones learnt they lost the race
        for fd in (6.0, 7.0):
            assert reports[fd]["decision"] == "challenger"
            assert reports[fd]["reasons"] == ["first version passing the gates",
                                              f"a concurrent registration made v{best} champion"]
    first = next((i for i, v in enumerate(seen) if v is not None), len(seen))
    assert None not in seen[first:]  # once there is a champion, there always is one

    # A stale write (a slow process setting a worse champion last) is repaired by the next reconcile.
    client = client_of(store)
    client.set_registered_model_alias("moe-generator", "champion", str(reports[7.0]["version"]))
    assert Registry(client, parse_params({}).registry).reconcile() == best == alias_version(store, "champion")


class _unlocked:
    def __enter__(self) -> bool:
        return False

    def __exit__(self, *exc) -> None:
        return None


def test_the_store_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    from moepipe.registry.store import store_lock

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with store_lock(uri) as locked:
        assert locked
        outcome: list[str] = []
        other = threading.Thread(target=lambda: outcome.append(_try_lock(uri)))
        other.start()
        other.join()
    assert outcome == [f"{tmp_path / 'mlflow.db.lock'}: another registration has held this lock for over 0 s"]


def _try_lock(uri: str) -> str:
    from moepipe.registry.store import store_lock

    try:
        with store_lock(uri, timeout_s=0.3):
            return "acquired"
    except UserError as error:
        return str(error)


# -- the pyfunc model --------------------------------------------------------------------------
def test_champion_pyfunc_draws_signed_pngs_and_rejects_bad_rows(store, trained: Path, tmp_path: Path) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from moepipe.generate.avatar import AvatarModel

    report = run_register(store, trained, variant(trained, tmp_path, 21), {"fd": 4.0, **GOOD})
    model = mlflow.pyfunc.load_model("models:/moe-generator@champion")
    avatars = model.unwrap_python_model().avatars
    assert isinstance(avatars, AvatarModel)
    tag = avatars.attributes[0]
    rows = pd.DataFrame({"seed": [3, 4, 3], "attributes": [tag, "", tag], "truncation": [1.0, 0.5, 1.0]})
    out = model.predict(rows)
    assert list(out.columns) == ["image"] and len(out) == 3
    png = Image.open(io.BytesIO(base64.b64decode(out["image"][0])))
    assert png.size == (16, 16) and png.mode == "RGB"
    assert png.text["model_name"] == "moe-generator"
    assert png.text["model_version"] == str(report["version"]) == "1"
    assert (png.text["seed"], png.text["attributes"], png.text["truncation"]) == ("3", tag, "1")
    assert png.text["run_id"] == report["run_id"]
    assert png.text["model"] == "models:/moe-generator/1" and png.text["Software"] == "moepipe"
    assert out["image"][0] == out["image"][2] != out["image"][1]  # same seed and tags, same picture
    assert model.predict(rows)["image"].tolist() == out["image"].tolist()

    with pytest.raises(MlflowException, match="missing inputs \\['seed'\\]"):
        model.predict(pd.DataFrame({"attributes": [tag]}))
    with pytest.raises(MlflowException, match="column seed"):
        model.predict(pd.DataFrame({"seed": ["three"]}))
    with pytest.raises(MlflowException) as unknown:
        model.predict(pd.DataFrame({"seed": [1], "attributes": [f"{tag}, sparkly_wings"]}))
    assert str(unknown.value).startswith("row 0: unknown attribute 'sparkly_wings'; known: ")
    assert "\n" not in str(unknown.value)


# -- the command -------------------------------------------------------------------------------
def test_cli_unreachable_server_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained: Path) -> None:
    import socket

    from typer.testing import CliRunner

    from moepipe.cli import app

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "metrics.json").write_text(json.dumps({"fd": 1.0}))
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    result = CliRunner().invoke(app, ["register", "--params", str(tmp_path / "params.yaml"), "--model",
                                      str(trained / "models/generator.pt"), "--metrics", str(tmp_path / "metrics.json"),
                                      "--report", str(tmp_path / "register.json")])
    assert result.exit_code == 1 and time.monotonic() - started < 30
    assert result.stderr.splitlines() == [
        f"moepipe: error: MLflow tracking server http://127.0.0.1:{port} is unreachable "
        "(ConnectError: [Errno 111] Connection refused)"]
    assert not (tmp_path / "register.json").exists()


def test_cli_register_prints_the_decision(store, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from moepipe.cli import app

    uri, artifacts = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "params.yaml").write_text(f"register:\n  artifact_location: {artifacts}\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"fd": 2.5, **GOOD}))
    result = CliRunner().invoke(app, [
        "register", "--params", str(tmp_path / "params.yaml"), "--model", str(trained / "models/generator.pt"),
        "--metrics", str(tmp_path / "metrics.json"), "--evaluate-dir", str(trained / "reports/evaluate"),
        "--train-reports", str(trained / "reports/train"), "--classifier", str(tmp_path / "missing.pt"),
        "--directions", str(tmp_path / "missing.npz"), "--report", str(tmp_path / "register.json")])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("register: moe-generator v1 → champion (first version passing the gates) run ")
    assert json.loads((tmp_path / "register.json").read_text())["version"] == 1


def test_register_leaves_no_store_behind_for_later_subprocesses(store, trained: Path, tmp_path: Path) -> None:
    import os

    run_register(store, trained, variant(trained, tmp_path, 21), {"fd": 5.0, **GOOD})
    # A `moepipe register` run later as a subprocess must follow its own environment, not this store.
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


def test_generate_draws_from_the_registered_champion(store, trained: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from moepipe.cli import app
    from moepipe.generate.avatar import AvatarModel

    report = run_register(store, trained, variant(trained, tmp_path, 31), {"fd": 3.0, **GOOD})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])
    tag = AvatarModel.load(trained / "models/generator.pt").attributes[0]
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["generate", "--model", "models:/moe-generator@champion", "--attributes", tag,
                                      "--n", "6", "--seed", "7", "--columns", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    grid = Image.open(out)
    assert grid.size == (3 * 16 + 2 * 2, 2 * 16 + 2)  # 3 x 2 avatars of 16 px, 2 px gaps
    assert grid.text["model"] == "models:/moe-generator@champion"
    assert (grid.text["model_name"], grid.text["model_version"]) == ("moe-generator", str(report["version"]))
    assert grid.text["run_id"] == report["run_id"]
    missing = CliRunner().invoke(app, ["generate", "--model", "models:/no-such-model@champion", "--out", str(out)])
    assert missing.exit_code == 1 and missing.stderr.startswith("moepipe: error: ")
    assert len(missing.stderr.strip().splitlines()) == 1
