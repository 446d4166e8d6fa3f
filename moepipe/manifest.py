"""Append-only JSONL manifests that survive kill -9.

A record is appended (and fsynced) only after its image file is complete on disk, so a manifest
line always points at a whole file. A torn last line, left by a crash mid-write, is dropped on
load and cut from the file, so the next append starts on a clean line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moepipe.images import atomic_write

REQUIRED_FIELDS = ("file", "sha256", "source", "post_id", "url", "tags", "rating", "width", "height")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All whole records of a JSONL file; a torn final line is ignored."""
    if not path.exists():
        return []
    records = []
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break  # torn by a crash; the writer repairs it
            line = raw.strip()
            if line:
                records.append(json.loads(line))
    return records


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Write a whole JSONL file atomically."""

    text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    atomic_write(path, text.encode("utf-8"))


def _repair_tail(path: Path) -> None:
    if not path.exists():
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


class JsonlLog:
    """An append-only, crash-safe JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _repair_tail(path)
        self.records = read_jsonl(path)
        self._handle = path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records.append(record)

    def close(self) -> None:
        self._handle.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Manifest(JsonlLog):
    """Stored images keyed by (source, post_id) and by sha256."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._posts = {(r["source"], str(r["post_id"])) for r in self.records}
        self._hashes = {r["sha256"]: r for r in self.records}

    def has_post(self, source: str, post_id: str) -> bool:
        return (source, str(post_id)) in self._posts

    def by_sha(self, sha256: str) -> dict[str, Any] | None:
        return self._hashes.get(sha256)

    def append(self, record: dict[str, Any]) -> None:
        missing = [name for name in REQUIRED_FIELDS if name not in record]
        if missing:
            raise ValueError(f"manifest record lacks {', '.join(missing)}")
        super().append(record)
        self._posts.add((record["source"], str(record["post_id"])))
        self._hashes.setdefault(record["sha256"], record)
