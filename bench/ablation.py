"""What each lever of the default model buys: train + evaluate variants of the cpu profile.

Each variant is params.yaml with some `train.*` keys (or the top-level seed) overridden; it is
trained with `moepipe train` on data/prepared and scored with `moepipe evaluate` against the
same classifier (models/classifier.pt), so rows are comparable. Prints a markdown table of fd,
precision, recall, control accuracy per group and edit locality, and the training seconds.

    python bench/ablation.py                      # every variant (about 7 min each on 2 cores)
    python bench/ablation.py default classic      # some of them
    python bench/ablation.py --list
    python bench/ablation.py default fp32 --steps 300   # bf16 vs fp32 training time, short runs

Run `dvc repro classifier` first. Results go under bench/out/ablation/<variant>/ (not versioned).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLASSIC_AUGMENT = "color,translation,cutout"
# Cumulative from the old default (classic DCGAN, input-only labels) to today's default, then
# one lever changed at a time against the default.
VARIANTS: dict[str, dict] = {
    "classic": {"block": "transposed", "aux_weight": 0.0, "augment": CLASSIC_AUGMENT},
    "upconv_cbn": {"aux_weight": 0.0, "augment": CLASSIC_AUGMENT},
    "acgan_1_balanced": {"aux_weight": 1.0, "balanced_labels": True, "augment": CLASSIC_AUGMENT},
    "acgan_1_balanced_translation": {"aux_weight": 1.0, "balanced_labels": True},
    "acgan_3_balanced": {"aux_weight": 3.0, "balanced_labels": True},
    "acgan_6_balanced": {"aux_weight": 6.0, "balanced_labels": True},
    "balanced": {"balanced_labels": True},
    "balanced_seed_1": {"balanced_labels": True, "seed": 1},
    "minimax_balanced": {"loss": "minimax", "balanced_labels": True},
    "hinge_balanced": {"loss": "hinge", "balanced_labels": True},
    "default": {},
    "seed_1": {"seed": 1},
    "wgan_gp": {"loss": "wgan-gp"},
    "fp32": {"precision": "fp32"},  # the time without bf16 autocast (same arithmetic where no bf16 hardware)
    "steps_3000": {"steps": 3000},
    "minibatch_std": {"minibatch_std": True},
    "ttur": {"lr_d": 4e-4, "lr_g": 1e-4},
    "d_width_48": {"d_width": 48},
    "ema_999": {"ema_beta": 0.999},
    "no_standing_stats": {"standing_stats": 0},
    "r1_0.1": {"r1_gamma": 0.1},
    "r1_1": {"r1_gamma": 1.0},
}
COLUMNS = ["fd", "precision", "recall", "control_accuracy", "control_accuracy.hair_color",
           "control_accuracy.hairstyle", "control_accuracy.eye_color", "control_accuracy.expression",
           "control_accuracy.gender", "control_accuracy.accessories", "control_accuracy.extras", "edit_locality"]


def run(name: str, overrides: dict, out: Path, steps: int | None = None) -> dict:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = dict(overrides)
    if "seed" in overrides:
        params["seed"] = overrides.pop("seed")
    params["train"].update(overrides)
    if steps:
        params["train"]["steps"] = steps
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    moepipe = [sys.executable, "-m", "moepipe"]
    started = time.perf_counter()
    subprocess.run([*moepipe, "train", "--params", str(folder / "params.yaml"), "--prepared", "data/prepared",
                    "--out", str(folder / "models"), "--reports", str(folder / "reports")], cwd=ROOT, check=True)
    seconds = time.perf_counter() - started
    subprocess.run([*moepipe, "evaluate", "--params", str(folder / "params.yaml"), "--prepared", "data/prepared",
                    "--model", str(folder / "models" / "generator.pt"), "--classifier", "models/classifier.pt",
                    "--out", str(folder / "eval")], cwd=ROOT, check=True)
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    return {**metrics, "train_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", help=f"some of: {', '.join(VARIANTS)}")
    parser.add_argument("--list", action="store_true", help="print the variants and their overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "ablation")
    parser.add_argument("--steps", type=int, help="train this many steps instead (timing only)")
    args = parser.parse_args()
    if args.list:
        for name, overrides in VARIANTS.items():
            print(f"{name}: {overrides or 'the cpu profile as in params.yaml'}")
        return
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; see --list")
    rows = {name: run(name, VARIANTS[name], args.out, args.steps) for name in (args.variants or VARIANTS)}
    print("| variant | " + " | ".join(c.replace("control_accuracy.", "") for c in COLUMNS) + " | train s |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for name, metrics in rows.items():
        cells = [f"{metrics[c]:.3g}" if c in metrics else "–" for c in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + f" | {metrics['train_seconds']:.0f} |")
    if args.steps and {"default", "fp32"} <= set(rows):
        ratio = rows["fp32"]["train_seconds"] / rows["default"]["train_seconds"]
        print(f"fp32 / default training time over {args.steps} steps: {ratio:.2f}x")


if __name__ == "__main__":
    main()
