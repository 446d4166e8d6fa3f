"""Gelbooru (0.2.x "dapi") through its JSON post index.

Gelbooru only pages by number (`pid`, offset = pid * limit), so the page size stays fixed for
the whole crawl (changing it would shift the offsets) and ids already seen are skipped, because
uploads during a crawl push older posts onto the next page.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from moepipe.errors import UserError
from moepipe.scrape.sources.base import Post
from moepipe.scrape.sources.danbooru import api_key_from_env, base_url, booru_post, get_listing

if TYPE_CHECKING:
    from moepipe.config import GelbooruSource
    from moepipe.scrape.fetch import Fetcher

log = logging.getLogger(__name__)


def _posts_of(cfg: GelbooruSource, page: Any) -> list[dict[str, Any]]:
    # Current Gelbooru wraps posts with "@attributes"; older versions answer a bare list, and an
    # empty result has no "post" key at all.
    if isinstance(page, list):
        return page
    if isinstance(page, dict) and ("post" in page or "@attributes" in page):
        posts = page.get("post", [])
        return [posts] if isinstance(posts, dict) else list(posts)
    if page in (None, ""):
        return []
    message = page.get("message") if isinstance(page, dict) else None
    raise UserError(f"scrape: source {cfg.label!r}: the post index answered "
                    f"{message or 'something other than posts'}")


def iter_posts(cfg: GelbooruSource, fetcher: Fetcher) -> Iterator[Post]:
    """Posts matching `cfg.tags`, newest first, at most `cfg.limit` of them."""
    endpoint = urljoin(base_url(cfg.url), "index.php")
    page_size = max(1, min(cfg.page_size, cfg.limit))
    fixed: dict[str, Any] = {"page": "dapi", "s": "post", "q": "index", "json": 1, "limit": page_size}
    if cfg.tags:
        fixed["tags"] = cfg.tags
    api_key = api_key_from_env(cfg.label, cfg.api_key_env)
    user_id = api_key_from_env(cfg.label, cfg.user_id_env)
    if api_key:
        fixed["api_key"] = api_key
    if user_id:
        fixed["user_id"] = user_id
    remaining = cfg.limit
    seen: set[str] = set()
    skipped = 0
    pid = 0
    try:
        while remaining > 0:
            page = get_listing(fetcher, endpoint, {**fixed, "pid": pid}, secrets=("api_key", "user_id"))
            posts = _posts_of(cfg, page)
            fresh = 0
            for raw in posts:
                post_id = str(raw["id"])
                if post_id in seen:
                    continue
                seen.add(post_id)
                fresh += 1
                post = booru_post(cfg.label, cfg.url, raw, "tags")
                if post is None:
                    skipped += 1
                    continue
                yield post
                remaining -= 1
                if remaining == 0:
                    return
            # A short page is the last one; a page of repeats means the server ignores pid.
            if len(posts) < page_size or fresh == 0:
                return
            pid += 1
    finally:
        if skipped:
            log.info("%s: skipped %d posts without a downloadable file", cfg.label, skipped)
