"""Danbooru (and its clones: Safebooru, Testbooru) through the JSON API at /posts.json.

Pages are walked with Danbooru's id cursor (`page=b<id>`: posts with a lower id), not page
numbers, so uploads during a long crawl neither repeat nor skip posts, and deep crawls stay
cheap for the server (numbered pages past 1000 are refused for ordinary accounts).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin

from moepipe.errors import UserError
from moepipe.scrape.sources.base import Post, normalize_rating

if TYPE_CHECKING:
    from moepipe.config import DanbooruSource
    from moepipe.scrape.fetch import Fetcher

log = logging.getLogger(__name__)


def api_key_from_env(label: str, variable: str | None) -> str | None:
    """The secret named by an `*_env` setting; a named but unset variable is a user mistake."""
    if not variable:
        return None
    value = os.environ.get(variable, "")
    if not value:
        raise UserError(f"scrape: source {label!r}: environment variable {variable} is not set")
    return value


def base_url(url: str) -> str:
    """The site root with exactly one trailing slash, so urljoin keeps any path prefix."""
    return url.rstrip("/") + "/"


def get_listing(fetcher: Fetcher, endpoint: str, params: dict[str, Any], secrets: tuple[str, ...]) -> Any:
    """fetcher.get_json, but a FetchError never carries credentials in its URL.

    The scrape stage prints the failing URL, and API keys travel as query parameters.
    """
    from moepipe.scrape.fetch import FetchError

    try:
        return fetcher.get_json(endpoint, params=params)
    except FetchError as error:
        if not any(params.get(name) for name in secrets):
            raise
        shown = {name: ("***" if name in secrets else value) for name, value in params.items()}
        url = endpoint + "?" + urlencode(shown, safe="*")
        raise FetchError(error.reason, url, error.detail, retryable=error.retryable) from None


def _auth_params(cfg: DanbooruSource) -> dict[str, str]:
    if cfg.api_key_env and not cfg.login:
        raise UserError(f"scrape: source {cfg.label!r}: api_key_env is set but login is not")
    key = api_key_from_env(cfg.label, cfg.api_key_env)
    if cfg.login and key:
        return {"login": cfg.login, "api_key": key}
    return {}


def booru_post(label: str, site: str, raw: dict[str, Any], tags_key: str) -> Post | None:
    """A Post from one booru API item (Danbooru or Gelbooru shape), or None when not downloadable."""
    # Deleted, banned and gold-only posts come back without file_url (and often without md5).
    file_url = raw.get("file_url")
    if not file_url:
        return None
    return Post(
        source=label,
        post_id=str(raw["id"]),
        url=urljoin(base_url(site), file_url),
        md5=raw.get("md5") or None,
        tags=str(raw.get(tags_key) or "").split(),
        rating=normalize_rating(raw.get("rating")),
        extra={
            "score": raw.get("score"),
            "created_at": raw.get("created_at"),
            "source_url": raw.get("source") or None,
            # Danbooru lists a post's artist tags apart (Gelbooru does not): lineage and opt-outs.
            "artists": str(raw.get("tag_string_artist") or "").split() or None,
        },
    )


def iter_posts(cfg: DanbooruSource, fetcher: Fetcher) -> Iterator[Post]:
    """Posts matching `cfg.tags`, newest first, at most `cfg.limit` of them.

    Raises FetchError when a listing page cannot be fetched (the scrape stage turns it into a
    UserError) and UserError when the API answers with an error object or the key is missing.
    """
    endpoint = urljoin(base_url(cfg.url), "posts.json")
    fixed: dict[str, Any] = {"tags": cfg.tags} if cfg.tags else {}
    fixed.update(_auth_params(cfg))
    remaining = cfg.limit
    lowest_id: int | None = None
    skipped = 0
    try:
        while remaining > 0:
            params = {**fixed, "limit": min(cfg.page_size, remaining)}
            if lowest_id is not None:
                params["page"] = f"b{lowest_id}"
            page = get_listing(fetcher, endpoint, params, secrets=("api_key",))
            if not isinstance(page, list):
                message = page.get("message") if isinstance(page, dict) else None
                raise UserError(f"scrape: source {cfg.label!r}: {endpoint} answered "
                                f"{message or 'something other than a list of posts'}")
            if not page:
                return
            previous = lowest_id
            for raw in page:
                post_id = int(raw["id"])
                if previous is not None and post_id >= previous:
                    continue  # a server that ignores the cursor must not make us loop or repeat
                lowest_id = post_id if lowest_id is None else min(lowest_id, post_id)
                post = booru_post(cfg.label, cfg.url, raw, "tag_string")
                if post is None:
                    skipped += 1
                    log.debug("danbooru: post %s has no file_url; skipped", post_id)
                    continue
                yield post
                remaining -= 1
                if remaining == 0:
                    return
            if lowest_id == previous:
                return
    finally:
        if skipped:
            log.info("%s: skipped %d posts without a downloadable file", cfg.label, skipped)
