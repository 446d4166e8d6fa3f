"""The evaluate stage: score a generator against the held-out real images.

`evaluate` draws avatars from generator.pt and compares them with the val split in the attribute
classifier's feature space (classifier_stage.py; FD, KID, precision/recall), reads back what it asked
for (control accuracy), checks that changing one attribute leaves the classifier's reading of
the others alone (edit locality), optionally adds standard FID from local Inception weights, and
draws the report pictures. Every random choice comes from the global seed, so a re-run with the
same params, files and thread count writes the same numbers.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.linalg import LinAlgWarning

from moepipe.config import EvaluateConfig
from moepipe.data import PackedSet
from moepipe.errors import UserError
from moepipe.evaluate.features import (
    AttributeClassifier,
    check_resolutions,
    classify,
    data_digest,
    extract,
    load_classifier,
)
from moepipe.evaluate.inception import inception_features, load_fid_inception
from moepipe.evaluate.metrics import (
    control_accuracy,
    edit_locality,
    fd_from_features,
    group_columns,
    kid,
    precision_recall,
)
from moepipe.evaluate.pictures import (
    INTERPOLATION_ROWS,
    SHEET_ROWS,
    attribute_sweep,
    interpolation_strips,
    sample_sheet,
)
from moepipe.generate.avatar import AvatarModel
from moepipe.generate.pictures import png_bytes
from moepipe.images import atomic_write, write_json
from moepipe.models.export import DIRECTIONS_FILE
from moepipe.progress import progress_bar
from moepipe.reports import Report

# Each use of randomness draws from its own stream of the global seed, so that changing, say,
# control_samples leaves the scored samples alone.
_SAMPLES, _CONTROL, _PICTURES, _KID, _PRECISION, _LOCALITY = 1, 2, 3, 4, 5, 6


def _rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFF_FFFF_FFFF_FFFF, purpose])


def _seeds(rng: np.random.Generator, count: int) -> list[int]:
    """`count` consecutive (hence distinct) avatar seeds from a random start."""
    start = int(rng.integers(0, 2**40))
    return list(range(start, start + count))


# --- evaluate ---------------------------------------------------------------------------------

def _check_inputs(cfg: EvaluateConfig, prepared: Path, generator: Path, classifier_path: Path,
                  train: PackedSet, val: PackedSet, model: AvatarModel,
                  classifier: AttributeClassifier, report: dict[str, Any]) -> None:
    """One-line UserErrors for inputs that do not belong together."""
    check_resolutions(generator=generator, generator_resolution=model.resolution, classifier=classifier_path,
                      classifier_resolution=classifier.resolution, prepared=prepared,
                      prepared_resolution=int(train.meta["resolution"]))
    if model.conditional and model.vocabulary != train.vocabulary:
        raise UserError(f"{generator} was trained with other attribute labels than {prepared}; "
                        f"evaluate it against the data it was trained on")
    if classifier.vocabulary != train.vocabulary or report.get("data_digest") != data_digest(train, val):
        raise UserError(f"{classifier_path} was trained on other data than {prepared}; "
                        f"re-run `moepipe classifier`")
    needed = max(2, cfg.pr_k + 1)
    if len(val) < needed:
        raise UserError(f"{prepared} has {len(val)} val images; evaluate needs at least {needed} "
                        f"(raise preprocess.val_fraction or lower evaluate.pr_k)")
    if cfg.samples < needed:
        raise UserError(f"evaluate.samples must be at least {needed} for pr_k {cfg.pr_k} (got {cfg.samples})")


def _tags(vector: np.ndarray, vocabulary: list[str]) -> list[str]:
    return [vocabulary[j] for j in np.flatnonzero(vector)]


def _hidden_columns(hidden: dict[str, list[str]], vocabulary: list[str], group: str | None = None) -> list[int]:
    """Vocabulary columns of the tags that hide `group` (of any group when None); see metrics.hidden_by."""
    tags = hidden.get(group, []) if group is not None else [t for ts in hidden.values() for t in ts]
    return sorted({vocabulary.index(t) for t in tags if t in vocabulary})


def _rows_without(labels: np.ndarray, columns: list[int]) -> np.ndarray:
    """Indices of the label rows that carry none of `columns` (all rows if that leaves none)."""
    free = np.flatnonzero(~labels[:, columns].astype(bool).any(axis=1)) if columns else np.arange(len(labels))
    return free if len(free) else np.arange(len(labels))


def _control_requests(labels: np.ndarray, groups: dict[str, dict[str, Any]], columns: dict[str, np.ndarray],
                      per_value: int, rng: np.random.Generator, hidden: dict[str, list[int]] | None = None
                      ) -> tuple[np.ndarray, dict[str, slice]]:
    """Label vectors asking for each value of each group `per_value` times, and each group's rows.

    Every request starts from a real training label vector, so the attributes not under test
    stay as typical as in the data. A single-choice group's value replaces the group's own; a
    multi group's tag is asked for in `per_value` rows and asked to be absent in as many more,
    so that drawing it always (or never) scores one half, not full marks. `hidden` ({group: label
    columns that hide it}) keeps bases that would hide the group under test out of its requests.
    """
    blocks, rows, start = [], {}, 0
    for name, group in groups.items():
        pool = _rows_without(labels, (hidden or {}).get(name, []))
        for column in columns[name]:
            for present in ((1, 0) if group["multi"] else (1,)):
                block = labels[pool[rng.integers(0, len(pool), per_value)]].copy()
                if not group["multi"]:
                    block[:, columns[name]] = 0
                block[:, column] = present
                blocks.append(block)
        count = sum(len(block) for block in blocks) - start
        rows[name], start = slice(start, start + count), start + count
    return np.concatenate(blocks), rows


def _control(cfg: EvaluateConfig, seed: int, model: AvatarModel, classifier: AttributeClassifier,
             labels: np.ndarray, hidden: dict[str, list[str]] | None = None) -> dict[str, float]:
    """Control accuracy: the classifier reads back the attributes the avatars were asked to have.

    `hidden` ({group: tags that hide it}, from the classifier's report): a group is scored on
    requests that leave it visible (eye colour with the eyes open).
    """
    rng = _rng(seed, _CONTROL)
    groups, vocabulary = classifier.groups, classifier.vocabulary
    hiding = {name: _hidden_columns(hidden or {}, vocabulary, name) for name in groups}
    requests, rows = _control_requests(labels, groups, group_columns(groups, vocabulary), cfg.control_samples,
                                       rng, hiding)
    images = model.render(model.latents(_seeds(rng, len(requests))),
                          [_tags(v, vocabulary) for v in requests], cfg.truncation, cfg.batch_size)
    predictions = classify(classifier, images, cfg.batch_size)
    scores = {}
    for name, part in rows.items():
        score = control_accuracy({name: predictions[name][part]}, requests[part], {name: groups[name]},
                                 vocabulary)["groups"][name]
        if score is not None:
            scores[f"control_accuracy.{name}"] = score
    out = {"control_accuracy": float(np.mean(list(scores.values())))} if scores else {}
    return {**out, **scores, "n_control": len(requests)}


def _locality_edits(labels: np.ndarray, groups: dict[str, dict[str, Any]], columns: dict[str, np.ndarray],
                    count: int, rng: np.random.Generator, avoid: list[int] | None = None
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{group: (base (count, L), edited (count, L))} label vectors that differ in that group alone.

    Each base is a real training label vector. A single-choice group's edit asks for one value
    the base does not have (at random) instead of the base's own; a multi group's edit toggles
    one of its tags (at random). A single-choice group with one tag has nothing to change to and
    is left out. `avoid` (label columns of tags that hide another group, such as closed eyes) is
    kept out of bases and single-choice edit targets, so that every other group stays readable.
    """
    edits, avoid = {}, list(avoid or [])
    pool = _rows_without(labels, avoid)
    for name, group in groups.items():
        cols = columns[name] if group["multi"] else np.setdiff1d(columns[name], avoid)
        if not group["multi"] and len(cols) < 2:
            continue
        base = labels[pool[rng.integers(0, len(pool), count)]].copy()
        edited = base.copy()
        for row in range(count):
            if group["multi"]:
                column = cols[rng.integers(len(cols))]
                edited[row, column] = 0 if base[row, column] else 1
            else:
                others = cols[base[row, cols] == 0]
                column = rng.choice(others if len(others) else cols)
                edited[row, columns[name]] = 0
                edited[row, column] = 1
        edits[name] = (base, edited)
    return edits


def _edit_locality(cfg: EvaluateConfig, seed: int, model: AvatarModel, classifier: AttributeClassifier,
                   labels: np.ndarray, hidden: dict[str, list[str]] | None = None) -> dict[str, float]:
    """Edit locality: with the latent held, changing one attribute group leaves the others' readings.

    For each group, `control_samples` avatars from real label sets are drawn again from the same
    seeds with only that group changed (`_locality_edits`); `metrics.edit_locality` scores how
    often the classifier reads every other group the same. Returns edit_locality.<group> and
    their mean, edit_locality.
    """
    rng = _rng(seed, _LOCALITY)
    groups, vocabulary = classifier.groups, classifier.vocabulary
    edits = _locality_edits(labels, groups, group_columns(groups, vocabulary), cfg.control_samples, rng,
                            _hidden_columns(hidden or {}, vocabulary))
    if not edits:
        return {}
    names, count = list(edits), cfg.control_samples
    requests = np.concatenate([edits[name][0] for name in names] + [edits[name][1] for name in names])
    z = model.latents(_seeds(rng, count * len(names)))
    # Bases first, then their edits in the same order: each edit shares its base's latent.
    images = model.render(torch.cat([z, z]), [_tags(v, vocabulary) for v in requests], cfg.truncation,
                          cfg.batch_size)
    predictions = classify(classifier, images, cfg.batch_size)
    half, scores = len(z), {}
    for i, name in enumerate(names):
        base = {g: p[i * count:(i + 1) * count] for g, p in predictions.items()}
        edited = {g: p[half + i * count:half + (i + 1) * count] for g, p in predictions.items()}
        score = edit_locality(base, edited, groups, name)
        if score is not None:
            scores[f"edit_locality.{name}"] = score
    out = {"edit_locality": float(np.mean(list(scores.values())))} if scores else {}
    return {**out, **scores}


def _pictures(cfg: EvaluateConfig, seed: int, model: AvatarModel, classifier: AttributeClassifier,
              labels: np.ndarray, fake: np.ndarray, out: Path) -> None:
    rng = _rng(seed, _PICTURES)
    vocabulary = classifier.vocabulary
    real_tags = [_tags(labels[i], vocabulary) for i in rng.integers(0, len(labels), INTERPOLATION_ROWS + 1)]
    # An unconditional model would read a real label set as a pile of latent edits: sweep from none.
    base = real_tags[0] if model.conditional else []
    seeds = _seeds(rng, 1 + cfg.grid_columns * SHEET_ROWS + 2 * INTERPOLATION_ROWS)
    text = {"generator_step": str(model.meta.get("step", "")), "truncation": str(cfg.truncation), "seed": str(seed)}
    pictures = {"samples.png": sample_sheet(fake, cfg.grid_columns)}
    pictures["sweep.png"] = attribute_sweep(model, classifier.groups, base, seeds[0], cfg.truncation,
                                            seeds[1:1 + cfg.grid_columns * SHEET_ROWS], cfg.grid_columns)
    pair_seeds = seeds[-2 * INTERPOLATION_ROWS:]
    pairs = list(zip(pair_seeds[0::2], pair_seeds[1::2]))
    strip_tags = real_tags[1:] if model.conditional else [[]] * INTERPOLATION_ROWS
    pictures["interpolation.png"] = interpolation_strips(model, pairs, cfg.interpolation_steps, strip_tags,
                                                         cfg.truncation)
    for name, picture in pictures.items():
        atomic_write(out / name, png_bytes(picture, text))


def _fd(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance of feature sets (N, D), (M, D), quiet about singular covariances.

    With fewer val images than feature dimensions the real covariance is singular; the
    metric handles that as the reference FID code does, so scipy's warning only alarms.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LinAlgWarning)
        return fd_from_features(real, fake)


def _precision_recall(real: np.ndarray, fake: np.ndarray, k: int, rng: np.random.Generator,
                      max_subsets: int = 20) -> tuple[float, float]:
    """Improved precision/recall of equal-size sets, averaged over disjoint subsets of the larger.

    k-NN radii shrink as a set grows, so 1000 fakes against 45 val images would inflate
    precision (wide real balls) and deflate recall (tight fake balls) by sample size alone;
    the metric is defined for sets of one size.
    """
    size = min(len(real), len(fake))
    larger, is_fake = (fake, True) if len(fake) > size else (real, False)
    order = rng.permutation(len(larger))
    scores = []
    for start in range(0, min(len(larger) - size, (max_subsets - 1) * size) + 1, size):
        part = larger[order[start:start + size]]
        scores.append(precision_recall(real, part, k) if is_fake else precision_recall(part, fake, k))
    precision, recall = np.mean(scores, axis=0)
    return float(precision), float(recall)


def _rounded(metrics: dict[str, float]) -> dict[str, float | int]:
    """Finite numbers at 6 significant digits (counts stay ints): a stable, readable metrics.json."""
    rounded: dict[str, float | int] = {}
    for name, value in metrics.items():
        if isinstance(value, (int, np.integer)):
            rounded[name] = int(value)
        elif value is not None and math.isfinite(float(value)):
            rounded[name] = float(f"{float(value):.6g}")
    return rounded


def evaluate(cfg: EvaluateConfig, seed: int, prepared: Path, generator: Path, classifier: Path,
             out: Path) -> Report:
    """Score generator.pt against the val split of `prepared`; write out/metrics.json and pictures.

    metrics.json is a flat {name: number}: fd, kid, kid_std, precision, recall (classifier
    features, val images as the real set; precision/recall on equal-size subsets),
    control_accuracy[.group] (conditional models), edit_locality[.group] (conditional models:
    with the latent held, how often changing one group's value leaves the classifier's reading
    of every other group unchanged; the plain key is the mean over groups),
    classifier_accuracy[.group] (the feature classifier's own held-out accuracy: a ceiling for
    control accuracy), fid (only with
    evaluate.inception_weights), n_real, n_fake, n_control, generator_step, generator_kimg.
    Pictures: samples.png, sweep.png, interpolation.png.
    """
    train, val = PackedSet(prepared, "train"), PackedSet(prepared, "val")
    # Edit directions for an unconditional model: where `moepipe directions` writes them.
    model = AvatarModel.load(generator, Path(generator).with_name(DIRECTIONS_FILE))
    net, report = load_classifier(classifier)
    _check_inputs(cfg, prepared, generator, classifier, train, val, model, net, report)
    # Loaded first: a wrong weights file should fail before minutes of work, not after.
    inception = load_fid_inception(Path(cfg.inception_weights).expanduser()) if cfg.inception_weights else None
    labels = np.asarray(train.labels)
    real = np.asarray(val.images)
    metrics: dict[str, Any] = {}
    phases = ["samples", "features"] + (["control", "locality"] if model.conditional else []) \
        + (["fid"] if inception is not None else []) + ["pictures"]
    with progress_bar() as progress:
        task = progress.add_task("evaluate", total=len(phases), status=phases[0])

        def advance(done: str) -> None:
            following = phases[phases.index(done) + 1:]
            progress.update(task, advance=1, status=following[0] if following else "")

        rng = _rng(seed, _SAMPLES)
        seeds = _seeds(rng, cfg.samples)
        # A conditional model is asked for label sets drawn from the training data, so the mix of
        # attributes in the scored samples matches the real one.
        requested = [_tags(labels[i], train.vocabulary) for i in rng.integers(0, len(labels), cfg.samples)] \
            if model.conditional else None
        fake = model.render(model.latents(seeds), requested, cfg.truncation, cfg.batch_size)
        advance("samples")

        real_features, fake_features = extract(net, real, cfg.batch_size), extract(net, fake, cfg.batch_size)
        metrics["fd"] = _fd(real_features, fake_features)
        metrics["kid"], metrics["kid_std"] = kid(real_features, fake_features, cfg.kid_subsets,
                                                 cfg.kid_subset_size, seed=int(_rng(seed, _KID).integers(2**31)))
        metrics["precision"], metrics["recall"] = _precision_recall(real_features, fake_features, cfg.pr_k,
                                                                    _rng(seed, _PRECISION))
        advance("features")

        if model.conditional:
            metrics.update(_control(cfg, seed, model, net, labels, report.get("hidden_by")))
            advance("control")
            metrics.update(_edit_locality(cfg, seed, model, net, labels, report.get("hidden_by")))
            advance("locality")
        if report.get("overall") is not None:
            metrics["classifier_accuracy"] = report["overall"]
        # Where another tag can hide a group, control is scored with it visible: so is the ceiling.
        for name, value in {**report.get("accuracy", {}), **report.get("accuracy_visible", {})}.items():
            metrics[f"classifier_accuracy.{name}"] = value
        if inception is not None:
            metrics["fid"] = _fd(inception_features(inception, real, cfg.batch_size),
                                 inception_features(inception, fake, cfg.batch_size))
            advance("fid")

        metrics.update(n_real=len(real), n_fake=len(fake), generator_step=int(model.meta.get("step", 0)),
                       generator_kimg=float(model.meta.get("kimg", 0.0)))
        out.mkdir(parents=True, exist_ok=True)
        _pictures(cfg, seed, model, net, labels, fake, out)
        advance("pictures")
    metrics = _rounded(metrics)
    write_json(out / "metrics.json", metrics)
    return Report(metrics, _evaluate_summary(metrics, out))


def _evaluate_summary(metrics: dict[str, Any], out: Path) -> str:
    parts = [f"fd {metrics['fd']:.4g}", f"kid {metrics['kid']:.3g}", f"precision {metrics['precision']:.2f}",
             f"recall {metrics['recall']:.2f}"]
    if "control_accuracy" in metrics:
        parts.append(f"control {metrics['control_accuracy']:.2f}")
    if "fid" in metrics:
        parts.append(f"fid {metrics['fid']:.4g}")
    return f"evaluate: {', '.join(parts)} ({metrics['n_fake']} fakes vs {metrics['n_real']} val images) → {out}"
