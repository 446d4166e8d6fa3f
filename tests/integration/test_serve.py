"""`mlflow models serve` of the registered champion answers /invocations with signed avatar PNGs."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from moepipe.config import TrainConfig, parse_params
from moepipe.train.loop import train

pytestmark = pytest.mark.integration

TINY = dict(width=8, z_dim=16, batch_size=8, steps=2, deterministic=True, threads=1, device="cpu",
            precision="fp32", checkpoint_every=10, log_every=1, sample_every=2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def registered(prepared16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A tiny generator registered as moe-generator v1 (champion); returns the tracking URI."""
    import mlflow

    from moepipe.registry.register import register

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    train(TrainConfig(**TINY), 0, prepared16, tmp_path / "models", reports=tmp_path / "train", echo=lambda _: None)
    (tmp_path / "metrics.json").write_text(json.dumps({"fd": 3.0, "precision": 0.5, "recall": 0.5}))
    params = parse_params({"register": {"artifact_location": str(tmp_path / "mlartifacts")}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    report = register(params.registry, uri, generator=tmp_path / "models/generator.pt",
                      metrics_json=tmp_path / "metrics.json", evaluate_dir=tmp_path / "evaluate",
                      train_reports=tmp_path / "train", dvc_lock=tmp_path / "dvc.lock", data_reports=tmp_path,
                      params=params, out_report=tmp_path / "register.json")
    assert (report["version"], report["decision"]) == (1, "champion")
    yield uri
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture
def server(registered: str, tmp_path: Path):
    """The scoring server of models:/moe-generator@champion on a free loopback port; killed afterwards."""
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    # As in an activated venv: the server execs `uvicorn` from PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": registered, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/moe-generator@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow models serve exited {process.returncode}:\n"
                            + (tmp_path / "serve.log").read_text(errors="replace")[-3000:])
            try:
                if httpx.get(f"{base}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow models serve did not answer /ping within 180 s:\n"
                            + (tmp_path / "serve.log").read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        yield base
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)
        log.close()


def test_served_champion_draws_avatars(server: str) -> None:
    body = {"dataframe_split": {"columns": ["seed", "attributes", "truncation"],
                                "data": [[7, "blue_hair, smile", 1.0], [8, "", 0.7], [7, "blue_hair, smile", 1.0]]}}
    reply = httpx.post(f"{server}/invocations", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    rows = reply.json()["predictions"]
    images = [row["image"] for row in rows]
    assert len(images) == 3 and images[0] == images[2] != images[1]
    png = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert png.size == (16, 16)
    assert (png.text["model_name"], png.text["model_version"]) == ("moe-generator", "1")
    assert (png.text["seed"], png.text["attributes"]) == ("7", "blue_hair,smile")

    bad = httpx.post(f"{server}/invocations", json={"dataframe_split": {
        "columns": ["seed", "attributes"], "data": [[1, "sparkly_wings"]]}}, timeout=60)
    assert bad.status_code == 400
    assert "unknown attribute 'sparkly_wings'" in bad.json()["message"]
