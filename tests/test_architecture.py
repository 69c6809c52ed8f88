"""The package's shape: stage subpackages without import cycles, no snakemake inside, small
files, settings whose fields are schema keys (defaults in the schema only)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pkgutil
from pathlib import Path

import pytest

import lungseg
from lungseg.config_checks import JOB_SETTINGS
from lungseg.core.settings import StageSettings, section_schema
from lungseg.training.settings import VariantSettings

PACKAGE = Path(lungseg.__file__).parent
MAX_LINES = 400


def is_module(name: str) -> bool:
    """Whether ``lungseg.a.b`` names a module or subpackage of the package (not an object)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from lungseg.lidc import adapter` imports a module
                candidate = f"{node.module}.{alias.name}"
                names.add(candidate if is_module(candidate) else node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def module_imports() -> dict[str, set[str]]:
    """lungseg module -> the lungseg modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[name] = {t for t in imported_names(path) if t.startswith("lungseg.") and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(module_imports())
    assert cycle is None, " -> ".join(cycle)


def test_package_never_imports_snakemake():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(name.split(".")[0] == "snakemake" for name in imported_names(path))
    ]
    assert offenders == []


def test_every_stage_is_a_subpackage_and_files_are_small():
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "cli.py", "config_checks.py"]
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"files over {MAX_LINES} lines: {long}"


def test_every_module_imports():
    for info in pkgutil.walk_packages(lungseg.__path__, "lungseg."):
        importlib.import_module(info.name)


SETTINGS_CLASSES = [*JOB_SETTINGS, VariantSettings]


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda c: c.__name__)
def test_settings_fields_are_schema_keys_without_defaults_of_their_own(cls: type[StageSettings]):
    known = {
        key for section in cls.SECTIONS for key in section_schema(section).get("properties", {})
    }
    for field in dataclasses.fields(cls):
        assert field.name in known, f"{cls.__name__}.{field.name} is no key of {cls.SECTIONS}"
        assert field.default is dataclasses.MISSING, f"{cls.__name__}.{field.name} has a default"
        assert field.default_factory is dataclasses.MISSING


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda c: c.__name__)
def test_settings_from_an_empty_config_are_the_schema_defaults(cls: type[StageSettings]):
    settings = cls.from_config({})
    for name, (_section, schema) in cls.field_sections().items():
        assert settings.to_config()[name] == schema["default"], name
