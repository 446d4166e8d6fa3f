"""The training loop's promises: exact resume, checkpoint fallback, divergence guard, outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from moepipe.config import TrainConfig
from moepipe.models.export import load_generator
from moepipe.train import checkpoint as ckpt
from moepipe.train.loop import TrainingDiverged, train

TINY = dict(width=8, z_dim=16, batch_size=8, deterministic=True, threads=1, device="cpu",
            precision="fp32", checkpoint_every=3, log_every=1, sample_every=3, sample_columns=3)


def tiny(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


def quiet(_line: str) -> None:
    pass


@pytest.mark.parametrize("arch, extra", [("dcgan", {}), ("stylegan", {"channel_base": 256, "channel_max": 32,
                                                                         "r1_gamma": 1.0, "r1_interval": 2})])
def test_resume_at_step_k_gives_the_same_weights(prepared16: Path, tmp_path: Path, arch, extra) -> None:
    straight = train(tiny(arch=arch, steps=6, **extra), 0, prepared16, tmp_path / "a", echo=quiet)
    first = train(tiny(arch=arch, steps=3, **extra), 0, prepared16, tmp_path / "b", echo=quiet)
    lines: list[str] = []
    resumed = train(tiny(arch=arch, steps=6, **extra), 0, prepared16, tmp_path / "b", echo=lines.append)
    assert (first.steps, resumed.resumed_from) == (3, 3)
    assert lines == [f"train: resuming from step 3 ({tmp_path / 'b' / 'checkpoints'})"]
    assert resumed.digest == straight.digest
    assert first.digest != straight.digest
    a = torch.load(tmp_path / "a" / "generator.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "generator.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_checkpoint_falls_back_to_the_previous_one(prepared16: Path, tmp_path: Path) -> None:
    straight = train(tiny(steps=9), 0, prepared16, tmp_path / "a", echo=quiet)
    train(tiny(steps=6), 0, prepared16, tmp_path / "b", echo=quiet)
    newest = ckpt.checkpoint_path(tmp_path / "b" / "checkpoints", 6)
    newest.write_bytes(newest.read_bytes()[:1000])  # as if the disk filled mid-copy
    lines: list[str] = []
    resumed = train(tiny(steps=9), 0, prepared16, tmp_path / "b", echo=lines.append)
    assert resumed.resumed_from == 3
    assert lines[0].startswith("train: warning: step-00000006.pt is unreadable (")
    assert lines[0].endswith("; falling back to an older checkpoint") and "\n" not in lines[0]
    assert resumed.digest == straight.digest


def test_checkpoints_of_other_params_are_not_resumed(prepared16: Path, tmp_path: Path) -> None:
    train(tiny(steps=3), 0, prepared16, tmp_path, echo=quiet)
    lines: list[str] = []
    result = train(tiny(steps=3, lr_g=3e-4), 0, prepared16, tmp_path, echo=lines.append)
    assert result.resumed_from == 0
    assert lines == ["train: starting afresh; removing 1 checkpoint(s) of other params or data"]


def test_checkpoints_load_with_weights_only_and_keep_the_newest(prepared16: Path, tmp_path: Path) -> None:
    train(tiny(steps=12, keep_checkpoints=2), 0, prepared16, tmp_path, echo=quiet)
    steps = [step for step, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert steps == [12, 9]
    state = torch.load(ckpt.checkpoint_path(tmp_path / "checkpoints", 12), weights_only=True)
    assert {"generator", "discriminator", "opt_g", "opt_d", "ema", "ada", "torch_rng", "step"} <= set(state)
    generator, meta = load_generator(tmp_path / "generator.pt")
    assert meta["label_dim"] == len(meta["vocabulary"]) > 0
    images = generator(torch.randn(2, generator.z_dim), torch.zeros(2, meta["label_dim"]))
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_good_checkpoint(
        prepared16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moepipe.train import losses

    original = losses.NonSaturatingLoss.d_loss
    calls = {"n": 0}

    def poisoned(self, real, fake):
        calls["n"] += 1
        value = original(self, real, fake)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setattr(losses.NonSaturatingLoss, "d_loss", poisoned)
    with pytest.raises(TrainingDiverged) as raised:
        train(tiny(steps=9), 0, prepared16, tmp_path, echo=quiet)
    assert str(raised.value).startswith("train: the discriminator loss became nan at step 4; stopped")
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [3]
    assert not (tmp_path / "generator.pt").exists()


def test_metrics_and_sample_grids_for_dvc_plots(prepared16: Path, tmp_path: Path) -> None:
    train(tiny(steps=6), 0, prepared16, tmp_path / "m", reports=tmp_path / "r", echo=quiet)
    with (tmp_path / "r" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss_d"] and r["grad_norm_g"] for r in rows) and "img_s" not in rows[0]
    with (tmp_path / "r" / "throughput.csv").open() as handle:
        timings = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in timings] == [1, 2, 3, 4, 5, 6] and all(float(r["img_s"]) > 0 for r in timings)
    samples = sorted(p.name for p in (tmp_path / "r" / "samples").iterdir())
    assert samples == ["latest.png", "step-00000003.png", "step-00000006.png"]
    # resuming drops rows after the checkpoint instead of doubling them
    train(tiny(steps=3), 0, prepared16, tmp_path / "m2", reports=tmp_path / "r2", echo=quiet)
    (tmp_path / "r2" / "metrics.csv").write_text((tmp_path / "r2" / "metrics.csv").read_text() + "4,0,9,9,,,,,,1\n")
    train(tiny(steps=6), 0, prepared16, tmp_path / "m2", reports=tmp_path / "r2", echo=quiet)
    for table in ("metrics.csv", "throughput.csv"):
        with (tmp_path / "r2" / table).open() as handle:
            assert [int(r["step"]) for r in csv.DictReader(handle)] == [1, 2, 3, 4, 5, 6]


def test_cuda_requested_without_a_gpu_is_a_user_error(prepared16: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from moepipe.errors import UserError

    with pytest.raises(UserError, match="train.device is 'cuda' but no CUDA device is visible"):
        train(tiny(steps=1, device="cuda"), 0, prepared16, tmp_path, echo=quiet)


def test_checkpoints_of_other_training_code_are_not_resumed(prepared16: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from moepipe.train import loop

    train(tiny(steps=3), 0, prepared16, tmp_path, echo=quiet)
    monkeypatch.setattr(loop, "code_digest", lambda: "edited training code")
    assert train(tiny(steps=3), 0, prepared16, tmp_path, echo=quiet).resumed_from == 0


def test_bf16_autocast_on_cpu_changes_the_arithmetic_and_still_resumes_exactly(prepared16: Path,
                                                                               tmp_path: Path) -> None:
    fp32 = train(tiny(steps=6), 0, prepared16, tmp_path / "fp32", echo=quiet)
    straight = train(tiny(steps=6, precision="bf16"), 0, prepared16, tmp_path / "a", echo=quiet)
    train(tiny(steps=3, precision="bf16"), 0, prepared16, tmp_path / "b", echo=quiet)
    resumed = train(tiny(steps=6, precision="bf16"), 0, prepared16, tmp_path / "b", echo=quiet)
    assert straight.digest != fp32.digest  # the convolutions really ran in bf16
    assert resumed.resumed_from == 3 and resumed.digest == straight.digest
    assert all(torch.isfinite(torch.tensor([straight.last["loss_d"], straight.last["loss_g"]])))


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True),
                                                         (False, False, False)])
def test_auto_precision_takes_bf16_only_on_cpus_that_compute_it_in_hardware(
        monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, expected: bool) -> None:
    from moepipe.train.runtime import pick_runtime

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert pick_runtime(TrainConfig(device="cpu", precision="auto")).bf16 is expected
    assert pick_runtime(TrainConfig(device="cpu", precision="fp32")).bf16 is False
    assert pick_runtime(TrainConfig(device="cpu", precision="bf16")).bf16 is True


def test_mode_seeking_penalty_punishes_a_generator_that_ignores_z() -> None:
    from moepipe.train.loop import mode_seeking_penalty

    z = torch.randn(8, 4)
    collapsed = torch.zeros(8, 3, 4, 4, requires_grad=True)
    varied = (torch.randn(8, 3, 4, 4) * 0.5).requires_grad_(True)
    assert mode_seeking_penalty(collapsed, z) > 100 * mode_seeking_penalty(varied, z)
    penalty = mode_seeking_penalty(varied, z)
    penalty.backward()
    step = varied.detach() - 0.1 * varied.grad  # gradient descent spreads the pairs apart
    assert (step[:4] - step[4:]).abs().mean() > (varied[:4] - varied[4:]).abs().mean()


def test_mode_seeking_trains_and_changes_the_weights(prepared16: Path, tmp_path: Path) -> None:
    plain = train(tiny(steps=3), 0, prepared16, tmp_path / "a", echo=quiet)
    seeking = train(tiny(steps=3, mode_seeking=1.0), 0, prepared16, tmp_path / "b", echo=quiet)
    assert seeking.digest != plain.digest
    assert torch.isfinite(torch.tensor(seeking.last["loss_g"]))


@pytest.mark.parametrize("loss", ["minimax", "nonsaturating", "wgan-gp", "hinge"])
def test_every_loss_trains_with_the_attribute_head(prepared16: Path, tmp_path: Path, loss) -> None:
    result = train(tiny(steps=3, loss=loss), 0, prepared16, tmp_path, reports=tmp_path / "r", echo=quiet)
    for key in ("loss_d", "loss_g", "aux_d", "aux_g"):
        assert torch.isfinite(torch.tensor(result.last[key])), key
    with (tmp_path / "r" / "metrics.csv").open() as handle:
        assert all(row["aux_d"] and row["aux_g"] for row in csv.DictReader(handle))
    generator, meta = load_generator(tmp_path / "generator.pt")
    assert meta["model_kwargs"]["block"] == "upconv"
    # The exported prior is the training labels' distribution: each single group sums to 1.
    for name, group in meta["groups"].items():
        if not group.get("multi"):
            assert abs(sum(meta["label_prior"][name]) - 1) < 1e-4, name


def test_attribute_loss_and_balanced_labels_change_training(prepared16: Path, tmp_path: Path) -> None:
    plain = train(tiny(steps=3, aux_weight=0.0, balanced_labels=False), 0, prepared16, tmp_path / "a", echo=quiet)
    aux = train(tiny(steps=3), 0, prepared16, tmp_path / "b", echo=quiet)
    balanced = train(tiny(steps=3, balanced_labels=True), 0, prepared16, tmp_path / "c", echo=quiet)
    assert "aux_g" not in plain.last and "aux_g" in aux.last
    assert len({plain.digest, aux.digest, balanced.digest}) == 3


def test_legacy_generator_files_load_as_the_classic_network(prepared16: Path, tmp_path: Path) -> None:
    train(tiny(steps=2, block="transposed"), 0, prepared16, tmp_path, echo=quiet)
    payload = torch.load(tmp_path / "generator.pt", weights_only=True)
    payload["format"] = "moepipe-generator/1"  # as written before the upconv body existed
    del payload["model_kwargs"]["block"], payload["label_prior"]
    payload["model_kwargs"].pop("label_groups", None)
    payload["model_kwargs"].pop("embed_dim", None)
    torch.save(payload, tmp_path / "old.pt")
    generator, _ = load_generator(tmp_path / "old.pt")
    assert generator.block == "transposed"
    assert torch.isfinite(generator.sample(2)).all()
