"""The models the studio draws with, and the registry aliases it follows while it runs.

`ModelHolder.open` loads `--model` before the server listens, so a bad one ends in one line:

- a generator file (or a saved MLflow model folder): drawn as it is, no registry, no lineage
  beyond the file itself, no champion/challenger view;
- `models:/NAME@ALIAS`: the alias is resolved to a version and `models:/NAME/VERSION` is loaded;
  a thread polls the alias every `poll_seconds` and, when it points elsewhere, loads the new
  version and swaps it in (the page sees the new version in /api/model);
- `models:/NAME/VERSION` or `runs:/...` of a registered model: that version, for good.

For registered models the `champion` and `challenger` aliases are followed too: when both exist
(on different versions) both are kept loaded, for the side-by-side view. What the page shows of a
version (metrics, the git commit and DVC hashes of its data, links to the MLflow UI) is read from
the registry when the version is loaded, never per request.

torch is not re-entrant-safe across model swaps, so every drawing call holds `lock`; a swap
replaces references under it (a new version is loaded beside the old one, outside it).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from moepipe.config import RegisterConfig
from moepipe.config import tracking_uri as config_tracking_uri
from moepipe.errors import UserError, redact
from moepipe.generate.avatar import AvatarModel
from moepipe.generate.loading import is_model_uri, open_avatars
from moepipe.studio.drawing import Drawer

CHAMPION, CHALLENGER = "champion", "challenger"  # moepipe.registry.promotion's aliases
DEFAULT_POLL_SECONDS = 30.0
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?$")

log = logging.getLogger(__name__)

Loader = Callable[..., AvatarModel]  # open_avatars' signature: (model, directions=, tracking_uri=)


@dataclass
class Served:
    """One loaded model: what draws it, its registered version (None for a file) and what /api/model says of it."""

    drawer: Drawer
    version: int | None
    lineage: dict[str, Any]
    loaded_at: float = field(default_factory=time.time)

    @property
    def avatars(self) -> AvatarModel:
        return self.drawer.avatars


def ui_base(tracking_uri: str | None) -> str | None:
    """The MLflow UI's base URL when the tracking URI is a server (http/https), without credentials."""
    if not tracking_uri:
        return None
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def links(base: str | None, name: str, version: int, experiment_id: str | None, run_id: str | None) -> dict[str, str]:
    """Links into the MLflow UI: the run, the model version, and the run's model card (raw markdown)."""
    if base is None:
        return {}
    found = {"model_version": f"{base}/#/models/{quote(name)}/versions/{version}"}
    if run_id:
        if experiment_id:
            found["run"] = f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
        found["model_card"] = f"{base}/get-artifact?path=model_card.md&run_uuid={run_id}"
    return found


def model_facts(avatars: AvatarModel) -> dict[str, Any]:
    """What the generator file itself says: architecture, resolution, training step, conditional."""
    meta = avatars.meta
    return {"arch": meta.get("arch"), "resolution": avatars.resolution, "step": meta.get("step"),
            "kimg": meta.get("kimg"), "conditional": avatars.conditional}


def file_lineage(path: str, avatars: AvatarModel) -> dict[str, Any]:
    file = Path(path)
    digest = None
    if file.is_file():
        hasher = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        digest = hasher.hexdigest()
    return {"source": "file", "model": path, "registered": False, "generator_sha256": digest,
            "note": "No version, metrics or data lineage; no champion/challenger view.",
            **model_facts(avatars)}


class ModelHolder:
    """The model the studio answers with (see the module docstring); `served()` is the current one."""

    def __init__(self, model: str, *, tracking_uri: str | None = None, poll_seconds: float = DEFAULT_POLL_SECONDS,
                 directions: Path | None = None, loader: Loader = open_avatars) -> None:
        if poll_seconds <= 0:
            raise UserError(f"--poll-seconds must be > 0 (got {poll_seconds:g})")
        self.model, self.tracking_uri, self.poll_seconds = model, tracking_uri, poll_seconds
        self.directions, self.loader = directions, loader
        match = MODEL_URI.match(model)
        self.name: str | None = match["name"] if match else None
        self.alias: str | None = match["alias"] if match else None
        self.pinned: int | None = int(match["version"]) if match and match["version"] else None
        self.lock = threading.RLock()  # every torch call, and every swap of what is served
        self._primary: Served | None = None
        self._loaded: dict[int, Served] = {}  # registered versions in use, by number
        self._aliases: dict[str, int] = {}
        self._poll_error: str | None = None
        self._polled_at: float | None = None
        self._changes: list[dict[str, Any]] = []  # version changes seen while running
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- opening -------------------------------------------------------------------------------
    @property
    def registered(self) -> bool:
        return self.name is not None

    def open(self) -> ModelHolder:
        """Load the model (and the champion/challenger pair); a UserError when it cannot be."""
        if self.tracking_uri is None and (is_model_uri(self.model) or (Path(self.model) / "MLmodel").is_file()):
            self.tracking_uri = config_tracking_uri()  # $MLFLOW_TRACKING_URI, else params.yaml's
        if not is_model_uri(self.model):
            avatars = self.loader(self.model, self.directions, tracking_uri=self.tracking_uri)
            provenance = dict(avatars.provenance)
            if provenance.get("model_name") and provenance.get("model_version"):  # a saved registered model
                self.name, self.pinned = provenance["model_name"], int(provenance["model_version"])
            else:
                self._primary = self._warm(Served(Drawer(avatars, self.model), None,
                                                  file_lineage(self.model, avatars)))
                return self
        elif self.name is None:  # runs:/... : which version it is comes with the model
            avatars = self.loader(self.model, self.directions, tracking_uri=self.tracking_uri)
            provenance = dict(avatars.provenance)
            if not (provenance.get("model_name") and provenance.get("model_version")):
                self._primary = self._warm(Served(Drawer(avatars, self.model), None, {
                    "source": "mlflow", "model": self.model, "registered": False,
                    "note": "An MLflow model that is no registered version: no metrics or data lineage.",
                    **model_facts(avatars)}))
                return self
            self.name, self.pinned = provenance["model_name"], int(provenance["model_version"])
        from moepipe.registry.store import check_store

        check_store(self.tracking_uri)
        self.refresh(initial=True)
        return self

    def _warm(self, served: Served) -> Served:
        """Draw one pass now, so the first request does not pay for the kernels' first use."""
        with self.lock:
            served.drawer.seeds([0], [], 1.0)
        return served

    # -- the registry --------------------------------------------------------------------------
    def _client(self) -> Any:
        # mlflow is imported here, not at the top: it takes seconds, and a studio on a file never needs it.
        from mlflow import MlflowClient

        from moepipe.registry.promotion import Registry

        client = MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)
        return client, Registry(client, RegisterConfig(model_name=self.name or "moe-generator"))

    def _followed(self) -> list[str]:
        return list(dict.fromkeys([*([self.alias] if self.alias else []), CHAMPION, CHALLENGER]))

    def refresh(self, initial: bool = False) -> bool:
        """Read the followed aliases; load and swap in versions that changed. True if the served one did."""
        client, registry = self._client()
        aliases = {}
        for alias in self._followed():
            version = registry.alias(alias)
            if version is not None:
                aliases[alias] = int(version.version)
        wanted = aliases.get(self.alias) if self.alias else self.pinned
        if wanted is None:
            message = (f"{self.model}: no version of {self.name} has the alias {self.alias!r}"
                       + (" (register one first: moepipe register)" if initial else ""))
            if initial:
                raise UserError(message)
            self._poll_error = f"{message}; still answering with v{self.version}"
            self._polled_at = time.time()
            return False
        pair = [aliases[a] for a in (CHAMPION, CHALLENGER) if a in aliases]
        needed = list(dict.fromkeys([wanted, *(pair if len(set(pair)) == 2 else [])]))
        loaded = dict(self._loaded)
        for number in needed:
            if number not in loaded:
                try:
                    loaded[number] = self._load_version(client, registry, number)
                except UserError:
                    if number == wanted:
                        raise
                    log.warning("studio: cannot load %s v%s for the comparison", self.name, number, exc_info=True)
        with self.lock:
            before = self.version
            self._loaded = {number: loaded[number] for number in needed if number in loaded}
            self._primary = self._loaded[wanted]
            self._aliases = aliases
            self._poll_error, self._polled_at = None, time.time()
        changed = before is not None and before != wanted
        if changed:
            self._changes.append({"from": before, "to": wanted, "at": time.time()})
            log.warning("studio: %s now answers with v%s (was v%s)", self.model, wanted, before)
        return changed

    def _load_version(self, client: Any, registry: Any, number: int) -> Served:
        uri = f"models:/{self.name}/{number}"
        avatars = self.loader(uri, self.directions, tracking_uri=self.tracking_uri)
        return self._warm(Served(Drawer(avatars, uri), number, self._version_lineage(client, registry, number,
                                                                                     avatars)))

    def _version_lineage(self, client: Any, registry: Any, number: int, avatars: AvatarModel) -> dict[str, Any]:
        from mlflow.exceptions import MlflowException

        from moepipe.registry.promotion import COMPLETE_TAG, FINGERPRINT_TAG

        version = client.get_model_version(self.name, str(number))
        try:
            run = client.get_run(version.run_id) if version.run_id else None
        except MlflowException:
            run = None
        tags: Mapping[str, str] = run.data.tags if run is not None else {}
        metrics = registry.metrics(version)
        experiment = run.info.experiment_id if run is not None else None
        return {
            "source": "registry", "model": f"models:/{self.name}/{number}", "registered": True,
            "name": self.name, "version": number, "run_id": version.run_id, "experiment_id": experiment,
            "description": version.description or "",
            "decision": version.tags.get("moepipe.decision"), "reasons": version.tags.get("moepipe.reasons"),
            "complete": version.tags.get(COMPLETE_TAG) == "true",
            "metrics": {k: metrics[k] for k in sorted(metrics) if not k.startswith("train/")},
            "git_commit": tags.get("mlflow.source.git.commit") or version.tags.get("mlflow.source.git.commit"),
            "git_dirty": tags.get("moepipe.git_dirty"),
            "data_version": {k.removeprefix("dvc.md5."): v for k, v in sorted(tags.items())
                             if k.startswith("dvc.md5.")},
            "generator_sha256": version.tags.get(FINGERPRINT_TAG) or tags.get(FINGERPRINT_TAG),
            "links": links(ui_base(self.tracking_uri), self.name, number, experiment, version.run_id),
            **model_facts(avatars),
        }

    # -- polling -------------------------------------------------------------------------------
    def start_polling(self) -> None:
        """Follow the alias in a daemon thread (registered models named by alias, or for the comparison)."""
        if not self.registered or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="studio-alias-poll", daemon=True)
        self._thread.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception as error:  # keep answering with what is loaded; /api/model says why
                text = getattr(error, "message", None) or str(error) or type(error).__name__
                self._poll_error = f"{type(error).__name__}: {redact(text.strip().splitlines()[0])}"
                self._polled_at = time.time()
                log.warning("studio: alias poll failed: %s", self._poll_error)

    # -- what is served ------------------------------------------------------------------------
    def served(self, alias: str | None = None) -> Served:
        """The model that answers, or the version that holds `alias` (champion/challenger) for the comparison.

        A LookupError (one line) when there is no such version to compare.
        """
        with self.lock:
            primary = self._primary
            if primary is None:
                raise RuntimeError("ModelHolder.open() was not called")
            if alias is None:
                return primary
            if not self.registered:
                raise LookupError(f"the studio draws from {self.model}, not a registered model: "
                                  "no champion or challenger")
            comparing = self.comparison()
            if comparing is None:
                present = ", ".join(f"{a} v{v}" for a, v in sorted(self._aliases.items())) or "no aliases"
                raise LookupError(f"{self.name} has no champion and challenger pair to compare ({present})")
            return self._loaded[comparing[alias]]

    def comparison(self) -> dict[str, int] | None:
        """{champion: N, challenger: M} when both aliases exist on different, loaded versions."""
        with self.lock:
            pair = {a: self._aliases[a] for a in (CHAMPION, CHALLENGER) if a in self._aliases}
            if len(pair) == 2 and len(set(pair.values())) == 2 and all(v in self._loaded for v in pair.values()):
                return pair
            return None

    @property
    def version(self) -> int | None:
        return self._primary.version if self._primary is not None else None

    def info(self) -> dict[str, Any]:
        """What /api/model answers: the model as named, the version that answers, its lineage, the aliases."""
        with self.lock:
            primary = self.served()
            comparing = self.comparison()
            aliases = dict(self._aliases)
            answering = dict(primary.lineage)
            if primary.version is not None:
                answering["aliases"] = sorted(a for a, v in aliases.items() if v == primary.version)
            compare = None if comparing is None else {
                alias: {"version": number, "metrics": self._loaded[number].lineage.get("metrics", {})}
                for alias, number in comparing.items()}
            return {
                "model": self.model, "registered": self.registered, "name": self.name, "alias": self.alias,
                "version": primary.version, "answering": answering, "aliases": aliases, "compare": compare,
                "loaded_at": primary.loaded_at,
                "polling": {"seconds": self.poll_seconds if self.registered else None, "last": self._polled_at,
                            "error": self._poll_error},
                "changes": list(self._changes[-10:]),
                "tracking_uri": redact(self.tracking_uri) if self.registered and self.tracking_uri else None,
            }
