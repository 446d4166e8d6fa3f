"""Attribute groups over a label vocabulary: layout, the data's label prior, label sampling.

A label vector is multi-hot over the vocabulary (N, L). The vocabulary splits into groups:
single-choice groups (hair colour, hairstyle, ...: exactly one tag of the group per avatar)
and multi groups (accessories: any subset). This module is the one place that knows how to
turn that structure into columns, a prior (how often each value occurs in the training data),
and sampled label vectors, for training (fake labels), drawing (groups a request leaves out)
and evaluation alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Group:
    name: str
    tags: tuple[str, ...]
    columns: tuple[int, ...]  # positions of `tags` in the vocabulary
    multi: bool


class AttributeLayout:
    """The groups of a vocabulary, from meta.json's ``groups`` ({name: {"tags", "multi"}})."""

    def __init__(self, groups: Mapping[str, Any], vocabulary: Sequence[str]) -> None:
        self.vocabulary = list(vocabulary)
        position = {tag: i for i, tag in enumerate(self.vocabulary)}
        self.groups: list[Group] = []
        for name, group in (groups or {}).items():
            tags = tuple(t for t in group["tags"] if t in position)
            if tags:
                self.groups.append(Group(name, tags, tuple(position[t] for t in tags), bool(group.get("multi", False))))

    def __bool__(self) -> bool:
        return bool(self.groups)

    @property
    def label_dim(self) -> int:
        return len(self.vocabulary)

    def group_sizes(self) -> list[int] | None:
        """Sizes of the groups when they tile the vocabulary in order (what LabelEmbedding needs)."""
        flat = [c for g in self.groups for c in g.columns]
        return [len(g.columns) for g in self.groups] if flat == list(range(self.label_dim)) else None

    def group_of(self, tag: str) -> Group | None:
        return next((g for g in self.groups if tag in g.tags), None)

    # -- the data's distribution -----------------------------------------------------------
    def prior(self, labels: np.ndarray) -> dict[str, list[float]]:
        """{group: probabilities}: a single group's distribution over its tags among the rows
        labelled in it (uniform if none is), a multi group's per-tag presence rate."""
        labels = np.asarray(labels, dtype=np.float64)
        prior = {}
        for group in self.groups:
            part = labels[:, list(group.columns)] if len(labels) else np.zeros((0, len(group.columns)))
            if group.multi:
                rate = part.mean(axis=0) if len(part) else np.full(len(group.columns), 0.5)
                prior[group.name] = [round(float(r), 6) for r in rate]
                continue
            labelled = part[part.sum(axis=1) == 1]
            counts = labelled.sum(axis=0) if len(labelled) else np.ones(len(group.columns))
            prior[group.name] = [round(float(c), 6) for c in counts / counts.sum()]
        return prior

    def uniform_prior(self) -> dict[str, list[float]]:
        """The prior of a model that recorded none: uniform values, multi tags at 1/4."""
        return {g.name: ([0.25] * len(g.tags) if g.multi else [1.0 / len(g.tags)] * len(g.tags)) for g in self.groups}

    # -- sampling --------------------------------------------------------------------------
    def complete(self, tags: Sequence[str], prior: Mapping[str, Sequence[float]],
                 rng: np.random.Generator) -> list[str]:
        """`tags` plus a value drawn from `prior` for every group they leave out.

        A single-choice group the tags do not name gets one value; a multi group none of whose
        tags is named gets each tag with its presence rate. A multi group with any tag named is
        taken as fully specified (the rest absent). Draws happen for every group in a fixed order
        whether or not it is used, so one group's request never shifts another group's draw.
        """
        chosen = list(tags)
        for group in self.groups:
            probabilities = np.asarray(prior.get(group.name) or self.uniform_prior()[group.name], np.float64)
            if group.multi:
                draw = rng.random(len(group.tags)) < probabilities
                picked = [t for t, on in zip(group.tags, draw) if on]
            else:
                picked = [group.tags[int(rng.choice(len(group.tags), p=probabilities / probabilities.sum()))]]
            if not any(t in group.tags for t in tags):
                chosen += picked
        return chosen

    def balanced(self, n: int, prior: Mapping[str, Sequence[float]], rng: np.random.Generator) -> np.ndarray:
        """(n, L) float32 label vectors: each single group's value uniform and independent of the
        others (so rare combinations are drawn as often as common ones), multi tags at their
        prior rate (so "absent" is learned too)."""
        labels = np.zeros((n, self.label_dim), np.float32)
        for group in self.groups:
            columns = np.asarray(group.columns)
            if group.multi:
                rate = np.asarray(prior.get(group.name, [0.25] * len(columns)), np.float64)
                labels[:, columns] = rng.random((n, len(columns))) < rate
            else:
                labels[np.arange(n), columns[rng.integers(0, len(columns), n)]] = 1.0
        return labels
