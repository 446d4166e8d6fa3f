"""A local folder of images, optionally with kohya/danbooru-style sidecar tag files.

`cat.png` takes its tags from `cat.txt` (or `cat.png.txt`), written either comma separated
("1girl, long hair, smile") or space separated ("1girl long_hair smile"). Files are recognised
by their magic bytes, never by extension, so a mislabelled .jpg that is really a PNG is kept and
a stray .txt, .json or .DS_Store is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from moepipe.errors import UserError
from moepipe.images import sniff_kind
from moepipe.scrape.sources.base import Post, normalize_rating

if TYPE_CHECKING:
    from moepipe.config import FolderSource

log = logging.getLogger(__name__)


def parse_tag_text(text: str) -> list[str]:
    """Tags from a caption line: comma separated (spaces become underscores) or space separated.

    Duplicates are dropped, first occurrence wins; empty items are ignored.
    """
    if "," in text:
        items = ["_".join(part.split()) for part in text.split(",")]
    else:
        items = text.split()
    return list(dict.fromkeys(item for item in items if item))


def _split_rating(tags: list[str]) -> tuple[list[str], str]:
    """Pull a `rating:<x>` tag (as booru exports write it) out of the tag list."""
    rating = "general"
    kept = []
    for tag in tags:
        if tag.lower().startswith("rating:"):
            rating = normalize_rating(tag.split(":", 1)[1])
        else:
            kept.append(tag)
    return kept, rating


def _sidecar(image: Path) -> Path | None:
    for candidate in (image.with_suffix(".txt"), image.with_name(image.name + ".txt")):
        if candidate != image and candidate.is_file():
            return candidate
    return None


def _candidates(root: Path, recursive: bool) -> list[Path]:
    found = root.rglob("*") if recursive else root.iterdir()
    # Sorted by relative path so that post order (and `limit`) does not depend on the filesystem.
    return sorted((path for path in found if path.is_file()), key=lambda p: p.relative_to(root).as_posix())


def iter_posts(cfg: FolderSource) -> Iterator[Post]:
    """Image files under `cfg.path` in path order, at most `cfg.limit` of them, with their bytes."""
    root = Path(cfg.path)
    if not root.exists():
        raise UserError(f"scrape: folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"scrape: not a folder: {root}")
    taken = 0
    skipped = 0
    try:
        for path in _candidates(root, cfg.recursive):
            if taken >= cfg.limit:
                return
            with path.open("rb") as handle:
                if sniff_kind(handle.read(16)) is None:
                    skipped += 1
                    continue
            sidecar = _sidecar(path)
            tags: list[str] = []
            if sidecar is not None:
                tags = parse_tag_text(sidecar.read_text(encoding="utf-8", errors="replace"))
            tags, rating = _split_rating(tags)
            taken += 1
            yield Post(
                source=cfg.label,
                post_id=path.relative_to(root).as_posix(),
                tags=tags,
                rating=rating,
                data=path.read_bytes(),
            )
    finally:
        if skipped:
            log.info("%s: skipped %d files that are not images", cfg.label, skipped)
