"""Champion selection in the MLflow model registry: gates, comparison, and safe concurrent promotion.

A version may become `champion` only if its metrics pass every gate of `register.gates` and its
primary metric beats the current champion's by more than `min_improvement` in the configured
direction (the first version that passes the gates becomes champion). Otherwise it becomes
`challenger`. Decisions and their reasons are stored as version tags.

Why concurrent promotions cannot leave a worse champion, or none
-----------------------------------------------------------------
The invariant we want after every registration finishes: the champion passes the gates and no
complete, gate-passing version beats it by more than `min_improvement` (a sequence of one-at-a-time
promotions always ends in such a state, since champions only ever improve by more than the margin).

1. Never none: the champion alias is only ever *moved*, never deleted. Once the alias row exists a
   write is a single UPDATE; the one racy case, two first-ever writes both trying to INSERT, makes
   one of them fail with a uniqueness error, and `set_alias` retries it (it is then an UPDATE). So
   once a first passing version has become champion, every read of the alias finds a version.
2. Never worse: two promotions may each read the same old champion, each decide "champion" and
   write the alias in either order, so a check-then-write alone can leave the worse one last.
   Therefore every promotion, after its own write, runs `reconcile`: read the alias and all
   complete gate-passing versions' metrics, and if the invariant fails move the alias to the best
   version (ties go to the lower version number, so every process picks the same one); repeat until
   a read finds the invariant holding. The last alias write of all is followed by its writer's own
   re-read, which sees every version completed before that read and repairs any stale write; a
   version completed later is checked by its own registration's reconcile. So when the last
   registration returns, the invariant holds.
3. A version counts for others only once it is complete (`moepipe.complete` tag, set after its
   files and metrics are logged), before its own promotion begins, so no reconcile can skip a
   version whose registration has already promoted.

On top of this, the embedded sqlite store is guarded by a file lock held for a whole registration
(sqlite serialises writers badly, and two first-time schema migrations must not interleave); the
reconcile loop is what protects a shared tracking server, where no lock is possible.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from moepipe.config import RegisterConfig

CHAMPION = "champion"
CHALLENGER = "challenger"
COMPLETE_TAG = "moepipe.complete"
FINGERPRINT_TAG = "moepipe.generator_sha256"
MAX_ROUNDS = 20

log = logging.getLogger(__name__)


@dataclass
class Decision:
    decision: str
    reasons: list[str]
    previous_champion: int | None = None
    previous_value: float | None = None
    champion: int | None = None  # the champion after this promotion (and reconciliation)
    metrics: dict[str, float] = field(default_factory=dict)


# -- pure rules --------------------------------------------------------------------------------
def gate_failures(cfg: RegisterConfig, metrics: dict[str, float]) -> list[str]:
    """One reason per unmet gate, e.g. 'gate precision: 0.2 < min 0.5'; [] when all pass."""
    failures = []
    for name, gate in sorted(cfg.gates.items()):
        value = metrics.get(name)
        if value is None or not math.isfinite(value):
            failures.append(f"gate {name}: no value")
        elif gate.min is not None and value < gate.min:
            failures.append(f"gate {name}: {value:.4g} < min {gate.min:g}")
        elif gate.max is not None and value > gate.max:
            failures.append(f"gate {name}: {value:.4g} > max {gate.max:g}")
    return failures


def beats(cfg: RegisterConfig, new: float, old: float) -> bool:
    """Whether `new` improves on `old` by more than min_improvement in cfg.direction."""
    if cfg.direction == "minimize":
        return new < old - cfg.min_improvement
    return new > old + cfg.min_improvement


def comparison(cfg: RegisterConfig, new: float, old: float, champion: int) -> str:
    """'fd 10.2 < 12.5 - 0.0 (champion v2)', or 'not <' when it does not beat it."""
    op, sign = ("<", "-") if cfg.direction == "minimize" else (">", "+")
    verb = op if beats(cfg, new, old) else f"not {op}"
    return f"{cfg.primary_metric} {new:.4g} {verb} {old:.4g} {sign} {cfg.min_improvement:g} (champion v{champion})"


def decide(cfg: RegisterConfig, metrics: dict[str, float],
           champion: tuple[int, dict[str, float]] | None) -> Decision:
    """Champion or challenger for a version with `metrics`, against the current (version, metrics)."""
    value = metrics.get(cfg.primary_metric)
    failures = gate_failures(cfg, metrics)
    if value is None or not math.isfinite(value):
        failures.insert(0, f"no finite {cfg.primary_metric}")
    previous, previous_value = (champion[0], champion[1].get(cfg.primary_metric)) if champion else (None, None)
    if failures:
        return Decision(CHALLENGER, failures, previous, previous_value)
    if champion is None:
        return Decision(CHAMPION, ["first version passing the gates"], None, None)
    champion_version, champion_metrics = champion
    if previous_value is None or not math.isfinite(previous_value):
        return Decision(CHAMPION, [f"champion v{champion_version} has no {cfg.primary_metric}"], previous, None)
    if gate_failures(cfg, champion_metrics):
        return Decision(CHAMPION, [f"champion v{champion_version} fails the gates: "
                                   + "; ".join(gate_failures(cfg, champion_metrics))], previous, previous_value)
    text = comparison(cfg, value, previous_value, champion_version)
    return Decision(CHAMPION if beats(cfg, value, previous_value) else CHALLENGER, [text], previous, previous_value)


# -- the registry ------------------------------------------------------------------------------
class Registry:
    """Reads of one registered model's versions, with run metrics cached per run id."""

    def __init__(self, client: MlflowClient, cfg: RegisterConfig) -> None:
        self.client, self.cfg, self.name = client, cfg, cfg.model_name
        self._metrics: dict[str, dict[str, float]] = {}

    def versions(self) -> list[ModelVersion]:
        quoted = self.name.replace("'", "\\'")
        found, token = [], None
        while True:
            page = self.client.search_model_versions(f"name = '{quoted}'", page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return sorted(found, key=lambda v: int(v.version))

    def metrics(self, version: ModelVersion) -> dict[str, float]:
        """The latest value of each metric of the version's run ({} if it has no run any more)."""
        if version.run_id not in self._metrics:
            try:
                found = dict(self.client.get_run(version.run_id).data.metrics) if version.run_id else {}
            except MlflowException:
                found = {}
            self._metrics[version.run_id] = found
        return self._metrics[version.run_id]

    def alias(self, alias: str) -> ModelVersion | None:
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(error).lower():
                return None
            raise

    def candidates(self) -> list[tuple[ModelVersion, dict[str, float]]]:
        """Complete versions whose metrics have the primary metric and pass every gate."""
        result = []
        for version in self.versions():
            if version.tags.get(COMPLETE_TAG) != "true":
                continue
            metrics = self.metrics(version)
            value = metrics.get(self.cfg.primary_metric)
            if value is not None and math.isfinite(value) and not gate_failures(self.cfg, metrics):
                result.append((version, metrics))
        return result

    def best(self, candidates: list[tuple[ModelVersion, dict[str, float]]]) -> tuple[ModelVersion, dict[str, float]]:
        sign = 1.0 if self.cfg.direction == "minimize" else -1.0
        return min(candidates, key=lambda c: (sign * c[1][self.cfg.primary_metric], int(c[0].version)))

    def set_champion(self, version: int, replacing: ModelVersion | None) -> None:
        set_alias(self.client, self.name, CHAMPION, version)
        if replacing is not None and int(replacing.version) != version:
            self.client.set_model_version_tag(self.name, replacing.version, "moepipe.replaced_by", str(version))

    def reconcile(self) -> int | None:
        """Move `champion` to the best passing version until a read finds the invariant holding.

        Returns the champion version (None only while no version has ever passed the gates).
        """
        for _ in range(MAX_ROUNDS):
            champion = self.alias(CHAMPION)
            candidates = self.candidates()
            if not candidates:
                return int(champion.version) if champion else None
            best, best_metrics = self.best(candidates)
            current = next((m for v, m in candidates if champion and v.version == champion.version), None)
            if champion is not None and (best.version == champion.version or (
                    current is not None and not beats(self.cfg, best_metrics[self.cfg.primary_metric],
                                                      current[self.cfg.primary_metric]))):
                return int(champion.version)
            log.info("reconcile: champion %s -> v%s", champion.version if champion else None, best.version)
            self.set_champion(int(best.version), champion)
        log.warning("reconcile: the champion alias kept changing for %d rounds; giving up", MAX_ROUNDS)
        champion = self.alias(CHAMPION)
        return int(champion.version) if champion else None


def set_alias(client: MlflowClient, name: str, alias: str, version: int, attempts: int = 6) -> None:
    """Point `alias` at `version`; retried, since two concurrent first writes of an alias collide."""
    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, str(version))
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)


def promote(client: MlflowClient, cfg: RegisterConfig, version: ModelVersion) -> Decision:
    """Decide champion/challenger for a complete `version`, set the alias, reconcile, tag the version."""
    registry = Registry(client, cfg)
    number = int(version.version)
    metrics = registry.metrics(version)
    champion = registry.alias(CHAMPION)
    if champion is not None and int(champion.version) == number:
        failures = gate_failures(cfg, metrics)
        decision = Decision(CHALLENGER if failures else CHAMPION, failures or ["already champion"],
                            number, metrics.get(cfg.primary_metric))
    else:
        against = (int(champion.version), registry.metrics(champion)) if champion is not None else None
        decision = decide(cfg, metrics, against)
    if decision.decision == CHAMPION:
        registry.set_champion(number, champion)
    final = registry.reconcile()
    if decision.decision == CHAMPION and final != number:
        decision.decision = CHALLENGER
        decision.reasons.append(f"a concurrent registration made v{final} champion")
    elif decision.decision == CHALLENGER and final == number:
        decision.decision = CHAMPION
        decision.reasons.append("kept as champion: no other version passes the gates"
                                if gate_failures(cfg, metrics) else "the best version passing the gates")
    if decision.decision == CHALLENGER:
        set_alias(client, cfg.model_name, CHALLENGER, number)
    decision.champion, decision.metrics = final, metrics
    tags = {
        "moepipe.decision": decision.decision,
        "moepipe.reasons": "; ".join(decision.reasons)[:4000],
        "moepipe.primary_metric": f"{cfg.primary_metric}={metrics.get(cfg.primary_metric)}",
        "moepipe.previous_champion": str(decision.previous_champion or ""),
    }
    for key, value in tags.items():
        client.set_model_version_tag(cfg.model_name, str(number), key, value)
    return decision


def decision_metrics(cfg: RegisterConfig, metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics a decision looks at: the primary one and every gated one."""
    names = [cfg.primary_metric, *sorted(cfg.gates)]
    return {name: float(metrics[name]) for name in names if name in metrics}
