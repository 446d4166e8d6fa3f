"""Sources of candidate images, chosen by `kind` in params.yaml (`scrape.sources`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from moepipe.scrape.sources.base import Post, normalize_rating

if TYPE_CHECKING:
    from moepipe.config import Source
    from moepipe.scrape.fetch import Fetcher

__all__ = ["Post", "iter_source", "needs_network", "normalize_rating"]

NETWORK_KINDS = {"danbooru", "gelbooru", "urls"}


def needs_network(source: Source) -> bool:
    return source.kind in NETWORK_KINDS


def iter_source(source: Source, fetcher: Fetcher | None) -> Iterator[Post]:
    """Posts of one configured source, at most `source.limit` of them."""
    if source.kind == "synthetic":
        from moepipe.scrape.sources.synthetic.gallery import iter_posts as synthetic_posts

        return synthetic_posts(source, source.label)
    if source.kind == "folder":
        from moepipe.scrape.sources.folder import iter_posts as folder_posts

        return folder_posts(source)
    if fetcher is None:
        raise ValueError(f"source kind {source.kind!r} needs a Fetcher")
    if source.kind == "danbooru":
        from moepipe.scrape.sources.danbooru import iter_posts as danbooru_posts

        return danbooru_posts(source, fetcher)
    if source.kind == "gelbooru":
        from moepipe.scrape.sources.gelbooru import iter_posts as gelbooru_posts

        return gelbooru_posts(source, fetcher)
    if source.kind == "urls":
        from moepipe.scrape.sources.urls import iter_posts as urls_posts

        return urls_posts(source)
    raise ValueError(f"unknown source kind {source.kind!r}")
