"""Shared fixtures: a tiny prepared data set built by the real scrape → curate → preprocess."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MOEPIPE_QUIET", "1")


def build_prepared(root: Path, limit: int, resolution: int) -> Path:
    from moepipe.config import parse_params
    from moepipe.curate import curate
    from moepipe.preprocess import preprocess
    from moepipe.scrape import scrape

    params = parse_params({
        "scrape": {"sources": [{"kind": "synthetic", "limit": limit, "seed": 3}]},
        "curate": {"output_size": 64, "workers": 1},
        "preprocess": {"resolution": resolution, "val_fraction": 0.1},
    })
    scrape(params.scrape, root / "raw")
    curate(params.curate, params.labels, list(params.scrape.ratings), root / "raw", root / "curated")
    preprocess(params.preprocess, params.labels, 0, root / "curated", root / "prepared")
    return root / "prepared"


@pytest.fixture(scope="session")
def prepared16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 70 labelled synthetic avatars packed at 16 px."""
    return build_prepared(tmp_path_factory.mktemp("tiny16"), limit=90, resolution=16)


@pytest.fixture(scope="session")
def prepared32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 230 labelled synthetic avatars packed at 32 px."""
    return build_prepared(tmp_path_factory.mktemp("tiny32"), limit=300, resolution=32)
