"""Preprocess stage: curated crops → packed uint8 arrays with labels and a train/val split.

Output folder::

    train_images.npy  (N, H, W, 3) uint8      train_labels.npy  (N, L) uint8 multi-hot
    val_images.npy    (M, H, W, 3) uint8      val_labels.npy    (M, L) uint8
    index.jsonl       one line per row: split, row, sha256, source, post_id, mirrored
    meta.json         resolution, vocabulary, label groups, counts (what training needs to know)
    stats.json        per-channel mean/std and label frequencies (a DVC metric)

Arrays are plain .npy so training memory-maps them: no image decoding in the training loop.
The split is decided by a hash of each image's content, so an image keeps its split when the
data set grows. No hue, saturation or colour transform exists here on purpose: the labels name
colours (hair, eyes), and a colour shift would make them lie.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from moepipe.config import LabelsConfig, PreprocessConfig
from moepipe.errors import UserError
from moepipe.images import atomic_write, write_json
from moepipe.manifest import read_jsonl, write_jsonl
from moepipe.progress import progress_bar
from moepipe.reports import Report, publish

SPLIT_SALT = b"moepipe-split-v1"
ARRAYS = ("train_images", "train_labels", "val_images", "val_labels")


def split_of(sha256: str, val_fraction: float) -> str:
    """'val' or 'train' from a stable hash of the content digest."""
    digest = hashlib.sha256(SPLIT_SALT + sha256.encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def build_pipeline(cfg: PreprocessConfig, seed: int) -> Any:
    """The albumentations pipeline: square resize to `resolution`, optional random flip; seeded."""
    import albumentations as A
    import cv2

    interpolation = {
        "area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR,
        "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4,
    }[cfg.interpolation]
    size = cfg.resolution
    transforms = [
        A.SmallestMaxSize(max_size=size, interpolation=interpolation),
        A.CenterCrop(height=size, width=size),
    ]
    if cfg.hflip_p > 0:
        transforms.append(A.HorizontalFlip(p=cfg.hflip_p))
    return A.Compose(transforms, seed=seed)


def _decode(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return np.asarray(image.convert("RGB"))


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write(path, buffer.getvalue())


def dataset_stats(images: np.ndarray, labels: np.ndarray, vocabulary: list[str]) -> dict[str, Any]:
    """Per-channel mean/std in [0, 1] and label frequencies of a packed (N, H, W, 3) uint8 set."""
    if len(images) == 0:
        return {"mean": [0.0] * 3, "std": [0.0] * 3, "label_frequency": {t: 0.0 for t in vocabulary}}
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    frequency = labels.mean(axis=0) if len(labels) else np.zeros(len(vocabulary))
    return {
        "mean": [round(float(v), 5) for v in pixels.mean(axis=0)],
        "std": [round(float(v), 5) for v in pixels.std(axis=0)],
        "label_frequency": {tag: round(float(f), 5) for tag, f in zip(vocabulary, frequency)},
    }


def preprocess(cfg: PreprocessConfig, labels: LabelsConfig, seed: int, curated: Path, out: Path,
               reports: Path | None = None) -> Report:
    """Pack the curated images into arrays; returns stats.json's content (published to `reports`)."""
    manifest_path = curated / "manifest.jsonl"
    if not manifest_path.is_file():
        raise UserError(f"preprocess: no curated data at {curated} (run `moepipe curate` first)")
    records = sorted(read_jsonl(manifest_path), key=lambda r: r["sha256"])
    if not records:
        raise UserError(f"preprocess: {manifest_path} lists no images; nothing to train on")
    vocabulary = labels.vocabulary
    width = len(vocabulary)
    for record in records:
        if len(record.get("labels", [])) != width:
            raise UserError(
                f"preprocess: {manifest_path}: labels of {record['file']} have "
                f"{len(record.get('labels', []))} entries, the vocabulary {width}; re-run curate"
            )

    pipeline = build_pipeline(cfg, seed)
    size = cfg.resolution
    rows: dict[str, list[tuple[np.ndarray, np.ndarray, dict]]] = {"train": [], "val": []}
    with progress_bar() as progress:
        task = progress.add_task("preprocess", total=len(records), status="")
        for record in records:
            image = pipeline(image=_decode(curated / record["file"]))["image"]
            if image.shape != (size, size, 3):
                raise AssertionError(f"pipeline produced {image.shape} for {record['file']}")
            label = np.asarray(record["labels"], dtype=np.uint8)
            split = split_of(record["sha256"], cfg.val_fraction)
            entry = {"sha256": record["sha256"], "source": record["source"],
                     "post_id": record["post_id"], "mirrored": False}
            rows[split].append((image, label, entry))
            if split == "train" and cfg.mirror_train:
                rows[split].append((image[:, ::-1], label, {**entry, "mirrored": True}))
            progress.update(task, advance=1)

    out.mkdir(parents=True, exist_ok=True)
    index: list[dict] = []
    counts: dict[str, int] = {}
    packed: dict[str, np.ndarray] = {}
    for split, items in rows.items():
        images = np.stack([i for i, _, _ in items]) if items else np.zeros((0, size, size, 3), np.uint8)
        label_rows = np.stack([label for _, label, _ in items]) if items else np.zeros((0, width), np.uint8)
        _save_npy(out / f"{split}_images.npy", images)
        _save_npy(out / f"{split}_labels.npy", label_rows)
        packed[split] = images
        packed[f"{split}_labels"] = label_rows
        counts[split] = len(items)
        index.extend({"split": split, "row": row, **entry} for row, (_, _, entry) in enumerate(items))
    write_jsonl(out / "index.jsonl", index)

    meta = {
        "resolution": size,
        "vocabulary": vocabulary,
        "groups": {name: {"tags": g.tags, "multi": g.multi} for name, g in labels.groups.items()},
        "counts": counts,
        "labelled": bool(packed["train_labels"].any()) if counts["train"] else False,
        "format": "npy uint8 NHWC",
    }
    write_json(out / "meta.json", meta)
    stats = {
        "images": counts,
        "train": dataset_stats(packed["train"], packed["train_labels"], vocabulary),
    }
    write_json(out / "stats.json", stats)
    publish(out, reports, "preprocess", "stats.json")
    return Report(stats, f"preprocess: {counts['train']} train, {counts['val']} val at {size} px → {out}")
