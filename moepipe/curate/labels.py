"""Booru tags → canonical attribute tags → multi-hot label vectors (LabelsConfig order)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from moepipe.config import LabelsConfig


def canonical_tag(tag: str, labels: LabelsConfig) -> str:
    """Booru spelling → vocabulary spelling: lower case, spaces as underscores, aliases applied."""
    normal = tag.strip().lower().replace(" ", "_")
    return labels.aliases.get(normal, normal)


def attribute_tags(tags: Iterable[str], labels: LabelsConfig) -> list[str]:
    """The vocabulary tags among `tags`, canonicalised, deduplicated, in vocabulary order."""
    present = {canonical_tag(tag, labels) for tag in tags if isinstance(tag, str)}
    return [tag for tag in labels.vocabulary if tag in present]


def multi_hot(attributes: Iterable[str], labels: LabelsConfig) -> list[int]:
    """0/1 list as long as the vocabulary; several tags of a single-choice group all stay set."""
    present = set(attributes)
    return [int(tag in present) for tag in labels.vocabulary]


def group_values(attributes: Iterable[str], labels: LabelsConfig) -> dict[str, list[str]]:
    """Attribute tags per group name (groups with no tag map to an empty list)."""
    present = set(attributes)
    return {name: [t for t in group.tags if t in present] for name, group in labels.groups.items()}


class LabelStats:
    """Running label coverage and single-choice conflicts over the kept images."""

    def __init__(self, labels: LabelsConfig) -> None:
        self.labels = labels
        self.images = 0
        self.covered: Counter = Counter()
        self.conflicts: Counter = Counter()

    def add(self, attributes: Iterable[str]) -> None:
        self.images += 1
        for name, values in group_values(attributes, self.labels).items():
            if values:
                self.covered[name] += 1
            # A conflict in a single-choice group usually means a mistagged post; the vector keeps
            # both bits (training sees the truth as tagged), the report makes it visible.
            if len(values) > 1 and not self.labels.groups[name].multi:
                self.conflicts[name] += 1

    def coverage(self) -> dict[str, float]:
        """Fraction of kept images with at least one known value, per group (0.0 when none kept)."""
        return {name: round(self.covered[name] / self.images, 4) if self.images else 0.0
                for name in self.labels.groups}

    def conflict_counts(self) -> dict[str, int]:
        """Images with several tags in a single-choice group, per such group."""
        return {name: self.conflicts[name] for name, group in self.labels.groups.items() if not group.multi}
