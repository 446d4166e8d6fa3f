"""What standing statistics buy a trained generator, post hoc: the same generator file scored with
the BatchNorm statistics it was exported with and with re-measured ones (train.standing_stats).

    python bench/standing_stats.py bench/out/ablation/no_standing_stats/models/generator.pt
    python bench/standing_stats.py GENERATOR --batches 16 64 --batch-size 32

For each batch count, the generator's BatchNorm running statistics are measured on its own
activations (moepipe.train.ema.standing_statistics; z and training label rows from a fixed seed,
as the train stage does at export) and the result is scored with `moepipe evaluate` against
models/classifier.pt on data/prepared, beside the file as it is. Results go under
bench/out/standing_stats/ (not versioned). Needs `dvc repro classifier` first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moepipe.data import PackedSet  # noqa: E402
from moepipe.models.export import load_generator, read_generator, save_generator  # noqa: E402
from moepipe.train.ema import standing_statistics  # noqa: E402

COLUMNS = ["fd", "precision", "recall", "control_accuracy", "edit_locality"]


def remeasured(source: Path, target: Path, batches: int, batch_size: int, seed: int = 0) -> None:
    generator, meta = load_generator(source)
    data = PackedSet(ROOT / "data" / "prepared", "train")
    rng, latents = np.random.default_rng(seed), torch.Generator().manual_seed(seed)

    def inputs():
        for _ in range(batches):
            rows = np.sort(rng.choice(len(data), batch_size))
            labels = torch.from_numpy(np.asarray(data.labels[rows], dtype=np.float32)) if meta["label_dim"] else None
            yield torch.randn(batch_size, generator.z_dim, generator=latents), labels

    measured = standing_statistics(generator, inputs())
    payload = read_generator(source)
    save_generator(target, measured, arch=payload["arch"], model_kwargs=payload["model_kwargs"],
                   vocabulary=payload["vocabulary"], groups=payload["groups"], label_prior=payload["label_prior"],
                   step=payload["step"], kimg=payload["kimg"], train_config=json.loads(payload["train_config"]))


def evaluate(generator: Path, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "moepipe", "evaluate", "--params", "params.yaml", "--prepared",
                    "data/prepared", "--model", str(generator), "--classifier", "models/classifier.pt",
                    "--out", str(out)], cwd=ROOT, check=True)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("generator", type=Path)
    parser.add_argument("--batches", type=int, nargs="+", default=[16])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "standing_stats")
    args = parser.parse_args()
    rows = {"as exported": evaluate(args.generator, args.out / "as-exported")}
    for batches in args.batches:
        folder = args.out / f"standing-{batches}x{args.batch_size}"
        folder.mkdir(parents=True, exist_ok=True)
        remeasured(args.generator, folder / "generator.pt", batches, args.batch_size)
        rows[f"standing statistics, {batches} x {args.batch_size}"] = evaluate(folder / "generator.pt", folder / "eval")
    print("| generator | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, metrics in rows.items():
        print(f"| {name} | " + " | ".join(f"{metrics[c]:.3g}" for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
