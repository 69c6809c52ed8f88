"""Code hashes from real imports: a rule param, so editing code a job runs reruns that job.

Snakemake's code trigger sees only the workflow script; the logic lives in the package. A rule's
``code`` param (:func:`lungseg.stages.code_hash`) is :func:`modules_code_hash` of its stage
function's module: the SHA-256 of every lungseg module it imports, directly or through other
modules (lazy imports inside functions included), found by walking the modules' syntax trees.
The architecture test walks the same graph (:func:`import_graph`) for cycles and layering. An
edit to the Dice that picks ``best.pt`` thus reruns training, an edit to ``core/atomic.py``
every job that writes through it, and an edit to a figure no training.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def is_module(name: str) -> bool:
    """Whether ``lungseg.a.b`` names a module or subpackage of the package (not an object)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def module_file(name: str) -> Path:
    """The source file of lungseg module ``name`` (a package's ``__init__.py``)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


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


def lungseg_imports(path: Path) -> set[str]:
    """The lungseg modules ``path`` imports, with the packages above each (Python runs their
    ``__init__.py`` first)."""
    found = set()
    for name in imported_names(path):
        parts = name.split(".")
        if parts[0] == "lungseg" and is_module(name):
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


@functools.cache
def import_graph() -> dict[str, frozenset[str]]:
    """lungseg module -> the lungseg modules it imports."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[name] = frozenset(lungseg_imports(path) - {name})
    return graph


def closure(modules: set[str]) -> set[str]:
    """``modules`` and every lungseg module they import, directly or not."""
    graph, seen, todo = import_graph(), set(), list(modules)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return seen


@functools.cache
def modules_code_hash(modules: tuple[str, ...]) -> str:
    """SHA-256 (16 hex digits) of ``modules`` and every lungseg module they import, directly or
    not (with the packages above each)."""
    found = set()
    for name in modules:
        if not is_module(name):
            raise ValueError(f"{name} is no lungseg module")
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    digest = hashlib.sha256()
    for name in sorted(closure(found)):
        path = module_file(name)
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
