"""The layout convention: config section = rules/<stage>.smk = scripts/<stage>.py = workflow/<stage>/, one
stage function per rule, packages importing only downwards and no import cycles."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "workflow"
# Lowest first: a package may import itself and the packages before it, never one after it.
LAYERS = ["common", "data", "prompts", "diffusion", "editing", "classifier", "evaluation", "report"]
STAGES = LAYERS[1:]
RULE = re.compile(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", re.M)
CALL = re.compile(r"-m scripts\.(\w+) (\w+)")


def modules() -> dict[str, Path]:
    """Every module of the library by dotted name."""
    found = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported(path: Path, package: str) -> set[str]:
    """The library modules ``path`` imports, at the top or inside functions (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else f"{package}.{node.module}"
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    known = modules()
    return {name for name in names if name in known}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else len(LAYERS)


def graph() -> dict[str, set[str]]:
    edges = {}
    for name, path in modules().items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges[name] = imported(path, package) - {name}
    return edges


def test_library_is_stage_packages_only():
    top = {p.name for p in LIBRARY.iterdir() if not p.name.startswith("__")}
    assert top == set(LAYERS)


def test_packages_import_only_downwards():
    upward = [
        f"{source} imports {target}"
        for source, targets in graph().items()
        for target in targets
        if layer(target) > layer(source)
    ]
    assert upward == []


def test_no_import_cycles():
    edges = graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_every_stage_has_rules_script_and_stage_module():
    for stage in STAGES:
        assert (ROOT / "rules" / f"{stage}.smk").is_file(), stage
        assert (ROOT / "scripts" / f"{stage}.py").is_file(), stage
        assert (LIBRARY / stage / "stage.py").is_file(), stage
        assert (LIBRARY / stage / "settings.py").is_file(), stage


@pytest.mark.parametrize("stage", ["common", *STAGES])
def test_each_rule_calls_its_stage_function_with_matching_arguments(stage):
    """A rule of rules/<stage>.smk runs ``scripts.<stage> <rule>``; the script has that subcommand, the stage
    module a function of that name, and the subcommand's options are exactly the function's parameters."""
    text = (ROOT / "rules" / f"{stage}.smk").read_text(encoding="utf-8")
    script = importlib.import_module(f"scripts.{stage}")
    commands = {command.rule: command for command in script.COMMANDS}
    module = "workflow.common.tiny_models" if stage == "common" else f"workflow.{stage}.stage"
    stage_module = importlib.import_module(module)
    rules = dict(RULE.findall(text))
    assert rules and set(rules) == set(commands)
    for rule, body in rules.items():
        assert CALL.findall(body) == [(stage, rule)], rule
        parameters = list(inspect.signature(getattr(stage_module, rule)).parameters)
        options = [arg.name.lstrip("-").replace("-", "_") for arg in commands[rule].args]
        assert sorted(options) == sorted(parameters), rule


@pytest.mark.parametrize("stage", STAGES)
def test_every_gpu_rule_tells_its_function_how_many_gpus_the_job_has(stage):
    """A rule that declares a `gpu` resource passes `--gpus {resources.gpu}`, so that `gpus: 0` computes on
    the CPU even where a GPU is visible (a job given no GPU must not take one from the jobs that were);
    several computed on any visible GPU before."""
    text = (ROOT / "rules" / f"{stage}.smk").read_text(encoding="utf-8")
    for rule, body in RULE.findall(text):
        if re.search(r"^\s+gpu=", body, re.M):
            assert "--gpus {resources.gpu}" in body, rule


def test_config_sections_are_owned_by_stages():
    """Every top-level config section belongs to a stage: its settings classes live in that stage."""
    schema = yaml.safe_load((ROOT / "resources" / "config.schema.yaml").read_text(encoding="utf-8"))
    owners = {"phantom": "data", "dataset": "data", "split": "data", "preprocess": "data"}
    sections = set(schema["properties"])
    assert sections - set(owners) == set(STAGES) - {"data"}
