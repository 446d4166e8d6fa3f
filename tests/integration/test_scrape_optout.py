"""Opt-outs against a fake Danbooru on loopback: what the listing gives away (post id, file URL,
origin URL, artist, promised md5) is never downloaded; a sha256 entry costs one download, and
the file is not stored."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from moepipe.config import DanbooruSource, ScrapeConfig
from moepipe.manifest import read_jsonl
from moepipe.scrape.stage import scrape
from tests.support.fakebooru import FakeBooru, FakePost


class ArtistBooru(FakeBooru):
    """The fake booru, listing an artist per post as Danbooru does (tag_string_artist)."""

    def api_record(self, post: FakePost) -> dict[str, Any]:
        return {**super().api_record(post), "tag_string_artist": f"artist_{post.id}"}


def test_listed_opt_outs_are_never_fetched(tmp_path: Path) -> None:
    with ArtistBooru(n_posts=8) as booru:
        opt_out = tmp_path / "exclude.txt"
        opt_out.write_text("\n".join([
            "post:danbooru:1000",
            f"url:{booru.url}/data/{booru.post(1001).md5}.*",
            "url:https://example.invalid/art/1002",  # the post's origin (Danbooru's `source`)
            "artist:Artist 1003",
            f"md5:{booru.post(1004).md5}",
            f"sha256:{hashlib.sha256(booru.post(1005).data).hexdigest()}",
        ]) + "\n")
        cfg = ScrapeConfig(sources=[DanbooruSource(kind="danbooru", url=booru.url, limit=20)], exclude=opt_out,
                           allow_private=["127.0.0.1"], rate_per_host=0, retries=0, timeout_s=5.0)
        report = scrape(cfg, tmp_path / "raw")
        requests = {post_id: len(booru.image_requests(post_id)) for post_id in range(1000, 1008)}
    assert requests == {1000: 0, 1001: 0, 1002: 0, 1003: 0, 1004: 0, 1005: 1, 1006: 1, 1007: 1}
    assert (report.kept, report.excluded, report.seen) == (2, 6, 8)
    records = read_jsonl(tmp_path / "raw/manifest.jsonl")
    assert [r["post_id"] for r in records] == ["1006", "1007"]
    assert records[0]["artists"] == ["artist_1006"]  # kept for lineage
    assert len(list((tmp_path / "raw/images").iterdir())) == 2
