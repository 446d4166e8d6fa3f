"""dvc.yaml's deps and params, checked against the code, so that they cannot drift.

DVC reruns a stage only when one of its listed deps or params changes. A module the stage runs
but dvc.yaml does not list lets a code change go unseen (a stale model); a whole params section
listed for one key makes a logging setting retrain. So:

- code: every moepipe module a stage's entry imports, transitively (top-level and function-level
  imports, read with `ast`), is covered by one of the stage's deps (the file, or a folder above
  it); every listed path exists, and every listed moepipe file is one the stage runs;
- params: a stage lists exactly the keys of the sections it reads that change its outputs (the
  keys in NOT_OUTPUT do not), each present in params.yaml and a key of the validated config; a
  whole section only where no key in it is in NOT_OUTPUT.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from moepipe.config import TRAIN_PROFILES, Params

ROOT = Path(__file__).resolve().parents[2]
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
PARAMS_YAML = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
STAGES: dict[str, dict[str, Any]] = DVC_YAML["stages"]

# The module that implements the `moepipe <command>` each stage's cmd runs (moepipe/cli.py imports
# it inside the command; test_entries_are_what_the_cli_commands_import keeps this map honest).
STAGE_ENTRY = {
    "scrape": "moepipe.scrape.stage",
    "curate": "moepipe.curate",
    "preprocess": "moepipe.preprocess.stage",
    "train": "moepipe.train.loop",
    "classifier": "moepipe.evaluate.classifier_stage",
    "directions": "moepipe.evaluate.directions",
    "evaluate": "moepipe.evaluate.stage",
    "register": "moepipe.registry.register",
}
# Every command validates params.yaml first, and the defaults of the keys it leaves out live here.
COMMON_ENTRY = "moepipe.config"
# Bottom helpers that cannot change an output: error wording and exit codes, the progress bar.
# (The package's own __init__ only holds its version.) They are not deps, so that rewording an
# error does not retrain the model.
NOT_DEPS = {"moepipe", "moepipe.errors", "moepipe.progress"}
# Files a stage uses without importing them.
USED_WITHOUT_IMPORT = {
    "register": {"moepipe/registry/pyfunc_model.py"},  # the pyfunc's models-from-code file (pyfunc.model_code)
}

# The params each stage's code reads: dotted prefixes (a section, a sub-model or a key), minus
# the prefixes after "-". What the CLI hands the stage function, narrowed to what that reads.
STAGE_READS = {
    "scrape": ["scrape"],
    "curate": ["curate", "labels", "scrape.ratings", "scrape.exclude"],
    "preprocess": ["seed", "preprocess", "labels.groups"],  # the vocabulary is the groups' tags
    "train": ["seed", "train"],
    "classifier": ["seed", "evaluate.classifier"],
    "directions": ["seed"],
    "evaluate": ["seed", "evaluate", "-evaluate.classifier"],  # the classifier comes as a file
    "register": ["register"],  # (all params are logged to the MLflow run: a record, not an output)
}
# Keys that change how a stage runs, never what it writes: not deps, and no section holding one
# may be listed whole.
NOT_OUTPUT = {
    # How politely and patiently to fetch: a post that fails is tried again by the next run, and
    # what is kept is sorted, whatever the concurrency.
    "scrape.rate_per_host": "request rate", "scrape.concurrency": "parallel fetches",
    "scrape.timeout_s": "timeouts", "scrape.retries": "retries", "scrape.backoff_s": "retry backoff",
    "scrape.retry_after_cap_s": "retry backoff",
    "curate.workers": "processes for the per-image checks",
    # Logging, progress pictures, checkpoint cadence and speed knobs of training: the settings
    # moepipe/train/loop.py keeps out of a checkpoint's fingerprint, less steps and profile.
    "train.log_every": "logging", "train.sample_every": "progress pictures",
    "train.sample_columns": "progress pictures", "train.checkpoint_every": "checkpoint cadence",
    "train.keep_checkpoints": "checkpoint retention", "train.threads": "CPU threads",
    "train.compile": "torch.compile (speed)",
}


def config_model(path: str) -> tuple[type[BaseModel] | None, bool]:
    """(the model a dotted params key names, or None for a leaf; whether the key exists at all)."""
    model: type[BaseModel] | None = Params
    for part in path.split("."):
        if model is None:
            return None, False
        fields = {field.alias or name: field for name, field in model.model_fields.items()}
        if part not in fields:
            return None, False
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model, True


def leaves(prefix: str = "") -> set[str]:
    """Every leaf key of the validated config under PREFIX (a model-typed field is not a leaf)."""
    model, exists = config_model(prefix) if prefix else (Params, True)
    assert exists, prefix
    if model is None:
        return {prefix}
    found: set[str] = set()
    for name, field in model.model_fields.items():
        found |= leaves(f"{prefix}.{field.alias or name}" if prefix else field.alias or name)
    return found


def in_params_yaml(path: str) -> bool:
    node: Any = PARAMS_YAML
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def listed_params(stage: str) -> list[str]:
    return [str(item) for item in STAGES[stage].get("params", [])]


def expected_params(stage: str) -> set[str]:
    """The leaf keys that change STAGE's outputs and that DVC can watch in params.yaml.

    Keys a train profile fills are left out of params.yaml on purpose (the profile decides them),
    so DVC watches them through train.profile and moepipe/config (a code dep) instead."""
    reads = [item for item in STAGE_READS[stage] if not item.startswith("-")]
    unread = [item[1:] for item in STAGE_READS[stage] if item.startswith("-")]
    keys = {key for prefix in reads for key in leaves(prefix)
            if not any(key == skip or key.startswith(skip + ".") for skip in unread)}
    profile_filled = {f"train.{name}" for preset in TRAIN_PROFILES.values() for name in preset}
    return {key for key in keys - set(NOT_OUTPUT) if in_params_yaml(key) or key not in profile_filled}


def covered(key: str, listed: list[str]) -> bool:
    return any(key == item or key.startswith(item + ".") for item in listed)


# --- code ------------------------------------------------------------------------------------

def module_path(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    """moepipe modules (and the packages above them, whose __init__ runs first) imported anywhere
    in TREE, a module of PACKAGE (for relative imports)."""
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names if alias.name.split(".")[0] == "moepipe")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[:len(parts) - node.level + 1], *([base] if base else [])])
            if base.split(".")[0] != "moepipe":
                continue
            named.add(base)
            # `from moepipe.scrape import stage` imports the module moepipe.scrape.stage.
            named.update(f"{base}.{alias.name}" for alias in node.names if module_path(f"{base}.{alias.name}"))
    found: set[str] = set()
    for module in named:
        parts = module.split(".")
        found.update(".".join(parts[:end]) for end in range(1, len(parts) + 1)
                     if module_path(".".join(parts[:end])))
    return found


def closure(entries: list[str]) -> set[str]:
    """ENTRIES, the packages above them and every moepipe module they import, transitively."""
    todo = [parent for entry in entries for parent in imported_modules(ast.parse(f"import {entry}"), "moepipe")]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_path(module)
        assert path is not None, f"{module}: no such module"
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        todo.extend(imported_modules(ast.parse(path.read_text(encoding="utf-8")), package))
    return seen


def stage_modules(stage: str) -> dict[str, str]:
    """{repo-relative file: module} of what STAGE runs, less NOT_DEPS."""
    modules = closure([COMMON_ENTRY, STAGE_ENTRY[stage]]) - NOT_DEPS
    return {module_path(module).relative_to(ROOT).as_posix(): module for module in modules}


def code_deps(stage: str) -> list[str]:
    return [str(dep).rstrip("/") for dep in STAGES[stage].get("deps", []) if str(dep).startswith("moepipe")]


def under(path: str, dep: str) -> bool:
    return path == dep or path.startswith(dep + "/")


def cli_commands() -> dict[str, ast.FunctionDef]:
    """`moepipe` subcommand name -> its function in moepipe/cli.py (typer: name or function name)."""
    tree = ast.parse((ROOT / "moepipe" / "cli.py").read_text(encoding="utf-8"))
    commands = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
                    and decorator.func.attr == "command" and getattr(decorator.func.value, "id", "") == "app"):
                name = decorator.args[0].value if decorator.args else node.name.replace("_", "-")
                commands[name] = node
    return commands


# --- tests -----------------------------------------------------------------------------------

def test_every_stage_has_an_entry_and_params_reads() -> None:
    assert set(STAGES) == set(STAGE_ENTRY) == set(STAGE_READS)


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_entries_are_what_the_cli_commands_import(stage: str) -> None:
    words = STAGES[stage]["cmd"].split()
    assert words[0] == "moepipe", STAGES[stage]["cmd"]
    command = cli_commands()[words[1]]
    imported = {module for module in imported_modules(command, "moepipe") if module_path(module)}
    innermost = {module for module in imported if not any(other.startswith(module + ".") for other in imported)}
    assert innermost == {STAGE_ENTRY[stage]}, f"`moepipe {words[1]}` runs {sorted(innermost)}"


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_deps_cover_every_module_the_stage_runs(stage: str) -> None:
    deps = code_deps(stage)
    missing = sorted(path for path in stage_modules(stage) if not any(under(path, dep) for dep in deps))
    assert not missing, f"dvc.yaml stage {stage!r} runs these but lists no dep covering them: {missing}"


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_listed_deps_exist_and_are_used(stage: str) -> None:
    outs = {str(next(iter(out)) if isinstance(out, dict) else out)
            for other in STAGES.values() for kind in ("outs", "metrics", "plots") for out in other.get(kind, [])}
    for dep in map(str, STAGES[stage].get("deps", [])):
        if not dep.startswith("moepipe"):
            assert dep in outs or (ROOT / dep).exists(), f"{stage}: dep {dep} is no stage's output and absent"
    runs = set(stage_modules(stage)) | USED_WITHOUT_IMPORT.get(stage, set())
    never = {module_path(module).relative_to(ROOT).as_posix() for module in NOT_DEPS}
    for dep in code_deps(stage):
        assert (ROOT / dep).exists(), f"{stage}: dep {dep} does not exist"
        assert dep not in never, f"{stage}: dep {dep} is one of the helpers that are never deps (NOT_DEPS)"
        assert any(under(path, dep) for path in runs), f"{stage}: dep {dep} holds nothing the stage runs"
    for path in USED_WITHOUT_IMPORT.get(stage, set()):
        assert any(under(path, dep) for dep in code_deps(stage)), f"{stage}: {path} is not covered"


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_params_are_keys_of_params_yaml_and_the_config(stage: str) -> None:
    for key in listed_params(stage):
        model, exists = config_model(key)
        assert exists, f"{stage}: params key {key} is not a key of the validated config"
        assert in_params_yaml(key), f"{stage}: params key {key} is missing from params.yaml"
        if model is not None:  # a whole section: only where none of its keys is run-only
            run_only = sorted(leaf for leaf in leaves(key) if leaf in NOT_OUTPUT)
            assert not run_only, f"{stage}: section {key} is listed whole but holds {run_only}"


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_params_are_exactly_the_keys_that_change_the_outputs(stage: str) -> None:
    listed = listed_params(stage)
    expected = expected_params(stage)
    unlisted = sorted(key for key in expected if not covered(key, listed))
    extra = sorted(key for item in listed for key in leaves(item) if key not in expected)
    assert (unlisted, extra) == ([], []), (
        f"{stage}: keys that change its outputs but are not in its params in dvc.yaml (add one that "
        f"params.yaml lacks there too, with its default): {unlisted}; keys listed that are run-only "
        f"(NOT_OUTPUT), not read by the stage (STAGE_READS) or filled by the train profile: {extra}")


def test_the_opt_out_list_is_a_dep_of_the_stages_that_honour_it() -> None:
    # A DVC dep is a fixed path, so it must be the file params.yaml names; editing it reruns both.
    exclude = PARAMS_YAML["scrape"]["exclude"]
    assert exclude and (ROOT / exclude).is_file()
    for stage in ("scrape", "curate"):
        assert exclude in map(str, STAGES[stage]["deps"]), f"{stage}: {exclude} is not a dep"


def test_train_run_only_keys_are_what_a_checkpoint_fingerprint_leaves_out() -> None:
    from moepipe.train.loop import _NOT_IN_FINGERPRINT

    assert {key.removeprefix("train.") for key in NOT_OUTPUT if key.startswith("train.")} == \
        _NOT_IN_FINGERPRINT - {"steps", "profile", "standing_stats"}
    # More steps is another model; a profile fills keys; standing statistics change only the
    # exported file, not the checkpoints (a run with another count resumes the same training).


def test_the_drift_checks_fail_when_a_dep_or_param_goes_missing() -> None:
    runs = stage_modules("train")
    without_models = [dep for dep in code_deps("train") if dep != "moepipe/models"]
    assert any(not any(under(path, dep) for dep in without_models) for path in runs)
    listed = [key for key in listed_params("train") if key != "train.loss"]
    assert not covered("train.loss", listed) and "train.loss" in expected_params("train")
    assert "train.log_every" not in expected_params("train")
