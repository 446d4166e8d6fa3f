"""The classifier and evaluate stages on a tiny real data set and tiny trained generators."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from moepipe.config import EvaluateConfig, TrainConfig
from moepipe.data import PackedSet
from moepipe.errors import UserError
from moepipe.evaluate.classifier_stage import classifier_stage, report_path
from moepipe.evaluate.features import AttributeClassifier, load_classifier, save_classifier
from moepipe.evaluate.stage import _edit_locality, _locality_edits, evaluate
from moepipe.generate.avatar import AvatarModel
from moepipe.train.loop import train

TINY_GAN = dict(width=8, z_dim=16, batch_size=8, deterministic=True, threads=1, device="cpu", precision="fp32",
                checkpoint_every=1000, log_every=1000, sample_every=1000)
CFG = EvaluateConfig(samples=32, control_samples=2, kid_subsets=10, grid_columns=4, interpolation_steps=5,
                     classifier={"epochs": 6, "batch_size": 8})
TILE = 16 + 2  # prepared16 tiles plus grid's 2 px gap
TRAINED_STEPS = 600  # enough for a 16 px DCGAN to leave noise behind (FD in trials: 2-6x below 1 step)


def _quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def models(prepared16: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A classifier and three generators: trained, untrained (1 step), unconditional (3 steps)."""
    root = tmp_path_factory.mktemp("evaluate-models")
    for name, extra in (("trained", {"steps": TRAINED_STEPS}), ("untrained", {"steps": 1}),
                        ("unconditional", {"steps": 3, "conditional": False})):
        train(TrainConfig(**TINY_GAN, **extra), 0, prepared16, root / name, echo=_quiet)
    classifier_stage(CFG, 0, prepared16, root / "classifier.pt")
    return {"classifier": root / "classifier.pt", **{n: root / n / "generator.pt"
                                                     for n in ("trained", "untrained", "unconditional")}}


@pytest.fixture(scope="module")
def scored(prepared16: Path, models, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("evaluate") / "out"
    return out, evaluate(CFG, 0, prepared16, models["trained"], models["classifier"], out)


def test_classifier_stage_saves_a_loadable_classifier_and_its_report(prepared16: Path, models) -> None:
    classifier, report = load_classifier(models["classifier"])
    groups = PackedSet(prepared16, "train").meta["groups"]
    assert set(classifier.groups) == set(report["accuracy"]) == set(groups)
    assert all(value is None or 0 <= value <= 1 for value in report["accuracy"].values())
    assert report["epochs"] == 6 and report["val_images"] == len(PackedSet(prepared16, "val"))
    assert json.loads(report_path(models["classifier"]).read_text()) == report


def test_metrics_json_is_a_flat_mapping_of_finite_numbers(prepared16: Path, scored) -> None:
    out, metrics = scored
    assert json.loads((out / "metrics.json").read_text()) == metrics
    groups = PackedSet(prepared16, "train").meta["groups"]
    expected = {"fd", "kid", "kid_std", "precision", "recall", "control_accuracy", "classifier_accuracy",
                "n_real", "n_fake", "n_control", "generator_step", "generator_kimg"}
    expected |= {f"control_accuracy.{g}" for g in groups} | {f"classifier_accuracy.{g}" for g in groups}
    # Edit locality for every group with something to change to (a single-choice group needs two values).
    expected |= {"edit_locality"} | {f"edit_locality.{g}" for g, group in groups.items()
                                     if group.get("multi") or len(group["tags"]) > 1}
    assert set(metrics) == expected  # no fid without inception weights
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in metrics.values())
    assert metrics["n_real"] == len(PackedSet(prepared16, "val")) and metrics["n_fake"] == CFG.samples
    # each value asked for; each tag of a multi group also asked to be absent
    assert metrics["n_control"] == CFG.control_samples * sum(len(g["tags"]) * (1 + g["multi"]) for g in groups.values())
    assert (metrics["generator_step"], metrics["generator_kimg"]) == (TRAINED_STEPS, TRAINED_STEPS * 8 / 1000)
    assert metrics["fd"] >= 0 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert all(0 <= metrics[f"control_accuracy.{g}"] <= 1 for g in groups)
    assert all(0 <= metrics[key] <= 1 for key in metrics if key.startswith("edit_locality"))


def test_pictures_have_the_documented_layout(prepared16: Path, scored) -> None:
    out, _ = scored
    groups = PackedSet(prepared16, "train").meta["groups"]
    widest = max(len(g["tags"]) for g in groups.values())
    with Image.open(out / "samples.png") as samples, Image.open(out / "sweep.png") as sweep, \
            Image.open(out / "interpolation.png") as strips:
        assert samples.size == (4 * TILE - 2, 4 * TILE - 2)  # grid_columns 4, four rows
        assert sweep.size == (150 + widest * TILE - 2, len(groups) * TILE - 2)  # captions, a row per group
        assert strips.size == (5 * TILE - 2, 4 * TILE - 2)  # interpolation_steps 5, four seed pairs
        assert sweep.text["generator_step"] == str(TRAINED_STEPS)
        # One seed along a row, different attribute values: the first two hair colours differ.
        row = np.asarray(sweep.convert("RGB"))[:16, 150:150 + 2 * TILE]
        assert not np.array_equal(row[:, :16], row[:, TILE:TILE + 16])


def test_evaluation_is_deterministic_for_a_seed(prepared16: Path, models, scored, tmp_path: Path) -> None:
    out, metrics = scored
    assert evaluate(CFG, 0, prepared16, models["trained"], models["classifier"], tmp_path) == metrics
    for picture in ("samples.png", "sweep.png", "interpolation.png"):
        assert (tmp_path / picture).read_bytes() == (out / picture).read_bytes()
    other = evaluate(CFG, 1, prepared16, models["trained"], models["classifier"], tmp_path / "seed1")
    assert other["fd"] != metrics["fd"]


def test_an_untrained_generator_scores_worse(prepared16: Path, models, scored, tmp_path: Path) -> None:
    _, trained = scored
    untrained = evaluate(CFG, 0, prepared16, models["untrained"], models["classifier"], tmp_path)
    assert untrained["fd"] > 1.5 * trained["fd"]
    assert untrained["kid"] > trained["kid"]


def test_unconditional_model_has_no_control_and_a_seed_grid_sweep(prepared16: Path, models, tmp_path: Path) -> None:
    metrics = evaluate(CFG, 0, prepared16, models["unconditional"], models["classifier"], tmp_path)
    assert not any(key.startswith(("control_accuracy", "edit_locality", "n_control")) for key in metrics)
    assert {"fd", "kid", "precision", "recall", "classifier_accuracy"} <= set(metrics)
    with Image.open(tmp_path / "sweep.png") as sweep:
        assert sweep.size == (4 * TILE - 2, 4 * TILE - 2)  # no attributes to sweep: 4 x 4 seeds


def test_fid_only_with_inception_weights(prepared16: Path, models, tmp_path: Path) -> None:
    from moepipe.evaluate.inception import FIDInceptionV3

    missing = CFG.model_copy(update={"inception_weights": str(tmp_path / "absent.pth")})
    with pytest.raises(UserError, match="not found at .*absent.pth"):
        evaluate(missing, 0, prepared16, models["trained"], models["classifier"], tmp_path / "none")
    assert not (tmp_path / "none").exists()  # checked before any work
    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), tmp_path / "inception.pth")
    cfg = CFG.model_copy(update={"inception_weights": str(tmp_path / "inception.pth"), "samples": 16})
    metrics = evaluate(cfg, 0, prepared16, models["trained"], models["classifier"], tmp_path / "out")
    assert math.isfinite(metrics["fid"]) and metrics["fid"] > 0


def _copy_prepared(source: Path, target: Path, images=None, labels=None, resolution=None) -> Path:
    shutil.copytree(source, target)
    if images is not None:
        np.save(target / "train_images.npy", images)
        np.save(target / "train_labels.npy", labels)
    if resolution is not None:
        meta = json.loads((target / "meta.json").read_text())
        (target / "meta.json").write_text(json.dumps({**meta, "resolution": resolution}))
    return target


def test_inputs_that_do_not_belong_together_are_user_errors(prepared16: Path, models, tmp_path: Path) -> None:
    data = PackedSet(prepared16, "train")
    fewer = _copy_prepared(prepared16, tmp_path / "fewer", np.asarray(data.images)[:-1], np.asarray(data.labels)[:-1])
    with pytest.raises(UserError, match="classifier.pt was trained on other data than .*fewer; re-run"):
        evaluate(CFG, 0, fewer, models["trained"], models["classifier"], tmp_path / "a")
    val = np.asarray(PackedSet(prepared16, "val").images)
    small = _copy_prepared(prepared16, tmp_path / "small", np.asarray(data.images)[:, ::2, ::2],
                           np.asarray(data.labels), resolution=8)
    np.save(small / "val_images.npy", val[:, ::2, ::2])
    with pytest.raises(UserError, match="draws 16 px avatars but .*small holds 8 px images; .*re-run `moepipe train`"):
        evaluate(CFG, 0, small, models["trained"], models["classifier"], tmp_path / "b")
    save_classifier(tmp_path / "classifier32.pt", AttributeClassifier(32, data.meta["groups"], data.vocabulary,
                                                                       width=4, feature_dim=8), {})
    with pytest.raises(UserError, match=r"classifier32.pt reads 32 px images but .* holds 16 px images; "
                                        r"re-run `moepipe classifier`$"):
        evaluate(CFG, 0, prepared16, models["trained"], tmp_path / "classifier32.pt", tmp_path / "b")
    (tmp_path / "junk.pt").write_bytes(b"not a generator")
    with pytest.raises(UserError, match="junk.pt: cannot read the generator"):
        evaluate(CFG, 0, prepared16, tmp_path / "junk.pt", models["classifier"], tmp_path / "c")
    with pytest.raises(UserError, match="no feature classifier at"):
        evaluate(CFG, 0, prepared16, models["trained"], tmp_path / "absent.pt", tmp_path / "d")
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_precision_recall_compares_sets_of_one_size() -> None:
    from moepipe.evaluate.metrics import precision_recall
    from moepipe.evaluate.stage import _precision_recall

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(45, 256)), rng.normal(size=(1000, 256))  # one distribution
    _, unequal_recall = precision_recall(real, fake, 3)
    precision, recall = _precision_recall(real, fake, 3, np.random.default_rng(0))
    # 1000 fakes have tight k-NN balls that miss reals by sample size alone; equal sizes do not.
    assert recall > unequal_recall + 0.1 and abs(precision - recall) < 0.1


def test_classifier_stage_writes_identical_bytes_when_run_again(prepared16: Path, models, tmp_path: Path) -> None:
    again = tmp_path / "classifier.pt"
    report = classifier_stage(CFG, 0, prepared16, again)
    assert "train_seconds" in report  # for the command's summary line, not for the files
    assert again.read_bytes() == models["classifier"].read_bytes()  # stable DVC hash of identical runs
    assert report_path(again).read_bytes() == report_path(models["classifier"]).read_bytes()


# --- edit locality on hand-written generators -------------------------------------------------

TOY_GROUPS = {"hair": {"tags": ["red", "blue", "green"], "multi": False},
              "eyes": {"tags": ["brown", "grey", "gold"], "multi": False},
              "accessories": {"tags": ["hat", "glasses"], "multi": True}}
TOY_VOCABULARY = [tag for group in TOY_GROUPS.values() for tag in group["tags"]]
TOY_RESOLUTION = 8


class _StripeGenerator(nn.Module):
    """Column j of the top half shows label j, bright if asked for, dark if not, shaded by z.

    The shading never outweighs a label, but it picks the reading of a group with no value asked
    for, so the avatar depends on its latent. Entangled, the whole label set is hashed into a
    random pattern instead, so that changing any one label redraws every column.
    """

    def __init__(self, entangled: bool) -> None:
        super().__init__()
        self.z_dim, self.entangled = 4, entangled
        self.scale = nn.Parameter(torch.ones(()))

    truncation_space = "z"

    def forward(self, z: torch.Tensor, labels: torch.Tensor, **_: object) -> torch.Tensor:
        if self.entangled:
            keys = (labels.round().long() * 2 ** torch.arange(labels.shape[1])).sum(dim=1).tolist()
            top = torch.stack([torch.rand(labels.shape[1], generator=torch.Generator().manual_seed(key)) * 2 - 1
                               for key in keys])
        else:
            top = labels * 1.6 - 0.8 + 0.5 * torch.tanh(z[:, :1] * torch.arange(1.0, labels.shape[1] + 1))
        image = torch.zeros(len(z), 3, TOY_RESOLUTION, TOY_RESOLUTION)
        image[:, :, :TOY_RESOLUTION // 2, :labels.shape[1]] = top[:, None, None, :]
        image[:, :, TOY_RESOLUTION // 2:, :] = torch.tanh(z[:, :3, None, None])
        return image * self.scale


class _StripeReader(nn.Module):
    """A stand-in attribute classifier that reads each tag off its column of the top half."""

    def __init__(self) -> None:
        super().__init__()
        self.groups, self.vocabulary = TOY_GROUPS, TOY_VOCABULARY
        self.dummy = nn.Parameter(torch.zeros(()))

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        columns = images[:, :, :TOY_RESOLUTION // 2, :len(TOY_VOCABULARY)].mean(dim=(1, 2)) * 10
        out, start = {}, 0
        for name, group in TOY_GROUPS.items():
            part = columns[:, start:start + len(group["tags"])]
            out[name] = torch.sigmoid(part) if group["multi"] else torch.softmax(part, dim=1)
            start += len(group["tags"])
        return out


def _toy_labels(count: int = 40) -> np.ndarray:
    """Label vectors as the data has them: a hair colour (sometimes none), an eye colour, accessories."""
    rng = np.random.default_rng(0)
    labels = np.zeros((count, len(TOY_VOCABULARY)), np.uint8)
    for row in labels:
        if rng.random() < 0.8:
            row[rng.integers(0, 3)] = 1
        row[3 + rng.integers(0, 3)] = 1
        row[6:] = rng.random(2) < 0.3
    return labels


def _toy_model(entangled: bool) -> AvatarModel:
    meta = {"label_dim": len(TOY_VOCABULARY), "resolution": TOY_RESOLUTION, "vocabulary": TOY_VOCABULARY,
            "groups": TOY_GROUPS, "step": 0}
    return AvatarModel(_StripeGenerator(entangled), meta)


def test_locality_edits_change_exactly_one_group() -> None:
    columns = {"hair": np.arange(0, 3), "eyes": np.arange(3, 6), "accessories": np.arange(6, 8)}
    edits = _locality_edits(_toy_labels(), TOY_GROUPS, columns, 50, np.random.default_rng(1))
    assert set(edits) == set(TOY_GROUPS)
    for name, (base, edited) in edits.items():
        assert base.shape == edited.shape == (50, len(TOY_VOCABULARY))
        outside = np.setdiff1d(np.arange(len(TOY_VOCABULARY)), columns[name])
        assert np.array_equal(base[:, outside], edited[:, outside])
        inside_base, inside_edited = base[:, columns[name]], edited[:, columns[name]]
        if TOY_GROUPS[name]["multi"]:
            assert ((inside_base != inside_edited).sum(axis=1) == 1).all()  # one tag toggled
        else:
            assert (inside_edited.sum(axis=1) == 1).all()  # exactly one value, one the base lacked
            assert not (inside_base & inside_edited).any()
    # A single-choice group with one value has nothing to change to.
    lonely = {**TOY_GROUPS, "eyes": {"tags": ["brown"], "multi": False}}
    assert set(_locality_edits(_toy_labels(), lonely, {**columns, "eyes": np.arange(3, 4)}, 5,
                               np.random.default_rng(1))) == {"hair", "accessories"}


def test_edit_locality_tells_a_disentangled_generator_from_an_entangled_one() -> None:
    cfg = CFG.model_copy(update={"control_samples": 24, "batch_size": 16})
    reader, labels = _StripeReader(), _toy_labels()
    local = _edit_locality(cfg, 0, _toy_model(False), reader, labels)
    assert set(local) == {"edit_locality"} | {f"edit_locality.{g}" for g in TOY_GROUPS}
    assert all(value == 1.0 for value in local.values())
    entangled = _edit_locality(cfg, 0, _toy_model(True), reader, labels)
    assert set(entangled) == set(local)
    assert entangled["edit_locality"] < 0.6
    assert all(value < 0.75 for value in entangled.values())
    # Deterministic for the seed.
    assert _edit_locality(cfg, 0, _toy_model(True), reader, labels) == entangled


def test_control_and_locality_requests_keep_a_group_visible_when_another_tag_would_hide_it() -> None:
    from moepipe.evaluate.stage import _control_requests, _locality_edits

    groups = {"eyes": {"tags": ["blue_eyes", "red_eyes"], "multi": False},
              "expression": {"tags": ["smile", "closed_eyes"], "multi": False}}
    columns = {"eyes": np.array([0, 1]), "expression": np.array([2, 3])}
    rng = np.random.default_rng(0)
    labels = np.zeros((100, 4), np.uint8)
    labels[np.arange(100), rng.integers(0, 2, 100)] = 1
    labels[np.arange(100), 2 + rng.integers(0, 2, 100)] = 1
    requests, rows = _control_requests(labels, groups, columns, 20, np.random.default_rng(1), {"eyes": [3]})
    assert not requests[rows["eyes"], 3].any()  # eye colour is asked for with open eyes only
    assert requests[rows["expression"], 3].sum() == 20  # closed eyes are still asked for, in their own group
    unhidden, unhidden_rows = _control_requests(labels, groups, columns, 20, np.random.default_rng(1))
    assert unhidden[unhidden_rows["eyes"], 3].any()
    edits = _locality_edits(labels, groups, columns, 30, np.random.default_rng(2), avoid=[3])
    for base, edited in edits.values():
        assert not base[:, 3].any() and not edited[:, 3].any()
    assert "expression" not in edits  # one value left once closed eyes are avoided: nothing to edit to
