"""Scrape stage: collect candidate images from the configured sources into data/raw.

Layout of the output folder::

    images/<sha256>.<ext>   content-addressed files, written atomically
    manifest.jsonl          one record per stored post (append-only, fsynced after the file;
                            a finished run rewrites it sorted, so identical runs give identical bytes)
    rejects.jsonl           posts refused for good (robots, md5, not an image ...), so a re-run skips them
    report.json             counts by outcome and reason for the last run

Posts that the opt-out list `scrape.exclude` names (moepipe/exclude.py) are never downloaded when
their listing gives them away (source and id, URL, artist, promised md5), else dropped once their
bytes are hashed; a run first removes from manifest.jsonl and images/ what the list names now.
They are counted as `excluded` and not remembered, so deleting an entry brings the post back.

A re-run, also after kill -9, skips every post already in manifest.jsonl or rejects.jsonl and
fetches only the rest. Failures that a later run may cure (5xx, timeouts) are counted but not
remembered, so they are tried again. Posts outside `scrape.ratings` are counted as rejected but
not remembered either, so widening the ratings later brings them in.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moepipe.config import ScrapeConfig
from moepipe.errors import TransientError, UserError
from moepipe.exclude import Entry, Exclusions, load_exclusions
from moepipe.images import EXTENSIONS, ImageError, atomic_write, read_header, remove_partials, sha256_hex, write_json
from moepipe.manifest import JsonlLog, Manifest, read_jsonl, write_jsonl
from moepipe.progress import progress_bar
from moepipe.reports import publish
from moepipe.scrape.sources import Post, iter_source, needs_network


@dataclass
class ScrapeReport:
    """Counts of one scrape run; `rejected` and `failed` are keyed by reason code."""

    seen: int = 0
    kept: int = 0
    already_done: int = 0
    excluded: int = 0  # distinct posts the opt-out list names, listed by a source or found stored
    excluded_removed: int = 0  # of those, stored records dropped from manifest.jsonl by this run
    rejected: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    by_source: dict[str, Counter] = field(default_factory=dict)
    total_in_manifest: int = 0
    out: Path | None = None

    @property
    def summary(self) -> str:
        """The one line `moepipe scrape` prints."""
        excluded = f", excluded {self.excluded}" if self.excluded else ""
        return (f"scrape: kept {self.kept}, already had {self.already_done}, rejected "
                f"{sum(self.rejected.values())}, failed {sum(self.failed.values())}{excluded} → {self.out}")

    def to_json(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "kept": self.kept,
            "already_done": self.already_done,
            "excluded": self.excluded,
            "excluded_removed": self.excluded_removed,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": sum(self.rejected.values()),
            "failed": dict(sorted(self.failed.items())),
            "failed_total": sum(self.failed.values()),
            "by_source": {name: dict(sorted(c.items())) for name, c in sorted(self.by_source.items())},
            "total_in_manifest": self.total_in_manifest,
        }


class _Rejected(Exception):
    def __init__(self, reason: str, permanent: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def _content_of(post: Post, fetcher: Any, cfg: ScrapeConfig) -> tuple[bytes, Any, str | None]:
    """The post's bytes, their header and the final URL; raises _Rejected."""
    if post.data is None:
        from moepipe.scrape.fetch import FetchError

        try:
            fetched = fetcher.get_image(post.url, expected_md5=post.md5)
        except FetchError as error:
            raise _Rejected(error.reason, permanent=not error.retryable) from None
        return fetched.data, fetched.header, fetched.final_url
    data = post.data
    if len(data) > cfg.max_bytes:
        raise _Rejected("too_large")
    try:
        header = read_header(data, cfg.max_pixels)
    except ImageError as error:
        raise _Rejected(error.reason) from None
    if post.md5 and hashlib.md5(data).hexdigest() != post.md5.lower():
        raise _Rejected("md5_mismatch")
    return data, header, post.url


class _Run:
    """State shared by the worker threads of one scrape run."""

    def __init__(self, cfg: ScrapeConfig, out: Path, fetcher: Any, exclusions: Exclusions) -> None:
        self.cfg = cfg
        self.exclusions = exclusions
        self.excluded: set[tuple[str, str]] = set()
        self.out = out
        self.fetcher = fetcher
        self.lock = threading.Lock()
        self.manifest = Manifest(out / "manifest.jsonl")
        self.rejects = JsonlLog(out / "rejects.jsonl")
        self.done = {(r["source"], str(r["post_id"])) for r in self.rejects}
        self.report = ScrapeReport()

    def is_done(self, post: Post) -> bool:
        return self.manifest.has_post(post.source, post.post_id) or (post.source, post.post_id) in self.done

    def count(self, post: Post, outcome: str) -> None:
        self.report.by_source.setdefault(post.source, Counter())[outcome] += 1

    def exclude(self, key: tuple[str, str], entry: Entry) -> None:
        """Count a post the opt-out list names (once per run, however often it is listed)."""
        with self.lock:
            if key not in self.excluded:
                self.excluded.add(key)
                self.report.excluded += 1
                self.report.by_source.setdefault(key[0], Counter())["excluded"] += 1

    def reject(self, post: Post, reason: str, permanent: bool, remember: bool = True) -> None:
        """Count a refused post; `permanent` ones are rejected, and remembered unless told not to."""
        with self.lock:
            if permanent:
                self.report.rejected[reason] += 1
                if remember:
                    self.rejects.append({"source": post.source, "post_id": post.post_id, "url": post.url,
                                         "reason": reason})
                    self.done.add((post.source, post.post_id))
            else:
                self.report.failed[reason] += 1
            self.count(post, f"rejected:{reason}" if permanent else f"failed:{reason}")

    def process(self, post: Post) -> None:
        try:
            data, header, final_url = _content_of(post, self.fetcher, self.cfg)
        except _Rejected as rejected:
            self.reject(post, rejected.reason, rejected.permanent)
            return
        sha = sha256_hex(data)
        md5 = hashlib.md5(data).hexdigest()
        entry = self.exclusions.match_content(md5, sha256=[sha])
        if entry is not None:  # named by the hash of its bytes: known only now; nothing is stored
            self.exclude((post.source, post.post_id), entry)
            return
        relative = f"images/{sha}{EXTENSIONS[header.kind]}"
        target = self.out / relative
        if not target.exists():
            atomic_write(target, data)
        record = {
            "file": relative,
            "sha256": sha,
            "md5": md5,
            "source": post.source,
            "post_id": post.post_id,
            "url": post.url,
            "final_url": final_url,
            "tags": post.tags,
            "rating": post.rating,
            "width": header.width,
            "height": header.height,
            "format": header.kind,
            "bytes": len(data),
            **post.extra,
        }
        with self.lock:
            self.manifest.append(record)
            self.report.kept += 1
            self.count(post, "kept")

    def close(self) -> None:
        self.manifest.close()
        self.rejects.close()


def scrape(cfg: ScrapeConfig, out: Path, reports: Path | None = None) -> ScrapeReport:
    """Fetch every configured source into `out`, resuming where an earlier run stopped.

    The report goes to `out`/report.json, and to `reports`/scrape.json when given."""
    exclusions = load_exclusions(cfg.exclude)
    out.mkdir(parents=True, exist_ok=True)
    remove_partials(out / "images")
    removed = drop_excluded(out, exclusions)
    fetcher = None
    with ExitStack() as stack:
        if any(needs_network(source) for source in cfg.sources):
            from moepipe.scrape.fetch import Fetcher

            fetcher = stack.enter_context(Fetcher(cfg))
        run = _Run(cfg, out, fetcher, exclusions)
        for record, entry in removed:
            run.exclude((record["source"], str(record["post_id"])), entry)
        run.report.excluded_removed = len(removed)
        stack.callback(run.close)
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=cfg.concurrency))
        progress = stack.enter_context(progress_bar())
        task = progress.add_task("scrape", total=sum(s.limit for s in cfg.sources), status="")
        for source in cfg.sources:
            _scrape_source(run, source, pool, progress, task)
        run.report.total_in_manifest = len(run.manifest.records)
    for name in ("manifest.jsonl", "rejects.jsonl"):  # worker threads appended in finishing order
        records = read_jsonl(out / name)
        write_jsonl(out / name, sorted(records, key=_post_order))
    write_json(out / "report.json", run.report.to_json())
    publish(out, reports, "scrape")
    run.report.out = out
    return run.report


def drop_excluded(out: Path, exclusions: Exclusions) -> list[tuple[dict[str, Any], Entry]]:
    """Remove the records the opt-out list names from `out`/manifest.jsonl, and their image files
    unless a record that stays shares the file; returns the (record, entry) pairs removed."""
    path = out / "manifest.jsonl"
    if not exclusions or not path.exists():
        return []
    records = read_jsonl(path)
    removed, kept = [], []
    for record in records:
        entry = exclusions.match(record)
        if entry is None:
            kept.append(record)
        else:
            removed.append((record, entry))
    if removed:
        write_jsonl(path, kept)  # whole and atomic: a crash leaves the old or the new manifest
        still_used = {record["file"] for record in kept}
        for record, _ in removed:
            if record["file"] not in still_used:
                (out / record["file"]).unlink(missing_ok=True)
    return removed


def _post_order(record: dict[str, Any]) -> tuple:
    """Sort key putting a finished run's records in a fixed order: by source, then post id."""
    post_id = str(record["post_id"])
    return (record["source"], 0, int(post_id), "") if post_id.isdigit() else (record["source"], 1, 0, post_id)


def _listing_record(post: Post) -> dict[str, Any]:
    """What a source's listing tells of a post, in manifest fields, for the opt-out check before
    a download (the md5 a booru promises, not yet the file's own)."""
    return {"source": post.source, "post_id": post.post_id, "url": post.url, "tags": post.tags,
            "md5": post.md5, **post.extra}


def _scrape_source(run: _Run, source: Any, pool: ThreadPoolExecutor, progress: Any, task: Any) -> None:
    from moepipe.scrape.fetch import FetchError

    pending: set[Future] = set()
    submitted: set[tuple[str, str]] = set()  # a source listing a post twice must not store it twice
    report = run.report

    def advance(done: set[Future]) -> None:
        for future in done:
            future.result()  # a bug in a worker surfaces here
        rejected = sum(report.rejected.values()) + sum(report.failed.values())
        progress.update(task, advance=len(done),
                        status=f"kept {report.kept}  rejected {rejected}  resumed {report.already_done}")

    try:
        for post in iter_source(source, run.fetcher):
            with run.lock:
                report.seen += 1
            key = (post.source, post.post_id)
            entry = run.exclusions.match(_listing_record(post))
            if entry is not None:  # before is_done: an opted-out post is counted as such every run
                run.exclude(key, entry)
                progress.update(task, advance=1)
                continue
            if run.is_done(post) or key in submitted:
                with run.lock:
                    report.already_done += 1
                    run.count(post, "already_done")
                progress.update(task, advance=1)
                continue
            if post.rating not in run.cfg.ratings:
                run.reject(post, "rating", permanent=True, remember=False)
                progress.update(task, advance=1)
                continue
            submitted.add(key)
            pending.add(pool.submit(run.process, post))
            if len(pending) >= 2 * run.cfg.concurrency:  # bounded memory for huge sources
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                advance(done)
    except FetchError as error:
        kind = TransientError if error.retryable else UserError
        raise kind(
            f"scrape: source {source.label!r}: cannot list posts ({error.reason}) at {error.url}"
        ) from None
    finally:
        done, _ = wait(pending)
        advance(done)
