"""The classifier stage: train the attribute classifier (features.py) on the prepared train split
and score it on val. Its features are the space the evaluate stage measures generators in."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from moepipe.config import EvaluateConfig
from moepipe.data import PackedSet
from moepipe.errors import UserError
from moepipe.evaluate.features import save_classifier, train_classifier
from moepipe.images import write_json
from moepipe.reports import Report


def report_path(classifier: Path) -> Path:
    """Where the classifier stage writes its JSON report: next to the classifier file."""
    return Path(classifier).with_suffix(".json")


def classifier_stage(cfg: EvaluateConfig, seed: int, prepared: Path, out: Path,
                     reports: Path | None = None) -> Report:
    """Train the attribute classifier on prepared/train, score it on prepared/val, save it to `out`.

    Writes `out` (the classifier with its report inside) and the report as JSON next to it (and
    as `reports`/classifier.json when given); returns the report (per-group held-out "accuracy",
    "overall", "baseline", counts, digest, train_seconds).
    """
    train, val = PackedSet(prepared, "train"), PackedSet(prepared, "val")
    if len(train) == 0:
        raise UserError(f"classifier: {prepared} has no training images")
    classifier, report = train_classifier(train, val, epochs=cfg.classifier.epochs,
                                          batch_size=cfg.classifier.batch_size, seed=seed)
    # Timings stay out of the files, so identical runs write identical bytes (stable DVC hashes).
    stored = {key: value for key, value in report.items() if key != "train_seconds"}
    save_classifier(out, classifier, stored)
    write_json(report_path(out), stored)
    if reports is not None:
        reports.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report_path(out), reports / "classifier.json")
    return Report(report, _classifier_summary(report, out))


def _classifier_summary(report: dict[str, Any], out: Path) -> str:
    scored = {k: v for k, v in report["accuracy"].items() if v is not None}
    baseline = [v for k, v in report["baseline"].items() if k in scored and v is not None]
    overall = "n/a (empty val split)" if report["overall"] is None else (
        f"{report['overall']:.2f} (commonest value {sum(baseline) / max(1, len(baseline)):.2f})")
    visible, hidden = report.get("accuracy_visible", {}), report.get("hidden_by", {})
    groups = ", ".join(f"{name} {value:.2f}" + (f" ({visible[name]:.2f} unless {'/'.join(hidden[name])})"
                                                 if name in visible and name in hidden else "")
                       for name, value in scored.items())
    return (f"classifier: held-out accuracy {overall}{'; ' + groups if groups else ''}; "
            f"{report['epochs']} epochs in {report['train_seconds']:.0f} s → {out}")
