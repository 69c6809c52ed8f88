"""The configuration contract: schema completeness, commented keys, and typos failing fast."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from workflow_helpers import copy_workflow, snakemake  # noqa: E402

from lungseg.core.settings import load_schema

REPO = Path(__file__).resolve().parents[1]
# the schema with its section files (src/lungseg/data/schema/) inlined
SCHEMA = load_schema()
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def _object_schemas(node: dict, path: str = "config"):
    """Yield (path, schema) for every object-typed schema node."""
    if node.get("type") == "object":
        yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _object_schemas(sub, f"{path}.{key}")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _object_schemas(extra, f"{path}.*")
    items = node.get("items")
    if isinstance(items, dict):
        yield from _object_schemas(items, f"{path}[]")


def _properties(node: dict, path: str = "config"):
    for key, sub in node.get("properties", {}).items():
        yield f"{path}.{key}", sub
        yield from _properties(sub, f"{path}.{key}")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _properties(extra, f"{path}.*")


def test_default_config_is_valid():
    jsonschema.validate(CONFIG, SCHEMA)


@pytest.mark.parametrize(("path", "node"), list(_object_schemas(SCHEMA)))
def test_every_object_rejects_unknown_keys(path, node):
    # Open mappings (e.g. model variants by name) constrain their values with a schema instead.
    assert node.get("additionalProperties") is not True, path
    assert "additionalProperties" in node, f"{path} lacks additionalProperties"


@pytest.mark.parametrize(("path", "node"), list(_properties(SCHEMA)))
def test_every_key_has_description_and_default(path, node):
    assert node.get("description"), f"{path} has no description"
    assert "default" in node, f"{path} has no default"


def test_every_config_key_is_commented():
    """Each key line in config.yaml has a comment on the line before or at its end."""
    lines = (REPO / "config.yaml").read_text().splitlines()
    key_line = re.compile(r"^\s*[A-Za-z_][\w-]*:")
    missing = []
    for i, line in enumerate(lines):
        if not key_line.match(line):
            continue
        previous = lines[i - 1].strip() if i else ""
        if "#" not in line and not previous.startswith("#"):
            missing.append(line.strip())
    assert not missing, f"config.yaml keys without a comment: {missing}"


def _dry_run(workdir: Path, config_text: str, *targets: str) -> subprocess.CompletedProcess[str]:
    copy_workflow(workdir, config_text=config_text)
    snakemake = Path(sys.executable).with_name("snakemake")
    return subprocess.run(
        [str(snakemake), "-n", "--cores", "1", *targets],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("good", "typo", "where"),
    [
        ("lidc_root:", "lidc_rot:", "config: unknown key(s) 'lidc_rot'"),
        ("  seed:", "  sed:", "sample_data: unknown key(s) 'sed'"),
        ("    deep_supervision: true  # heads", "    deep_supervison: true  # heads",
         "models.iunet_ms: unknown key(s) 'deep_supervison'"),
    ],
)  # fmt: skip
def test_misspelled_key_fails_before_any_job_and_names_the_key(tmp_path, good, typo, where):
    text = (REPO / "config.yaml").read_text()
    assert good in text
    result = _dry_run(tmp_path, text.replace(good, typo, 1))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # the key first, in one line right after the error's name (not after the schema fragment)
    lines = output.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("SettingsError"))
    assert lines[first + 1].startswith(where), output[-2000:]


#: Settings that each stage's package code rejects, and the message naming the key(s).
CROSS_KEY_CASES = [
    ({"crops": {"size": [30, 30, 30]}}, "crops.size [30, 30, 30] is not divisible by 2**(levels"),
    ({"training": {"hu_min": 500}}, "training.hu_min (500) must be below training.hu_max (400)"),
    ({"split": {"folds": 3, "val_fold": 3}}, "split.val_fold = 3 must be in 0 .. split.folds - 1"),
    ({"evaluation": {"size_buckets_mm": [10, 6]}}, "evaluation.size_buckets_mm must increase"),
    (
        {"crops": {"size": [36, 36, 36]}, "models": {"u": {"arch": "unet", "levels": 4}}},
        "of models.u (levels 4)",
    ),
    (
        {"detectors": {"unet_patch": {"patch_size": [32, 48, 128]}}},
        "detectors.unet_patch.patch_size [32, 48, 128] is larger than the detection volume",
    ),
    ({"detection": {"volumes": {"spacing": [4.0, 0.0, 4.0]}}}, "detection.volumes.spacing"),
    (
        {"detectors": {"unet_patch_fpr": {"stage1": "unet_pach"}}},
        "detectors.unet_patch_fpr.stage1: 'unet_pach' is not a detector",
    ),
    ({"detection": {"volumes": {"shape": [90, 80, 96]}}}, "detection.volumes.shape [90, 80, 96]"),
    # the prediction stage's and the benchmark's settings too, before any training
    ({"predict": {"detector_name": "unet_pach"}}, "predict.detector_name: 'unet_pach' is not in"),
    ({"predict": {"segmenter_name": "unte"}}, "predict.segmenter_name: 'unte' is not in models"),
    ({"predict": {"radiomics_params": "missing.yaml"}}, "predict.radiomics_params: missing.yaml"),
    ({"benchmark": {"sizes": [[30, 30, 30]]}}, "benchmark.sizes: [[30, 30, 30]] not divisible"),
]


@pytest.mark.parametrize(("updates", "message"), CROSS_KEY_CASES)
def test_cross_key_settings_fail_at_parse_time_and_delete_nothing(tmp_path, updates, message):
    """Checked once after validation, before Snakemake plans a job or removes an output."""
    workdir = copy_workflow(tmp_path / "work", updates)
    earlier = workdir / "results" / "models" / "unet" / "metrics.csv"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("epoch\n1\n")
    result = snakemake(workdir, "--cores", "1", check=False)
    assert result.returncode != 0
    assert message in result.stdout, result.stdout[-2000:]
    assert earlier.read_text() == "epoch\n1\n"


#: Named targets a user types (`snakemake TARGET`), and a rule each must schedule on a fresh run.
STAGE_TARGETS = {
    "download": "download",
    "sample_data_all": "sample_data",
    "volumes": "index",  # convert jobs appear once the index checkpoint has run
    "crops_all": "crops",
    "train_all": "train",
    "plots_all": "plot_comparison",
    "benchmark": "benchmark",
    "detection_all": "index",  # detection volumes appear once the index checkpoint has run
    "predict_all": "index",  # as do the predict jobs (behind the split checkpoint too)
    "all": "evaluate_summary",
}


@pytest.mark.slow  # a Snakemake DAG per target (~4 s each)
@pytest.mark.parametrize(("target", "scheduled_rule"), STAGE_TARGETS.items())
def test_stage_targets_schedule_their_stage_and_are_documented(tmp_path, target, scheduled_rule):
    result = _dry_run(tmp_path, (REPO / "config.yaml").read_text(), target)
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    assert re.search(rf"^{scheduled_rule}\s+\d+", result.stdout, flags=re.MULTILINE), result.stdout
    assert f"`{target}`" in (REPO / "README.md").read_text(), f"README does not name `{target}`"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.yaml")))
def test_every_shipped_config_file_passes_the_checks_over_config_yaml(name):
    """Each config/*.yaml, merged over config.yaml as --configfile merges it, is a valid config."""
    from snakemake.utils import update_config

    from lungseg.config_checks import check_config

    merged = copy.deepcopy(CONFIG)
    update_config(merged, yaml.safe_load((REPO / "config" / name).read_text()))
    check_config(merged)
    jsonschema.validate(merged, SCHEMA)
