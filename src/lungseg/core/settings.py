"""One typed settings object per stage, built from the validated config.

Defaults live in ``schemas/config.schema.yaml`` only: :func:`validated_section` fills them in
(and rejects unknown keys and wrong types, naming the key), then a stage's frozen dataclass
(:class:`StageSettings`) takes exactly the section's keys, under the config's names. The
``lungseg`` command line derives its options from the same dataclasses
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

#: The workflow's schema; the package is installed from the repository (``pip install -e .``).
SCHEMA_PATH = Path(
    os.environ.get("LUNGSEG_SCHEMA")
    or Path(__file__).resolve().parents[3] / "schemas" / "config.schema.yaml"
)


@functools.cache
def load_schema() -> dict:
    """The config schema (read once)."""
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


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


def validated_section(section: str, mapping: Mapping[str, Any] | None) -> dict:
    """``mapping`` checked against the schema of ``section``, defaults filled in."""
    schema = section_schema(section)
    value = _fill_defaults(schema, dict(mapping or {}))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        raise SettingsError(_first_error_message(errors[0], section))
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
    """Base of every stage's settings: a frozen dataclass whose fields are a config section's keys.

    Subclasses set ``SECTION`` (the dotted config path whose schema validates them), may list
    section keys that are not settings in ``EXCLUDE`` (job resources), and override
    :meth:`check` for checks that involve several keys. Fields carry no defaults: those are the
    schema's.
    """

    SECTION: ClassVar[str] = ""
    EXCLUDE: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None = None):
        """Validate ``mapping`` (a config section) against the schema and build the settings."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = dict(mapping or {})
        values = validated_section(cls.SECTION, given)
        extra = set(values) - names - cls.EXCLUDE
        if extra:  # the schema knows keys this class does not: a bug, not bad input
            raise TypeError(f"{cls.__name__} lacks fields for {sorted(extra)} of {cls.SECTION}")
        missing = names - set(values)
        if missing:
            raise SettingsError(
                f"{cls.SECTION}: missing key(s) {', '.join(sorted(missing))} (no schema default)"
            )
        settings = cls(**{name: _frozen(values[name]) for name in names})
        settings.check()
        return settings

    def check(self) -> None:
        """Checks across keys; raise :class:`SettingsError` naming the keys."""

    def to_config(self) -> dict:
        """The settings as a plain config section (lists, not tuples)."""
        return {f.name: _thawed(getattr(self, f.name)) for f in dataclasses.fields(self)}


def schema_defaults(section: str) -> dict:
    """The schema's defaults of a section (what an empty config gives)."""
    return _fill_defaults(section_schema(section), {})


def add_settings_arguments(parser, cls: type[StageSettings]) -> None:
    """One option per setting, named as in the config (``--key`` and ``--key-with-dashes``).

    Values are YAML (``--size '[32, 32, 32]'``, ``--target_spacing null``); unset options take
    the ``--configfile``'s value, else the schema default shown in ``--help``.
    """
    schema = section_schema(cls.SECTION).get("properties", {})
    group = parser.add_argument_group(
        f"settings (config section {cls.SECTION!r}; defaults from {SCHEMA_PATH.name})"
    )
    group.add_argument(
        "--configfile",
        help=f"a config.yaml whose {cls.SECTION!r} section is the base of these settings",
    )
    for field in dataclasses.fields(cls):
        sub = schema.get(field.name, {})
        flags = [f"--{field.name}"]
        if "_" in field.name:
            flags.append(f"--{field.name.replace('_', '-')}")
        description = " ".join(str(sub.get("description", "")).split())
        group.add_argument(
            *flags,
            dest=f"setting__{field.name}",
            type=yaml.safe_load,
            default=argparse_unset,
            metavar="YAML",
            help=f"{description} [default: {sub.get('default')!r}]".replace("%", "%%"),
        )


#: Marks an option not given on the command line (None is a valid YAML value).
argparse_unset = object()


def settings_from_arguments(cls: type[StageSettings], args) -> StageSettings:
    """The settings of parsed :func:`add_settings_arguments` options."""
    base: dict = {}
    if getattr(args, "configfile", None):
        path = Path(args.configfile)
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"{path}: cannot read the config file ({exc})") from exc
        node: Any = config
        for part in cls.SECTION.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        base = {k: v for k, v in (node or {}).items() if k not in cls.EXCLUDE}
    for field in dataclasses.fields(cls):
        value = getattr(args, f"setting__{field.name}", argparse_unset)
        if value is not argparse_unset:
            base[field.name] = value
    return cls.from_config(base)
