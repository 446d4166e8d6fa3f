"""Preprocess throughput: images/s packing curated 128 px PNGs into 64 px uint8 arrays.

    python bench/preprocess_throughput.py [--n 2000]

Runs curate-like input through moepipe.preprocess.stage.preprocess and, in the same run, a plain
PIL resize loop as a reference, so the ratio is meaningful on a noisy machine.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moepipe.config import parse_params
from moepipe.manifest import write_jsonl
from moepipe.preprocess.stage import preprocess


def make_curated(folder: Path, n: int, vocabulary: list[str]) -> None:
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    records = []
    for i in range(n):
        pixels = np.full((128, 128, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        pixels[32:96, 32:96] = rng.integers(0, 256, 3)
        path = folder / "images" / f"{i:05d}.png"
        Image.fromarray(pixels).save(path)
        labels = [0] * len(vocabulary)
        labels[i % len(vocabulary)] = 1
        records.append({"file": path.relative_to(folder).as_posix(),
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "source": "bench",
                        "post_id": str(i), "url": None, "tags": [], "rating": "general",
                        "width": 128, "height": 128, "labels": labels})
    write_jsonl(folder / "manifest.jsonl", records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    params = parse_params({"preprocess": {"resolution": 64}})
    with tempfile.TemporaryDirectory() as tmp:
        curated = Path(tmp) / "curated"
        make_curated(curated, args.n, params.labels.vocabulary)

        start = time.perf_counter()
        import albumentations  # noqa: F401  (a one-off ~1.5 s import, reported apart)

        import_s = time.perf_counter() - start
        start = time.perf_counter()
        preprocess(params.preprocess, params.labels, 0, curated, Path(tmp) / "prepared")
        moepipe_s = time.perf_counter() - start

        start = time.perf_counter()
        for path in sorted((curated / "images").iterdir()):
            np.asarray(Image.open(path).convert("RGB").resize((64, 64), Image.BOX))
        reference_s = time.perf_counter() - start
    print(f"preprocess: {args.n / moepipe_s:.0f} images/s (moepipe, 128→64 px, packed + split)")
    print(f"reference : {args.n / reference_s:.0f} images/s (PIL open+resize only, nothing written)")
    print(f"one-off albumentations import: {import_s:.2f} s (not in the figures above)")
    print(f"ratio moepipe/reference: {reference_s / moepipe_s:.2f}")


if __name__ == "__main__":
    main()
