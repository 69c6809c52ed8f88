"""The config schema in files: ``read_schema`` inlines the ``$ref``\\ s, Snakemake sees the same.

config.schema.yaml holds the sections' defaults beside ``$ref``\\ s to ``schema/*.yaml``;
:func:`lungseg.core.settings.load_schema` inlines them into the one dict that the settings, the
checks and the tests use, and Snakemake's ``validate`` resolves the same ``$ref``\\ s itself.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from lungseg.core.errors import SettingsError
from lungseg.core.settings import SCHEMA_PATH, load_schema, read_schema

REPO = Path(__file__).resolve().parents[1]
DIALECT = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
INT = {"type": "integer", "default": 1}


def _write(folder: Path, files: dict[str, dict]) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(yaml.safe_dump(content))
    return folder / "root.yaml"


def _root(ref: str) -> dict:
    return {**DIALECT, "properties": {"a": {"$ref": ref, "default": {}}}}


# (case, files besides root.yaml, the root's $ref, what properties.a inlines to)
INLINED = [
    (
        "whole sibling file ($schema dropped)",
        {"a.yaml": {**DIALECT, "type": "object", "properties": {"n": INT}}},
        "a.yaml",
        {"type": "object", "properties": {"n": INT}, "default": {}},
    ),
    (
        "$defs fragment of a sibling file",
        {"a.yaml": {**DIALECT, "$defs": {"x": {"type": "object"}, "unused": {}}}},
        "a.yaml#/$defs/x",
        {"type": "object", "default": {}},
    ),
    (
        "fragment whose own #/$defs ref is of its file, not of the root",
        {"a.yaml": {**DIALECT, "$defs": {"x": {"items": {"$ref": "#/$defs/n"}}, "n": INT}}},
        "a.yaml#/$defs/x",
        {"items": INT, "default": {}},
    ),
    (
        "a file in a subfolder refers relative to itself",
        {
            "sub/a.yaml": {**DIALECT, "$defs": {"x": {"items": {"$ref": "b.yaml#/$defs/n"}}}},
            "sub/b.yaml": {**DIALECT, "$defs": {"n": INT}},
        },
        "sub/a.yaml#/$defs/x",
        {"items": INT, "default": {}},
    ),
]


@pytest.mark.parametrize(
    ("files", "ref", "inlined"), [c[1:] for c in INLINED], ids=[c[0] for c in INLINED]
)
def test_read_schema_inlines_refs(tmp_path, files, ref, inlined):
    root = _write(tmp_path, {"root.yaml": _root(ref), **files})
    assert read_schema(root) == {**DIALECT, "properties": {"a": inlined}}


# (case, files besides root.yaml, the root's $ref, words the error has)
BROKEN = [
    ("missing file", {}, "gone.yaml", ["gone.yaml", "referred to by", "root.yaml"]),
    (
        "missing $def",
        {"a.yaml": {**DIALECT, "$defs": {}}},
        "a.yaml#/$defs/x",
        ["/$defs/x", "a.yaml"],
    ),
    ("sibling key clash", {"a.yaml": {"default": {}}}, "a.yaml", ["'default'", "root.yaml"]),
    (
        "cycle",
        {"a.yaml": {"$defs": {"x": {"$ref": "#/$defs/x"}}}},
        "a.yaml#/$defs/x",
        ["refers back"],
    ),
    ("anchor fragment", {"a.yaml": {}}, "a.yaml#name", ["JSON pointer"]),
]


@pytest.mark.parametrize(
    ("files", "ref", "words"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_read_schema_names_what_is_wrong(tmp_path, files, ref, words):
    root = _write(tmp_path, {"root.yaml": _root(ref), **files})
    with pytest.raises(SettingsError) as error:
        read_schema(root)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_the_workflow_schema_is_inlined():
    """Every section file's $ref is resolved (their sizes: tests/test_file_sizes.py)."""
    assert "$ref" not in json.dumps(load_schema())
    assert len(list((SCHEMA_PATH.parent / "schema").glob("*.yaml"))) > 1


@pytest.mark.parametrize(
    "config",
    [{"lidc_root": ""}, yaml.safe_load((REPO / "config.yaml").read_text())],
    ids=["no sections", "config.yaml"],
)
def test_snakemake_fills_the_same_defaults_from_the_files_as_from_the_inlined_schema(
    tmp_path, config
):
    """Snakemake resolves the $refs itself and fills a default only where it sees one (beside the
    $ref; a target holding $schema would switch to a validator that fills none)."""
    from snakemake.utils import validate

    inlined = tmp_path / "inlined.schema.yaml"
    inlined.write_text(yaml.safe_dump(load_schema(), sort_keys=False))
    from_files, from_inlined = copy.deepcopy(config), copy.deepcopy(config)
    validate(from_files, str(SCHEMA_PATH))
    validate(from_inlined, str(inlined))
    assert from_files == from_inlined
    assert from_files["detection"]["volumes"] and from_files["training"]["resources"]
