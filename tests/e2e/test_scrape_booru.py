"""Scrape a fake Danbooru on loopback whose posts each misbehave in one known way.

Every fault has one exact expected outcome: kept (in manifest.jsonl), rejected for good (in
rejects.jsonl, skipped by re-runs) or failed for now (counted in report.json only, retried by the
next run), and an exact number of requests reaching the server.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from moepipe.config import DanbooruSource, ScrapeConfig
from moepipe.errors import TransientError, UserError
from moepipe.manifest import read_jsonl
from moepipe.scrape.stage import scrape
from tests.support.fakebooru import FakeBooru

pytestmark = pytest.mark.e2e

RETRIES = 2
FAULTS = {
    1001: "retry_after", 1002: "unavailable", 1003: "truncated", 1004: "html", 1005: "oversized",
    1006: "bomb", 1007: "md5_mismatch", 1008: "redirect_private", 1009: "redirect_ok", 1010: "slow",
    1011: "reset", 1012: "robots", 1013: "noai", 1014: "deleted", 1015: "explicit",
}
N_POSTS = 24
CLEAN = [post_id for post_id in range(1000, 1000 + N_POSTS) if post_id not in FAULTS]
KEPT = sorted(CLEAN + [1001, 1009])
# Permanent refusals: remembered in rejects.jsonl and never fetched again.
REJECTED = {1004: "not_image", 1005: "too_large", 1006: "too_many_pixels", 1007: "md5_mismatch",
            1008: "blocked_address", 1012: "robots_disallowed", 1013: "noai"}
# Refused for its rating: counted, never fetched, but not remembered (widening ratings brings it in).
RATING_REFUSED = {1015: "rating"}
# Transient failures: retried RETRIES times now, and again by the next run.
FAILED = {1002: "http_503", 1003: "truncated", 1010: "timeout", 1011: "connection_error"}
REQUESTS = {1001: 2, 1004: 1, 1005: 1, 1006: 1, 1007: 1, 1008: 1, 1009: 1, 1012: 0, 1013: 1, 1015: 0,
            **{post_id: RETRIES + 1 for post_id in FAILED}, **{post_id: 1 for post_id in CLEAN}}


def booru_config(url: str, **overrides: Any) -> ScrapeConfig:
    settings: dict[str, Any] = dict(
        sources=[DanbooruSource(kind="danbooru", url=url, tags="chibi", limit=100, page_size=7)],
        allow_private=["127.0.0.1"], timeout_s=1.0, retries=RETRIES, backoff_s=0.01,
        retry_after_cap_s=5.0, rate_per_host=0, concurrency=4, max_bytes=1_000_000,
    )
    settings.update(overrides)
    return ScrapeConfig(**settings)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def crawl(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One crawl of the faulty server, shared by the assertions below (it takes a few seconds)."""
    root = tmp_path_factory.mktemp("crawl")
    out = root / "raw"
    with FakeBooru(n_posts=N_POSTS, faults=FAULTS) as booru:
        report = scrape(booru_config(booru.url), out)
    return {"booru": booru, "out": out, "root": root, "report": report,
            "manifest": read_jsonl(out / "manifest.jsonl"), "rejects": read_jsonl(out / "rejects.jsonl"),
            "report_json": json.loads((out / "report.json").read_text())}


def test_manifest_holds_exactly_the_good_posts(crawl: dict[str, Any]) -> None:
    manifest = crawl["manifest"]
    assert sorted(int(record["post_id"]) for record in manifest) == KEPT
    assert {record["source"] for record in manifest} == {"danbooru"}
    booru = crawl["booru"]
    for record in manifest:
        post = booru.post(int(record["post_id"]))
        data = (crawl["out"] / record["file"]).read_bytes()
        assert data == post.data
        assert record["file"] == f"images/{hashlib.sha256(data).hexdigest()}.png"
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert record["url"] == f"{booru.url}{post.path}"
        assert record["tags"] == post.tags and record["rating"] == "general"
        assert (record["width"], record["height"]) == (booru.image_size, booru.image_size)
        assert record["source_url"] == f"https://example.invalid/art/{post.id}"
    moved = next(record for record in manifest if record["post_id"] == "1009")
    assert moved["final_url"] == f"{booru.url}/moved/{booru.post(1009).md5}.png"


def test_rejects_name_the_exact_reason(crawl: dict[str, Any]) -> None:
    reasons = {int(record["post_id"]): record["reason"] for record in crawl["rejects"]}
    assert reasons == REJECTED
    assert len(crawl["rejects"]) == len(REJECTED)


def test_report_separates_rejected_from_failed(crawl: dict[str, Any]) -> None:
    report = crawl["report_json"]
    assert report["seen"] == N_POSTS - 1  # the deleted post has no file and is never yielded
    assert report["kept"] == len(KEPT) == report["total_in_manifest"]
    assert report["already_done"] == 0
    assert report["rejected"] == {reason: 1 for reason in {**REJECTED, **RATING_REFUSED}.values()}
    assert report["failed"] == {reason: 1 for reason in FAILED.values()}
    assert report["rejected_total"] == len(REJECTED) + len(RATING_REFUSED) and report["failed_total"] == len(FAILED)
    assert crawl["report"].to_json() == report


def test_each_post_reached_the_server_the_expected_number_of_times(crawl: dict[str, Any]) -> None:
    booru = crawl["booru"]
    counts = {post_id: len(booru.image_requests(post_id)) for post_id in REQUESTS}
    assert counts == REQUESTS
    assert booru.blocked_connections == []  # the redirect to 127.0.0.2 was refused before connecting
    assert len(booru.requests_to("/robots.txt")) == 1
    assert len(booru.requests_to("/x.png")) == 0


def test_listing_walks_the_id_cursor(crawl: dict[str, Any]) -> None:
    pages = [request.query for request in crawl["booru"].listing_requests()]
    ids = sorted(range(1000, 1000 + N_POSTS), reverse=True)
    assert [page.get("page") for page in pages] == [None] + [f"b{ids[i]}" for i in (6, 13, 20, 23)]
    assert all(page["limit"] == "7" and page["tags"] == "chibi" for page in pages)


def test_outputs_stay_inside_out_and_complete(crawl: dict[str, Any]) -> None:
    out, root = crawl["out"], crawl["root"]
    everything = [path for path in root.rglob("*") if path.is_file()]
    assert all(out in path.parents for path in everything)
    assert not [path for path in everything if path.name.startswith(".tmp-")]
    images = {path.name for path in (out / "images").iterdir()}
    assert images == {Path(record["file"]).name for record in crawl["manifest"]}
    assert {path.name for path in out.iterdir()} == {"images", "manifest.jsonl", "rejects.jsonl", "report.json"}


def test_rerun_skips_done_posts_and_retries_only_failures(tmp_path: Path) -> None:
    with FakeBooru(n_posts=5, faults={1001: "unavailable", 1002: "html"}) as booru:
        cfg = booru_config(booru.url, retries=0)
        first = scrape(cfg, tmp_path)
        second = scrape(cfg, tmp_path)
    assert (first.kept, second.kept, second.already_done) == (3, 0, 4)
    assert second.failed == {"http_503": 1} and sum(second.rejected.values()) == 0
    assert [len(booru.image_requests(post_id)) for post_id in range(1000, 1005)] == [1, 2, 1, 1, 1]
    assert len(read_jsonl(tmp_path / "rejects.jsonl")) == 1


def test_rating_refusals_are_not_remembered_so_widening_ratings_brings_them_in(tmp_path: Path) -> None:
    with FakeBooru(n_posts=3, faults={1001: "explicit"}) as booru:
        cfg = booru_config(booru.url, retries=0)
        scrape(cfg, tmp_path)
        second = scrape(cfg, tmp_path)
        assert second.already_done == 2 and second.rejected == {"rating": 1}
        assert read_jsonl(tmp_path / "rejects.jsonl") == []
        assert len(booru.image_requests(1001)) == 0
        widened = scrape(booru_config(booru.url, retries=0, ratings=["general", "explicit"]), tmp_path)
    assert (widened.kept, widened.already_done) == (1, 2)
    assert len(booru.image_requests(1001)) == 1


def test_api_key_comes_from_the_environment_and_stays_out_of_messages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEPIPE_TEST_BOORU_KEY", "right-key")
    with FakeBooru(n_posts=3, auth=("alice", "right-key"), relative_urls=True) as booru:
        source = DanbooruSource(kind="danbooru", url=booru.url, login="alice",
                                api_key_env="MOEPIPE_TEST_BOORU_KEY", limit=10)
        report = scrape(booru_config(booru.url, sources=[source]), tmp_path / "ok")
        monkeypatch.setenv("MOEPIPE_TEST_BOORU_KEY", "wrong-key")
        with pytest.raises(UserError) as raised:
            scrape(booru_config(booru.url, sources=[source]), tmp_path / "bad")
    assert report.kept == 3
    urls = [record["url"] for record in read_jsonl(tmp_path / "ok" / "manifest.jsonl")]
    assert sorted(urls) == sorted(f"{booru.url}{post.path}" for post in booru.posts)  # relative file_url
    assert "cannot list posts (http_401)" in str(raised.value)
    assert not isinstance(raised.value, TransientError)  # a wrong key does not fix itself: no retry
    assert "wrong-key" not in str(raised.value) and "api_key=***" in str(raised.value)


def test_unreachable_source_is_a_one_line_user_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(UserError) as raised:
        scrape(booru_config(url, retries=0), tmp_path / "raw")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("scrape: source 'danbooru': cannot list posts")
    assert not list((tmp_path / "raw").glob("images/*"))


def test_cli_reports_an_unreachable_source_in_one_line(tmp_path: Path) -> None:
    params = {"scrape": {"sources": [{"kind": "danbooru", "url": f"http://127.0.0.1:{closed_port()}",
                                      "limit": 5}],
                         "allow_private": ["127.0.0.1"], "retries": 0, "timeout_s": 1.0}}
    (tmp_path / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    result = subprocess.run(
        [sys.executable, "-m", "moepipe", "scrape", "--params", "params.yaml", "--out", "raw"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 75  # EX_TEMPFAIL: the source may come back, so the flows retry
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("moepipe: error: scrape: source 'danbooru': cannot list posts")
