"""Curate stage: raw posts → checked, deduplicated, cropped and labelled portraits.

Output folder (rewritten whole on every run, so it is a pure function of its inputs)::

    images/<sha256>.png      square RGB crops of cfg.output_size px
    manifest.jsonl           one record per kept image, sorted by raw sha256
    rejects.jsonl            one record per refused post, with its reason
    report.json              counts by reason, label coverage and conflicts
    contact_kept.png         thumbnails of kept images
    contact_rejected.png     thumbnails of rejected images, captioned with the reason

Per-image work (decode once, checks, face, crop, hash, write PNG) runs in a process pool, or in
whatever `examine_all` the caller passes (flows/curate_fanout.py: Dask workers); exact and
near-duplicate removal is a sequential pass over the small results afterwards.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from moepipe.config import CurateConfig, LabelsConfig
from moepipe.curate import checks
from moepipe.curate.dedup import Candidate, Duplicate, aligned_difference, deduplicate, phash
from moepipe.curate.faces import FaceBox, crop_square, detect_face, portrait_square, resize_square, square_crop
from moepipe.curate.labels import LabelStats, attribute_tags, multi_hot
from moepipe.curate.sheets import write_contact_sheets
from moepipe.errors import UserError
from moepipe.exclude import load_exclusions
from moepipe.images import atomic_write, encode_png, sha256_hex, write_json
from moepipe.manifest import read_jsonl, write_jsonl
from moepipe.progress import progress_bar
from moepipe.reports import publish

REASONS = ("corrupt", "too_small", "bad_aspect", "monochrome", "low_information", "not_avatar",
           "rating", "excluded", "duplicate", "near_duplicate")
OUTPUT_FILES = ("manifest.jsonl", "rejects.jsonl", "report.json", "contact_kept.png", "contact_rejected.png")
SCRATCH = ".dedup"  # centre views for near-duplicate checks in face mode; removed at the end
RAW_COPIES = ("file", "sha256", "md5", "width", "height", "format", "bytes")  # kept as raw_<name>


@dataclass
class CurateReport:
    """Counts of one curate run; `rejected` is keyed by reason code."""

    input: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    label_coverage: dict[str, float] = field(default_factory=dict)
    conflicts: dict[str, int] = field(default_factory=dict)
    faces_mode: str = "none"
    faces_found: int = 0
    decoded: int = 0
    seconds: float = 0.0
    workers: int = 1
    out: Path | None = None

    @property
    def summary(self) -> str:
        """The one line `moepipe curate` and the curate flows print."""
        return f"curate: kept {self.kept} of {self.input}, rejected {sum(self.rejected.values())} → {self.out}"

    @property
    def images_per_s(self) -> float:
        """Distinct raw files examined per second (decode, checks, crop, hashes and dedup)."""
        return self.decoded / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "kept": self.kept,
            "rejected": {reason: self.rejected.get(reason, 0) for reason in REASONS},
            "rejected_total": sum(self.rejected.values()),
            "label_coverage": self.label_coverage,
            "conflicts": self.conflicts,
            "faces": {"mode": self.faces_mode, "found": self.faces_found},
            # Timings stay out: this file is part of a DVC output, which must not change between
            # identical runs. `images_per_s` is on the report object (and in the benchmark).
            "decoded": self.decoded,
        }


@dataclass(frozen=True)
class Outcome:
    """What the per-image worker found; `reason` is None when the image passed every check.

    `view` is the file (relative to the output folder) that near-duplicate checks compare: the
    stored crop, or in face mode the centre of the original, since two copies of a picture need
    not yield the very same face box.
    """

    reason: str | None = None
    detail: str = ""
    sha256: str = ""
    phash: int = 0
    view: str = ""
    area: int = 0
    face: FaceBox | None = None
    stats: dict[str, Any] | None = None


def examine(path: Path, out: Path, cfg: CurateConfig) -> Outcome:
    """Decode, check, crop and store one raw image; a Rejection becomes an Outcome with a reason."""
    try:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise checks.Rejection("corrupt", f"unreadable ({error.strerror})") from None
        image = checks.decode(data)
        checks.check_geometry(image.width, image.height, cfg)
        face = detect_face(image, cfg.faces) if cfg.faces.mode == "animeface" else None
        square = square_crop(image, face, cfg.faces.margin)
        crop = resize_square(square, cfg.output_size)
        stats = checks.image_stats(crop if cfg.output_size == checks.STATS_SIDE else square)
        checks.check_content(stats, cfg)  # before the face verdict: "monochrome" says more than "no face"
        if cfg.faces.mode == "animeface" and face is None:
            raise checks.Rejection("not_avatar", f"no face with likelihood ≥ {cfg.faces.likelihood} "
                                                 f"and side ≥ {cfg.faces.min_face}px")
        if cfg.faces.mode == "none" and cfg.require_avatar:
            checks.check_layout(stats, cfg)
    except checks.Rejection as rejection:
        return Outcome(rejection.reason, rejection.detail)
    png = encode_png(crop)
    sha = sha256_hex(png)
    _write_once(out / "images" / f"{sha}.png", png)
    view, view_file = crop, f"images/{sha}.png"
    if face is not None:
        centre = crop_square(image, *portrait_square(image.width, image.height))
        view = resize_square(centre, _PixelCompare.SIDE)
        view_file = f"{SCRATCH}/{sha256_hex(data)}.png"
        _write_once(out / view_file, encode_png(view))
    return Outcome(None, "", sha, phash(view), view_file, image.width * image.height, face, stats.to_json())


def _write_once(path: Path, data: bytes) -> None:
    """Atomically but without fsync: a crashed run is redone whole anyway, and an fsync per crop
    costs more than everything else done for the image."""
    if not path.exists():
        atomic_write(path, data, fsync=False)


class _PixelCompare:
    """Confirms pHash matches by comparing views pixel by pixel (see dedup.aligned_difference)."""

    SIDE = 128  # px; larger views are compared at this size, which is plenty and 4× cheaper at 256
    SHIFT = 4   # px at SIDE: the largest misalignment near duplicates are expected to have

    def __init__(self, out: Path, view_of: dict[int, str], max_diff: float) -> None:
        self.out = out
        self.view_of = view_of
        self.max_diff = max_diff
        self.differences: dict[tuple[int, int], float] = {}
        self._pixels = lru_cache(maxsize=2048)(self._load)

    def _load(self, view: str) -> np.ndarray:
        with Image.open(self.out / view) as image:
            side = min(image.width, self.SIDE)
            return np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BOX))

    def __call__(self, a: int, b: int) -> bool:
        pa, pb = self._pixels(self.view_of[a]), self._pixels(self.view_of[b])
        if pa.shape != pb.shape:
            return False
        shift = max(1, round(self.SHIFT * pa.shape[0] / self.SIDE))
        difference = aligned_difference(pa, pb, shift)
        self.differences[(a, b)] = difference
        return difference <= self.max_diff


def post_order(record: dict[str, Any]) -> tuple[str, int, int, str]:
    """Sort key (source, post_id) with numeric ids in numeric order, so '9' comes before '10'."""
    post_id = str(record["post_id"])
    numeric = post_id.isdigit()
    return (str(record["source"]), 0 if numeric else 1, int(post_id) if numeric else 0, post_id)


def _reject(record: dict[str, Any], reason: str, detail: str, of: dict[str, Any] | None = None,
            **extra: Any) -> dict[str, Any]:
    entry = {"source": record["source"], "post_id": record["post_id"], "raw_file": record.get("file"),
             "reason": reason, "detail": detail, **extra}
    if of is not None:
        entry["duplicate_of"] = {"source": of["source"], "post_id": str(of["post_id"])}
    return entry


def _prepare_out(out: Path) -> None:
    """Remove what an earlier run left in `out` (only our own outputs), so nothing stale survives."""
    out.mkdir(parents=True, exist_ok=True)
    for folder in ("images", SCRATCH):
        shutil.rmtree(out / folder, ignore_errors=True)
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    (out / "images").mkdir()
    (out / SCRATCH).mkdir()


def _run_pool(paths: list[Path], out: Path, cfg: CurateConfig, workers: int) -> Iterator[Outcome]:
    work = partial(examine, out=out, cfg=cfg)
    if workers <= 1 or len(paths) < 2:
        yield from map(work, paths)  # in-process: no start-up or pickling cost, and tests can monkeypatch
        return
    chunk = max(1, min(16, len(paths) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=min(workers, len(paths))) as pool:
        yield from pool.map(work, paths, chunksize=chunk)


# (raw files, output folder, config) -> one Outcome per file, in order, each passed crop stored
# as out/images/<sha256>.png (and its view, see Outcome) exactly as `examine` stores it.
Examiner = Callable[[list[Path], Path, CurateConfig], list[Outcome]]


def _examine_all(jobs: list[Path], out: Path, cfg: CurateConfig, workers: int) -> list[Outcome]:
    """One Outcome per job, in job order, with a progress bar."""
    outcomes: list[Outcome] = []
    with progress_bar() as progress:
        task = progress.add_task("curate", total=len(jobs), status="")
        passed = 0
        for outcome in _run_pool(jobs, out, cfg, workers):
            outcomes.append(outcome)
            passed += outcome.reason is None
            progress.update(task, advance=1, status=f"passed {passed}  refused {len(outcomes) - passed}")
    return outcomes


def _duplicate_detail(why: Duplicate[int], position: int, compare: _PixelCompare) -> str:
    if why.reason == "duplicate":
        return "same crop"
    difference = compare.differences.get((position, why.of))
    pixels = "" if difference is None else f", aligned pixel difference {difference:.1f}"
    return f"pHash distance {why.distance}{pixels}"


def curate(cfg: CurateConfig, labels: LabelsConfig, ratings: list[str], raw: Path, out: Path,
           examine_all: Examiner | None = None, reports: Path | None = None,
           exclude: Path | None = None) -> CurateReport:
    """Check, deduplicate, crop and label every post of `raw` into `out`; returns the counts.

    `examine_all` runs the per-image work elsewhere (default: a local pool of cfg.workers). The
    report and contact sheets go to `out`, and are published to `reports` when given. Posts the
    opt-out list `exclude` (scrape.exclude) names are rejected as `excluded`, unexamined."""
    manifest_path = raw / "manifest.jsonl"
    if not raw.is_dir() or not manifest_path.is_file():
        raise UserError(f"curate: no raw data at {raw} (run `moepipe scrape` first)")
    exclusions = load_exclusions(exclude)
    records = sorted(read_jsonl(manifest_path), key=post_order)
    _prepare_out(out)
    workers = cfg.workers or os.cpu_count() or 1
    report = CurateReport(input=len(records), faces_mode=cfg.faces.mode, workers=workers)
    rejects: dict[int, dict[str, Any]] = {}  # position in `records` → reject entry

    # Metadata checks first; then one job per distinct file (same bytes, same verdict).
    first_of_sha: dict[str, int] = {}
    for position, record in enumerate(records):
        entry = exclusions.match(record)
        if entry is not None:  # a raw folder older than the entry: never examined, never shown
            rejects[position] = _reject(record, "excluded", f"{entry} ({entry.where})")
            continue
        try:
            checks.check_rating(record.get("rating"), ratings)
        except checks.Rejection as rejection:
            rejects[position] = _reject(record, rejection.reason, rejection.detail)
            continue
        first_of_sha.setdefault(record["sha256"], position)

    started = time.perf_counter()
    jobs = [raw / records[p]["file"] for p in first_of_sha.values()]
    examined = examine_all(jobs, out, cfg) if examine_all else _examine_all(jobs, out, cfg, workers)
    if len(examined) != len(jobs):
        raise RuntimeError(f"curate: {len(examined)} outcomes for {len(jobs)} files")  # a bug of examine_all
    outcomes = dict(zip(first_of_sha, examined))
    primaries = sorted(first_of_sha.values())
    passed = {p: outcomes[records[p]["sha256"]] for p in primaries
              if outcomes[records[p]["sha256"]].reason is None}
    compare = _PixelCompare(out, {p: o.view for p, o in passed.items()}, cfg.near_duplicate_max_diff)
    kept_positions, dropped = deduplicate(
        [Candidate(p, o.sha256, o.phash, o.area) for p, o in passed.items()], cfg.phash_distance,
        compare if cfg.near_duplicate_max_diff < 255 else None)
    report.decoded = len(outcomes)
    report.seconds = time.perf_counter() - started

    for position in primaries:
        outcome = outcomes[records[position]["sha256"]]
        if outcome.reason is not None:
            rejects[position] = _reject(records[position], outcome.reason, outcome.detail)
        elif position in dropped:
            why = dropped[position]
            detail = _duplicate_detail(why, position, compare)
            rejects[position] = _reject(records[position], why.reason, detail, records[why.of],
                                        distance=why.distance)
    kept_set = set(kept_positions)
    for position, record in enumerate(records):
        first = first_of_sha.get(record["sha256"])
        if position in rejects or first == position or first is None:
            continue
        if first in kept_set:
            rejects[position] = _reject(record, "duplicate", "same file", records[first], distance=0)
        else:  # identical bytes get the verdict of the first copy
            rejects[position] = {**rejects[first], **_reject(record, rejects[first]["reason"],
                                                             rejects[first]["detail"])}

    kept_records = _kept_records(cfg, labels, out, [records[p] for p in kept_positions],
                                 [passed[p] for p in kept_positions], report)
    shutil.rmtree(out / SCRATCH, ignore_errors=True)
    keep_files = {r["sha256"] for r in kept_records}
    for leftover in (out / "images").iterdir():
        if leftover.stem not in keep_files or leftover.suffix != ".png":
            leftover.unlink()

    report.kept = len(kept_records)
    report.rejected = Counter(entry["reason"] for entry in rejects.values())
    rejected = [rejects[p] for p in sorted(rejects)]
    write_jsonl(out / "manifest.jsonl", kept_records)
    write_jsonl(out / "rejects.jsonl", rejected)
    write_contact_sheets(cfg.contact_sheet_max, raw, out, kept_records, rejected)
    write_json(out / "report.json", report.to_json())
    publish(out, reports, "curate")
    report.out = out
    return report


def _kept_records(cfg: CurateConfig, labels: LabelsConfig, out: Path, records: list[dict[str, Any]],
                  outcomes: list[Outcome], report: CurateReport) -> list[dict[str, Any]]:
    """Curated manifest records (raw fields, curated file fields, labels), sorted by raw sha256."""
    stats = LabelStats(labels)
    kept = []
    for record, outcome in zip(records, outcomes):
        attributes = attribute_tags(record.get("tags", []), labels)
        stats.add(attributes)
        kept.append({
            **record,
            **{f"raw_{name}": record.get(name) for name in RAW_COPIES},
            "file": f"images/{outcome.sha256}.png", "sha256": outcome.sha256, "md5": None,
            "width": cfg.output_size, "height": cfg.output_size, "format": "png",
            "bytes": (out / "images" / f"{outcome.sha256}.png").stat().st_size,
            "phash": f"{outcome.phash:016x}", "face": outcome.face.to_json() if outcome.face else None,
            "quality": outcome.stats, "attributes": attributes, "labels": multi_hot(attributes, labels),
        })
    report.label_coverage = stats.coverage()
    report.conflicts = stats.conflict_counts()
    report.faces_found = sum(o.face is not None for o in outcomes)
    return sorted(kept, key=lambda r: r["raw_sha256"])
