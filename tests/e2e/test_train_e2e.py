"""Training end to end: a tiny run learns, and `moepipe train` survives kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from moepipe.config import parse_params
from moepipe.data import PackedSet, to_tensor
from moepipe.models.export import load_generator
from moepipe.train.loop import train

pytestmark = pytest.mark.e2e


def pixel_statistics_gap(generator: torch.nn.Module, label_dim: int, real: PackedSet, n: int = 256) -> float:
    """Distance between generated and real images in 8x8-pixel mean and std: lower is better."""
    rows = np.random.default_rng(0).choice(len(real), n)
    labels = torch.from_numpy(np.asarray(real.labels[rows], dtype=np.float32)) if label_dim else None
    with torch.no_grad():
        fake = generator(torch.randn(n, generator.z_dim, generator=torch.Generator().manual_seed(0)), labels)
    real_images = to_tensor(np.asarray(real.images[rows]))

    def stats(images: torch.Tensor) -> torch.Tensor:
        small = torch.nn.functional.adaptive_avg_pool2d(images.float(), 8).flatten(1)
        return torch.cat([small.mean(0), small.std(0)])

    return float((stats(fake) - stats(real_images)).norm())


def test_tiny_training_moves_generated_images_towards_the_data(prepared32: Path, tmp_path: Path) -> None:
    cfg = parse_params({"train": {"width": 16, "z_dim": 32, "batch_size": 32, "steps": 300, "threads": 2,
                                  "checkpoint_every": 100, "sample_every": 300, "ema_beta": 0.99,
                                  "ada": False, "augment_p": 1.0}}).train
    real = PackedSet(prepared32, "train")
    first = train(cfg.model_copy(update={"steps": 1}), 0, prepared32, tmp_path / "start", echo=lambda _: None)
    start_g, meta = load_generator(tmp_path / "start" / "generator.pt")
    result = train(cfg, 0, prepared32, tmp_path / "m", reports=tmp_path / "r", echo=lambda _: None)
    final_g, _ = load_generator(tmp_path / "m" / "generator.pt")
    before = pixel_statistics_gap(start_g, meta["label_dim"], real)
    after = pixel_statistics_gap(final_g, meta["label_dim"], real)
    print(f"pixel-statistics gap: {before:.3f} at step 1 → {after:.3f} at step {result.steps}")
    assert first.steps == 1
    assert after < 0.7 * before
    assert (tmp_path / "r" / "samples" / "latest.png").is_file()


def test_cli_train_resumes_after_kill_minus_nine(prepared16: Path, tmp_path: Path) -> None:
    settings = {"width": 8, "z_dim": 16, "batch_size": 8, "steps": 400, "checkpoint_every": 10,
                "deterministic": True, "threads": 1, "device": "cpu", "precision": "fp32", "sample_every": 1000}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": settings}))
    command = [sys.executable, "-m", "moepipe", "train", "--prepared", str(prepared16), "--out", "models",
               "--reports", "reports"]
    env = {**os.environ, "MOEPIPE_QUIET": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoints = tmp_path / "models" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (checkpoints.is_dir() and len(list(checkpoints.glob("step-*.pt"))) >= 2):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "models" / "generator.pt").exists()

    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "train: resuming from step " in resumed.stderr
    assert resumed.stdout.startswith("train: 400 steps")

    cfg = parse_params({"train": settings}).train
    train(cfg, 0, prepared16, tmp_path / "straight", echo=lambda _: None)
    a = torch.load(tmp_path / "models" / "generator.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "straight" / "generator.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
