"""Curate stage: filter, deduplicate, crop and label raw posts (see stage.py for the outputs)."""

from moepipe.curate.stage import CurateReport, curate

__all__ = ["CurateReport", "curate"]
