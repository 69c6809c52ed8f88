"""The stage registry: every job of the workflow and every ``lungseg`` subcommand, written once.

One :class:`Stage` per stage function: the Snakemake rule that runs it, its subcommand, the
settings classes it takes and the roles of its named outputs. Everything else derives from it:

- ``workflow_scripts/<rule>.py`` is the same two lines for every rule: :func:`run_script` looks up
  the rule (``snakemake.rule``, or the script's file name from the shell) here;
- the ``lungseg`` subcommands (:mod:`lungseg.cli`);
- the parse-time settings checks (:func:`lungseg.config_checks.check_config` builds every class
  of :func:`settings_classes` from the config before any job starts);
- the code hashes (:func:`code_hash`, each rule's ``code`` param): every lungseg module the stage
  function's module imports, directly or not.

Functions and classes are named by ``"module:name"`` strings and imported on use, so reading the
registry (the Snakefile does, for every job) imports neither torch nor pylidc. The table is
:data:`STAGES` (``stages/table.py``); ``tests/test_stages.py`` checks it against the rules, the
scripts and the functions' signatures.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from lungseg.stages.table import ROLES, STAGES, Stage

__all__ = [
    "ROLES",
    "STAGES",
    "Stage",
    "by_command",
    "by_rule",
    "code_hash",
    "resolve",
    "run_script",
    "settings_classes",
]


def by_rule() -> dict[str, Stage]:
    """Rule name -> its stage (read from :data:`STAGES` on every call)."""
    return {stage.rule: stage for stage in STAGES if stage.rule}


def by_command() -> dict[str, Stage]:
    """``lungseg`` subcommand -> its stage, in registry order."""
    return {stage.subcommand: stage for stage in STAGES if stage.shell}


def resolve(target: str) -> Any:
    """The object a ``"module:name"`` string names (imports its module)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def settings_classes() -> list[type]:
    """Every settings class some stage takes, once each, in registry order."""
    targets = dict.fromkeys(t for stage in STAGES for t in stage.settings.values())
    return [resolve(target) for target in targets]


def code_hash(rule: str) -> str:
    """A rule's ``code`` param: the hash of every lungseg module its stage function's module
    imports (directly or not) and of the runner that calls it (:mod:`lungseg.core.rule`)."""
    from lungseg.core.provenance import modules_code_hash

    return modules_code_hash((by_rule()[rule].module, "lungseg.core.rule"))


def run_script(namespace: dict[str, Any]) -> None:
    """The body of every ``workflow_scripts/<rule>.py``: run the rule's stage function, from
    Snakemake (``snakemake.rule``) or from the shell (the script's name)."""
    from lungseg.core.rule import run_rule

    smk = namespace.get("snakemake")
    rule = smk.rule if smk is not None else Path(namespace["__file__"]).stem
    stages = by_rule()
    if rule not in stages:
        raise SystemExit(f"{rule}: no such rule in lungseg.stages.STAGES")
    run_rule(resolve(stages[rule].function), namespace)
