"""Training checkpoints: atomic, loadable with weights_only=True, with fallback past broken files.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes),
so `torch.load(..., weights_only=True)` reads it. Files are `step-<8 digits>.pt` in one folder;
the newest readable one whose fingerprint matches the run wins.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any

import torch

from moepipe.images import atomic_write, remove_partials

log = logging.getLogger(__name__)
PATTERN = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in `folder`, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PATTERN.match(p.name))]
    return sorted(found, reverse=True)


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` as step-<step>.pt atomically, then delete all but the newest `keep`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = checkpoint_path(folder, step)
    atomic_write(path, buffer.getvalue())
    for _, old in list_checkpoints(folder)[keep:]:
        old.unlink(missing_ok=True)
    return path


class CheckpointProblem(Exception):
    """A checkpoint file that cannot be used; the message says which and why."""

    def __init__(self, message: str, foreign: bool = False) -> None:
        super().__init__(message)
        self.foreign = foreign  # readable, but from other params or data


def read_checkpoint(path: Path, fingerprint: str | None = None) -> dict[str, Any]:
    """Load one checkpoint (weights_only); raises CheckpointProblem if unreadable or foreign."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, bad pickle, disallowed global ...
        raise CheckpointProblem(f"{path.name} is unreadable ({type(error).__name__}: {error})"[:300]) from None
    if not isinstance(state, dict) or "step" not in state or "generator" not in state:
        raise CheckpointProblem(f"{path.name} is not a moepipe training checkpoint")
    if fingerprint is not None and state.get("fingerprint") != fingerprint:
        raise CheckpointProblem(f"{path.name} belongs to other params or data", foreign=True)
    return state


def load_latest(folder: Path, fingerprint: str) -> tuple[dict[str, Any] | None, list[str], list[Path]]:
    """The newest usable checkpoint, the broken files met on the way (one line each), and the
    readable checkpoints of other params or data (which a fresh run replaces)."""
    remove_partials(folder)
    problems: list[str] = []
    foreign: list[Path] = []
    for _, path in list_checkpoints(folder):
        try:
            return read_checkpoint(path, fingerprint), problems, foreign
        except CheckpointProblem as problem:
            if problem.foreign:
                foreign.append(path)
                continue
            problems.append(str(problem))
            log.warning("%s; trying an older checkpoint", problem)
    return None, problems, foreign
