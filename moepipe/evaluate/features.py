"""A domain feature extractor: a small CNN trained to read the attribute labels of the data.

Inception features judge anime art poorly (and no weights can be downloaded), so FD/KID and
precision/recall are computed in the embedding of a classifier trained on the very data the
GAN learns from. The same network reads generated images back, which measures attribute
control. Scores are comparable between runs that use the same classifier file, which records
the resolution, vocabulary and label groups it was trained for and a digest of the data.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moepipe.config import check_resolution
from moepipe.data import PackedSet, to_tensor
from moepipe.errors import UserError
from moepipe.evaluate.metrics import control_accuracy, group_columns, hidden_by, plain_groups
from moepipe.images import atomic_write

CLASSIFIER_FORMAT = "moepipe-attribute-classifier/1"


def _conv(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class AttributeClassifier(nn.Module):
    """CNN over (N, 3, R, R) images in [-1, 1] → (N, feature_dim) embedding → one head per group.

    The stem folds each 2×2 pixel block into channels (pixel unshuffle) and runs two 3×3 convs
    at R/2: on CPU, full-resolution activations cost more than the multiply-adds, yet the 1-px
    outlines, irises and blush that several labels hinge on must survive the first layers (in
    trials a single 4×4 strided conv stem missed far more glasses, cat ears and eye colours).
    Stages then halve down to 4×4, with an extra 3×3 conv above 4×4, and a global average pool
    gives the embedding. Single-choice groups get softmax heads, multi groups sigmoid heads.
    """

    def __init__(self, resolution: int, groups: Mapping[str, Any], vocabulary: list[str] | None = None,
                 width: int = 32, feature_dim: int = 256) -> None:
        super().__init__()
        self.resolution = check_resolution(resolution)  # the data's rule: it reads the prepared images
        self.groups = plain_groups(groups)
        self.vocabulary = list(vocabulary) if vocabulary else [t for g in self.groups.values() for t in g["tags"]]
        self.columns = group_columns(self.groups, self.vocabulary)
        self.width, self.feature_dim = width, feature_dim

        layers: list[nn.Module] = [nn.PixelUnshuffle(2), *_conv(12, width, 1), *_conv(width, width, 1)]
        channels, size, stage = width, resolution // 2, 0
        while size > 4:
            stage, size = stage + 1, size // 2
            out = feature_dim if size <= 4 else min(width * 2 ** stage, feature_dim)
            layers += _conv(channels, out, stride=2)
            if size > 4:
                layers += _conv(out, out, stride=1)
            channels = out
        self.backbone = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(group["tags"]))
                                    for name, group in self.groups.items()})

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """images (N, 3, R, R) in [-1, 1] → (embedding (N, D), {group: logits (N, K)})."""
        if images.shape[1:] != (3, self.resolution, self.resolution):
            raise ValueError(f"classifier expects (N, 3, {self.resolution}, {self.resolution}) images, "
                             f"got {tuple(images.shape)}")
        embedding = self.backbone(images)
        return embedding, {name: head(embedding) for name, head in self.heads.items()}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, R, R) in [-1, 1] → (N, feature_dim) embedding (eval mode, no grad)."""
        self.eval()  # batch statistics would make an image's features depend on its batch mates
        return self(images)[0]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 3, R, R) in [-1, 1] → {group: (N, K) probabilities}: softmax, or sigmoid if multi."""
        self.eval()
        _, logits = self(images)
        return {name: (torch.sigmoid(x) if self.groups[name]["multi"] else torch.softmax(x, dim=1))
                for name, x in logits.items()}


def _batches(images: np.ndarray | torch.Tensor, batch_size: int):
    """(B, 3, R, R) float tensors in [-1, 1] from uint8 (N, R, R, 3) arrays or such tensors."""
    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            raise ValueError("pass uint8 images as a numpy (N, H, W, 3) array, tensors as float (N, 3, H, W)")
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size].float()
        return
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    for start in range(0, len(images), batch_size):
        # A copy: slices of PackedSet's read-only memory map cannot back a tensor safely.
        yield to_tensor(np.array(images[start:start + batch_size]))


def extract(classifier: AttributeClassifier, images: np.ndarray | torch.Tensor,
            batch_size: int = 256) -> np.ndarray:
    """Embeddings (N, feature_dim) float32 of uint8 (N, R, R, 3) images or float (N, 3, R, R) in [-1, 1]."""
    device = next(classifier.parameters()).device
    parts = [classifier.features(batch.to(device)).cpu().numpy() for batch in _batches(images, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, classifier.feature_dim), np.float32)


def classify(classifier: AttributeClassifier, images: np.ndarray | torch.Tensor,
             batch_size: int = 256) -> dict[str, np.ndarray]:
    """{group: (N, K) float32 probabilities} for images as in `extract`."""
    device = next(classifier.parameters()).device
    parts = [classifier.predict(batch.to(device)) for batch in _batches(images, batch_size)]
    return {name: (np.concatenate([p[name].cpu().numpy() for p in parts]) if parts
                   else np.zeros((0, len(group["tags"])), np.float32))
            for name, group in classifier.groups.items()}


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and an edge-replicated shift of up to max(1, R/64) px of (B, 3, R, R).

    Only geometry: a colour jitter would make hair and eye colour labels lie. Flips are safe
    because no label names a side (preprocess mirrors training images for the same reason).
    The shift stays tiny because the portraits are aligned and position is part of what the
    net uses: in trials, shifts of R/16 halved held-out eye-colour and expression accuracy.
    """
    count, _, height, width = images.shape
    flip = torch.rand(count, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    shift = max(1, height // 64)
    padded = F.pad(images, (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (count, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets)])


def _positive_weights(classifier: AttributeClassifier, labels: np.ndarray) -> dict[str, torch.Tensor]:
    """Per-tag BCE weight of positives, negatives/positives capped at 10, for the multi groups.

    Rare tags (a hat on one avatar in eight) would otherwise sit below 0.5 even when seen,
    and control accuracy would blame the generator for the classifier's shyness.
    """
    positives = labels.astype(np.float64).sum(axis=0)
    weights = {}
    for name, group in classifier.groups.items():
        if group["multi"]:
            pos = positives[classifier.columns[name]]
            weights[name] = torch.tensor(np.clip((len(labels) - pos) / np.maximum(pos, 1), 1.0, 10.0),
                                         dtype=torch.float32)
    return weights


def _loss(classifier: AttributeClassifier, logits: dict[str, torch.Tensor], labels: torch.Tensor,
          positive_weights: dict[str, torch.Tensor]) -> torch.Tensor:
    total = logits[next(iter(logits))].new_zeros(())
    for name, group in classifier.groups.items():
        target = labels[:, torch.from_numpy(classifier.columns[name])]
        if group["multi"]:
            # Summed over tags: each tag is a task as hard as a whole single-choice group.
            total = total + F.binary_cross_entropy_with_logits(
                logits[name], target, pos_weight=positive_weights[name], reduction="sum") / len(target)
            continue
        labelled = target.sum(dim=1) > 0  # images without a value in this group teach it nothing
        if labelled.any():
            # Soft targets: an image tagged with two hair colours is right with either.
            soft = target[labelled] / target[labelled].sum(dim=1, keepdim=True)
            total = total + F.cross_entropy(logits[name][labelled], soft)
    return total


def data_digest(*sets: PackedSet) -> str:
    """sha256 prefix of the images and labels of the given splits: which data a classifier read."""
    hasher = hashlib.sha256()
    for data in sets:
        for start in range(0, len(data.images), 1024):  # chunks: never the whole memory map at once
            hasher.update(np.ascontiguousarray(data.images[start:start + 1024]).tobytes())
        hasher.update(np.ascontiguousarray(data.labels).tobytes())
    return hasher.hexdigest()[:20]


def _baseline(train: PackedSet, val: PackedSet, groups: dict, columns: dict) -> dict[str, float | None]:
    """Accuracy on val of always answering the most frequent training value: what chance means."""
    counts = np.asarray(train.labels, dtype=np.int64).sum(axis=0)
    predictions = {}
    for name, group in groups.items():
        freq = counts[columns[name]] / max(1, len(train))
        if group["multi"]:
            constant = (freq > 0.5).astype(np.float32)
        else:
            constant = np.eye(len(freq), dtype=np.float32)[int(np.argmax(freq))]
        predictions[name] = np.tile(constant, (len(val), 1))
    return control_accuracy(predictions, np.asarray(val.labels), groups, train.vocabulary)["groups"]


def train_classifier(train: PackedSet, val: PackedSet, epochs: int = 30, batch_size: int = 16,
                     seed: int = 0, lr: float = 6e-3, augment: bool = True, width: int = 32,
                     feature_dim: int = 256) -> tuple[AttributeClassifier, dict[str, Any]]:
    """Train an AttributeClassifier on `train`, report held-out accuracy on `val`.

    Deterministic for a seed (on one machine and thread count); the global torch RNG is left
    as it was. The report holds per-group val accuracy ("accuracy"; single-choice: top-1 over
    images labelled in the group, multi: mean per-tag accuracy at 0.5), "overall" (their mean),
    "baseline" (always the most frequent training value), counts, time and the data digest.
    """
    if train.vocabulary != val.vocabulary:
        raise UserError("train and val splits have different label vocabularies; re-run preprocess")
    groups = plain_groups(train.meta.get("groups", {}))
    labels = np.asarray(train.labels)
    if not groups or not labels.any():
        raise UserError("the prepared data has no attribute labels to train the feature classifier on")
    resolution = int(train.images.shape[1])
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        classifier = AttributeClassifier(resolution, groups, train.vocabulary, width=width, feature_dim=feature_dim)
        optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=1e-4)
        positive_weights = _positive_weights(classifier, labels)
        steps_per_epoch = -(-len(train) // batch_size)
        # One-cycle: warm up, then anneal to ~0, so a few dozen short epochs converge untuned.
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, pct_start=0.2,
                                                       total_steps=max(1, epochs * steps_per_epoch))
        classifier.train()
        for _ in range(epochs):
            for images, batch_labels in train.batches(batch_size, rng, drop_last=False):
                if len(images) < 2:  # BatchNorm cannot normalise a batch of one
                    continue
                x = to_tensor(images)
                if augment:
                    x = augment_batch(x, generator)
                _, logits = classifier(x)
                loss = _loss(classifier, logits, torch.from_numpy(batch_labels).float(), positive_weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    classifier.eval()
    seconds = time.perf_counter() - started
    predictions = classify(classifier, val.images)
    scores = control_accuracy(predictions, np.asarray(val.labels), groups, train.vocabulary)
    hidden = hidden_by(predictions, np.asarray(val.labels), groups, train.vocabulary)
    # Accuracy where the group can be seen at all (not on images whose other tags hide it).
    visible = {name: control_accuracy({name: predictions[name][mask]}, np.asarray(val.labels)[mask],
                                      {name: groups[name]}, train.vocabulary)["groups"][name]
               for name, mask in _visible_rows(np.asarray(val.labels), hidden, train.vocabulary).items()}
    report = {
        "accuracy": scores["groups"],
        "hidden_by": hidden,
        "accuracy_visible": visible,
        "overall": scores["overall"],
        "baseline": _baseline(train, val, groups, classifier.columns),
        "val_labelled": scores["n"],
        "train_images": len(train),
        "val_images": len(val),
        "resolution": resolution,
        "epochs": epochs,
        "seed": seed,
        "train_seconds": round(seconds, 2),
        "threads": torch.get_num_threads(),
        "data_digest": data_digest(train, val),
    }
    return classifier, report


def _visible_rows(labels: np.ndarray, hidden: Mapping[str, list[str]], vocabulary: list[str]) -> dict[str, np.ndarray]:
    """{group: (N,) bool rows carrying none of the tags that hide it} for the groups in `hidden`."""
    position = {tag: i for i, tag in enumerate(vocabulary)}
    return {name: ~labels[:, [position[t] for t in tags]].any(axis=1) for name, tags in hidden.items()}


def save_classifier(path: Path, classifier: AttributeClassifier, report: Mapping[str, Any]) -> None:
    """Write the classifier and its report as a plain dict that torch.load(weights_only=True) reads."""
    payload = {
        "format": CLASSIFIER_FORMAT,
        "resolution": classifier.resolution,
        "groups": classifier.groups,
        "vocabulary": classifier.vocabulary,
        "width": classifier.width,
        "feature_dim": classifier.feature_dim,
        "state_dict": {k: v.detach().cpu() for k, v in classifier.state_dict().items()},
        "report": dict(report),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(Path(path), buffer.getvalue())


def check_resolutions(*, generator: Path | str, generator_resolution: int, classifier: Path | str,
                      classifier_resolution: int, prepared: Path | str | None = None,
                      prepared_resolution: int | None = None) -> int:
    """The one resolution the generator, the classifier and (if given) the prepared data share.

    Each is named by its file (or a description) and its own recorded side in px. Images are
    never resized to make them fit: a mismatch means one file comes from other prepared data,
    and scores or directions read through a resize would measure the resize. Raises a one-line
    UserError naming both values and what to re-run.
    """
    if prepared is not None:
        if generator_resolution != prepared_resolution:
            raise UserError(f"{generator} draws {generator_resolution} px avatars but {prepared} holds "
                            f"{prepared_resolution} px images; evaluate a generator against the data it was "
                            f"trained on, or re-run `moepipe train` on this data")
        if classifier_resolution != prepared_resolution:
            raise UserError(f"{classifier} reads {classifier_resolution} px images but {prepared} holds "
                            f"{prepared_resolution} px images; re-run `moepipe classifier`")
    elif generator_resolution != classifier_resolution:
        raise UserError(f"{generator} draws {generator_resolution} px avatars but {classifier} reads "
                        f"{classifier_resolution} px images; re-run `moepipe classifier` on the data the "
                        f"generator was trained on")
    return int(generator_resolution)


def load_classifier(path: Path) -> tuple[AttributeClassifier, dict[str, Any]]:
    """Rebuild a saved classifier (eval mode) and return it with its training report."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no feature classifier at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{path}: cannot read the feature classifier ({error.__class__.__name__})") from error
    if not isinstance(payload, dict) or payload.get("format") != CLASSIFIER_FORMAT:
        raise UserError(f"{path}: not a moepipe feature classifier file")
    classifier = AttributeClassifier(payload["resolution"], payload["groups"], payload["vocabulary"],
                                     width=payload["width"], feature_dim=payload["feature_dim"])
    classifier.load_state_dict(payload["state_dict"])
    return classifier.eval(), dict(payload["report"])
