"""`moepipe lineage`: what a registered generator learned from, traced through MLflow and DVC.

    TARGET ─► model version ─► its MLflow run ─► the data version the run recorded ─► the posts

TARGET is an avatar PNG (its tEXt names model_name / model_version, else run_id, else
generator_sha256), a model URI (models:/NAME/VERSION, models:/NAME@ALIAS) or a generator file
(found by its sha256, the `moepipe.generator_sha256` tag of its version). The data version is the
DVC md5s that `register` copied from dvc.lock into the run's tags (`dvc.md5.data/raw`,
`dvc.md5.data/curated`, `dvc.md5.data/prepared`, see register.lineage). The posts are those of
data/curated's manifest.jsonl *at that hash*: the directory listing `<md5>.dir` names the
manifest's own md5, and both objects are read from the DVC cache (or, through `read`, the
remote), never from today's working tree, so a version keeps its own list after the data moved
on. Where data/prepared's listing is at hand too, each post says whether it trained (train) or
only scored (val) the model.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moepipe.errors import UserError
from moepipe.exclude import artists_of
from moepipe.registry.promotion import COMPLETE_TAG, FINGERPRINT_TAG

# md5 of a DVC object (a directory listing ends in .dir) -> its bytes, or None when absent.
ObjectReader = Callable[[str], bytes | None]

CURATED, PREPARED = "data/curated", "data/prepared"
DATA_ORDER = ("data/raw", CURATED, PREPARED)  # the pipeline's order; other data paths after them
DATA_TAG = "dvc.md5."
_OID = re.compile(r"[0-9a-f]{32}(\.dir)?")
_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))/?")
POST_FIELDS = ("source", "post_id", "split", "rating", "artists", "license", "url", "source_url")
ALWAYS_SHOWN = ("source", "post_id", "split", "rating")


def cache_reader(cache: Path) -> ObjectReader:
    """Objects of a DVC 3 cache folder (`.dvc/cache/files/md5`: <first 2 hex>/<the rest>)."""
    def read(oid: str) -> bytes | None:
        path = Path(cache) / oid[:2] / oid[2:]
        return path.read_bytes() if path.is_file() else None
    return read


# -- the target ------------------------------------------------------------------------------
def _version(client: Any, name: str, version: str, target: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException:
        raise UserError(f"{target}: no version {version} of registered model {name!r}") from None


def _by_uri(client: Any, uri: str) -> tuple[Any, str]:
    from mlflow.exceptions import MlflowException

    match = _MODEL_URI.fullmatch(uri)
    if match is None:
        raise UserError(f"{uri}: not a model URI of the form models:/NAME/VERSION or models:/NAME@ALIAS")
    name, alias = match["name"], match["alias"]
    if alias is None:
        return _version(client, name, match["version"], uri), "model URI"
    try:
        return client.get_model_version_by_alias(name, alias), f"alias {alias}"
    except MlflowException:
        raise UserError(f"{uri}: registered model {name!r} has no alias {alias!r}") from None


def _by_search(client: Any, query: str, what: str, target: str, prefer: str | None) -> Any:
    found = [v for v in client.search_model_versions(query) if v.tags.get(COMPLETE_TAG) == "true"]
    if not found:
        raise UserError(f"{target}: no registered version has {what}")
    found.sort(key=lambda v: (v.name != prefer, v.name, int(v.version)))  # the project's model first
    return found[0]


def png_text(path: Path) -> dict[str, str] | None:
    """The tEXt of a PNG file, or None when the file is no PNG."""
    with open(path, "rb") as handle:
        if handle.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
    from PIL import Image

    with Image.open(path) as image:
        return {str(k): str(v) for k, v in (getattr(image, "text", None) or {}).items()}


def resolve(client: Any, target: str, prefer: str | None = None) -> tuple[Any, str]:
    """(the model version TARGET names, how it was found); UserError when it names none."""
    if target.startswith("models:/"):
        return _by_uri(client, target)
    path = Path(target)
    if not path.is_file():
        raise UserError(f"{target}: neither a file nor a model URI (models:/NAME/VERSION, models:/NAME@ALIAS)")
    text = png_text(path)
    if text is None:  # a generator file: its registration is named by its sha256
        from moepipe.registry.register import sha256_file

        fingerprint = sha256_file(path)
        version = _by_search(client, f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}'",
                             f"generator sha256 {fingerprint[:12]}… (not registered?)", target, prefer)
        return version, "generator sha256"
    if text.get("model_name") and text.get("model_version", "").isdigit():
        return _version(client, text["model_name"], text["model_version"], target), "PNG text"
    if re.fullmatch(r"[0-9a-f]{32}", text.get("run_id", "")):
        return _by_search(client, f"run_id = '{text['run_id']}'", f"run {text['run_id']}", target, prefer), \
            "PNG text (run)"
    if re.fullmatch(r"[0-9a-f]{64}", text.get("generator_sha256", "")):
        return _by_search(client, f"tags.`{FINGERPRINT_TAG}` = '{text['generator_sha256']}'",
                          "the PNG's generator_sha256", target, prefer), "PNG text (generator sha256)"
    if text.get("model", "").startswith("models:/"):
        version, how = _by_uri(client, text["model"])
        return version, f"PNG text ({how} now)"
    drawn = f" (drawn from {text['model']})" if text.get("model") else ""
    raise UserError(f"{target}: the PNG names no registered model version{drawn}; "
                    "run lineage on the generator file or model URI instead")


# -- the versioned data ----------------------------------------------------------------------
def _object(read: ObjectReader, oid: str, what: str) -> bytes:
    data = read(oid)
    if data is None:
        raise UserError(f"{what} (DVC md5 {oid}) is not in the DVC cache or remote; `dvc pull` it "
                        f"(`dvc fetch --all-commits {what.split()[0]}` for an older version) and try again")
    return data


def listing(read: ObjectReader, oid: str, what: str) -> dict[str, str]:
    """{relative path: md5} of a directory DVC recorded at md5 `oid` (ending in .dir)."""
    if not _OID.fullmatch(oid) or not oid.endswith(".dir"):
        raise UserError(f"{what}: the run recorded {oid!r}, not the md5 of a DVC-tracked directory")
    try:
        entries = json.loads(_object(read, oid, what))
        return {str(entry["relpath"]): str(entry["md5"]) for entry in entries}
    except (ValueError, TypeError, KeyError):
        raise UserError(f"{what} (DVC md5 {oid}): the cached listing is not DVC's .dir format") from None


def versioned_jsonl(read: ObjectReader, dir_oid: str, name: str, what: str) -> list[dict[str, Any]]:
    """The records of file `name` inside the directory DVC recorded at `dir_oid`."""
    files = listing(read, dir_oid, what)
    if name not in files:
        raise UserError(f"{what} (DVC md5 {dir_oid}) holds no {name}")
    text = _object(read, files[name], f"{what} {name}").decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _splits(read: ObjectReader, oid: str | None) -> dict[tuple[str, str], str]:
    """(source, post_id) -> train | val from data/prepared's index.jsonl, when it can be read."""
    if not oid:
        return {}
    try:
        rows = versioned_jsonl(read, oid, "index.jsonl", PREPARED)
    except UserError:
        return {}  # the split is a nicety; the curated manifest is the list
    return {(str(row["source"]), str(row["post_id"])): str(row["split"]) for row in rows}


def post_row(record: Mapping[str, Any], split: str | None) -> dict[str, Any]:
    """What lineage shows of one curated record: where it came from and on what terms."""
    return {"source": record.get("source"), "post_id": str(record.get("post_id")), "split": split,
            "rating": record.get("rating"), "artists": artists_of(record) or None,
            "license": record.get("license"), "url": record.get("final_url") or record.get("url"),
            "source_url": record.get("source_url")}


def _data_order(path: str) -> tuple[int, str]:
    return (DATA_ORDER.index(path) if path in DATA_ORDER else len(DATA_ORDER), path)


def _post_order(row: Mapping[str, Any]) -> tuple:
    post_id = str(row["post_id"])
    return (str(row["source"]), 0 if post_id.isdigit() else 1, int(post_id) if post_id.isdigit() else 0, post_id)


# -- the whole chain -------------------------------------------------------------------------
def trace(client: Any, target: str, read: ObjectReader, *, prefer: str | None = None) -> dict[str, Any]:
    """TARGET's model version, run, data hashes and every post of its training data (see the
    module doc); UserError naming what is missing when one link cannot be followed."""
    found, how = resolve(client, target, prefer)
    version = client.get_model_version(found.name, found.version)  # a search's answer lacks the aliases
    run = client.get_run(version.run_id)
    tags = dict(run.data.tags)
    recorded = {key.removeprefix(DATA_TAG): value for key, value in tags.items() if key.startswith(DATA_TAG)}
    data = {path: recorded[path] for path in sorted(recorded, key=_data_order) if path.startswith("data/")}
    notes = []
    if tags.get("moepipe.dvc_lock_matches_generator") == "false":
        notes.append("dvc.lock did not match generator.pt when it was registered: these data hashes may "
                     "belong to another training run")
    result: dict[str, Any] = {
        "target": target, "found_by": how,
        "model": {"name": version.name, "version": int(version.version),
                  "aliases": sorted(getattr(version, "aliases", None) or [])},
        "run": {"id": run.info.run_id, "name": run.info.run_name, "experiment_id": run.info.experiment_id,
                "started": datetime.fromtimestamp(run.info.start_time / 1000, UTC).isoformat(timespec="seconds")
                if run.info.start_time else None,
                "git_commit": tags.get("mlflow.source.git.commit"), "git_dirty": tags.get("moepipe.git_dirty"),
                "generator_sha256": tags.get(FINGERPRINT_TAG)},
        "data": data, "notes": notes, "posts": None,
    }
    curated = data.get(CURATED)
    if curated is None:
        notes.append(f"the run recorded no {CURATED} hash (registered outside `dvc repro`?): no post list")
        return result
    records = versioned_jsonl(read, curated, "manifest.jsonl", CURATED)
    splits = _splits(read, data.get(PREPARED))
    rows = sorted((post_row(r, splits.get((str(r.get("source")), str(r.get("post_id"))))) for r in records),
                  key=_post_order)
    result["posts"] = {
        "manifest": f"{CURATED}@{curated}/manifest.jsonl", "total": len(rows),
        "by_source": dict(Counter(str(row["source"]) for row in rows).most_common()),
        "by_split": dict(Counter(row["split"] for row in rows if row["split"])) or None,
        "rows": rows,
    }
    return result


def limited(result: dict[str, Any], limit: int) -> dict[str, Any]:
    """`result` with at most `limit` post rows (0: all); the totals stay."""
    posts = result.get("posts")
    if not posts or limit <= 0:
        return result
    return {**result, "posts": {**posts, "rows": posts["rows"][:limit]}}


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def format_text(result: Mapping[str, Any], limit: int) -> str:
    """The chain for people: one block per link, then a table of the first `limit` posts (0: all)."""
    model, run = result["model"], result["run"]
    aliases = f" ({', '.join(model['aliases'])})" if model["aliases"] else ""
    dirty = " (uncommitted changes)" if run.get("git_dirty") == "true" else ""
    lines = [
        f"{result['target']}  [found by {result['found_by']}]",
        f"model    {model['name']} v{model['version']}{aliases}",
        f"run      {run['id']}  {run.get('name') or ''}  started {run.get('started') or '?'}",
        f"         git {run.get('git_commit') or 'unknown'}{dirty}, generator sha256 "
        f"{(run.get('generator_sha256') or 'unknown')[:16]}…",
    ]
    width = max((len(path) for path in result["data"]), default=0)
    for index, (path, md5) in enumerate(result["data"].items()):
        lines.append(f"{'data' if index == 0 else '':<9}{path:<{width}}  {md5}")
    if not result["data"]:
        lines.append("data     (no DVC hashes recorded)")
    lines += [f"note     {note}" for note in result["notes"]]
    posts = result["posts"]
    if posts:
        sources = ", ".join(f"{name} {count}" for name, count in posts["by_source"].items())
        split = posts.get("by_split") or {}
        splits = f"; {', '.join(f'{name} {count}' for name, count in sorted(split.items()))}" if split else ""
        lines.append(f"posts    {posts['total']} in {posts['manifest']} ({sources}{splits})")
        shown = posts["rows"] if limit <= 0 else posts["rows"][:limit]
        if shown:
            # Credit and URL columns only where a listed post has them (the JSON always has them all).
            names = [name for name in POST_FIELDS
                     if name in ALWAYS_SHOWN or any(_cell(row[name]) != "-" for row in shown)]
            table = [tuple(names)] + [tuple(_cell(row[name]) for name in names) for row in shown]
            widths = [max(len(row[i]) for row in table) for i in range(len(names))]
            lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
        if len(shown) < posts["total"]:
            lines.append(f"  … {posts['total'] - len(shown)} more (--limit 0 lists all)")
    return "\n".join(lines)


def lineage_command(target: str, tracking_uri: str, read: ObjectReader, *, model_name: str | None = None,
                    limit: int = 20, as_json: bool = False) -> str:
    """What `moepipe lineage` prints: the chain as text, or as JSON with at most `limit` post rows."""
    from mlflow import MlflowClient

    from moepipe.registry.register import quiet_mlflow
    from moepipe.registry.store import _sqlite_path, check_store

    quiet_mlflow(verbose=logging.getLogger().level <= logging.DEBUG)
    check_store(tracking_uri)
    sqlite = _sqlite_path(tracking_uri)
    if sqlite is not None and not sqlite.is_file():  # opening it would create an empty store
        raise UserError(f"MLflow tracking store {tracking_uri}: {sqlite} does not exist (nothing registered)")
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    result = trace(client, target, read, prefer=model_name)
    if as_json:
        return json.dumps(limited(result, limit), indent=2)
    return format_text(result, limit)
