"""The run summary a flow leaves behind as a Prefect markdown artifact.

Stage by stage: what ran, what DVC found fresh, what failed (with its last stderr line), how
long each took, the counts each stage's metrics files report; then the evaluation metrics, the
promotion decision of the register stage, and the newest sample grid inlined as a data URI
(Prefect's markdown artifacts render `![..](data:image/png;base64,..)`; image artifacts only
take a URL, and a worker's files have none).
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flows.dvc_stages import StageInfo

EVALUATION_METRICS = "reports/evaluate/metrics.json"
PROMOTION_REPORT = "reports/register.json"
# The first pattern that matches anything wins; within it the newest file.
SAMPLE_GRIDS = ("reports/evaluate/samples.png", "reports/train/samples/*.png")
MAX_INLINE_BYTES = 250_000  # keeps the artifact row small; bigger grids are downscaled
OUTCOME_TEXT = {"fresh": "skipped (fresh)", "restored": "skipped (restored from DVC run cache)"}


@dataclass
class StepRecord:
    """One row of the summary: a dvc pull/push or a stage, and what became of it."""

    step: str
    outcome: str  # ran | fresh | restored | failed | not run | skipped | ran on <deployment>
    seconds: float | None = None
    attempts: int | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def completed(self) -> bool:
        """The step's outputs are current: it ran, or DVC found it fresh (here or on another pool)."""
        return self.outcome.split(" on ")[0] in ("ran", "fresh", "restored")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _number(value: float) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def counts_of(data: Any) -> str:
    """Whole-number counts of a stage report, e.g. 'kept 462 · rejected: duplicate 30, corrupt 15'."""
    if not isinstance(data, dict):
        return ""
    parts = []
    for key, value in data.items():
        if isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"{key} {value}")
        elif isinstance(value, dict):
            inner = [f"{name} {count}" for name, count in value.items()
                     if isinstance(count, int) and not isinstance(count, bool) and count]
            if inner:
                parts.append(f"{key}: {', '.join(inner)}")
    return " · ".join(parts)


def _flat_numbers(data: Any, prefix: str = "") -> dict[str, float]:
    if isinstance(data, bool):
        return {}
    if isinstance(data, (int, float)):
        return {prefix: data}
    if isinstance(data, dict):
        flat: dict[str, float] = {}
        for key, value in data.items():
            flat.update(_flat_numbers(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _within(path: str, folders: set[str]) -> bool:
    return any(path == folder or path.startswith(folder.rstrip("/") + "/") for folder in folders)


def staleness(path: str, records: list[StepRecord], stages: dict[str, StageInfo]) -> str:
    """A note when PATH belongs to a dvc.yaml stage that did not complete in this run."""
    declared = {out for stage in stages.values() for out in stage.outs}
    current = {out for record in records if record.completed and record.step in stages
               for out in stages[record.step].outs}
    if _within(path, declared) and not _within(path, current):
        return " — from an earlier run: its stage did not complete in this one"
    return ""


def steps_table(records: list[StepRecord], repo: Path, stages: dict[str, StageInfo]) -> list[str]:
    lines = ["| step | outcome | time | attempts | counts / detail |", "|---|---|---|---|---|"]
    for record in records:
        metrics = stages[record.step].metrics if record.step in stages and record.completed else ()
        counts = [counts_of(_read_json(repo / path)) for path in metrics if path != EVALUATION_METRICS]
        details = [text for text in (record.detail, *counts) if text]
        outcome = OUTCOME_TEXT.get(record.outcome, record.outcome)
        if record.outcome == "failed":
            outcome = "**failed**"
        lines.append(f"| {_cell(record.step)} | {outcome} | {_duration(record.seconds)} | "
                     f"{record.attempts or ''} | {_cell(' · '.join(details))} |")
    return lines


def evaluation_section(repo: Path, stale: str = "") -> list[str]:
    metrics = _flat_numbers(_read_json(repo / EVALUATION_METRICS))
    if not metrics:
        return []
    rows = [f"| {_cell(name)} | {_number(value)} |" for name, value in metrics.items()]
    return ["", f"## Evaluation (`{EVALUATION_METRICS}`){stale}", "", "| metric | value |", "|---|---|", *rows]


def promotion_section(repo: Path, stale: str = "") -> list[str]:
    report = _read_json(repo / PROMOTION_REPORT)
    if not isinstance(report, dict):
        return []
    model = f"{report.get('model', 'model')} v{report['version']}" if "version" in report else report.get("model", "")
    decision = report.get("decision", "unknown")
    primary = report.get("primary_metric") if isinstance(report.get("primary_metric"), dict) else {}
    facts = []
    if primary.get("name") is not None and isinstance(primary.get("value"), (int, float)):
        direction = f" ({primary['direction']})" if primary.get("direction") else ""
        facts.append(f"{primary['name']} {_number(primary['value'])}{direction}")
    previous = report.get("previous_champion")
    if isinstance(previous, dict) and previous.get("version") is not None:
        value = previous.get("value")
        shown = f": {_number(value)}" if isinstance(value, (int, float)) else ""
        facts.append(f"previous champion v{previous['version']}{shown}")
    if report.get("champion") is not None:
        facts.append(f"champion now v{report['champion']}")
    lines = ["", f"## Promotion (`{PROMOTION_REPORT}`){stale}", "",
             f"**{_cell(str(model))} → {_cell(str(decision))}**" + (f" — {'; '.join(facts)}" if facts else "")]
    reasons = report.get("reasons") or []
    lines += ["", "Reasons:", *[f"- {reason}" for reason in reasons]] if reasons else []
    warnings = report.get("warnings") or []
    lines += ["", "Warnings:", *[f"- {warning}" for warning in warnings]] if warnings else []
    if report.get("model_uri"):
        lines += ["", f"Model URI: `{report['model_uri']}`"]
    return lines


def newest_sample_grid(repo: Path) -> Path | None:
    for pattern in SAMPLE_GRIDS:
        found = [path for path in repo.glob(pattern) if path.is_file()]
        if found:
            return max(found, key=lambda path: (path.stat().st_mtime, path.name))
    return None


def inline_image(path: Path, limit: int = MAX_INLINE_BYTES) -> str:
    """PATH as a data URI: as is when small, else downscaled (PNG, or JPEG when still too big)."""
    data = path.read_bytes()
    if len(data) <= limit and path.suffix.lower() == ".png":
        return "data:image/png;base64," + base64.b64encode(data).decode()
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((768, 768))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        kind = "png"
        if buffer.tell() > limit:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
            kind = "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode()


def samples_section(repo: Path, records: list[StepRecord], stages: dict[str, StageInfo]) -> list[str]:
    grid = newest_sample_grid(repo)
    if grid is None:
        return []
    name = grid.relative_to(repo).as_posix()
    heading = f"## Samples (`{name}`){staleness(name, records, stages)}"
    try:
        uri = inline_image(grid)
    except Exception as error:  # a half-written or odd picture must not cost the whole summary
        return ["", heading, "", f"(not shown: {error})"]
    return ["", heading, "", f"![sample grid]({uri})"]


@dataclass
class Failure:
    """What stopped a run: the step, the reason, and the last line the step wrote to stderr."""

    step: str
    reason: str
    last_line: str = ""
    retryable: bool = True


def render_summary(title: str, repo: Path, records: list[StepRecord], facts: list[str],
                   failure: Failure | None = None, extra: list[str] | None = None,
                   stages: dict[str, StageInfo] | None = None, results: bool = True) -> str:
    """The whole markdown summary of one flow run; RESULTS adds evaluation, promotion and samples.

    STAGES: every dvc.yaml stage by name, for each one's metrics files and outputs.
    """
    stages = stages or {}
    status = f"failed at `{failure.step}`" if failure else "succeeded"
    lines = [f"# {title}: {status}", "", " · ".join(facts)]
    if failure is not None:
        lines += ["", f"> **`{failure.step}` failed:** {failure.reason}"]
        if failure.last_line and failure.last_line not in failure.reason:
            lines += [">", f"> last stderr line: `{failure.last_line}`"]
        lines += [">", "> " + ("retries were exhausted" if failure.retryable
                               else "not retried: another try cannot fix this")]
    lines += ["", *(extra or [])] if extra else []
    lines += ["", *steps_table(records, repo, stages)]
    if results:
        lines += evaluation_section(repo, staleness(EVALUATION_METRICS, records, stages))
        lines += promotion_section(repo, staleness(PROMOTION_REPORT, records, stages))
        lines += samples_section(repo, records, stages)
    return "\n".join(lines) + "\n"


def publish(markdown: str, key: str, description: str) -> None:
    """Attach MARKDOWN to the current flow run as the artifact KEY (latest version per key)."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=markdown, key=key, description=description)
