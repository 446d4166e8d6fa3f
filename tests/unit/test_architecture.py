"""The package layers of docs/ARCHITECTURE.md, enforced: no moepipe module imports upward.

Imports are read from the source with `ast` (top-level and function-level alike), so a lazy
import cannot hide an upward edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "moepipe"

# Lowest first. A module may import its own package and any package of a lower layer; packages
# of the same layer never import each other, except in the bottom layer (core helpers).
LAYERS: list[set[str]] = [
    {"errors", "config", "images", "manifest", "progress", "data", "reports", "s3", "exclude"},  # core
    {"models"},  # networks and the generator file
    {"generate"},  # inference: drawing avatars from a generator file
    {"scrape", "curate", "preprocess", "train", "evaluate"},  # the pipeline stages
    {"registry"},  # MLflow: runs, versions, promotion, the pyfunc
    {"remote", "stack", "studio", "pyfunc"},  # operations: the DVC remote, the dev service stack, the avatar studio
    {"cli"},  # the command line: parses and calls
    {"__main__"},  # python -m moepipe
]
# Inference must not pull in training code (the pyfunc ships what generate needs, no more; the
# studio draws through generate and the registry).
FORBIDDEN = {"registry": {"train"}, "studio": {"train"}}


def layer_of(unit: str) -> int:
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    raise AssertionError(f"moepipe.{unit} is in no layer of tests/unit/test_architecture.py (and docs/ARCHITECTURE.md)")


def unit_of(module: str) -> str:
    """'moepipe.scrape.fetch' -> 'scrape' (the top-level package or module under moepipe)."""
    return module.split(".")[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports(path: Path) -> set[str]:
    """moepipe modules that `path` imports anywhere in its body."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    return imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(source: str, package: str) -> set[str]:
    """moepipe modules imported by `source`, a module of `package` (for relative imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("moepipe."))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base == "moepipe":
                found.update(f"moepipe.{alias.name}" for alias in node.names)
            elif base.startswith("moepipe."):
                found.add(base)
    return found


def edges() -> list[tuple[str, str]]:
    return [(module_name(path), target) for path in sorted(PACKAGE.rglob("*.py"))
            for target in sorted(internal_imports(path))]


def violations(pairs: list[tuple[str, str]]) -> list[str]:
    problems = []
    for source, target in pairs:
        if source == "moepipe" or target == "moepipe":
            continue
        a, b = unit_of(source), unit_of(target)
        if a == b:
            continue
        la, lb = layer_of(a), layer_of(b)
        if lb > la or (lb == la and la != 0):
            problems.append(f"{source} imports {target} ({a}: layer {la}, {b}: layer {lb})")
        elif b in FORBIDDEN.get(a, set()):
            problems.append(f"{source} imports {target} (moepipe.{a} may never import moepipe.{b})")
    return problems


def test_every_moepipe_module_is_in_a_layer() -> None:
    units = {unit_of(module_name(path)) for path in PACKAGE.rglob("*.py") if module_name(path) != "moepipe"}
    for unit in units:
        layer_of(unit)


def test_no_module_imports_upward_or_sideways() -> None:
    assert violations(edges()) == []


@pytest.mark.parametrize(("source", "target"), [
    ("moepipe.models.export", "moepipe.train.loop"),  # inference would need the training loop
    ("moepipe.scrape.stage", "moepipe.curate.stage"),  # stages are peers
    ("moepipe.registry.pyfunc", "moepipe.train.samples"),  # forbidden although lower
    ("moepipe.studio.app", "moepipe.train.loop"),  # the studio draws, never trains
    ("moepipe.remote", "moepipe.stack.health"),  # operations are peers
])
def test_an_upward_or_sideways_edge_is_reported(source: str, target: str) -> None:
    assert violations([(source, target)]) != []


def test_lazy_and_relative_imports_are_seen() -> None:
    source = ("import json\n"
              "def f():\n"
              "    from moepipe.train import loop\n"
              "    from . import avatar\n"
              "    from ..models.export import load_generator\n"
              "    import moepipe.registry.pyfunc\n")
    assert imports_in(source, "moepipe.generate") == {
        "moepipe.train", "moepipe.generate", "moepipe.models.export", "moepipe.registry.pyfunc"}
    assert "moepipe.models.export" in internal_imports(PACKAGE / "generate" / "avatar.py")
