"""kill -9 a scrape half way, run it again, and check that nothing is lost, doubled or refetched."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moepipe.config import ScrapeConfig
from moepipe.manifest import read_jsonl
from moepipe.scrape.stage import scrape
from tests.support.fakebooru import FakeBooru

pytestmark = pytest.mark.e2e

N_POSTS = 40
RATE = 12.0  # requests per second: slow enough that the kill lands mid-crawl


def scrape_params(url: str, rate: float) -> dict:
    return {"sources": [{"kind": "danbooru", "url": url, "limit": N_POSTS, "page_size": 9}],
            "allow_private": ["127.0.0.1"], "rate_per_host": rate, "timeout_s": 2.0, "retries": 1,
            "backoff_s": 0.01, "concurrency": 3}


def wait_for_lines(path: Path, process: subprocess.Popen, least: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        count = len(read_jsonl(path))
        if count >= least:
            return count
        if process.poll() is not None:
            stderr = process.stderr.read() if process.stderr else ""
            pytest.fail(f"scrape exited early ({process.returncode}): {stderr}")
        time.sleep(0.01)
    pytest.fail(f"no {least} manifest lines after {timeout_s} s")


def test_kill_minus_nine_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    with FakeBooru(n_posts=N_POSTS) as booru:
        (tmp_path / "params.yaml").write_text(json.dumps({"scrape": scrape_params(booru.url, RATE)}))
        process = subprocess.Popen(
            [sys.executable, "-m", "moepipe", "scrape", "--params", "params.yaml", "--out", str(out)],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "MOEPIPE_QUIET": "1"},
        )
        try:
            wait_for_lines(out / "manifest.jsonl", process, least=10, timeout_s=30)
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            if process.stderr:
                process.stderr.close()
        assert process.returncode == -signal.SIGKILL
        at_kill = read_jsonl(out / "manifest.jsonl")
        requests_before = len(booru.requests)
        assert 10 <= len(at_kill) < N_POSTS, "the kill should land mid-crawl"

        report = scrape(ScrapeConfig(**scrape_params(booru.url, 0)), out)
        resumed = booru.requests[requests_before:]

    manifest = read_jsonl(out / "manifest.jsonl")
    keys = [(record["source"], record["post_id"]) for record in manifest]
    assert len(keys) == len(set(keys)) == N_POSTS
    assert {int(post_id) for _, post_id in keys} == {post.id for post in booru.posts}
    assert report.already_done == len(at_kill) and report.kept == N_POSTS - len(at_kill)
    for record in manifest:
        data = (out / record["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert data == booru.post(int(record["post_id"])).data
    leftovers = [path for path in out.rglob("*") if path.name.startswith(".tmp-")]
    assert leftovers == []
    done_paths = {booru.post(int(record["post_id"])).path for record in at_kill}
    refetched = [request.path for request in resumed if request.path in done_paths]
    assert refetched == []
    assert {path.name for path in (out / "images").iterdir()} == {Path(r["file"]).name for r in manifest}
