"""Curation throughput: images/s per core and with all cores, with and without face detection.

    python bench/curate_throughput.py [--posts 600]

Scrapes the synthetic gallery once (128 px avatars with the default dirt), then curates it with
faces `none` and `animeface`, on 1 worker and on every core, all in this one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MOEPIPE_QUIET", "1")

from moepipe.config import parse_params
from moepipe.curate import curate
from moepipe.scrape.stage import scrape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=600)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = parse_params({"scrape": {"sources": [{"kind": "synthetic", "limit": args.posts}]}})
        scrape(base.scrape, root / "raw")
        for mode in ("none", "animeface"):
            rates = {}
            for workers in (1, cores):
                params = parse_params({"curate": {"workers": workers, "faces": {"mode": mode}}})
                start = time.perf_counter()
                report = curate(params.curate, params.labels, ["general", "sensitive"], root / "raw",
                                root / f"curated-{mode}-{workers}")
                elapsed = time.perf_counter() - start
                rates[workers] = report.input / elapsed
                print(f"curate faces={mode:9s} workers={workers}: {rates[workers]:6.1f} images/s "
                      f"({report.input} in, {report.kept} kept, {elapsed:.1f} s incl. dedup and sheets)")
            print(f"  per core with {cores} workers: {rates[cores] / cores:.1f} images/s; "
                  f"speed-up {rates[cores] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
