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
from lungseg.core.provenance import import_graph, imported_names
from lungseg.core.settings import StageSettings, load_schema, section_schema
from lungseg.stages import settings_classes
from lungseg.training.settings import VariantSettings

PACKAGE = Path(lungseg.__file__).parent
REPO = PACKAGE.parents[1]


def module_imports() -> dict[str, set[str]]:
    """lungseg module -> the lungseg modules it imports (the walk behind the code hashes)."""
    return {name: set(imports) for name, imports in import_graph().items()}


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


def test_every_stage_is_a_subpackage():
    """Only the CLI and the cross-key checks sit beside the stage subpackages (file sizes:
    tests/test_file_sizes.py, over every tracked text file)."""
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "cli.py", "config_checks.py"]


def test_every_module_imports():
    for info in pkgutil.walk_packages(lungseg.__path__, "lungseg."):
        importlib.import_module(info.name)


SETTINGS_CLASSES = settings_classes()


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


# --- defaults live in the schema only (issue 15) ---------------------------------------------

#: Parameter names that stand for a config key under another name.
PARAMETER_ALIASES = {"tolerance": "spacing_tolerance", "workers": "index_workers"}

#: (module.function, parameter) or ("*", parameter) -> why its default may equal a schema
#: default. Keep it short; the test also fails on an entry that no longer matches anything.
ALLOWED_SCHEMA_DEFAULTS = {
    ("*", "threads"): "the job's thread count (Snakemake threads, the CLI's --threads), not a "
    "setting; resources.threads sizes the job and the function takes what the job got",
    ("lungseg.training.trainer.train", "device"): "training has no device key (the keys named "
    "device belong to other sections); auto is the train job's behaviour, not a repeat",
    ("lungseg.evaluation.froc.limit_candidates", "max_candidates"): "detection/ is edited on "
    "another branch; follow-up: pass DetectorSettings.max_candidates",
    ("lungseg.evaluation.froc.froc_entries", "max_candidates"): "detection/, as above",
    ("lungseg.evaluation.froc.bootstrap", "seed"): "detection/, as above (bootstrap_seed)",
    ("lungseg.evaluation.froc.ci_bounds", "confidence"): "LUNA16's CPM interval is 95% by "
    "definition; detection has no confidence key (cv.confidence is the cross-validation's)",
    ("lungseg.evaluation.froc.Bootstrap.cpm_interval", "confidence"): "as ci_bounds",
    ("lungseg.evaluation.froc.bootstrap", "confidence"): "as ci_bounds",
}


def schema_leaf_defaults() -> dict[str, list[tuple[str, object]]]:
    """Config key name -> ``[(dotted key, default)]`` of every leaf key with a non-null default."""
    leaves: dict[str, list[tuple[str, object]]] = {}

    def walk(node: dict, path: tuple[str, ...]) -> None:
        for key, sub in node.get("properties", {}).items():
            if "properties" in sub:
                walk(sub, (*path, key))
            elif sub.get("default") is not None:
                leaves.setdefault(key, []).append((".".join((*path, key)), sub["default"]))

    walk(load_schema(), ())
    return leaves


def _comparable(value: object) -> object:
    """Lists and tuples alike, 3 == 3.0, but True is no 1."""
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_comparable(v) for v in value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    return (type(value).__name__, value)


UNRESOLVED = object()


def module_trees() -> dict[str, ast.Module]:
    trees = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        trees[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = ast.parse(
            path.read_text()
        )
    return trees


def static_value(trees: dict[str, ast.Module], module: str, node: ast.expr, depth: int = 0):
    """A literal, or a module constant bound to one (here or imported from lungseg); else
    UNRESOLVED (e.g. a value read from the schema at import time)."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    if not isinstance(node, ast.Name) or module not in trees or depth > 8:
        return UNRESOLVED
    for statement in trees[module].body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == node.id for t in statement.targets
        ):
            return static_value(trees, module, statement.value, depth + 1)
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and statement.target.id == node.id
            and statement.value is not None
        ):
            return static_value(trees, module, statement.value, depth + 1)
        if isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0:
            for alias in statement.names:
                if (alias.asname or alias.name) == node.id:
                    return static_value(trees, statement.module, ast.Name(alias.name), depth + 1)
    return UNRESOLVED


def parameter_defaults(function: ast.FunctionDef | ast.AsyncFunctionDef):
    """``(name, default node)`` of every parameter with a default."""
    args = function.args
    positional = args.posonlyargs + args.args
    with_default = positional[len(positional) - len(args.defaults) :]
    yield from zip(with_default, args.defaults, strict=True)
    keyword = zip(args.kwonlyargs, args.kw_defaults, strict=True)
    yield from ((a, d) for a, d in keyword if d is not None)


def fallback_literals(function: ast.AST):
    """``(name, literal node)`` of ``name if name is not None else literal`` (either order),
    ``name or literal`` and ``mapping.get("name", literal)`` / ``getattr(x, "name", literal)``."""

    def name_of(node: ast.expr) -> str | None:
        return node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)

    for node in ast.walk(function):
        if isinstance(node, ast.IfExp) and isinstance(node.test, ast.Compare):
            test = node.test
            if (
                len(test.ops) == 1
                and isinstance(test.ops[0], (ast.Is, ast.IsNot))
                and isinstance(test.comparators[0], ast.Constant)
                and test.comparators[0].value is None
                and (name := name_of(test.left))
            ):
                yield from ((name, branch) for branch in (node.body, node.orelse))
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            if len(node.values) == 2 and (name := name_of(node.values[0])):
                yield name, node.values[1]
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            func = node.func
            is_get = isinstance(func, ast.Attribute) and func.attr in ("get", "setdefault", "pop")
            is_getattr = isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) == 3
            key = node.args[1] if is_getattr else node.args[0] if is_get else None
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                yield key.value, node.args[-1]


def functions(node: ast.AST, prefix: str):
    """``(qualified name, node)`` of every function under ``node`` (methods as Class.name)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}.{child.name}", child
            yield from functions(child, f"{prefix}.{child.name}")
        elif isinstance(child, ast.ClassDef):
            yield from functions(child, f"{prefix}.{child.name}")
        else:
            yield from functions(child, prefix)


def schema_default_repeats() -> tuple[list[str], set[tuple[str, str]]]:
    """``"module.function(name=default) repeats key"`` lines, and the allow-list entries used."""
    leaves = schema_leaf_defaults()
    trees = module_trees()
    found, used = [], set()
    for module, tree in trees.items():
        for where, function in functions(tree, module):
            candidates = [(a.arg, d, "=") for a, d in parameter_defaults(function)]
            candidates += [(n, d, " falls back to ") for n, d in fallback_literals(function)]
            for name, node, how in candidates:
                key = PARAMETER_ALIASES.get(name, name)
                value = static_value(trees, module, node)
                if key not in leaves or value is None or value is UNRESOLVED:
                    continue
                repeats = [k for k, d in leaves[key] if _comparable(d) == _comparable(value)]
                if not repeats:
                    continue
                allowed = {(where, name), ("*", name)} & set(ALLOWED_SCHEMA_DEFAULTS)
                if allowed:
                    used |= allowed
                    continue
                found.append(
                    f"{where}:{node.lineno} {name}{how}{ast.unparse(node)} repeats "
                    f"the schema default of {', '.join(repeats)}"
                )
    return sorted(set(found)), used


def test_no_function_repeats_a_schema_default():
    found, used = schema_default_repeats()
    assert found == [], "defaults live in the schema only:\n" + "\n".join(found)
    stale = sorted(set(ALLOWED_SCHEMA_DEFAULTS) - used)
    assert stale == [], f"allow-list entries that match nothing any more: {stale}"


def test_the_schema_default_check_finds_a_repeat(tmp_path):
    tree = ast.parse(
        "C = 0.5\n"
        "def f(a, consensus_level=C, *, size=(32, 32, 32), tolerance=0.05, seed=None):\n"
        "    return a if a is not None else 0.5\n"
        "def g(spacing_tolerance=0.1, d=None):\n"
        "    return d.get('mask_interpolation', 'linear')\n"
    )
    leaves = schema_leaf_defaults()
    trees = {"m": tree}
    hits = set()
    for function in tree.body[1:]:
        pairs = [(a.arg, d) for a, d in parameter_defaults(function)]
        pairs += list(fallback_literals(function))
        for name, node in pairs:
            key = PARAMETER_ALIASES.get(name, name)
            value = static_value(trees, "m", node)
            if key in leaves and any(_comparable(d) == _comparable(value) for _, d in leaves[key]):
                hits.add(name)
    assert hits == {"consensus_level", "size", "tolerance", "mask_interpolation"}


def test_trainer_and_model_views_are_variant_keys_without_defaults():
    """TrainingSettings and ModelSettings are views of a variant's settings dict (the detection
    trainer passes its own keys through them): their keys are VariantSettings' under the same
    types, and a key left out takes the schema's default (from_dict), not one of theirs."""
    from lungseg.nets.models import ModelSettings
    from lungseg.training.trainer import TrainingSettings

    variant = {f.name: f.type for f in dataclasses.fields(VariantSettings)}
    for cls, own in ((TrainingSettings, set()), (ModelSettings, set())):
        for field in dataclasses.fields(cls):
            assert variant.get(field.name) == field.type, f"{cls.__name__}.{field.name}"
            assert field.default is dataclasses.MISSING, f"{cls.__name__}.{field.name}"
        defaults = VariantSettings.from_config({}).to_config()
        view = cls.from_dict({})
        for name in {f.name for f in dataclasses.fields(cls)} - own:
            assert getattr(view, name) == defaults[name], f"{cls.__name__}.{name}"


# --- tests/: one DICOM writer, no test module imports another (issue 30) ------------------------

TESTS = Path(__file__).resolve().parent
#: the one module of tests/ that writes DICOM files with pydicom
DICOM_WRITER = "dicom_writer.py"
#: other tests/ files allowed to write with pydicom, each with its reason. None today: a test
#: that damages a file at the byte level (truncation, a mislabelled transfer syntax, a text file
#: named .dcm) uses Path.write_bytes / write_text, not pydicom, and needs no entry; pydicom-level
#: damage (short pixel data, a private element, a missing tag) goes through the writer module
#: (``tags``, ``edit``, ``rewrite``).
DICOM_WRITE_EXCEPTIONS: dict[str, str] = {}
#: pydicom's ways of writing a file: Dataset.save_as, dcmwrite (old name write_file), FileDataset
PYDICOM_WRITES = {"save_as", "dcmwrite", "write_file", "FileDataset"}


def _test_tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _pydicom_writes(tree: ast.Module) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in PYDICOM_WRITES:
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("pydicom")
            and any(alias.name in PYDICOM_WRITES for alias in node.names)
        ):
            lines.append(node.lineno)
    return lines


def _imported_test_modules(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.split(".")[-1].startswith("test_") or n.startswith("tests.test_")}


def test_no_test_module_imports_another():
    """Helpers shared by test modules live in *_helpers.py / dicom_writer.py, not in a test_*.py
    (importing a test module runs its collection-time code and couples the two)."""
    found = {
        path.name: sorted(imported)
        for path in sorted(TESTS.glob("test_*.py"))
        if (imported := _imported_test_modules(_test_tree(path)))
    }
    assert found == {}
    assert _imported_test_modules(ast.parse("from test_x import y\nimport tests.test_z")) == {
        "test_x",
        "tests.test_z",
    }


def test_only_the_dicom_writer_writes_dicom_files_with_pydicom():
    writes = {
        path.name: lines
        for path in sorted(TESTS.glob("*.py"))
        if (lines := _pydicom_writes(_test_tree(path)))
    }
    assert DICOM_WRITER in writes  # the scan sees the writer's own calls
    allowed = {DICOM_WRITER, *DICOM_WRITE_EXCEPTIONS}
    others = {name: lines for name, lines in writes.items() if name not in allowed}
    assert others == {}, f"write DICOM files with tests/{DICOM_WRITER} instead: {others}"
    stale = set(DICOM_WRITE_EXCEPTIONS) - set(writes)
    assert not stale, f"exceptions that no longer write with pydicom: {stale}"
