"""Reruns of only what changed, checked with `snakemake -n` / `--summary` on one finished run.

One tiny local run (tests/workflow_helpers.py: 2 sample scans, 2 models, 1 epoch) is built once in
a temporary copy of the repository; each test then asks Snakemake what a change would rerun.
Config changes go through --configfile (merged over config.yaml, the run is left as it was);
script edits are undone in `finally` (text and mtime: Snakemake's code trigger for `script:`
rules is the script's mtime). Default rerun triggers (mtime, params, input, code,
software-env) stay on.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, finished_local_run, snakemake

pytestmark = pytest.mark.slow

JOB_HEADER = re.compile(r"^(?:localrule|rule|checkpoint) (\w+):$")
# Rules downstream of one model's training (per model) and of all models.
MODEL_DOWNSTREAM = {"train", "evaluate", "plots", "plot_examples"}
# The prediction stage uses the best model and detector: it follows any change of either.
PREDICTION_RULES = {"predictor", "predict", "cascade", "plot_cascade"}
SUMMARY_RULES = {"evaluate_summary", "plot_comparison", "all"} | PREDICTION_RULES
# Rules downstream of one detector's training (per detector) and of all detectors.
DETECTOR_DOWNSTREAM = {"train_detector", "detect", "evaluate_detector", "plot_detections"}
# A second stage (mode rescore): its rules, and stage 1's run over the training scans.
SECOND_STAGE = {"detect_training_scans", "rescorer_samples", "train_rescorer", "rescore"}
DETECTION_SUMMARY_RULES = {"detection_summary", "plot_froc", "all"} | PREDICTION_RULES


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_lidc) -> Path:
    return finished_local_run(tmp_path_factory, sample_lidc.lidc_root)


def planned_jobs(
    workdir: Path, *args: str, env: dict | None = None
) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job `snakemake -n` would run."""
    out = snakemake(workdir, "-n", "--cores", "1", *args, timeout=180, env=env).stdout
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in out.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            jobs.append((header.group(1), {}))
        elif jobs and line.strip().startswith("wildcards:"):
            pairs = line.split(":", 1)[1].split(",")
            jobs[-1][1].update(pair.strip().split("=", 1) for pair in pairs)
    return jobs


def with_config(workdir: Path, name: str, updates: dict) -> tuple[str, str]:
    """--configfile arguments for a config change merged over the run's config.yaml."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(updates))
    return "--configfile", str(path)


def rules_of(jobs) -> set[str]:
    return {rule for rule, _ in jobs}


def test_touching_nothing_schedules_nothing(run):
    assert planned_jobs(run) == []
    summary = snakemake(run, "--summary", "--cores", "1", timeout=180).stdout
    rows = [line.split("\t") for line in summary.splitlines() if line.startswith("results/")]
    assert rows, summary[-2000:]
    plans = {row[0]: row[-1] for row in rows}
    assert set(plans.values()) == {"no update"}, plans


def test_changing_one_model_reruns_only_that_model_and_its_plots(run):
    models = list(yaml.safe_load((run / "config.yaml").read_text())["models"])
    changed = models[0]
    jobs = planned_jobs(run, *with_config(run, "one_model", {"models": {changed: {"lr": 0.01}}}))
    assert ("train", {"model": changed}) in jobs
    assert rules_of(jobs) <= MODEL_DOWNSTREAM | SUMMARY_RULES
    for rule, wildcards in jobs:
        if rule in MODEL_DOWNSTREAM:
            assert wildcards == {"model": changed}, (rule, wildcards)
    assert {"plots", "evaluate"} <= rules_of(jobs)


def test_changing_one_detector_reruns_only_that_detector(run):
    """unet_patch's chain and the second stage over its candidates; iunet_whole untouched."""
    update = {"detectors": {"unet_patch": {"lr": 0.02}}}
    jobs = planned_jobs(run, *with_config(run, "one_detector", update))
    assert ("train_detector", {"detector": "unet_patch"}) in jobs
    assert rules_of(jobs) <= DETECTOR_DOWNSTREAM | SECOND_STAGE | DETECTION_SUMMARY_RULES, jobs
    assert rules_of(jobs) >= DETECTOR_DOWNSTREAM | SECOND_STAGE
    for rule, wildcards in jobs:
        if rule in DETECTOR_DOWNSTREAM | SECOND_STAGE:
            assert wildcards["detector"] in {"unet_patch", "unet_patch_fpr"}, (rule, wildcards)
    assert ("train_rescorer", {"detector": "unet_patch_fpr"}) in jobs


def test_changing_a_second_stage_reruns_only_it(run):
    """A rescore setting retrains the second stage, never its stage-1 detector."""
    update = {"detectors": {"unet_patch_fpr": {"rescore_copies": 1}}}
    jobs = planned_jobs(run, *with_config(run, "second_stage", update))
    own = {"rescorer_samples", "train_rescorer", "rescore", "evaluate_detector", "plot_detections"}
    assert rules_of(jobs) <= own | DETECTION_SUMMARY_RULES, jobs
    assert rules_of(jobs) >= own
    for rule, wildcards in jobs:
        if rule in own:
            assert wildcards == {"detector": "unet_patch_fpr"}, (rule, wildcards)


def test_changing_crop_size_reruns_crops_and_training_but_no_conversion(run):
    config = yaml.safe_load((run / "config.yaml").read_text())
    size = config["crops"]["size"]
    bigger = [s * 2 for s in size] if isinstance(size, list) else size * 2
    jobs = planned_jobs(run, *with_config(run, "crop_size", {"crops": {"size": bigger}}))
    rules = rules_of(jobs)
    assert {"crops", "train", "plots"} <= rules
    assert rules.isdisjoint(
        {"index", "annotations", "convert", "nodules", "cohort", "sample_data"}
    ), rules
    trained = {w["model"] for rule, w in jobs if rule == "train"}
    assert trained == set(config["models"])
    assert "split" not in rules  # the split reads only results/nodules.csv


def test_changing_consensus_level_reruns_conversion(run):
    series = (run / "results/index/series.csv").read_text().splitlines()[1:]
    converted = [line for line in series if ",ok," in line or ",excluded," in line]
    jobs = planned_jobs(run, *with_config(run, "consensus", {"ingest": {"consensus_level": 0.75}}))
    rules = rules_of(jobs)
    assert sum(rule == "convert" for rule, _ in jobs) == len(converted)
    assert "annotations" in rules  # the consensus masks are made there, once
    assert "index" not in rules and "sample_data" not in rules, rules
    assert "nodules" in rules


@pytest.mark.parametrize(
    ("script", "rules_using_it"),
    # results/evaluation.csv picks the crop model of the prediction stage: that follows
    [("plots.py", {"plots"}), ("evaluate_summary.py", {"evaluate_summary"} | PREDICTION_RULES)],
)
def test_editing_a_workflow_script_reruns_only_its_rules(run, script, rules_using_it):
    path = run / "workflow_scripts" / script
    original, stat = path.read_text(), path.stat()
    try:
        path.write_text(original + "\n# edited by test_reruns\n")
        jobs = planned_jobs(run)
    finally:  # Snakemake compares a script's mtime, not its text: restore both
        path.write_text(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert rules_of(jobs) - {"all"} == rules_using_it
    assert planned_jobs(run) == []


CONVERSION = {"sample_data", "index", "annotations", "convert", "nodules", "cohort"}
TRAINING = CONVERSION | {"crops", "split", "train", "evaluate"}


@pytest.mark.parametrize(
    ("module", "reruns", "spared"),
    [
        ("dataset/crops.py", {"crops", "train", "evaluate", "plots"}, CONVERSION),
        (
            "figures/curves.py",
            {"plots", "plot_examples", "plot_comparison"},
            CONVERSION | {"train"},
        ),
        # the index checkpoint reruns: its convert jobs are planned once it has run
        ("ingest/convert.py", {"index", "nodules", "crops", "train"}, {"sample_data"}),
        # training picks best.pt by this Dice; the detectors too
        ("inference/metrics.py", {"train", "train_detector", "evaluate"}, CONVERSION),
        # the evaluation's other metrics: evaluate reruns, no training does
        ("evaluation/metrics.py", {"evaluate"}, CONVERSION | {"train", "train_detector"}),
        # every job writes through it (this run reads a DICOM folder: no sample_data jobs)
        ("core/atomic.py", {"index", "crops", "split", "train", "detect"}, set()),
    ],
)
def test_editing_the_package_reruns_its_stage_and_what_depends_on_it(
    run, tmp_path, module, reruns, spared
):
    """A copy of the package first on PYTHONPATH (the run's own is the repository's): unedited
    it schedules nothing (the hash is of the sources, not their mtimes); edited, its stage."""
    package = tmp_path / "src" / "lungseg"
    shutil.copytree(REPO / "src" / "lungseg", package, ignore=shutil.ignore_patterns("data"))
    # the package data stays where the run found it (the radiomics parameters are an input)
    (package / "data").symlink_to(REPO / "src" / "lungseg" / "data")
    # the copy finds the schema (and its section files, schema/) beside the repository's
    # package, not beside itself
    schema = REPO / "src" / "lungseg" / "data" / "config.schema.yaml"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src"), "LUNGSEG_SCHEMA": str(schema)}
    assert planned_jobs(run, env=env) == []
    with open(tmp_path / "src" / "lungseg" / module, "a") as source:
        source.write("\n# edited by test_reruns\n")
    rules = rules_of(planned_jobs(run, env=env))
    assert reruns <= rules, rules
    assert rules.isdisjoint(spared), rules
