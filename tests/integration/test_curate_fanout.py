"""Curation fanned out over Dask (flows/curate_fanout.py): on a LocalCluster of 2 worker processes,
with the local stack's Prefect server, it writes what the plain curate stage writes, byte for byte."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import yaml

pytest.importorskip("prefect_dask")
pytestmark = pytest.mark.integration
OUTPUTS = ("manifest.jsonl", "rejects.jsonl", "report.json", "contact_kept.png", "contact_rejected.png")
SHARD_SIZE = 16


@pytest.fixture(scope="module")
def raw_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(raw folder, params.yaml): about 80 synthetic posts with their injected dirt."""
    from moepipe.config import load_params
    from moepipe.scrape.stage import scrape

    root = tmp_path_factory.mktemp("fanout")
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump({
        "scrape": {"sources": [{"kind": "synthetic", "limit": 80, "seed": 3}]},
        "curate": {"output_size": 64, "workers": 1},
    }))
    scrape(load_params(params_file).scrape, root / "raw")
    return root / "raw", params_file


def file_hashes(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_curate_fanned_out_on_dask_matches_plain_curate(local_stack, raw_set, tmp_path, monkeypatch):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.curate_fanout import curate_fanout
    from moepipe.config import load_params
    from moepipe.curate import curate

    raw, params_file = raw_set
    p = load_params(params_file)
    plain = curate(p.curate, p.labels, list(p.scrape.ratings), raw, tmp_path / "plain")

    def not_here(*args, **kwargs):
        raise AssertionError("a shard was examined in the flow's process, not on a Dask worker")

    # Only this process sees the patch: Dask workers are fresh processes that import moepipe anew
    # (`examine` travels by reference; the task function itself by value, with its globals).
    monkeypatch.setattr("moepipe.curate.checks.decode", not_here)
    with temporary_settings(updates={PREFECT_API_URL: local_stack.env["PREFECT_API_URL"],
                                     PREFECT_HOME: str(tmp_path / "prefect-home")}):
        state = curate_fanout(raw=str(raw), out=str(tmp_path / "fanned"), params=str(params_file),
                              n_workers=2, shard_size=SHARD_SIZE, reports=str(tmp_path / "reports"),
                              return_state=True)
        summary = state.result()
        with get_client(sync_client=True) as client:
            [subflow] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])))
            shards = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [subflow.id]}),
                                           task_run_filter=TaskRunFilter(name={"like_": "curate-shard"}))

    fanned = tmp_path / "fanned"
    for name in OUTPUTS:
        assert (fanned / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    kept = [json.loads(line) for line in (fanned / "manifest.jsonl").read_text().splitlines()]
    images = file_hashes(fanned / "images")
    assert images == file_hashes(tmp_path / "plain" / "images")
    assert images == {Path(record["file"]).name: record["sha256"] for record in kept}  # named by content
    assert summary == plain.to_json() == json.loads((fanned / "report.json").read_text())
    # the flow refreshes reports/ as `moepipe curate --reports` does
    assert json.loads((tmp_path / "reports" / "curate.json").read_text()) == summary
    assert sorted(p.name for p in (tmp_path / "reports").glob("curate_*.png")) == sorted(
        f"curate_{p.name}" for p in fanned.glob("*.png"))
    assert 0 < plain.kept < plain.input and sum(plain.rejected.values()) > 0  # dirt was found and removed

    assert subflow.name and subflow.state.is_completed()
    assert len(shards) == math.ceil(plain.decoded / SHARD_SIZE) >= 2
    assert all(run.state.is_completed() for run in shards)
