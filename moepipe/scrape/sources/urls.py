"""Lists of image URLs in the formats img2dataset reads: .txt, .csv, .tsv, .jsonl and .json.

The posts carry only a URL; the scrape stage downloads them through the shared Fetcher, with
the same robots, rate-limit and address checks as a booru. A post's id is a hash of its URL,
so re-running over an edited list resumes exactly the URLs already done.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moepipe.errors import UserError
from moepipe.scrape.sources.base import Post, normalize_rating
from moepipe.scrape.sources.folder import parse_tag_text

if TYPE_CHECKING:
    from moepipe.config import UrlsSource

log = logging.getLogger(__name__)

FORMATS = (".txt", ".csv", ".tsv", ".jsonl", ".json")
CREDIT_COLUMNS = ("artist", "license")


def url_post_id(url: str) -> str:
    """Stable id of a URL-list post: the first 16 hex digits of sha256(url)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(item).strip() for item in value if str(item).strip()]
    return parse_tag_text(str(value))


def _rows_txt(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8-sig") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#"):
                yield {"url": line}


def _rows_csv(path: Path, cfg: UrlsSource, delimiter: str) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = reader.fieldnames or []
        if cfg.url_col not in columns:
            raise UserError(f"scrape: {path}: no column {cfg.url_col!r} (columns: {', '.join(columns) or 'none'})")
        yield from reader


def _rows_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"scrape: {path}:{number}: not valid JSON") from None
            if not isinstance(row, dict):
                raise UserError(f"scrape: {path}:{number}: expected a JSON object per line")
            yield row


def _rows_json(path: Path) -> Iterator[dict[str, Any]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise UserError(f"scrape: {path}:{error.lineno}: not valid JSON") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise UserError(f"scrape: {path}: expected a JSON list of objects")
    yield from rows


def _rows(cfg: UrlsSource, path: Path) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        # A bare list has no columns: present each URL under the configured column name.
        return ({cfg.url_col: row["url"]} for row in _rows_txt(path))
    if suffix in (".csv", ".tsv"):
        return _rows_csv(path, cfg, "\t" if suffix == ".tsv" else ",")
    if suffix == ".jsonl":
        return _rows_jsonl(path)
    if suffix == ".json":
        return _rows_json(path)
    raise UserError(f"scrape: url list {path}: unsupported format {suffix or '(no extension)'!r}; "
                    f"use one of {', '.join(FORMATS)}")


def iter_posts(cfg: UrlsSource) -> Iterator[Post]:
    """One post per distinct URL in the list, in file order, at most `cfg.limit` of them."""
    path = Path(cfg.path)
    if not path.is_file():
        raise UserError(f"scrape: url list not found: {path}")
    rows = _rows(cfg, path)  # raises for an unknown format before any post is yielded
    seen: set[str] = set()
    skipped = 0
    taken = 0
    try:
        for row in rows:
            if taken >= cfg.limit:
                return
            url = str(row.get(cfg.url_col) or "").strip()
            if not url:
                skipped += 1
                continue
            if url in seen:
                continue  # the same post twice in one run would race to the manifest
            seen.add(url)
            rating = row.get("rating")
            taken += 1
            yield Post(
                source=cfg.label,
                post_id=url_post_id(url),
                url=url,
                md5=str(row["md5"]).lower() if row.get("md5") else None,
                tags=_tags(row.get(cfg.tags_col)),
                rating=normalize_rating(str(rating)) if rating not in (None, "") else "general",
                # Credit and terms a list may carry per URL, kept in the manifest for lineage and opt-outs.
                extra={name: str(row[name]) for name in CREDIT_COLUMNS if row.get(name) not in (None, "")},
            )
    finally:
        if skipped:
            log.info("%s: skipped %d rows without a %r value", cfg.label, skipped, cfg.url_col)
