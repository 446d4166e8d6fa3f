"""Scrape throughput: images/s crawling a loopback Danbooru-compatible server (rate limit off).

    python bench/scrape_throughput.py [--posts 300] [--size 128]

The server (tests/support/fakebooru.py) runs in this process, so server and client share the
interpreter; figures are a floor for a real remote server. Concurrency 1 runs in the same
invocation, so the ratio is meaningful on a noisy machine.
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

from moepipe.config import DanbooruSource, ScrapeConfig
from moepipe.scrape.stage import scrape
from tests.support.fakebooru import FakeBooru


def crawl(url: str, posts: int, concurrency: int) -> float:
    cfg = ScrapeConfig(
        sources=[DanbooruSource(kind="danbooru", url=url, limit=posts, page_size=200)],
        allow_private=["127.0.0.1"], rate_per_host=0, concurrency=concurrency, timeout_s=10,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = scrape(cfg, Path(tmp) / "raw")
        elapsed = time.perf_counter() - start
    assert report.kept == posts, report.to_json()
    return posts / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--size", type=int, default=128, help="side of the served avatars, px")
    args = parser.parse_args()
    with FakeBooru(n_posts=args.posts, image_size=args.size) as booru:
        rates = {c: crawl(booru.url, args.posts, c) for c in (1, 4, 8)}
    kib = sum(len(p.data) for p in booru.posts) / len(booru.posts) / 1024
    for concurrency, rate in rates.items():
        print(f"scrape: {rate:7.1f} images/s at concurrency {concurrency} ({args.size} px PNG, {kib:.0f} KiB avg)")
    print(f"ratio concurrency 4 / 1: {rates[4] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
