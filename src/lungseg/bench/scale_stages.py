"""The scale benchmark's runs: each run's config and targets, the workflow copy, per-stage costs.

A run is the workflow copied into its own folder and run there by Snakemake on generated sample
data (:func:`run_workflow`). Its jobs' Snakemake benchmark files (``benchmarks/**.tsv``) and the
CPU seconds each job's log ends with (:data:`lungseg.core.rule.RESOURCES_LINE`) give the
per-stage costs (:func:`stage_costs`). A stage whose rule declares no ``benchmark:`` (none
now; ``detect`` and ``detection_scans`` had none before) is read from its logs alone: CPU
seconds and peak RSS, no wall seconds or bytes written (left empty).

With ``detection_epochs > 0`` a run goes on to ``predict_all``: detection volumes, both
configured detectors trained ``detection_epochs`` epochs (patch mode: two optimiser steps an
epoch), one U-Net trained ``max(epochs, 1)`` epochs, the predictor, one ``predict`` job per
validation series and the cascade. Only the stages whose work grows with the scans are measured
(:data:`DETECTION_STAGES`); the training, evaluation, summary and predictor jobs run for what
they feed, not to be measured (their cost is set by epochs, not by N).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lungseg.core.rule import logged_resources

REPO = Path(__file__).resolve().parents[3]
WORKFLOW_PATHS = ("Snakefile", "rules", "workflow_scripts", "envs", "report")
#: the data stages measured, in workflow order (``train`` only with ``epochs > 0``)
STAGES = (
    "sample_data",
    "index",
    "annotations",
    "convert",
    "nodules",
    "cohort",
    "crops",
    "split",
    "train",
)
#: the per-scan stages of detection and prediction, measured with ``detection_epochs > 0``
DETECTION_STAGES = ("detection_volume", "detection_scans", "detect", "predict", "cascade")
#: what each stage leaves on disk (its outputs' size: disk_mb); ``*`` entries are glob patterns
STAGE_OUTPUTS = {
    "sample_data": ["results/sample_data"],
    "index": ["results/index/series.csv", "results/index/files.csv"],
    "annotations": ["results/index/annotations.h5"],
    "convert": ["results/volumes"],
    "nodules": ["results/nodules.csv"],
    "cohort": ["results/cohort"],
    "crops": ["results/crops"],
    "split": ["results/split"],
    "train": ["results/models"],
    "detection_volume": ["results/detection_volumes/*/*.h5"],
    "detection_scans": ["results/detection_volumes/scans.csv"],
    "detect": ["results/detection/*/candidates.csv"],
    "predict": ["results/predictions"],
    "cascade": [
        "results/cascade*.csv",
        "results/radiomics_*.csv",
        "results/plots/cascade.png",
        "results/plots/radiomics_agreement.png",
    ],
}


def measured_stages(epochs: int, detection_epochs: int) -> tuple[str, ...]:
    """The stages a run's table holds: the data stages, ``train`` and the detection stages."""
    stages = tuple(s for s in STAGES if s != "train" or epochs > 0)
    return stages + (DETECTION_STAGES if detection_epochs > 0 else ())


def deep_update(base: dict, updates: dict) -> dict:
    """``base`` with ``updates`` merged in (mappings key by key, anything else replaced)."""
    merged = copy.deepcopy(base)
    for key, value in (updates or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml(path: str | Path) -> dict:
    """A YAML file (a path relative to the working directory, else to the repository)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute():
        path = REPO / path
    return yaml.safe_load(path.read_text()) or {}


def scale_config(
    patients: list[str], epochs: int, detection_epochs: int = 0, overrides: dict | None = None
) -> dict:
    """config.yaml of one run: the repository's with these patients and one U-Net; with
    ``detection_epochs`` every detector trains that many (short) epochs; ``overrides`` last."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["sample_data"]["patients"] = list(patients)
    config["training"]["epochs"] = max(epochs, 1)
    config["models"] = {"unet": {"arch": "unet"}}
    if detection_epochs > 0:
        detection = config["detection"]
        config["detectors"] = {
            name: {k: v for k, v in (d or {}).items() if k != "patches_per_epoch"}
            | {"epochs": detection_epochs}
            for name, d in config["detectors"].items()
        }
        batch = max(
            int(d.get("batch_size") or detection["batch_size"])
            for d in config["detectors"].values()
        )
        detection["patches_per_epoch"] = 2 * batch  # patch mode: two optimiser steps an epoch
        detection["bootstrap_draws"] = 100  # evaluate_detector runs, unmeasured
    params = Path(config["predict"]["radiomics_params"])  # read from the run's own folder
    if not params.is_absolute():
        config["predict"]["radiomics_params"] = str(REPO / params)
    config = deep_update(config, overrides or {})
    config["sample_data"]["patients"] = list(patients)
    return config


def targets(epochs: int, detection_epochs: int = 0) -> list[str]:
    files = ["results/split/split.csv", "results/crops/crops.csv", "results/cohort/scans.csv"]
    files += ["results/models/unet/metrics.csv"] if epochs > 0 else []
    return files + (["predict_all"] if detection_epochs > 0 else [])


def run_workflow(
    workdir: Path, config: dict, run_targets: list[str], cores: int, timeout_s: int
) -> float:
    """Copy the workflow into ``workdir`` and run it there; returns its wall seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_PATHS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, dirs_exist_ok=True)
        elif source.exists():
            shutil.copy2(source, workdir / name)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    command = [snakemake, *run_targets, "--directory", str(workdir), "--cores", str(cores)]
    command += ["--workflow-profile", "none", "--quiet", "progress"]
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        scans = len(config["sample_data"]["patients"])
        raise RuntimeError(f"the workflow on {scans} scans failed:\n{tail}")
    return time.perf_counter() - start


def disk_mb(workdir: Path, paths: list[str]) -> float:
    """Size in MB of the files at ``paths`` (folders: everything under them; globs allowed)."""
    total = 0
    for name in paths:
        found = sorted(workdir.glob(name)) if "*" in name else [workdir / name]
        for path in found:
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            total += sum(f.stat().st_size for f in files)
    return total / 1e6


def stage_disk_mb(workdir: Path, stage: str) -> float:
    """What ``stage`` left on disk: measured now, or recorded before ``results/`` was removed."""
    recorded = workdir / "benchmarks" / f"{stage}.disk_mb"
    if recorded.exists():
        return float(recorded.read_text())
    return disk_mb(workdir, STAGE_OUTPUTS[stage])


def job_cpu_seconds(workdir: Path, benchmark: Path, sampled: float) -> float:
    """A job's CPU seconds from the last line of its log (``logs/`` mirrors ``benchmarks/``).

    Snakemake's ``cpu_time`` is the last of its 0.5 s samples (up to half a second short for a
    job of a few seconds); ``sampled``, that figure, is the fallback for a log without the line."""
    relative = benchmark.relative_to(workdir / "benchmarks").with_suffix(".log")
    path = workdir / "logs" / relative
    found = logged_resources(path.read_text()) if path.exists() else None
    return found["cpu_s"] if found else sampled


def stage_logs(workdir: Path, stage: str) -> list[Path]:
    """The job logs of ``stage`` (``logs/<stage>.log`` and ``logs/<stage>/**/*.log``)."""
    logs = workdir / "logs"
    return sorted(logs.glob(f"{stage}.log")) + sorted((logs / stage).rglob("*.log"))


def logged_job_resources(workdir: Path, stage: str) -> dict[str, dict[str, float]]:
    """``{job log name: {cpu_s, max_rss_mb}}`` of the stage's logs that end with the line."""
    found = {}
    for path in stage_logs(workdir, stage):
        resources = logged_resources(path.read_text())
        if resources:
            found[path.stem] = resources
    return found


def _benchmarked(workdir: Path, stage: str) -> dict | None:
    files = sorted((workdir / "benchmarks").glob(f"{stage}.tsv")) + sorted(
        (workdir / "benchmarks" / stage).rglob("*.tsv")
    )
    if not files:
        return None
    tables = [pd.read_csv(f, sep="\t") for f in files]
    cpu = [
        job_cpu_seconds(workdir, f, float(t["cpu_time"].iloc[0]))
        for f, t in zip(files, tables, strict=True)
    ]
    jobs = pd.concat(tables, ignore_index=True)
    return {
        "jobs": len(files),
        "cpu_s": float(sum(cpu)),
        "wall_s": float(jobs["s"].sum()),
        "max_rss_mb": float(jobs["max_rss"].max()),
        "written_mb": float(pd.to_numeric(jobs["io_out"], errors="coerce").sum()),
    }


def _logged_only(workdir: Path, stage: str) -> dict | None:
    jobs = logged_job_resources(workdir, stage)
    if not jobs:
        return None
    return {
        "jobs": len(jobs),
        "cpu_s": float(sum(j["cpu_s"] for j in jobs.values())),
        "wall_s": np.nan,  # no benchmark: file, no wall seconds
        "max_rss_mb": float(max(j["max_rss_mb"] for j in jobs.values())),
        "written_mb": np.nan,
    }


def stage_costs(workdir: Path, stages: tuple[str, ...] = STAGES) -> pd.DataFrame:
    """Per stage of a finished run: jobs, CPU and wall seconds, largest job RSS, MB written."""
    rows = []
    for stage in stages:
        found = _benchmarked(workdir, stage) or _logged_only(workdir, stage)
        if found is None:
            continue
        rows.append({"stage": stage, **found, "disk_mb": stage_disk_mb(workdir, stage)})
    return pd.DataFrame(rows)
