"""The model card: a markdown page logged with every registered generator.

It says what the model is (architecture, size, training params), what it learned from (a data
card: images by source and by rating, curation and split counts), how good it is (evaluation
metrics, the registry decision), and what it is for and not for.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moepipe.config import Params
from moepipe.models.export import generator_summary


def data_card(manifest: Path, data_reports: Path) -> dict[str, Any]:
    """Counts of curated images by source and rating, and the data stages' report summaries."""
    by_source: Counter[str] = Counter()
    by_rating: Counter[str] = Counter()
    if manifest.is_file():
        with manifest.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    by_source[str(row.get("source", "unknown"))] += 1
                    by_rating[str(row.get("rating", "unknown"))] += 1
    reports = {}
    for stage in ("scrape", "curate", "preprocess"):
        path = data_reports / f"{stage}.json"
        if path.is_file():
            try:
                reports[stage] = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                pass
    return {"manifest": str(manifest) if manifest.is_file() else None, "images": sum(by_source.values()),
            "by_source": dict(by_source.most_common()), "by_rating": dict(by_rating.most_common()),
            "reports": reports}


def _table(rows: Mapping[str, Any], head: tuple[str, str]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in rows.items()]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def model_card(*, name: str, version: int, run_id: str, fingerprint: str, generator: Path | Mapping[str, Any],
               params: Params, data: Mapping[str, Any], metrics: Mapping[str, float],
               decision: Mapping[str, Any], lineage: Mapping[str, str]) -> str:
    """The card as markdown.

    `generator` is the generator file or its `generator_summary`: the model's facts (architecture,
    resolution, vocabulary, training config) come from the file, since params may have changed
    since it was trained.
    """
    if not isinstance(generator, Mapping):
        generator = generator_summary(Path(generator))
    # What the generator was trained with (recorded in generator.pt), else today's params.
    train = params.train.model_dump() | (generator.get("train_config") or {})
    scrape, curate, preprocess = (data["reports"].get(k, {}) for k in ("scrape", "curate", "preprocess"))
    rejected = curate.get("rejected") or {}
    split = preprocess.get("images") or {}
    conditional = generator.get("label_dim", 0) > 0
    control = "labels (conditional generator)" if conditional else "latent edit directions (if logged)"
    sections = [
        f"# Model card: {name} v{version}",
        f"Chibi anime avatar generator. Run `{run_id}`, generator sha256 `{fingerprint}`, "
        f"git commit `{lineage.get('mlflow.source.git.commit', 'unknown')}`"
        + (" (uncommitted changes)" if lineage.get("moepipe.git_dirty") == "true" else "") + ".",
        "## Model",
        _table({"architecture": generator.get("arch"), "resolution": f"{generator.get('resolution')} px",
                "parameters": f"{generator.get('parameters', 0):,}", "z_dim": generator["model_kwargs"].get("z_dim"),
                "attributes via": control, "vocabulary": ", ".join(generator.get("vocabulary") or []) or "none",
                "training steps": generator.get("step"), "kimg": generator.get("kimg")}, ("", "")),
        "## Training",
        _table({"loss": train["loss"], "steps": train["steps"], "batch size": train["batch_size"],
                "lr (G / D)": f"{train['lr_g']:g} / {train['lr_d']:g}", "augment": train["augment"] or "none",
                "ADA": train["ada"], "EMA beta": train["ema_beta"], "R1 gamma": train["r1_gamma"],
                "seed": params.seed, "device / precision": f"{train['device']} / {train['precision']}"},
               ("param", "value")),
        "## Data",
        f"{data.get('images', 0)} curated images"
        + (f" ({split.get('train', '?')} train / {split.get('val', '?')} val after preprocessing at "
           f"{generator.get('resolution')} px)" if split else "") + ".",
        _table(data.get("by_source") or {"(manifest not found)": 0}, ("source", "images")),
        _table(data.get("by_rating") or {"(manifest not found)": 0}, ("rating", "images")),
    ]
    if scrape or curate:
        sections.append(
            f"Scraped {scrape.get('seen', '?')} candidates, kept {scrape.get('kept', '?')}; curation kept "
            f"{curate.get('kept', '?')} of {curate.get('input', '?')}, rejecting "
            + (", ".join(f"{k} {v}" for k, v in rejected.items() if v) or "none") + ".")
    dvc = {k.removeprefix("dvc.md5."): v for k, v in lineage.items() if k.startswith("dvc.md5.")}
    if dvc:
        sections += ["DVC content hashes of the inputs (dvc.lock):", _table(dvc, ("path", "md5"))]
    sections.append(f"Every source post of this version's data (source, post id, rating, artist, licence, URL), "
                    f"read from the manifest at the recorded hash: `moepipe lineage models:/{name}/{version}`. "
                    "Posts listed in the opt-out file (`scrape.exclude`) leave the data, and the next "
                    "version, at the next `dvc repro`.")
    sections += [
        "## Evaluation",
        _table(dict(sorted(metrics.items())), ("metric", "value")) if metrics else "No metrics.",
        "FD/KID use the project's attribute-classifier features unless evaluate.inception_weights is set, "
        "so they compare models of this project with each other, not with published FID numbers.",
        "## Registry decision",
        f"**{decision.get('decision')}**: " + "; ".join(decision.get("reasons") or []) + ".",
        "## Intended use",
        "Drawing cute chibi avatar pictures for profiles, games and prototypes, choosing attributes from "
        "the vocabulary above; research on GAN training and MLOps.",
        "## Limitations",
        "- Learned only from the data above: styles, attributes and demographics absent there will not appear, "
        "and attribute control is as good as the control accuracy in the evaluation.\n"
        "- Small GAN: expect artifacts, mode collapse within attribute combinations, and occasional "
        "near-copies of training images; do not present outputs as hand-drawn art.\n"
        "- Real-world sources carry their artists' rights and licences; check them before commercial use.\n"
        "- Not for depicting real people or for any content outside the allowed ratings "
        f"({', '.join(params.scrape.ratings)}).",
    ]
    return "\n\n".join(sections) + "\n"
