"""The attribute classifier (training, report, save/load, extraction) and the FID Inception wiring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from moepipe.data import PackedSet, to_tensor
from moepipe.errors import UserError
from moepipe.evaluate.features import (
    AttributeClassifier,
    augment_batch,
    check_resolutions,
    classify,
    extract,
    load_classifier,
    save_classifier,
    train_classifier,
)
from moepipe.evaluate.inception import FEATURE_DIM, FIDInceptionV3, inception_features, load_fid_inception


@pytest.fixture(scope="module")
def trained16(prepared16: Path) -> tuple[AttributeClassifier, dict]:
    data = PackedSet(prepared16, "train")
    return train_classifier(data, PackedSet(prepared16, "val"), epochs=2, batch_size=8, seed=0)


def test_classifier_beats_chance_on_hair_colour(prepared32: Path) -> None:
    train, val = PackedSet(prepared32, "train"), PackedSet(prepared32, "val")
    classifier, report = train_classifier(train, val, epochs=8, batch_size=16, seed=0)
    groups = train.meta["groups"]
    assert set(report["accuracy"]) == set(report["baseline"]) == set(report["val_labelled"]) == set(groups)
    assert report["val_labelled"]["hair_color"] >= 10, "prepared32 has too few val images to judge accuracy"
    # Ten hair colours: chance is 0.1, and the most frequent training colour does little better.
    assert report["accuracy"]["hair_color"] >= 0.5
    assert report["accuracy"]["hair_color"] > 3 * report["baseline"]["hair_color"]
    assert 0.0 <= report["overall"] <= 1.0
    assert report["data_digest"] and report["train_images"] == len(train) and report["val_images"] == len(val)


def test_training_is_deterministic_for_a_seed(prepared16: Path, trained16) -> None:
    data, val = PackedSet(prepared16, "train"), PackedSet(prepared16, "val")
    before = torch.random.get_rng_state()
    again, _ = train_classifier(data, val, epochs=2, batch_size=8, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG stream is untouched
    first = trained16[0].state_dict()
    assert all(torch.equal(first[k], v) for k, v in again.state_dict().items())
    other, _ = train_classifier(data, val, epochs=2, batch_size=8, seed=1)
    assert not torch.equal(first["heads.hair_color.weight"], other.state_dict()["heads.hair_color.weight"])


def test_features_and_predictions_have_the_documented_shapes(prepared16: Path, trained16) -> None:
    classifier, _ = trained16
    images = np.array(PackedSet(prepared16, "train").images)
    features = extract(classifier, images, batch_size=5)
    assert features.shape == (len(images), classifier.feature_dim) and features.dtype == np.float32
    # uint8 arrays and float tensors in [-1, 1] are the same images; batch size must not matter.
    assert np.allclose(extract(classifier, to_tensor(images), batch_size=64), features, atol=1e-5)
    probabilities = classify(classifier, images)
    assert set(probabilities) == set(classifier.groups)
    for name, group in classifier.groups.items():
        assert probabilities[name].shape == (len(images), len(group["tags"]))
        if not group["multi"]:
            assert np.allclose(probabilities[name].sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="expects"):
        classifier.features(torch.zeros(1, 3, 32, 32))


def test_report_with_an_empty_val_split_has_no_accuracies(prepared16: Path, tmp_path: Path) -> None:
    for name in ("meta.json", "train_images.npy", "train_labels.npy"):
        shutil.copy(prepared16 / name, tmp_path / name)
    train = PackedSet(tmp_path, "train")
    np.save(tmp_path / "val_images.npy", np.zeros((0, *train.images.shape[1:]), np.uint8))
    np.save(tmp_path / "val_labels.npy", np.zeros((0, train.labels.shape[1]), np.uint8))
    _, report = train_classifier(train, PackedSet(tmp_path, "val"), epochs=1, batch_size=8)
    assert report["val_images"] == 0 and report["overall"] is None
    assert all(value is None for value in report["accuracy"].values())
    json.dumps(report, allow_nan=False)  # strict JSON: None, never NaN


def test_save_and_load_give_identical_features(prepared16: Path, trained16, tmp_path: Path) -> None:
    classifier, report = trained16
    path = tmp_path / "classifier.pt"
    save_classifier(path, classifier, report)
    payload = torch.load(path, weights_only=True)  # a plain dict: safe to load
    assert payload["resolution"] == 16 and payload["groups"] == classifier.groups
    assert payload["vocabulary"] == PackedSet(prepared16, "train").vocabulary
    loaded, loaded_report = load_classifier(path)
    assert loaded_report == report and not loaded.training
    images = np.asarray(PackedSet(prepared16, "train").images)
    assert np.array_equal(extract(loaded, images), extract(classifier, images))


def test_load_classifier_names_the_bad_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no feature classifier at .*missing.pt"):
        load_classifier(tmp_path / "missing.pt")
    other = tmp_path / "generator.pt"
    torch.save({"format": "moepipe-generator/1"}, other)
    with pytest.raises(UserError, match="generator.pt: not a moepipe feature classifier"):
        load_classifier(other)


@pytest.mark.parametrize("resolution", [8, 48, 512])
def test_classifier_follows_the_config_rule_for_resolution(resolution: int) -> None:
    groups = {"hair": {"tags": ["red", "blue"], "multi": False}}
    with pytest.raises(ValueError) as caught:
        AttributeClassifier(resolution, groups, width=4, feature_dim=8)
    assert str(caught.value) == f"resolution must be a power of two from 16 to 256 px (got {resolution})"
    embedding, _ = AttributeClassifier(16, groups, width=4, feature_dim=8)(torch.zeros(2, 3, 16, 16))
    assert embedding.shape == (2, 8)


def test_resolution_mismatches_name_both_values_and_what_to_rerun() -> None:
    files = dict(generator="g.pt", classifier="c.pt")
    assert check_resolutions(**files, generator_resolution=32, classifier_resolution=32) == 32
    assert check_resolutions(**files, generator_resolution=32, classifier_resolution=32, prepared="data",
                             prepared_resolution=32) == 32
    cases = [
        (dict(generator_resolution=32, classifier_resolution=64),
         "g.pt draws 32 px avatars but c.pt reads 64 px images; re-run `moepipe classifier` on the data the "
         "generator was trained on"),
        (dict(generator_resolution=32, classifier_resolution=64, prepared="data", prepared_resolution=64),
         "g.pt draws 32 px avatars but data holds 64 px images; evaluate a generator against the data it was "
         "trained on, or re-run `moepipe train` on this data"),
        (dict(generator_resolution=64, classifier_resolution=32, prepared="data", prepared_resolution=64),
         "c.pt reads 32 px images but data holds 64 px images; re-run `moepipe classifier`"),
    ]
    for values, message in cases:
        with pytest.raises(UserError) as caught:
            check_resolutions(**files, **values)
        assert str(caught.value) == message


def test_augmentation_only_moves_pixels() -> None:
    images = torch.linspace(-1, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    moved = augment_batch(images, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape
    assert torch.equal(augment_batch(images, torch.Generator().manual_seed(0)), moved)
    assert moved.min() >= images.min() and moved.max() <= images.max()  # no new values, no colour shift
    flat = torch.full((4, 3, 16, 16), 0.25)
    assert torch.equal(augment_batch(flat, torch.Generator().manual_seed(1)), flat)


# --- FID Inception ----------------------------------------------------------------------------

# Names and shapes as in pytorch-fid's pt_inception-2015-12-05-6726825d.pth (torchvision's
# Inception3 module names, 1008 classes, no AuxLogits).
KNOWN_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_mean": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A weights file the test creates: the randomly initialised network's state_dict."""
    torch.manual_seed(0)
    state = FIDInceptionV3().state_dict()
    path = tmp_path_factory.mktemp("inception") / "pt_inception-test.pth"
    torch.save(state, path)
    return path, state


def test_fid_inception_has_pytorch_fid_keys_and_loads_them(inception_file) -> None:
    path, state = inception_file
    for key, shape in KNOWN_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(key.startswith("AuxLogits") for key in state)
    model = load_fid_inception(path)
    # torchvision's Inception3 without its aux head, with 1008 classes, has exactly this many.
    assert sum(p.numel() for p in model.parameters()) == 23_850_960
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert not model.training


def test_fid_inception_gives_2048_features(inception_file) -> None:
    model = load_fid_inception(inception_file[0])
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    features = inception_features(model, images)
    assert features.shape == (2, FEATURE_DIM) and np.isfinite(features).all()
    assert (features >= 0).all()  # pool3 averages ReLU outputs
    assert not np.allclose(features[0], features[1])


def test_fid_inception_accepts_files_without_batch_counters(inception_file, tmp_path: Path) -> None:
    _, state = inception_file
    legacy = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(legacy, tmp_path / "legacy.pth")
    load_fid_inception(tmp_path / "legacy.pth")


def test_fid_inception_errors_name_the_file_and_the_keys(inception_file, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found at .*absent.pth"):
        load_fid_inception(tmp_path / "absent.pth")
    _, state = inception_file
    # torchvision's ImageNet head (1000 classes) and an aux head: not the FID network.
    wrong = {"fc.weight": torch.zeros(1000, 2048), "AuxLogits.fc.weight": torch.zeros(1000, 768),
             "Conv2d_1a_3x3.conv.weight": state["Conv2d_1a_3x3.conv.weight"]}
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(UserError) as caught:
        load_fid_inception(tmp_path / "wrong.pth")
    message = str(caught.value)
    assert "wrong.pth" in message and "keys do not match" in message
    assert "missing" in message and "AuxLogits.fc.weight" in message and "wrong shape: fc.weight" in message
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="junk.pth: cannot read"):
        load_fid_inception(tmp_path / "junk.pth")
