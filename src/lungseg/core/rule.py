"""Entry points: a stage function run from a Snakemake rule or from the shell, the same way.

A stage function takes keyword arguments only (on the shell, the names in its ``positional``
attribute are positional arguments): paths named as the rule's named ``input``,
``output`` and ``params``, :class:`StageSettings` objects (each from a params dict) and
optionally ``threads``; a ``code`` param (the stage's source hash) and a ``params_file`` input
are rerun triggers only.
:func:`run_rule` passes Snakemake's named items straight to it;
:func:`build_parser` derives the shell's options from the same signature. Either way the log
goes to the rule's ``log:`` file, bad input and settings (:class:`LungsegError`) end with one
line, and a bug keeps its traceback (in the log too).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import re
import resource
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from lungseg.core.errors import LungsegError
from lungseg.core.log import setup_logging
from lungseg.core.settings import StageSettings, add_settings_arguments, settings_from_arguments

log = logging.getLogger("lungseg")


#: Rule items that are rerun triggers only, not arguments: ``code`` (param: a hash of the
#: stage's source) and ``params_file`` (input: a parameter file whose path is also a setting).
TRIGGER_PARAMS = frozenset({"code", "params_file"})


def settings_parameters(func: Callable) -> dict[str, type[StageSettings]]:
    """The function's parameters annotated with a :class:`StageSettings` subclass."""
    return {
        name: hint
        for name, hint in typing.get_type_hints(func).items()
        if isinstance(hint, type) and issubclass(hint, StageSettings)
    }


#: The last line of every job's log: the process's own CPU seconds (user + system, waited-for
#: children included) and peak RSS. Snakemake's benchmark files sample a job every 0.5 s and
#: keep the last sample, so a job of a few seconds loses up to half a second of CPU there; the
#: scale benchmark reads this line instead (lungseg.bench.scale).
RESOURCES_LINE = "job resources: cpu_s={cpu_s:.3f} max_rss_mb={max_rss_mb:.1f}"
_RESOURCES = re.compile(r"job resources: cpu_s=([0-9.]+) max_rss_mb=([0-9.]+)")


def job_resources() -> dict[str, float]:
    """This process's CPU seconds and peak RSS so far (Linux: ``ru_maxrss`` in KiB)."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return {"cpu_s": cpu, "max_rss_mb": max(own.ru_maxrss, children.ru_maxrss) / 1024}


def logged_resources(text: str) -> dict[str, float] | None:
    """The last :data:`RESOURCES_LINE` of a job's log text, or None if it has none."""
    found = _RESOURCES.findall(text)
    if not found:
        return None
    cpu_s, max_rss_mb = found[-1]
    return {"cpu_s": float(cpu_s), "max_rss_mb": float(max_rss_mb)}


def call_logged(func: Callable, kwargs: dict[str, Any], log_file: str | None) -> int:
    """Run ``func(**kwargs)`` with logging to ``log_file``; 0 on success, 1 on a LungsegError.

    The log file ends with :data:`RESOURCES_LINE` either way."""
    setup_logging(log_file)
    try:
        for name, cls in settings_parameters(func).items():
            if not isinstance(kwargs.get(name), StageSettings):
                kwargs[name] = cls.from_config(kwargs.get(name))
        func(**kwargs)
    except LungsegError as exc:
        log.error("%s", exc)
        return 1
    except Exception:
        log.exception("%s failed with an unexpected error (a bug; please report it)", func.__name__)
        return 2
    finally:
        _log_file_only(RESOURCES_LINE.format(**job_resources()))
    return 0


def _log_file_only(message: str) -> None:
    """``message`` to the log file, not to the terminal (where an error stays the last line)."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def snakemake_kwargs(func: Callable, smk) -> dict[str, Any]:
    """The stage function's arguments from a Snakemake job: its named input, output, params."""
    accepted = inspect.signature(func).parameters
    kwargs: dict[str, Any] = {}
    for container in (smk.input, smk.output, smk.params):
        for name, value in container.items():
            if name not in TRIGGER_PARAMS:
                kwargs[name] = list(value) if isinstance(value, list) else value
    if "threads" in accepted:
        kwargs["threads"] = smk.threads
    unknown = set(kwargs) - set(accepted)
    if unknown:  # a rule naming an item the function does not take: a wiring bug
        raise TypeError(f"{func.__name__} takes no {sorted(unknown)} (rule {smk.rule})")
    return kwargs


def _without_none(hint: Any) -> Any:
    """``X`` of ``X | None`` (an optional argument's type); other hints unchanged."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def build_parser(func: Callable, prog: str | None = None) -> argparse.ArgumentParser:
    """Options from the function's signature: ``--name`` per path, settings, ``--threads``."""
    doc = inspect.getdoc(func) or ""
    # allow_abbrev=False: a misspelt setting (--epoch) must fail, not pass as a prefix
    parser = argparse.ArgumentParser(
        prog=prog, description=doc.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--log", help="also write the log to this file")
    hints = typing.get_type_hints(func)
    settings = settings_parameters(func)
    for name, param in inspect.signature(func).parameters.items():
        if name in settings:
            continue
        hint = _without_none(hints.get(name, str))
        required = param.default is inspect.Parameter.empty
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        origin = typing.get_origin(hint)
        if name in getattr(func, "positional", ()):  # e.g. `lungseg predict SERIES_DIR...`
            parser.add_argument(name, nargs="+", metavar=name.upper().removesuffix("S"))
        elif hint is bool:  # a flag: --dry-run
            parser.add_argument(*flags, dest=name, action="store_true")
        elif name == "threads" or hint is int:
            parser.add_argument(*flags, dest=name, type=int, default=param.default)
        elif origin is list:
            parser.add_argument(*flags, dest=name, nargs="+", required=required)
        else:
            parser.add_argument(
                *flags,
                dest=name,
                required=required,
                default=None if required else param.default,
                help=None if required or param.default is None else f"default: {param.default}",
            )
    if settings:
        add_settings_arguments(parser, list(settings.values()))
    return parser


def run_shell(func: Callable, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run ``func`` from the shell: parse ``argv`` with :func:`build_parser`, then call it."""
    parser = build_parser(func, prog)
    args = parser.parse_args(argv)
    settings = settings_parameters(func)
    kwargs = {
        name: getattr(args, name)
        for name in inspect.signature(func).parameters
        if name not in settings
    }
    setup_logging(args.log)
    try:
        for name, cls in settings.items():
            kwargs[name] = settings_from_arguments(cls, args)
    except LungsegError as exc:
        log.error("%s", exc)
        return 1
    return call_logged(func, kwargs, args.log)


def run_rule(func: Callable, namespace: dict[str, Any]) -> None:
    """The body of every ``workflow_scripts/<rule>.py``: from Snakemake, else from the shell."""
    smk = namespace.get("snakemake")
    if smk is None:
        sys.exit(run_shell(func))
    sys.exit(call_logged(func, snakemake_kwargs(func, smk), smk.log[0] if smk.log else None))
