"""Tiny models for the avatar studio's tests: a 2-step generator, and versions of it registered in a
throwaway sqlite MLflow store by the real register stage (as in tests/unit/test_registry.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from moepipe.config import TrainConfig, parse_params
from moepipe.train.loop import train

TINY = dict(width=8, z_dim=16, batch_size=8, steps=2, deterministic=True, threads=1, device="cpu",
            precision="fp32", checkpoint_every=10, log_every=1, sample_every=2, sample_columns=3)
MODEL = "moe-generator"
GOOD = {"precision": 0.6, "recall": 0.5, "kid": 0.01}
PREPARED_MD5 = "0123456789abcdef0123456789abcdef.dir"


def train_tiny(prepared: Path, root: Path) -> Path:
    """A 2-step conditional 16 px DCGAN in root/models with the reports registration reads; returns root."""
    train(TrainConfig(**TINY), 0, prepared, root / "models", reports=root / "reports/train", echo=lambda _: None)
    (root / "reports/evaluate").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 120, 160)).save(root / "reports/evaluate/samples.png")
    (root / "manifest.jsonl").write_text(json.dumps({"source": "synthetic", "rating": "general"}) + "\n")
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  preprocess:\n    outs:\n    - path: data/prepared\n      hash: md5\n"
        f"      md5: {PREPARED_MD5}\n")
    return root


def variant(root: Path, folder: Path, n: int) -> Path:
    """A copy of the tiny generator with a different sha256 (its recorded step is n): a new version."""
    payload = torch.load(root / "models/generator.pt", weights_only=True)
    payload["step"] = n
    path = folder / f"generator-{n}.pt"
    torch.save(payload, path)
    return path


def register_version(uri: str, artifacts: Path, root: Path, generator: Path, metrics: dict[str, float]) -> dict[str, Any]:
    """Register `generator` with `metrics` into the store at `uri`; the register stage's report."""
    from moepipe.registry.register import register

    metrics_json = generator.with_name(f"{generator.stem}-metrics.json")
    metrics_json.write_text(json.dumps(metrics))
    params = parse_params({"register": {"artifact_location": str(artifacts)}})
    return register(params.registry, uri, generator=generator, metrics_json=metrics_json,
                    evaluate_dir=root / "reports/evaluate", train_reports=root / "reports/train",
                    dvc_lock=root / "dvc.lock", data_reports=root / "reports", curated_manifest=root / "manifest.jsonl",
                    params=params, out_report=generator.with_name(f"{generator.stem}-register.json"))


def fresh_store(template: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """(tracking URI, artifact folder) of a copy of an empty store; MLflow's global URIs reset afterwards."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    shutil.copyfile(template, folder / "mlflow.db")
    yield f"sqlite:///{folder / 'mlflow.db'}", folder / "mlartifacts"
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def empty_store(folder: Path) -> Path:
    """An MLflow sqlite file with the schema created (copy it per test: migrations are slow)."""
    from mlflow import MlflowClient

    path = folder / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path
