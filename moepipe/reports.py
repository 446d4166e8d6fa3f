"""What every stage hands back and leaves behind: a report with a one-line summary.

A stage function writes its outputs and its report into its output folder (DVC caches that
folder) and, when given a `reports` folder, publishes a copy there for `dvc metrics` and `dvc
plots` (`publish`). It returns its report with a `summary`, the one line that `moepipe <stage>`
and the flows print; callers never compose it themselves.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class Report(dict):
    """A stage's JSON report (the dict it wrote) with its one-line `summary`."""

    def __init__(self, data: Mapping[str, Any], summary: str) -> None:
        super().__init__(data)
        self.summary = summary


def publish(out: Path, reports: Path | None, stage: str, report_name: str = "report.json") -> None:
    """Copy `out`/`report_name` to `reports`/<stage>.json and every `out`/*.png to `reports`/<stage>_<name>."""
    if reports is None:
        return
    reports.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / report_name, reports / f"{stage}.json")
    for picture in sorted(out.glob("*.png")):
        shutil.copyfile(picture, reports / f"{stage}_{picture.name}")
