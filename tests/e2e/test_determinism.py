"""Identical runs give identical DVC outputs, byte for byte (so `dvc repro` lineage is stable)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from moepipe.config import parse_params
from moepipe.curate import curate
from moepipe.scrape.stage import scrape

pytestmark = pytest.mark.e2e


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_scrape_and_curate_outputs_do_not_depend_on_thread_timing(tmp_path: Path) -> None:
    params = parse_params({"scrape": {"sources": [{"kind": "synthetic", "limit": 120, "seed": 5}],
                                      "concurrency": 8}})
    digests = []
    for run in ("a", "b"):
        scrape(params.scrape, tmp_path / run / "raw")
        curate(params.curate, params.labels, list(params.scrape.ratings), tmp_path / run / "raw",
               tmp_path / run / "curated")
        digests.append((folder_digest(tmp_path / run / "raw"), folder_digest(tmp_path / run / "curated")))
    assert digests[0] == digests[1]
    post_ids = [line.split('"post_id": "')[1].split('"')[0]
                for line in (tmp_path / "a" / "raw" / "manifest.jsonl").read_text().splitlines()]
    assert post_ids == sorted(post_ids, key=int)
