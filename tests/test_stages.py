"""The stage registry (lungseg.stages) against what derives from it: rules, workflow scripts, the
CLI, the parse-time settings checks and the code hashes."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lungseg import cli, stages
from lungseg.config_checks import check_config
from lungseg.core.errors import SettingsError
from lungseg.core.provenance import closure, import_graph, modules_code_hash
from lungseg.core.rule import settings_parameters
from lungseg.core.settings import StageSettings

REPO = Path(__file__).resolve().parents[1]
RULE_BLOCK = re.compile(r"^(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", re.MULTILINE | re.DOTALL)
OUTPUT_BLOCK = re.compile(r"^    output:\n(.*?)(?=^    \w)", re.MULTILINE | re.DOTALL)
NAMED = re.compile(r"^        (\w+)=(.*?)(?=^        \w+=|\Z)", re.MULTILINE | re.DOTALL)


def workflow_rules() -> dict[str, str]:
    """Rule name -> its text, of every rule in rules/*.smk that runs a workflow script."""
    found = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for rule, body in RULE_BLOCK.findall(smk.read_text()):
            if "workflow_scripts/" in body:
                found[rule] = body
    return found


RULES = workflow_rules()


def test_every_rule_is_registered_and_every_registered_rule_exists():
    assert len(RULES) > 25
    assert sorted(RULES) == sorted(stages.by_rule())


@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_rule_runs_its_own_script_and_hashes_its_own_stage(rule):
    body = RULES[rule]
    assert f'"../workflow_scripts/{rule}.py"' in body
    assert re.findall(r"code=stage_code\(\"(\w+)\"\)", body) == [rule]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_rules_named_outputs_are_the_registered_ones_with_their_roles(rule):
    block = OUTPUT_BLOCK.search(RULES[rule]).group(1)
    declared = dict(NAMED.findall(block))
    registered = stages.by_rule()[rule].outputs
    assert sorted(declared) == sorted(registered)
    for name, text in declared.items():
        kind = stages.ROLES[registered[name]]
        if kind == "directory":
            assert "directory(" in text, name
        else:
            assert re.search(rf'{re.escape(kind)}"', text), f"{name}: {text.strip()} is no {kind}"


def test_every_workflow_script_is_the_same_hand_over():
    scripts = sorted((REPO / "workflow_scripts").glob("*.py"))
    assert sorted(p.stem for p in scripts) == sorted(RULES)
    texts = {p.read_text() for p in scripts}
    assert len(texts) == 1
    assert "run_script(globals())" in texts.pop()


@pytest.mark.parametrize("stage", stages.STAGES, ids=lambda s: s.subcommand)
def test_a_stage_function_takes_the_registered_settings(stage):
    function = stages.resolve(stage.function)
    registered = {name: stages.resolve(target) for name, target in stage.settings.items()}
    assert settings_parameters(function) == registered


def test_subcommands_are_the_registry_and_parse():
    result = subprocess.run(
        [sys.executable, "-m", "lungseg.cli", "--help"], capture_output=True, text=True, check=True
    )
    listed = re.findall(r"^    ([a-z][a-z-]+)\s", result.stdout, re.MULTILINE)
    assert listed == list(stages.by_command())
    shell = [stage for stage in stages.STAGES if stage.shell]
    assert len(stages.by_command()) == len(shell)  # no two stages share a subcommand
    # a rule without a subcommand of its own runs a function that has one
    functions = {stage.function for stage in shell}
    assert all(s.function in functions for s in stages.STAGES if not s.shell)


def test_the_shell_and_snakemake_reach_the_same_function():
    """`python workflow_scripts/<rule>.py -h` runs the rule's stage function's parser."""
    result = subprocess.run(
        [sys.executable, str(REPO / "workflow_scripts" / "split.py"), "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "--val_fraction" in result.stdout and "--split" in result.stdout


# --- a stage added in one place appears in all -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class RefusingSettings(StageSettings):
    """A settings class whose check always fails (registered only by the test below)."""

    SECTIONS = ("split",)
    seed: int

    def check(self) -> None:
        raise SettingsError("split.seed: refused by the registered test stage")


def toy_stage(*, table: str, settings: RefusingSettings) -> None:
    """A stage function for the registry test."""


def test_a_registered_stage_reaches_the_cli_and_the_parse_time_checks(monkeypatch):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    check_config(config)  # the real config passes before the toy stage is registered
    toy = stages.Stage(
        f"{__name__}:toy_stage",
        "a toy stage",
        rule="toy",
        settings={"settings": f"{__name__}:RefusingSettings"},
        outputs={"table": "table"},
    )
    monkeypatch.setattr(stages, "STAGES", (*stages.STAGES, toy))
    assert cli.stage_function("toy") is toy_stage
    assert "toy" in cli.build_parser().format_help()
    with pytest.raises(SettingsError, match="refused by the registered test stage"):
        check_config(config)


def test_every_predictor_and_benchmark_key_is_checked_before_any_job(tmp_path):
    """Settings of late stages (predictor, benchmark) fail at parse time too."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for section, key, bad in (
        ("predict", "detector_name", "no_such_detector"),
        ("benchmark", "sizes", [[30, 30, 30]]),  # not divisible by 2**(levels-1)
    ):
        broken = {**config, section: {**config.get(section, {}), key: bad}}
        with pytest.raises(SettingsError, match=f"{section}.{key}"):
            check_config(broken)


# --- code hashes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "runs", "does_not_run"),
    [
        ("train", {"lungseg.core.atomic", "lungseg.nets.models"}, {"lungseg.figures"}),
        # a lazy import inside a function counts (pylidc's adapter, in write_index)
        ("index", {"lungseg.lidc.adapter", "lungseg.ingest.manifest"}, {"lungseg.training"}),
        ("plots", {"lungseg.core.rule"}, {"lungseg.detection", "lungseg.training.trainer"}),
    ],
)
def test_a_rules_code_is_every_module_its_stage_imports(rule, runs, does_not_run):
    stage = stages.by_rule()[rule]
    modules = closure({stage.module, "lungseg.core.rule"})
    assert stage.module in modules
    assert runs <= modules and not (does_not_run & modules)


def test_the_code_hash_follows_an_edit_and_the_registry(tmp_path, monkeypatch):
    """A copy of the package hashes as the original; an appended comment changes the hash of
    the rules that import the edited module only; pointing a rule at another function too."""
    from lungseg.core import provenance

    package = Path(provenance.__file__).resolve().parents[1]
    original = {rule: stages.code_hash(rule) for rule in ("train", "plots")}
    copy = tmp_path / "lungseg"
    shutil.copytree(package, copy)
    monkeypatch.setattr(provenance, "PACKAGE", copy)
    trainer = copy / "training" / "trainer.py"
    hashes = []
    for edit in ("", "\n# one\n"):
        with open(trainer, "a") as f:
            f.write(edit)
        import_graph.cache_clear()
        modules_code_hash.cache_clear()
        hashes.append({rule: stages.code_hash(rule) for rule in ("train", "plots")})
    assert hashes[0] == original
    assert hashes[1]["train"] != original["train"] and hashes[1]["plots"] == original["plots"]
    moved = tuple(
        dataclasses.replace(s, function="lungseg.figures.curves:run_plots")
        if s.rule == "train"
        else s
        for s in stages.STAGES
    )
    monkeypatch.setattr(stages, "STAGES", moved)
    assert stages.code_hash("train") == hashes[1]["plots"]
    monkeypatch.undo()
    import_graph.cache_clear()
    modules_code_hash.cache_clear()
