"""What every source yields: posts with tags, a rating and either a URL or the bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RATINGS = ("general", "sensitive", "questionable", "explicit")

# Booru rating letters and words, mapped onto the four ratings used everywhere in moepipe.
_RATING_ALIASES = {
    "g": "general", "general": "general", "safe": "general", "s": "sensitive",
    "sensitive": "sensitive", "q": "questionable", "questionable": "questionable",
    "e": "explicit", "explicit": "explicit",
}


def normalize_rating(value: str | None) -> str:
    """Map booru rating letters/words onto moepipe's four ratings; unknown means 'explicit'.

    Treating an unknown rating as the most restrictive keeps it out under the default filter.
    Note: Danbooru's 's' is 'sensitive' (since 2022), Gelbooru's 'safe' is 'general'.
    """
    return _RATING_ALIASES.get((value or "").strip().lower(), "explicit")


@dataclass
class Post:
    """One candidate image from a source.

    `url` is where to download it; `data` holds the bytes when the source already has them
    (folder, synthetic). `md5` is the hex digest the source promises for the content, if any.
    `extra` is copied into the manifest record (e.g. the synthetic gallery's ground truth).
    """

    source: str
    post_id: str
    tags: list[str]
    rating: str
    url: str | None = None
    md5: str | None = None
    data: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.url is None and self.data is None:
            raise ValueError(f"post {self.source}/{self.post_id} has neither url nor data")
