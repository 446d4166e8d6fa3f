"""Opt-outs: the entries of `scrape.exclude` that keep posts out of data/raw, data/curated and so
out of every model trained afterwards. Parsing and matching live here only; the scrape stage
(before and after a download, and on the stored manifest) and the curate stage (on the raw
manifest) ask `Exclusions.match`.

The file holds one entry a line; blank lines and `#` comments (a whole line, or after a space)
are ignored::

    post:<source>:<post_id>    a post of one source, as the manifest names it (source label, id)
    url:<glob>                 fnmatch pattern (case-sensitive) on the post's URL, the URL it was
                               finally fetched from, or its origin (a booru's `source` field)
    artist:<name>              the source's artist field (Danbooru's artist tags, a URL list's
                               `artist` column) or an `artist:<name>` tag; case-insensitive,
                               spaces and underscores alike
    md5:<32 hex digits>        the bytes of the file as a source serves it
    sha256:<64 hex digits>

A post id or a hash matches whatever post carries it, so a repost of the same file under another
id needs its md5/sha256 entry too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from moepipe.errors import UserError

KINDS = ("post", "url", "artist", "md5", "sha256")
_HEX = {"md5": re.compile(r"[0-9a-f]{32}"), "sha256": re.compile(r"[0-9a-f]{64}")}
URL_FIELDS = ("url", "final_url", "source_url")  # the manifest fields a `url:` pattern is tried on
ARTIST_FIELDS = ("artists", "artist")  # what sources record of the artist (a list or one name)


@dataclass(frozen=True)
class Entry:
    """One line of the opt-out file: `kind:value`, and where it came from."""

    kind: str
    value: str
    line: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"

    @property
    def where(self) -> str:
        """'exclude.txt:3', for reports and reject details."""
        return f"{self.path}:{self.line}" if self.path else f"line {self.line}"


def artist_key(name: str) -> str:
    """Artist names as compared: lower case, spaces and underscores alike ('Ano Ne' = 'ano_ne')."""
    return "_".join(name.strip().lower().replace("_", " ").split())


@dataclass
class Exclusions:
    """The parsed opt-out list; empty (matching nothing) when `scrape.exclude` is unset."""

    posts: dict[tuple[str, str], Entry] = field(default_factory=dict)
    urls: list[Entry] = field(default_factory=list)
    artists: dict[str, Entry] = field(default_factory=dict)
    hashes: dict[tuple[str, str], Entry] = field(default_factory=dict)  # (md5|sha256, hex) -> entry
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.posts) + len(self.urls) + len(self.artists) + len(self.hashes)

    def add(self, entry: Entry) -> None:
        if entry.kind == "post":
            source, post_id = entry.value.split(":", 1)
            self.posts.setdefault((source, post_id), entry)
        elif entry.kind == "url":
            self.urls.append(entry)
        elif entry.kind == "artist":
            self.artists.setdefault(artist_key(entry.value), entry)
        else:
            self.hashes.setdefault((entry.kind, entry.value), entry)

    def match(self, record: Mapping[str, Any]) -> Entry | None:
        """The first entry that names this post, else None.

        `record` is a manifest record (data/raw, data/curated) or a post about to be fetched, as a
        dict of the same fields: source, post_id, url / final_url / source_url, tags, artists /
        artist, and md5 / sha256 (raw_md5 / raw_sha256 in a curated record) where known.
        """
        if not self:
            return None
        key = (str(record.get("source")), str(record.get("post_id")))
        if key in self.posts:
            return self.posts[key]
        found = self.match_content(*(record.get(f"{prefix}md5") for prefix in ("", "raw_")),
                                   sha256=[record.get(f"{prefix}sha256") for prefix in ("", "raw_")])
        if found is not None:
            return found
        if self.artists:
            for name in artists_of(record):
                if artist_key(name) in self.artists:
                    return self.artists[artist_key(name)]
        for url in (record.get(name) for name in URL_FIELDS):
            if isinstance(url, str) and url:
                for entry in self.urls:
                    if fnmatchcase(url, entry.value):
                        return entry
        return None

    def match_content(self, *md5: str | None, sha256: Iterable[str | None] = ()) -> Entry | None:
        """The md5:/sha256: entry naming one of these digests of a file's bytes, else None."""
        for kind, digests in (("md5", md5), ("sha256", sha256)):
            for digest in digests:
                if isinstance(digest, str) and (kind, digest.lower()) in self.hashes:
                    return self.hashes[(kind, digest.lower())]
        return None


def artists_of(record: Mapping[str, Any]) -> list[str]:
    """The artist names a record carries: its artist fields, then its `artist:<name>` tags."""
    names: list[str] = []
    for name in ARTIST_FIELDS:
        value = record.get(name)
        if isinstance(value, str):
            names.extend(value.split() if name == "artists" else [value])
        elif isinstance(value, (list, tuple)):
            names.extend(str(item) for item in value)
    names += [tag.split(":", 1)[1] for tag in record.get("tags") or [] if str(tag).lower().startswith("artist:")]
    return [name for name in names if name.strip()]


def parse_entry(text: str, line: int = 0, path: str = "") -> Entry:
    """One entry `kind:value` (comment and surrounding space already removed); raises UserError
    naming the file and line when it is malformed."""
    where = f"{path}:{line}" if path else f"line {line}"
    kind, colon, value = text.partition(":")
    kind, value = kind.strip().lower(), value.strip()
    if not colon or kind not in KINDS:
        raise UserError(f"{where}: {text!r} is no opt-out entry; start it with one of "
                        + ", ".join(f"{k}:" for k in KINDS))
    if not value:
        raise UserError(f"{where}: {kind}: needs a value")
    if kind == "post":
        source, colon, post_id = value.partition(":")
        if not colon or not source.strip() or not post_id.strip():
            raise UserError(f"{where}: post: needs <source>:<post_id> (got {value!r})")
        value = f"{source.strip()}:{post_id.strip()}"
    elif kind in _HEX:
        value = value.lower()
        if not _HEX[kind].fullmatch(value):
            digits = 32 if kind == "md5" else 64
            raise UserError(f"{where}: {kind}: needs {digits} hex digits (got {value!r})")
    return Entry(kind, value, line, path)


def parse_exclusions(text: str, path: str = "") -> Exclusions:
    """Every entry of an opt-out file's text; the first malformed line raises UserError."""
    exclusions = Exclusions(path=Path(path) if path else None)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        line = re.split(r"\s#", line, maxsplit=1)[0].strip()  # an inline comment follows a space
        if line:
            exclusions.add(parse_entry(line, number, path))
    return exclusions


def load_exclusions(path: Path | str | None) -> Exclusions:
    """The opt-out list `scrape.exclude` names (relative paths from the working directory, as
    DVC runs stages from the project root); empty for None. UserError when it cannot be read."""
    if path is None:
        return Exclusions()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"scrape.exclude: {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"scrape.exclude: {path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    return parse_exclusions(text, str(path))
