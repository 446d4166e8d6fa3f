import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from moepipe.config import parse_params
from moepipe.data import PackedSet, to_tensor
from moepipe.errors import UserError
from moepipe.manifest import write_jsonl
from moepipe.preprocess.stage import preprocess, split_of


def make_curated(folder, n=40, size=96):
    params = parse_params({})
    vocabulary = params.labels.vocabulary
    rng = np.random.default_rng(0)
    records = []
    (folder / "images").mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels[:, : size // 2] = (i * 5 % 256, 40, 200)  # left half flat, so a flip is visible
        path = folder / "images" / f"{i:04d}.png"
        Image.fromarray(pixels).save(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        labels = [0] * len(vocabulary)
        labels[i % len(vocabulary)] = 1
        records.append({"file": f"images/{i:04d}.png", "sha256": sha, "source": "t", "post_id": str(i),
                        "url": None, "tags": [], "rating": "general", "width": size, "height": size,
                        "attributes": [vocabulary[i % len(vocabulary)]], "labels": labels})
    write_jsonl(folder / "manifest.jsonl", records)
    return params, records


def run(tmp_path, out_name="prepared", **overrides):
    if not (tmp_path / "curated").exists():
        make_curated(tmp_path / "curated")
    params = parse_params({"preprocess": {"resolution": 32, "val_fraction": 0.25, **overrides}})
    stats = preprocess(params.preprocess, params.labels, params.seed, tmp_path / "curated", tmp_path / out_name)
    return params, stats, tmp_path / out_name


def test_packs_uint8_arrays_with_labels_and_stable_split(tmp_path):
    params, stats, out = run(tmp_path)
    train, val = PackedSet(out, "train"), PackedSet(out, "val")
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (32, 32, 3)
    assert len(train) + len(val) == 40 and len(val) > 0
    assert train.labels.shape == (len(train), len(params.labels.vocabulary))
    assert train.labels.sum(axis=1).tolist() == [1] * len(train)
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    for entry in index:
        assert entry["split"] == split_of(entry["sha256"], 0.25)
    assert stats["images"] == {"train": len(train), "val": len(val)}
    assert json.loads((out / "meta.json").read_text())["vocabulary"] == params.labels.vocabulary


def test_split_is_stable_when_data_grows():
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    splits = [split_of(s, 0.1) for s in shas]
    assert 0.07 < splits.count("val") / 2000 < 0.13
    assert [split_of(s, 0.1) for s in shas[:100]] == splits[:100]


def test_same_seed_same_bytes_and_random_flip_is_seeded(tmp_path):
    _, _, first = run(tmp_path, "a", hflip_p=0.5)
    _, _, second = run(tmp_path, "b", hflip_p=0.5)
    for name in ("train_images.npy", "val_images.npy", "train_labels.npy"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    _, _, plain = run(tmp_path, "c")
    flipped = np.load(first / "train_images.npy")
    unflipped = np.load(plain / "train_images.npy")
    changed = [not np.array_equal(a, b) for a, b in zip(flipped, unflipped)]
    assert 0 < sum(changed) < len(changed)  # some flipped, not all
    for a, b, c in zip(flipped, unflipped, changed):
        if c:
            assert np.array_equal(a, b[:, ::-1])


def test_mirror_train_doubles_training_rows_only(tmp_path):
    _, plain_stats, _ = run(tmp_path, "plain")
    _, stats, out = run(tmp_path, "mirrored", mirror_train=True)
    assert stats["images"]["train"] == 2 * plain_stats["images"]["train"]
    assert stats["images"]["val"] == plain_stats["images"]["val"]
    images = np.load(out / "train_images.npy")
    assert np.array_equal(images[1], images[0][:, ::-1])


def test_missing_or_mismatched_input_is_a_user_error(tmp_path):
    params = parse_params({})
    with pytest.raises(UserError, match="no curated data"):
        preprocess(params.preprocess, params.labels, 0, tmp_path / "nothing", tmp_path / "out")
    make_curated(tmp_path / "curated", n=3)
    short = parse_params({"labels": {"groups": {"hair_color": {"tags": ["blue_hair"]}}, "aliases": {}}})
    with pytest.raises(UserError, match=r"labels of images/\d+\.png have 33 entries, the vocabulary 1"):
        preprocess(short.preprocess, short.labels, 0, tmp_path / "curated", tmp_path / "out")


def test_batches_and_tensor_range(tmp_path):
    _, _, out = run(tmp_path)
    train = PackedSet(out, "train")
    batches = list(train.batches(8, np.random.default_rng(1)))
    assert len(batches) == len(train) // 8
    seen = np.concatenate([labels for _, labels in batches])
    assert len(seen) == len(batches) * 8
    tensor = to_tensor(batches[0][0], channels_last=True)
    assert tuple(tensor.shape) == (8, 3, 32, 32)
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert tensor.is_contiguous(memory_format=__import__("torch").channels_last)
    with pytest.raises(UserError, match="run `moepipe preprocess` first"):
        PackedSet(tmp_path / "none")


def test_the_stage_publishes_its_report_and_returns_its_summary(tmp_path):
    make_curated(tmp_path / "curated")
    params = parse_params({"preprocess": {"resolution": 32, "val_fraction": 0.25}})
    stats = preprocess(params.preprocess, params.labels, params.seed, tmp_path / "curated", tmp_path / "prepared",
                       reports=tmp_path / "reports")
    published = json.loads((tmp_path / "reports" / "preprocess.json").read_text())
    assert published == json.loads((tmp_path / "prepared" / "stats.json").read_text()) == dict(stats)
    counts = stats["images"]
    assert stats.summary == (f"preprocess: {counts['train']} train, {counts['val']} val at 32 px → "
                             f"{tmp_path / 'prepared'}")
