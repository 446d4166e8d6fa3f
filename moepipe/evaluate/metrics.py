"""Sample-quality and attribute-control metrics in a feature space (pure numpy/scipy).

Feature arrays are (N, D) float: one row per image, from `features.extract` (the attribute
classifier's embedding) or `inception.inception_features` (2048-d pool3). Metrics compare a
real set `a`/`real` with a generated set `b`/`fake`; none of them knows which network made
the features, so numbers are comparable only between runs that used the same feature extractor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import linalg


def _as_features(name: str, x: np.ndarray, min_rows: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got {x.shape}")
    if len(x) < min_rows:
        raise ValueError(f"{name}: needs at least {min_rows} rows, got {len(x)}")
    return x


def feature_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), N ≥ 2, in float64."""
    x = _as_features("features", x, 2)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): means (D,), covariances (D, D).

    ||mu1 - mu2||² + tr(S1 + S2 - 2 (S1 S2)^½). Follows the reference FID code: when the
    product is singular (fewer samples than dimensions) the square root is retried with `eps`
    added to both diagonals, and the imaginary part that rounding leaves is dropped unless it is
    large, which means the covariances are not valid and the number would be meaningless.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        largest = np.max(np.abs(covmean.imag))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: covariance square root has imaginary part {largest:.3g}")
        covmean = covmean.real
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(max(distance, 0.0))  # rounding can leave -1e-12 for identical sets


def fd_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features a (N, D) and b (M, D); N, M ≥ 2."""
    mu1, sigma1 = feature_statistics(a)
    mu2, sigma2 = feature_statistics(b)
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of equal-size samples x, y (m, d), kernel k(u, v) = (u·v / d + 1)³."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    # Dropping the diagonals (k(x_i, x_i)) is what makes the within-set terms unbiased.
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance of features a (N, D) and b (M, D): (mean, std) over subsets.

    Each subset draws min(subset_size, N, M) rows of each set without replacement and takes the
    unbiased MMD² with the cubic polynomial kernel; unlike FD its expectation is 0 for samples
    of one distribution at any sample size, so it can be negative for small sets.
    """
    a, b = _as_features("a", a, 2), _as_features("b", b, 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"kid: feature dims differ ({a.shape[1]} vs {b.shape[1]})")
    if subsets < 1:
        raise ValueError(f"kid: subsets must be ≥ 1 (got {subsets})")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"kid: subset_size must be ≥ 2 (got {subset_size})")
    rng = np.random.default_rng(seed)
    values = np.array([
        _polynomial_mmd2(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
        for _ in range(subsets)
    ])
    return float(values.mean()), float(values.std())


def _squared_distances(x: np.ndarray, y: np.ndarray, y_norms: np.ndarray) -> np.ndarray:
    """(len(x), len(y)) squared Euclidean distances, clipped at 0 against rounding."""
    d2 = (x * x).sum(axis=1)[:, None] + y_norms[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d2, 0.0)


def _row_block(other_rows: int, budget: int = 1 << 24) -> int:
    """Rows per block so that one (rows, other_rows) float64 block stays near 128 MiB."""
    return max(1, budget // max(1, other_rows))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance (N,) from each row of x (N, D) to its k-th nearest other row."""
    if not 1 <= k < len(x):
        raise ValueError(f"k must be in [1, {len(x) - 1}] for {len(x)} samples (got {k})")
    norms = (x * x).sum(axis=1)
    radii = np.empty(len(x))
    step = _row_block(len(x))
    for start in range(0, len(x), step):
        d2 = _squared_distances(x[start:start + step], x, norms)
        # Index k, not k-1: the smallest entry of each row is the point itself at distance 0.
        radii[start:start + step] = np.partition(d2, k, axis=1)[:, k]
    return radii


def _inside_manifold(queries: np.ndarray, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(len(queries),) bool: query lies in some ball (points[i], radii[i]) (squared radii)."""
    norms = (points * points).sum(axis=1)
    inside = np.zeros(len(queries), dtype=bool)
    step = _row_block(len(points))
    for start in range(0, len(queries), step):
        d2 = _squared_distances(queries[start:start + step], points, norms)
        inside[start:start + step] = (d2 <= radii[None, :]).any(axis=1)
    return inside


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of features real (N, D), fake (M, D).

    Each set's manifold is the union of balls around its samples reaching their k-th nearest
    neighbour. Precision: fraction of fake samples inside the real manifold (are samples
    realistic?); recall: fraction of real samples inside the fake manifold (is the data covered?).
    Distances go in row blocks, so memory stays near 128 MiB whatever N and M.
    """
    real, fake = _as_features("real", real, k + 1), _as_features("fake", fake, k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall: feature dims differ ({real.shape[1]} vs {fake.shape[1]})")
    precision = _inside_manifold(fake, real, knn_radii(real, k)).mean()
    recall = _inside_manifold(real, fake, knn_radii(fake, k)).mean()
    return float(precision), float(recall)


def plain_groups(groups: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Label groups as {name: {"tags": [...], "multi": bool}} from meta.json dicts or config models."""
    plain = {}
    for name, group in groups.items():
        if not isinstance(group, Mapping):
            group = group.model_dump() if hasattr(group, "model_dump") else vars(group)
        plain[name] = {"tags": list(group["tags"]), "multi": bool(group.get("multi", False))}
    return plain


def group_columns(groups: Mapping[str, Any], vocabulary: list[str] | None = None) -> dict[str, np.ndarray]:
    """Column indices (K,) of each group's tags in label vectors laid out by `vocabulary`."""
    groups = plain_groups(groups)
    vocabulary = vocabulary or [tag for group in groups.values() for tag in group["tags"]]
    position = {tag: i for i, tag in enumerate(vocabulary)}
    missing = [tag for group in groups.values() for tag in group["tags"] if tag not in position]
    if missing:
        raise ValueError(f"label groups name tags missing from the vocabulary: {missing}")
    return {name: np.array([position[tag] for tag in group["tags"]]) for name, group in groups.items()}


def control_accuracy(predictions: Mapping[str, np.ndarray], requested: np.ndarray,
                     groups: Mapping[str, Any], vocabulary: list[str] | None = None) -> dict[str, Any]:
    """How often the classifier sees the attributes that were asked for.

    predictions: {group: (N, K) probabilities} from `features.classify` on N images;
    requested: (N, L) multi-hot labels the images were generated with (or, for the classifier's
    own accuracy, their true labels), columns laid out by `vocabulary`.

    Single-choice group: over rows requesting a value in it, how often the argmax is a
    requested value. Multi group: mean per-tag agreement of (p > 0.5) with the request, over
    all rows and tags, so putting an accessory on everyone does not score. Returns
    {"groups": {group: accuracy or None}, "n": {group: rows counted}, "tags": {tag: rate the
    tag is seen when requested}, "overall": mean of the group accuracies or None}.
    """
    groups = plain_groups(groups)
    columns = group_columns(groups, vocabulary)
    requested = np.asarray(requested) > 0
    accuracy: dict[str, float | None] = {}
    counted: dict[str, int] = {}
    tags: dict[str, float] = {}
    for name, group in groups.items():
        probs = np.asarray(predictions[name], dtype=np.float64)
        asked = requested[:, columns[name]]
        if probs.shape != asked.shape:
            raise ValueError(f"control_accuracy: {name} predictions {probs.shape} vs requests {asked.shape}")
        if group["multi"]:
            seen = probs > 0.5
            counted[name] = len(asked)
            accuracy[name] = float((seen == asked).mean()) if asked.size else None
        else:
            rows = asked.any(axis=1)
            seen = np.zeros_like(asked)
            seen[np.arange(len(probs)), probs.argmax(axis=1)] = True
            counted[name] = int(rows.sum())
            accuracy[name] = float((seen & asked).any(axis=1)[rows].mean()) if rows.any() else None
        for j, tag in enumerate(group["tags"]):
            if asked[:, j].any():
                tags[tag] = float(seen[asked[:, j], j].mean())
    scored = [value for value in accuracy.values() if value is not None]
    return {"groups": accuracy, "n": counted, "tags": tags,
            "overall": float(np.mean(scored)) if scored else None}


def edit_locality(base: Mapping[str, np.ndarray], edited: Mapping[str, np.ndarray], groups: Mapping[str, Any],
                  edited_group: str) -> float | None:
    """How often editing one attribute group leaves the classifier's reading of every other group alone.

    base, edited: {group: (N, K) probabilities} from `features.classify` on N avatars and on the
    same N avatars (same latents) drawn with only `edited_group` changed. Over the N × (groups − 1)
    pairs (avatar, other group), the fraction read the same on both: a single-choice group keeps
    its argmax, a multi group keeps the (p > 0.5) decision of every one of its tags. The edited
    group itself is not scored (whether the edit took is control accuracy's business), so a
    generator that ignores its labels altogether scores 1: read it next to control_accuracy.
    None when there is nothing to score (no avatars, or no group but the edited one).
    """
    groups = plain_groups(groups)
    if edited_group not in groups:
        raise ValueError(f"edit_locality: unknown edited group {edited_group!r}; groups: {list(groups)}")
    kept: list[np.ndarray] = []
    for name, group in groups.items():
        if name == edited_group:
            continue
        before, after = np.asarray(base[name], np.float64), np.asarray(edited[name], np.float64)
        if before.shape != after.shape or before.ndim != 2 or before.shape[1] != len(group["tags"]):
            raise ValueError(f"edit_locality: {name} predictions {before.shape} vs {after.shape}, "
                             f"expected (N, {len(group['tags'])})")
        if group["multi"]:
            kept.append(((before > 0.5) == (after > 0.5)).all(axis=1))
        else:
            kept.append(before.argmax(axis=1) == after.argmax(axis=1))
    if not kept or not kept[0].size:
        return None
    return float(np.concatenate(kept).mean())


def hidden_by(predictions: Mapping[str, np.ndarray], labels: np.ndarray, groups: Mapping[str, Any],
              vocabulary: list[str] | None = None, min_rows: int = 10, threshold: float = 0.5) -> dict[str, list[str]]:
    """{group: tags of other groups that hide it}, read from a classifier's held-out predictions.

    A tag hides a single-choice group when, on the (at least ``min_rows``) real images that carry
    it, the classifier reads the group right less than ``threshold`` of the time although it is
    labelled: closed eyes hide the eye colour. Such combinations cannot be scored, so control
    accuracy and edit locality leave them out rather than blame the generator for them.
    """
    groups = plain_groups(groups)
    columns = group_columns(groups, vocabulary)
    vocabulary = vocabulary or [tag for group in groups.values() for tag in group["tags"]]
    labels = np.asarray(labels) > 0
    hidden: dict[str, list[str]] = {}
    for name, group in groups.items():
        if group["multi"]:
            continue
        asked = labels[:, columns[name]]
        right = np.asarray(predictions[name]).argmax(axis=1) == asked.argmax(axis=1)
        labelled = asked.sum(axis=1) == 1
        own = set(columns[name].tolist())
        tags = [vocabulary[j] for j in range(labels.shape[1]) if j not in own
                and (labelled & labels[:, j]).sum() >= min_rows and right[labelled & labels[:, j]].mean() < threshold]
        if tags:
            hidden[name] = tags
    return hidden
