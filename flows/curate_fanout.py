"""Flow `curate-fanout`: the curate stage with its per-image work fanned out over a Dask cluster.

The same `moepipe.curate.curate` as `moepipe curate` runs in this process and writes the same
outputs (data/curated: images/, manifest.jsonl, rejects.jsonl, report.json, contact sheets).
Only the per-image work (decode, checks, face, crop, hashes) leaves it: the raw files are cut
into shards, each shard is one Prefect task on a `DaskTaskRunner`, and the crops come back as
bytes. Deduplication, labels and the report need the whole set, so they run here afterwards.

Where the work runs:
    dask_address="tcp://scheduler:8786"   an existing cluster (`dask scheduler` + `dask worker`s)
    dask_address=None                     a temporary LocalCluster of `n_workers` processes

Dask workers read the raw files at the path this flow passes (absolute): on other hosts, mount
the raw folder at the same path there (a shared volume). Their results come back through Dask,
so the output folder need not be shared. Workers need moepipe installed (`pip install -c
constraints.txt '.[dask]'`), the same versions as the flow's process.

    python -m flows.curate_fanout [RAW OUT [DASK_ADDRESS]]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_dask import DaskTaskRunner

from moepipe.config import CurateConfig, load_params
from moepipe.curate import curate
from moepipe.curate.stage import SCRATCH, Outcome, examine

SHARD_RETRIES = 2  # a worker lost in the middle of a shard (killed, evicted): run the shard again


@task(name="curate-shard", cache_policy=NO_CACHE, retries=SHARD_RETRIES, retry_delay_seconds=1)
def examine_shard(paths: list[str], cfg: CurateConfig) -> list[tuple[Outcome, dict[str, bytes]]]:
    """Examine raw files in a scratch folder of this worker; per file, the Outcome and the files
    `examine` stored for it ({path relative to the output folder: bytes})."""
    scratch = Path(tempfile.mkdtemp(prefix="moepipe-curate-shard-"))
    try:
        (scratch / "images").mkdir()
        (scratch / SCRATCH).mkdir()
        results = []
        for path in paths:
            outcome = examine(Path(path), scratch, cfg)
            stored = {} if outcome.reason is not None else {
                name: (scratch / name).read_bytes() for name in {f"images/{outcome.sha256}.png", outcome.view}}
            results.append((outcome, stored))
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def shards(items: list[Path], shard_size: int) -> list[list[Path]]:
    return [items[start:start + shard_size] for start in range(0, len(items), shard_size)]


def examine_on_task_runner(shard_size: int):
    """An `Examiner` for `curate` that submits one `examine_shard` task per shard to the flow's
    task runner and stores what comes back, in job order."""
    def examine_all(jobs: list[Path], out: Path, cfg: CurateConfig) -> list[Outcome]:
        futures = [examine_shard.submit([str(path.absolute()) for path in shard], cfg)
                   for shard in shards(jobs, shard_size)]
        outcomes = []
        for future in futures:
            for outcome, stored in future.result():
                for name, data in stored.items():
                    target = out / name
                    if not target.exists():  # two raw files can give the very same crop
                        temporary = target.with_name(f".tmp-{target.name}")
                        temporary.write_bytes(data)
                        temporary.replace(target)
                outcomes.append(outcome)
        return outcomes

    return examine_all


@flow(name="curate-on-dask", description="moepipe curate with its per-image work on the flow's task runner")
def curate_on_task_runner(raw: str, out: str, params: str, shard_size: int,
                          reports: str | None = None) -> dict[str, Any]:
    p = load_params(params)
    report = curate(p.curate, p.labels, list(p.scrape.ratings), Path(raw).absolute(), Path(out).absolute(),
                    examine_all=examine_on_task_runner(shard_size),
                    reports=Path(reports).absolute() if reports else None, exclude=p.scrape.exclude)
    get_run_logger().info(report.summary)
    return report.to_json()


def task_runner(dask_address: str | None, n_workers: int) -> DaskTaskRunner:
    """An existing Dask cluster at `dask_address`, else a temporary LocalCluster on 127.0.0.1 of
    `n_workers` single-threaded processes (the checks are CPU-bound numpy/PIL work)."""
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": None})


@flow(name="curate-fanout", description="curate data/raw → data/curated with the per-image work on Dask")
def curate_fanout(raw: str = "data/raw", out: str = "data/curated", params: str = "params.yaml",
                  dask_address: str | None = None, n_workers: int = 2, shard_size: int = 32,
                  reports: str | None = "reports") -> dict[str, Any]:
    """Curate RAW into OUT like `moepipe curate`, the per-image checks fanned out over Dask.

    Args:
        raw, out, params, reports: as `moepipe curate --raw --out --params --reports` (the
            report and contact sheets are published to `reports`, as dvc.yaml's curate stage does;
            None: not published).
        dask_address: scheduler of an existing Dask cluster, e.g. "tcp://10.0.0.5:8786";
            default: a temporary LocalCluster of `n_workers` processes on this host.
        n_workers: worker processes of the temporary LocalCluster (ignored with dask_address).
        shard_size: raw files per task; larger shards mean fewer, longer tasks.
    Returns the curate report (report.json's content).
    """
    if shard_size < 1 or n_workers < 1:
        raise ValueError("shard_size and n_workers must be ≥ 1")
    runner = task_runner(dask_address, n_workers)
    return curate_on_task_runner.with_options(task_runner=runner)(raw=raw, out=out, params=params,
                                                                  shard_size=shard_size, reports=reports)


if __name__ == "__main__":
    import json

    arguments = sys.argv[1:]
    summary = curate_fanout(*arguments[:2], dask_address=arguments[2] if len(arguments) > 2 else None)
    print(json.dumps({key: summary[key] for key in ("input", "kept", "rejected_total")}))
