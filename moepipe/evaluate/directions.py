"""Attribute-edit directions for unconditional generators: linear boundaries in z space.

An unconditional generator takes no labels, yet most attributes still change roughly linearly
with z (InterFaceGAN, Shen et al. 2020). We draw avatars from seeded latents, let the attribute
classifier (moepipe/evaluate/features.py) label them, and fit one logistic-regression boundary
w.z + c = 0 per tag: a multi group's tag is on when its probability exceeds 0.5, a single-choice
group's tag when it is the argmax (one tag against the rest of its group). The normal
n = w / |w| and offset b = c / |w| make n.z + b the signed distance to the boundary, in units
of z, which is what `AvatarModel.edit` walks along. Each boundary's accuracy on a held-out part
of the samples says how far the tag can be controlled this way (near the tag's base rate: not).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from moepipe.data import to_tensor
from moepipe.errors import UserError
from moepipe.evaluate.features import check_resolutions, load_classifier
from moepipe.generate.avatar import AvatarModel, Directions

MIN_EXAMPLES = 5  # a tag seen (or missed) fewer times than this in the samples gets no direction
HOLDOUT = 0.2  # share of the samples kept out of the fit to measure each boundary's accuracy


def attribute_labels(probabilities: Mapping[str, np.ndarray], groups: Mapping[str, Any],
                     vocabulary: list[str]) -> tuple[list[str], np.ndarray]:
    """Classifier probabilities {group: (N, K)} -> (tags (T,), bool (N, T)), tags in vocabulary order.

    Multi groups: p > 0.5. Single-choice groups: the argmax tag is on, the others off.
    """
    columns: dict[str, np.ndarray] = {}
    for name, group in groups.items():
        p = np.asarray(probabilities[name])
        if group.get("multi", False):
            on = p > 0.5
        else:
            on = np.zeros(p.shape, bool)
            on[np.arange(len(p)), p.argmax(axis=1)] = True
        columns.update({tag: on[:, k] for k, tag in enumerate(group["tags"])})
    tags = [t for t in vocabulary if t in columns] + [t for t in columns if t not in vocabulary]
    n = len(next(iter(probabilities.values()))) if probabilities else 0
    return tags, np.stack([columns[t] for t in tags], axis=1) if tags else np.zeros((n, 0), bool)


def fit_boundaries(z: np.ndarray, labels: np.ndarray, *, seed: int = 0, holdout: float = HOLDOUT,
                   l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One L2-regularised logistic regression per label column of z (N, D) vs labels bool (N, T).

    Returns unit normals (T, D), offsets (T,) (signed distance = n.z + b) and accuracy (T,) on
    a seeded random `holdout` share of the rows, which the fit never sees. Each column needs
    both classes among the fitted rows. Deterministic for a seed.
    """
    count, dim = z.shape
    order = np.random.default_rng(seed).permutation(count)
    cut = count - int(round(count * holdout)) if count > 1 else count
    fit, held = order[:cut], order[cut:]
    x = torch.from_numpy(np.asarray(z, np.float64))
    y = torch.from_numpy(np.asarray(labels, np.float64))
    weights = torch.zeros(y.shape[1], dim, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    x_fit, y_fit = x[fit], y[fit]
    # The tags' problems are independent, so one joint L-BFGS solve is T separate fits at once.
    optimizer = torch.optim.LBFGS([weights, bias], lr=1.0, max_iter=500, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x_fit @ weights.T + bias
        loss = F.binary_cross_entropy_with_logits(logits, y_fit, reduction="sum") / len(x_fit)
        loss = loss + 0.5 * l2 * weights.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        norm = weights.norm(dim=1).clamp_min(1e-12)
        normals, offsets = weights / norm[:, None], bias / norm
        check = held if len(held) else fit
        right = ((x[check] @ normals.T + offsets) > 0) == y[check].bool()
        accuracy = right.double().mean(dim=0)
    return normals.float().numpy(), offsets.float().numpy(), accuracy.float().numpy()


@torch.no_grad()
def sample_labels(avatars: AvatarModel, classifier: Any, seeds: list[int],
                  batch_size: int = 64) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Render the seeds' avatars (no edits, psi 1) and read them: (z (N, D), tags (T,), bool (N, T)).

    The classifier must read the generator's resolution (check_resolutions): a resized avatar
    is not what the classifier was trained on, so its labels, and the directions, would drift.
    """

    check_resolutions(generator="the generator", generator_resolution=avatars.resolution,
                      classifier="the classifier", classifier_resolution=classifier.resolution)
    z = avatars.latents(seeds)
    probabilities: dict[str, list[np.ndarray]] = {name: [] for name in classifier.groups}
    device = next(classifier.parameters()).device
    for start in range(0, len(seeds), batch_size):
        part = z[start:start + batch_size]
        images = avatars.render(part, None, 1.0, batch_size)
        x = to_tensor(images)
        for name, p in classifier.predict(x.to(device)).items():
            probabilities[name].append(p.float().cpu().numpy())
    joined = {name: np.concatenate(parts) for name, parts in probabilities.items()}
    tags, labels = attribute_labels(joined, classifier.groups, list(classifier.vocabulary))
    return z.numpy(), tags, labels


def learn_directions(avatars: AvatarModel, classifier: Any, *, samples: int = 2000, seed: int = 0,
                     batch_size: int = 64) -> Directions:
    """Edit directions of an unconditional generator for every tag the classifier reads.

    Tags seen on fewer than MIN_EXAMPLES of the samples, or missed on fewer, are left out.
    """
    if avatars.conditional:
        raise UserError("this generator is conditional: attributes are its labels, it needs no edit directions")
    if samples < 2 * MIN_EXAMPLES:
        raise UserError(f"directions need at least {2 * MIN_EXAMPLES} samples (got {samples})")
    base = (seed + 1) << 32  # away from the small seeds that pictures and evaluation draw
    z, tags, labels = sample_labels(avatars, classifier, [base + i for i in range(samples)], batch_size)
    positives = labels.sum(axis=0)
    keep = [i for i, count in enumerate(positives) if MIN_EXAMPLES <= count <= samples - MIN_EXAMPLES]
    if not keep:
        return Directions([], np.zeros((0, avatars.z_dim), np.float32), np.zeros(0, np.float32))
    normals, offsets, accuracy = fit_boundaries(z, labels[:, keep], seed=seed)
    kept = [tags[i] for i in keep]
    return Directions(kept, normals, offsets, {t: round(float(a), 4) for t, a in zip(kept, accuracy)})


@dataclass
class DirectionsSummary:
    """What the directions stage did, for its one-line report."""

    out: Path
    conditional: bool
    tags: dict[str, float] = field(default_factory=dict)  # tag -> held-out accuracy
    skipped: list[str] = field(default_factory=list)
    samples: int = 0

    def __str__(self) -> str:
        return self.summary

    @property
    def summary(self) -> str:
        """The one line `moepipe directions` prints."""
        if self.conditional:
            return f"directions: conditional generator, attributes are labels; wrote an empty {self.out}"
        mean = f", mean held-out accuracy {np.mean(list(self.tags.values())):.3f}" if self.tags else ""
        skipped = f"; skipped {len(self.skipped)} tag(s) too rare or too common" if self.skipped else ""
        return f"directions: {len(self.tags)} tag(s) from {self.samples} samples{mean}{skipped} → {self.out}"


def directions_stage(generator: Path, classifier: Path, out: Path, samples: int = 2000,
                     seed: int = 0) -> DirectionsSummary:
    """Learn edit directions for generator.pt with classifier.pt and write them to `out` (.npz).

    A conditional generator gets a file with no tags, so the stage always has its output.
    """
    avatars = AvatarModel.load(Path(generator))
    if avatars.conditional:
        Directions([], np.zeros((0, avatars.z_dim), np.float32), np.zeros(0, np.float32)).save(Path(out))
        return DirectionsSummary(Path(out), True)

    reader, _ = load_classifier(Path(classifier))
    check_resolutions(generator=generator, generator_resolution=avatars.resolution, classifier=classifier,
                      classifier_resolution=reader.resolution)
    directions = learn_directions(avatars, reader, samples=samples, seed=seed)
    directions.save(Path(out))
    skipped = [t for t in reader.vocabulary if t not in directions.accuracy]
    return DirectionsSummary(Path(out), False, dict(directions.accuracy), skipped, samples)
