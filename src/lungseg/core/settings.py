"""Typed settings built from the validated config, one frozen dataclass per job kind.

Defaults live in the schema (``src/lungseg/data/config.schema.yaml``, whose sections are in
``src/lungseg/data/schema/``) only:
:meth:`StageSettings.from_config` fills them in and checks every value against the schema
(unknown keys and wrong types are errors that name the key); the fields are config keys under
the config's names. The ``lungseg`` command line derives its options from the same dataclasses
(:func:`add_settings_arguments`), so a setting has one name from config.yaml to the function
that uses it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import yaml

from lungseg.core.errors import SettingsError

#: The workflow's schema: package data, so an installed lungseg (wheel, not only ``pip install
#: -e .``) finds it too.
SCHEMA_PATH = Path(
    os.environ.get("LUNGSEG_SCHEMA")
    or Path(__file__).resolve().parents[1] / "data" / "config.schema.yaml"
)


#: Keys of a whole referenced file that inlining drops: a file names its dialect (Snakemake's
#: resolver reads each file alone) and its ``$defs`` hold only what ``$ref``\ s point at.
_FILE_ONLY_KEYS = ("$schema", "$defs")


def read_schema(path: Path) -> dict:
    """The schema file ``path`` with every ``$ref`` replaced by what it points at, recursively.

    A ``$ref`` is ``file.yaml``, ``file.yaml#/json/pointer`` (the file relative to the file that
    holds the ``$ref``) or ``#/json/pointer`` (the same file). Keys beside a ``$ref`` (a
    section's ``default``, which Snakemake sees only there) are kept beside the inlined content;
    one that the target also has is an error, as inlining would have to pick one.
    """
    files: dict[Path, Any] = {}

    def document(file: Path, referrer: Path | None) -> Any:
        if file not in files:
            by = f", referred to by {referrer}" if referrer else ""
            try:
                files[file] = yaml.safe_load(file.read_text())
            except OSError as exc:
                raise SettingsError(f"cannot read schema file {file}{by}: {exc}") from exc
            except yaml.YAMLError as exc:
                raise SettingsError(f"schema file {file}{by} is no YAML: {exc}") from exc
        return files[file]

    def resolve(ref: str, file: Path, seen: tuple[str, ...]) -> Any:
        name, _, pointer = ref.partition("#")
        target = (file.parent / name) if name else file
        if pointer and not pointer.startswith("/"):
            raise SettingsError(f"{file}: $ref {ref!r}: only JSON pointer fragments (#/...)")
        key = f"{target}#{pointer}"
        if key in seen:  # a $ref cycle would recurse without end
            raise SettingsError(f"{file}: $ref {ref!r} refers back to {key}")
        node = document(target, file)
        for token in pointer.split("/")[1:]:
            token = token.replace("~1", "/").replace("~0", "~")
            try:
                node = node[int(token) if isinstance(node, list) else token]
            except (KeyError, IndexError, ValueError, TypeError):
                raise SettingsError(f"{file}: $ref {ref!r}: no {pointer} in {target}") from None
        node = inline(node, target, (*seen, key))
        if not pointer and isinstance(node, dict):
            node = {k: v for k, v in node.items() if k not in _FILE_ONLY_KEYS}
        return node

    def inline(node: Any, file: Path, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [inline(v, file, seen) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: inline(v, file, seen) for k, v in node.items() if k != "$ref"}
        if "$ref" not in node:
            return out
        target = resolve(node["$ref"], file, seen)
        if not isinstance(target, dict):
            raise SettingsError(f"{file}: $ref {node['$ref']!r} points at no schema object")
        if clash := sorted(set(target) & set(out)):
            raise SettingsError(f"{file}: $ref {node['$ref']!r}: its target also has {clash}")
        return {**target, **out}

    return inline(document(path, None), path, (f"{path}#",))


@functools.cache
def load_schema() -> dict:
    """The config schema with its section files inlined (read once): the dict that validates a
    config, and whose defaults fill it, exactly as Snakemake's ``validate`` sees it."""
    return read_schema(SCHEMA_PATH)


def section_schema(section: str) -> dict:
    """The schema of a dotted config path, e.g. ``"crops"`` or ``"training"``."""
    node = load_schema()
    for part in section.split("."):
        try:
            node = node["properties"][part]
        except KeyError:
            raise SettingsError(f"no config section {section!r} in {SCHEMA_PATH}") from None
    return node


def _fill_defaults(schema: dict, value: Any) -> Any:
    """``value`` with every missing key that the schema gives a default for filled in."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    filled = dict(value)
    for key, sub in schema.get("properties", {}).items():
        if key not in filled and "default" in sub:
            filled[key] = copy.deepcopy(sub["default"])
        if key in filled:
            filled[key] = _fill_defaults(sub, filled[key])
    return filled


def _first_error_message(error: jsonschema.ValidationError, section: str) -> str:
    where = ".".join([section, *map(str, error.absolute_path)])
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        return f"{where}: unknown key(s) {', '.join(map(repr, extra))} (known: {', '.join(known)})"
    return f"{where}: {error.message}"


def check_against_schema(config: Mapping[str, Any]) -> None:
    """Raise :class:`SettingsError` naming the first key of ``config`` the schema rejects.

    Snakemake's own validation prints the whole schema fragment before the key; this names the
    key and the problem in one line (the Snakefile runs it first).
    """
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(dict(config)), key=lambda e: list(e.absolute_path))
    if errors:
        message = _first_error_message(errors[0], "config").removeprefix("config.")
        raise SettingsError(f"{message} (schema: {SCHEMA_PATH.name})")


def _property_schema(sections: tuple[str, ...], key: str) -> tuple[str, dict]:
    """``(section, schema)`` of ``key``: the first of ``sections`` whose schema has it."""
    for section in sections:
        properties = section_schema(section).get("properties", {})
        if key in properties:
            return section, properties[key]
    raise TypeError(f"no key {key!r} in config section(s) {', '.join(sections)}")


def validated_value(section: str, key: str, schema: dict, value: Any) -> Any:
    """``value`` checked against the schema of ``section.key`` (defaults of nested keys filled)."""
    value = _fill_defaults(schema, value)
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(value),
        key=lambda e: list(e.absolute_path),
    )
    if errors:
        raise SettingsError(_first_error_message(errors[0], f"{section}.{key}"))
    return value


def _frozen(value: Any) -> Any:
    """Lists as tuples (hashable, immutable settings); dicts stay dicts."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def _thawed(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    if isinstance(value, dict):
        return {k: _thawed(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """Base of the settings objects: a frozen dataclass whose fields are config keys.

    ``SECTIONS`` names the config section(s) the fields come from (a field is looked up in the
    first section whose schema has it); a rule's params carry only the keys its job uses, so a
    changed key reruns only the jobs that read it. Subclasses override :meth:`check` for checks
    across keys. Fields carry no defaults: a missing key takes the schema's.
    """

    SECTIONS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def field_sections(cls) -> dict[str, tuple[str, dict]]:
        """Field name -> (config section, its schema)."""
        return {f.name: _property_schema(cls.SECTIONS, f.name) for f in dataclasses.fields(cls)}

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None = None):
        """Build from ``{key: value}`` (keys of this class; schema defaults fill the others)."""
        given = dict(mapping or {})
        sections = cls.field_sections()
        unknown = sorted(set(given) - set(sections))
        if unknown:
            where = "/".join(cls.SECTIONS)
            raise SettingsError(
                f"{where}: unknown setting(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sorted(sections))})"
            )
        values = {}
        for name, (section, schema) in sections.items():
            if name in given:
                value = given[name]
            elif "default" in schema:
                value = copy.deepcopy(schema["default"])
            else:
                raise SettingsError(f"{section}.{name}: missing (the schema has no default)")
            values[name] = _frozen(validated_value(section, name, schema, value))
        settings = cls(**values)
        settings.check()
        return settings

    @classmethod
    def config_subset(cls, config: Mapping[str, Any]) -> dict:
        """The keys of this class taken from a (validated) config, for a rule's params."""
        subset = {}
        for name, (section, _schema) in cls.field_sections().items():
            node: Any = config
            for part in section.split("."):
                node = (node or {}).get(part, {}) if isinstance(node, Mapping) else {}
            if isinstance(node, Mapping) and name in node:
                subset[name] = node[name]
        return subset

    def check(self) -> None:
        """Checks across keys; raise :class:`SettingsError` naming the keys."""

    @classmethod
    def check_config(cls, config: Mapping[str, Any]) -> None:
        """Build every job's settings of this class from a whole config (the parse-time check);
        a class with one job per config entry (a model, a detector) builds each."""
        cls.from_config(cls.config_subset(config))

    def to_config(self) -> dict:
        """The settings as plain values (lists, not tuples)."""
        return {f.name: _thawed(getattr(self, f.name)) for f in dataclasses.fields(self)}


def schema_defaults(section: str) -> dict:
    """The schema's defaults of a section (what an empty config gives)."""
    return _fill_defaults(section_schema(section), {})


def add_settings_arguments(parser, classes: list[type[StageSettings]]) -> None:
    """One option per setting, named as in the config (``--key`` and ``--key-with-dashes``).

    Values are YAML (``--size '[32, 32, 32]'``, ``--target_spacing null``); unset options take
    the ``--configfile``'s value, else the schema default shown in ``--help``.
    """
    group = parser.add_argument_group(f"settings (config keys; defaults from {SCHEMA_PATH.name})")
    group.add_argument("--configfile", help="a config.yaml whose values are the base of these")
    seen: set[str] = set()
    for cls in classes:
        for name, (section, schema) in cls.field_sections().items():
            if name in seen:
                continue
            seen.add(name)
            flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
            description = " ".join(str(schema.get("description", "")).split())
            help_text = f"{section}.{name}: {description} [default: {schema.get('default')!r}]"
            group.add_argument(
                *flags,
                dest=f"setting__{name}",
                type=yaml.safe_load,
                default=UNSET,
                metavar="YAML",
                help=help_text.replace("%", "%%"),
            )


#: Marks an option not given on the command line (None is a valid YAML value).
UNSET = object()


def settings_from_arguments(cls: type[StageSettings], args) -> StageSettings:
    """The settings of parsed :func:`add_settings_arguments` options."""
    base: dict = {}
    if getattr(args, "configfile", None):
        path = Path(args.configfile)
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"{path}: cannot read the config file ({exc})") from exc
        base = cls.config_subset(config)
    for name in cls.field_sections():
        value = getattr(args, f"setting__{name}", UNSET)
        if value is not UNSET:
            base[name] = value
    return cls.from_config(base)
