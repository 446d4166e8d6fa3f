"""Shared fixtures: tiny prepared data sets built by the real scrape → curate → preprocess, and the
local stack of real servers (one per session, shared by integration and e2e tests)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from moepipe.stack import Ports, Stack, StackError

os.environ.setdefault("MOEPIPE_QUIET", "1")


def build_prepared(root: Path, limit: int, resolution: int) -> Path:
    from moepipe.config import parse_params
    from moepipe.curate import curate
    from moepipe.preprocess.stage import preprocess
    from moepipe.scrape.stage import scrape

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

# -- the local stack ------------------------------------------------------------------------
# The local stack (SeaweedFS S3, MLflow server, Prefect server + process worker) on free loopback
# ports in a temporary state dir, started once per test session and stopped at its end.
#
#     def test_something(local_stack):
#         stack, env = local_stack          # or local_stack.stack / local_stack.env
#         subprocess.run([...], env={**os.environ, **env})
#
# `env` holds the client variables of the stack's env file (moepipe.stack.ENV_NAMES):
# MLFLOW_TRACKING_URI, PREFECT_API_URL, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... Tests that stop or
# kill services must bring them back with `stack.up()` before they return.


class RunningStack(NamedTuple):
    stack: Stack
    env: dict[str, str]


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    state = tmp_path_factory.mktemp("stack")
    began = time.monotonic()
    for attempt in range(3):
        stack = Stack(state, Ports.free(), prefect_ui=False)
        try:
            reports = stack.up()
            break
        except StackError as error:  # a free port taken by someone else in the meantime
            stack.down()
            if "already in use" not in str(error) or attempt == 2:
                raise
        except BaseException:
            stack.down()
            raise
    print(f"\nlocal stack up in {time.monotonic() - began:.1f} s: "
          + ", ".join(f"{r.name} {r.seconds:.1f} s" for r in reports if r.seconds is not None))
    try:
        yield RunningStack(stack, stack.env())
    finally:
        stack.down()
