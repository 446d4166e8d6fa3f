"""Flow `scrape`: collect the posts that appeared since the last run, then version them.

`dvc repro` empties a stage's outputs before running it, so a scrape through it would fetch
every post again. Incremental collection instead runs the scrape stage's own `cmd:` (as DVC
defines it) over the raw data already checked out — `moepipe scrape` skips every post it has —
and then `dvc commit` records the grown data/raw in dvc.lock, so lineage stays DVC's. The next
`pipeline` run finds data/raw changed and rebuilds what follows from it.

The synthetic default source is fixed, so a run finds 0 new posts; booru sources grow.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow

from flows.dvc_stages import pipeline_stages, resolve_remote, select_stages
from flows.dvc_tasks import (
    TRANSFER_RETRIES,
    dvc_commit,
    dvc_pull,
    dvc_push,
    retry_options,
    run_stage_command,
    stage_options,
)
from flows.runlog import RunLog, flow_run_name

SUMMARY_KEY = "moepipe-scrape-summary"


def count_lines(path: Path) -> int:
    """Records in a JSONL manifest (0 when it does not exist yet)."""
    if not path.is_file():
        return 0
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


@flow(name="scrape", description="incremental scrape: new posts into data/raw, dvc commit, dvc push")
def scrape(repo: str = ".", stage: str = "scrape", manifest: str = "data/raw/manifest.jsonl",
           pull: bool = True, push: bool = True, remote: str | None = None,
           retries: int = 3, retry_delay_s: float = 30.0) -> dict[str, Any]:
    """Fetch new posts with the scrape stage, version them with DVC, report how many were new.

    Args:
        repo: the project checkout; a deployment's pull step enters it.
        stage: the dvc.yaml stage that scrapes.
        manifest: the stage's JSONL manifest of stored posts, counted before and after.
        pull, push, remote: as in the `pipeline` flow (pull first so the run resumes from the
            versioned raw data; push the grown data afterwards).
        retries, retry_delay_s: tries after the first for the scrape (network), and the first
            delay (doubling); a `moepipe: error:` failure is not retried.
    """
    root = Path(repo).resolve()
    log = RunLog(root, "moepipe scrape", SUMMARY_KEY)
    counts = {"posts_before": 0, "posts_after": 0}

    def steps() -> None:
        info = select_stages(pipeline_stages(root), [stage])[0]
        log.stages, log.results = {stage: info}, False
        remote_name = resolve_remote(root, remote) if (pull or push) else None
        log.facts = [f"repo `{root}`", f"remote `{remote_name}`" if remote_name else "no DVC remote (data stays local)",
                     f"flow run `{flow_run_name()}`"]
        transfer = retry_options(TRANSFER_RETRIES, retry_delay_s)
        if pull and remote_name:
            log.call("dvc pull", dvc_pull, transfer, repo=str(root), remote=remote_name, targets=[stage])
        elif pull:
            log.note("dvc pull", "skipped", "no DVC remote configured")
        counts["posts_before"] = before = count_lines(root / manifest)
        log.call(stage, run_stage_command, stage_options(stage, retries, retry_delay_s),
                 repo=str(root), stage=stage, cmd=info.cmd, wdir=info.wdir)
        counts["posts_after"] = after = count_lines(root / manifest)
        log.extra = [f"**{after - before} new posts** ({before} → {after} in `{manifest}`)"]
        log.call("dvc commit", dvc_commit, repo=str(root), stage=stage)
        if push and remote_name:
            log.call("dvc push", dvc_push, transfer, repo=str(root), remote=remote_name, targets=[stage])
        elif push:
            log.note("dvc push", "skipped", "no DVC remote configured")

    remaining = ["dvc pull"] * pull + [stage, "dvc commit"] + ["dvc push"] * push
    result = log.run(steps, lambda: remaining, step="scrape")
    return {**result, **counts, "new_posts": counts["posts_after"] - counts["posts_before"]}

if __name__ == "__main__":
    print(scrape(repo=sys.argv[1] if len(sys.argv) > 1 else ".")["new_posts"], "new posts")
