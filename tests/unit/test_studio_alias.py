"""The studio on a registered model: it follows `champion` when the alias moves, shows the
champion/challenger pair and each version's lineage (sqlite MLflow store under tmp_path)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from moepipe.errors import UserError
from moepipe.studio.app import create_app
from moepipe.studio.state import ModelHolder
from tests.support.studio import (
    GOOD,
    MODEL,
    PREPARED_MD5,
    empty_store,
    fresh_store,
    register_version,
    train_tiny,
    variant,
)


@pytest.fixture(scope="module")
def trained(prepared16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(prepared16, tmp_path_factory.mktemp("studio-trained"))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return empty_store(tmp_path_factory.mktemp("studio-template"))


@pytest.fixture
def store(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    yield from fresh_store(template, tmp_path, monkeypatch)


def text_of(reply) -> dict[str, str]:
    assert reply.status_code == 200, reply.text
    return Image.open(io.BytesIO(reply.content)).text


def wait_for(client: TestClient, version: int, seconds: float = 30.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        body = client.get("/api/model").json()
        if body["version"] == version or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_the_studio_follows_the_champion_alias_when_it_moves(store, trained: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri, artifacts = store
    first = register_version(uri, artifacts, trained, variant(trained, tmp_path, 11), {"fd": 4.0, **GOOD})
    second = register_version(uri, artifacts, trained, variant(trained, tmp_path, 12), {"fd": 6.0, **GOOD})
    assert (first["decision"], second["decision"]) == ("champion", "challenger")
    holder = ModelHolder(f"models:/{MODEL}@champion", tracking_uri=uri, poll_seconds=0.2).open()
    with TestClient(create_app(holder)) as client:  # the app's lifespan starts the alias poll
        body = client.get("/api/model").json()
        assert (body["version"], body["registered"], body["alias"]) == (1, True, "champion")
        assert body["aliases"] == {"champion": 1, "challenger": 2}
        answering = body["answering"]
        assert answering["aliases"] == ["champion"] and answering["run_id"] == first["run_id"]
        assert answering["data_version"] == {"data/prepared": PREPARED_MD5}
        assert answering["metrics"]["fd"] == 4.0 and answering["decision"] == "champion"
        assert answering["generator_sha256"] == first["generator_sha256"]
        assert answering["links"] == {}  # a sqlite store has no UI to link to
        assert body["compare"] == {"champion": {"version": 1, "metrics": answering["metrics"]},
                                   "challenger": {"version": 2, "metrics": pytest.approx(
                                       {**answering["metrics"], "fd": 6.0})}}
        png = text_of(client.get("/api/avatar.png?seed=5"))
        assert (png["model"], png["model_name"], png["model_version"]) == (f"models:/{MODEL}/1", MODEL, "1")
        assert png["run_id"] == first["run_id"]
        challenger = text_of(client.get("/api/grid.png?seed=5&n=4&alias=challenger"))
        assert challenger["model_version"] == "2" and challenger["run_id"] == second["run_id"]
        assert text_of(client.get("/api/grid.png?seed=5&n=4&alias=champion"))["model_version"] == "1"

        MlflowClient(uri, registry_uri=uri).set_registered_model_alias(MODEL, "champion", "2")
        began = time.monotonic()
        body = wait_for(client, 2)
        assert body["version"] == 2, f"still v{body['version']} after {time.monotonic() - began:.1f} s: {body}"
        assert body["answering"]["run_id"] == second["run_id"] and body["answering"]["metrics"]["fd"] == 6.0
        assert [(c["from"], c["to"]) for c in body["changes"]] == [(1, 2)]
        assert body["polling"]["error"] is None
        png = text_of(client.get("/api/avatar.png?seed=5"))
        assert png["model_version"] == "2" and png["run_id"] == second["run_id"]
        # Both aliases now name v2: nothing to compare any more.
        assert body["aliases"] == {"champion": 2, "challenger": 2} and body["compare"] is None
        reply = client.get("/api/avatar.png?alias=challenger")
        assert reply.status_code == 404 and reply.json()["detail"].startswith("alias: moe-generator has no champion")
    assert holder._thread is None  # the poll stopped with the app


def test_a_lost_alias_keeps_the_version_and_says_why(store, trained: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri, artifacts = store
    register_version(uri, artifacts, trained, variant(trained, tmp_path, 21), {"fd": 4.0, **GOOD})
    holder = ModelHolder(f"models:/{MODEL}@champion", tracking_uri=uri, poll_seconds=60).open()
    MlflowClient(uri, registry_uri=uri).delete_registered_model_alias(MODEL, "champion")
    assert holder.refresh() is False
    info = holder.info()
    assert info["version"] == 1
    assert info["polling"]["error"] == (f"models:/{MODEL}@champion: no version of {MODEL} has the alias "
                                        "'champion'; still answering with v1")


def test_a_pinned_version_and_a_missing_alias(store, trained: Path, tmp_path: Path) -> None:
    uri, artifacts = store
    register_version(uri, artifacts, trained, variant(trained, tmp_path, 31), {"fd": 4.0, **GOOD})
    holder = ModelHolder(f"models:/{MODEL}/1", tracking_uri=uri, poll_seconds=60).open()
    assert holder.version == 1 and holder.info()["alias"] is None
    with pytest.raises(UserError, match="no version of moe-generator has the alias 'staging'"):
        ModelHolder(f"models:/{MODEL}@staging", tracking_uri=uri).open()
