"""How the workflow's cost grows with the number of scans: the same DAG on 10, 30, 100 sample scans.

For each number of scans ``N`` (:func:`scale_patients`: ``N`` patients spread evenly over the
annotation database's 1010 patients, so that their scans are as long as the collection's) the
workflow is copied into ``workdir/N<n>`` and run there on generated sample data, up to the
split (and, with ``epochs > 0``, one U-Net trained for that many epochs). Each job's Snakemake
benchmark file (``benchmarks/**.tsv``: wall seconds ``s``, ``max_rss``, ``io_out``) and the
CPU seconds its own log ends with (``lungseg.core.rule.RESOURCES_LINE``; Snakemake's sampled
``cpu_time`` misses up to 0.5 s a job) give, per stage: jobs, CPU seconds, wall seconds, the
largest peak RSS of a job and the MB written. The growth exponent ``k`` (cost ~ N^k) of each
stage is fitted between the two largest runs, and the projection to the 1018 scans of
LIDC-IDRI follows that power law.

The runs' scans differ in length, so a per-scan stage can grow faster than N only because its
larger run has longer scans. ``slices`` (the run's CT slices) separates the two: ``k_slices`` is
how the slices grew, ``k_<cost>_vs_slices`` the exponent of cost against slices (1 for a stage
whose work per slice is constant), and ``<cost>_at_1018_by_slices`` projects to the collection's
own number of slices.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lungseg.core.atomic import atomic_path, write_csv_atomic
from lungseg.core.rule import logged_resources

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
WORKFLOW_PATHS = ("Snakefile", "rules", "workflow_scripts", "envs", "report")
#: the stages measured, in workflow order (rules with a benchmark file)
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
#: scans of the whole collection (the projection's target)
LIDC_SCANS = 1018
SCALE_COLUMNS = [
    "scans",
    "stage",
    "jobs",
    "slices",
    "cpu_s",
    "wall_s",
    "max_rss_mb",
    "written_mb",
    "disk_mb",
    "run_wall_s",
]
#: costs that follow the data's size (per-slice exponents and projection by slices)
PER_SLICE_METRICS = ("cpu_s", "disk_mb")
METRICS = ("cpu_s", "wall_s", "max_rss_mb", "written_mb", "disk_mb")
#: what each stage leaves on disk (its outputs' size: disk_mb)
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
}


def scale_patients(n: int) -> list[str]:
    """``n`` patient IDs spread evenly over the database's patients with an annotated CT scan."""
    from lungseg.lidc.adapter import all_scans

    patients = sorted({scan.patient_id for scan in all_scans() if scan.n_annotations})
    if n > len(patients):
        raise ValueError(f"{n} scans asked for; the database has {len(patients)} patients")
    picks = np.linspace(0, len(patients) - 1, n).round().astype(int)
    return [patients[i] for i in picks]


def scan_slices(patients: list[str]) -> int:
    """CT slices of the patients' annotated scans (what sample_data writes for them)."""
    from lungseg.lidc.adapter import scans_for_patient

    return sum(scan.n_slices for patient in patients for scan in scans_for_patient(patient))


def collection_slices() -> int:
    """CT slices of every scan in the annotation database (the whole collection)."""
    from lungseg.lidc.adapter import all_scans

    return sum(scan.n_slices for scan in all_scans())


def _exponent(a: float, b: float, x_a: float, x_b: float) -> float:
    """k of b / a = (x_b / x_a)^k; NaN when a value is not positive."""
    if a > 0 and b > 0 and x_a > 0 and x_b > 0 and x_a != x_b:
        return math.log(b / a) / math.log(x_b / x_a)
    return math.nan


def scale_config(patients: list[str], epochs: int) -> dict:
    """config.yaml of one run: the repository's, with these patients and one model."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["sample_data"]["patients"] = list(patients)
    config["training"]["epochs"] = max(epochs, 1)
    config["models"] = {"unet": {"arch": "unet"}}
    return config


def targets(epochs: int) -> list[str]:
    files = ["results/split/split.csv", "results/crops/crops.csv", "results/cohort/scans.csv"]
    return files + (["results/models/unet/metrics.csv"] if epochs > 0 else [])


def run_workflow(workdir: Path, patients: list[str], epochs: int, cores: int, timeout_s: int):
    """Copy the workflow into ``workdir`` and run it there; returns its wall seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_PATHS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, dirs_exist_ok=True)
        elif source.exists():
            shutil.copy2(source, workdir / name)
    config = scale_config(patients, epochs)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    command = [snakemake, *targets(epochs), "--directory", str(workdir), "--cores", str(cores)]
    command += ["--workflow-profile", "none", "--quiet", "progress"]
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise RuntimeError(f"the workflow on {len(patients)} scans failed:\n{tail}")
    return time.perf_counter() - start


def disk_mb(workdir: Path, paths: list[str]) -> float:
    """Size in MB of the files at ``paths`` (folders: everything under them)."""
    total = 0
    for name in paths:
        path = workdir / name
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


def stage_costs(workdir: Path) -> pd.DataFrame:
    """Per stage of a finished run: jobs, CPU and wall seconds, largest job RSS, MB written."""
    rows = []
    for stage in STAGES:
        files = sorted((workdir / "benchmarks").glob(f"{stage}.tsv")) + sorted(
            (workdir / "benchmarks" / stage).rglob("*.tsv")
        )
        if not files:
            continue
        tables = [pd.read_csv(f, sep="\t") for f in files]
        cpu = [
            job_cpu_seconds(workdir, f, float(t["cpu_time"].iloc[0]))
            for f, t in zip(files, tables, strict=True)
        ]
        jobs = pd.concat(tables, ignore_index=True)
        rows.append(
            {
                "stage": stage,
                "jobs": len(files),
                "cpu_s": float(sum(cpu)),
                "wall_s": float(jobs["s"].sum()),
                "max_rss_mb": float(jobs["max_rss"].max()),
                "written_mb": float(pd.to_numeric(jobs["io_out"], errors="coerce").sum()),
                "disk_mb": stage_disk_mb(workdir, stage),
            }
        )
    return pd.DataFrame(rows)


def growth(frame: pd.DataFrame, total_slices: float | None = None) -> pd.DataFrame:
    """Per stage: exponent k of cost ~ N^k between the two largest runs, and the 1018 projection.

    With a ``slices`` column also ``k_slices``, ``k_<metric>_vs_slices`` and, given the
    collection's ``total_slices``, ``<metric>_at_1018_by_slices`` (module docstring).
    """
    sizes = sorted(frame["scans"].unique())
    if len(sizes) < 2:
        raise ValueError("the growth fit needs two numbers of scans")
    small, large = sizes[-2], sizes[-1]
    rows = []
    for stage, group in frame.groupby("stage", sort=False):
        by_n = group.set_index("scans")
        if small not in by_n.index or large not in by_n.index:
            continue
        row = {"stage": stage, "fit_from": small, "fit_to": large}
        for metric in (*METRICS, "jobs"):
            a, b = by_n.loc[small, metric], by_n.loc[large, metric]
            k = _exponent(a, b, small, large)
            row[f"k_{metric}"] = round(k, 3)
            scale = (LIDC_SCANS / large) ** k if not math.isnan(k) else math.nan
            row[f"{metric}_at_{LIDC_SCANS}"] = round(float(b * scale), 1)
        if "slices" in by_n:
            s_small, s_large = by_n.loc[small, "slices"], by_n.loc[large, "slices"]
            row["k_slices"] = round(_exponent(s_small, s_large, small, large), 3)
            for metric in PER_SLICE_METRICS:
                a, b = by_n.loc[small, metric], by_n.loc[large, metric]
                k = _exponent(a, b, s_small, s_large)
                row[f"k_{metric}_vs_slices"] = round(k, 3)
                if total_slices:
                    at = b * (total_slices / s_large) ** k if not math.isnan(k) else math.nan
                    row[f"{metric}_at_{LIDC_SCANS}_by_slices"] = round(float(at), 1)
        rows.append(row)
    return pd.DataFrame(rows)


def scale_figure(frame: pd.DataFrame, fits: pd.DataFrame):
    """CPU seconds, peak RSS and disk per stage vs number of scans (log-log); exponents shown."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.5), dpi=120, layout="constrained")
    ax_cpu, ax_rss, ax_disk = figure.subplots(1, 3)
    k = fits.set_index("stage")
    for stage, group in frame.groupby("stage", sort=False):
        group = group.sort_values("scans")
        # disk_mb (the outputs' size), not io_out: Snakemake's io_out is 0 for some small jobs
        for axis, metric in ((ax_cpu, "cpu_s"), (ax_rss, "max_rss_mb"), (ax_disk, "disk_mb")):
            exponent = k.loc[stage, f"k_{metric}"] if stage in k.index else math.nan
            axis.plot(group["scans"], group[metric], "o-", label=f"{stage} (k={exponent:.2f})")
    scans = sorted(frame["scans"].unique())
    titles = (
        (ax_cpu, "CPU seconds per stage (all its jobs)", "CPU seconds"),
        (ax_rss, "largest peak RSS of one job", "MB"),
        (ax_disk, "MB of the stage's outputs on disk", "MB"),
    )
    for axis, title, ylabel in titles:
        axis.set(xscale="log", yscale="log", xlabel="sample scans", ylabel=ylabel, title=title)
        axis.set_xticks(scans, [str(s) for s in scans])
        axis.minorticks_off()
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return figure


def run_scale(
    *,
    table: str = "results/benchmarks/scale.csv",
    projection: str = "results/benchmarks/scale_projection.csv",
    plot: str = "results/plots/scale.png",
    workdir: str = "results/scale",
    scans: list[int] = (10, 30, 100),
    epochs: int = 0,
    threads: int = 2,
    timeout_s: int = 7200,
) -> pd.DataFrame:
    """Run the workflow on each number of sample ``scans``; per-stage costs, growth, projection."""
    frames = []
    for n in sorted(int(s) for s in scans or (10, 30, 100)):
        run_dir = Path(workdir) / f"N{n}"
        patients = scale_patients(n)
        done = run_dir / "run_wall_s.txt"  # a finished run is reused (delete it to rerun)
        if done.exists():
            wall = float(done.read_text())
            log.info("%d scans: reusing the finished run in %s", n, run_dir)
        else:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            log.info("workflow on %d sample scans in %s", n, run_dir)
            wall = run_workflow(run_dir, patients, epochs, threads, timeout_s)
        costs = stage_costs(run_dir).assign(
            scans=n, slices=scan_slices(patients), run_wall_s=round(wall, 1)
        )
        log.info("%d scans: %.0f s wall\n%s", n, wall, costs.to_string(index=False))
        frames.append(costs)
        if not done.exists():
            for stage in costs["stage"]:  # what each stage left on disk, before it goes
                (run_dir / "benchmarks" / f"{stage}.disk_mb").write_text(
                    str(disk_mb(run_dir, STAGE_OUTPUTS[stage]))
                )
            shutil.rmtree(run_dir / "results", ignore_errors=True)  # keep benchmarks/, logs/
            done.write_text(f"{wall:.1f}")
    frame = pd.concat(frames, ignore_index=True)[SCALE_COLUMNS].round(2)
    fits = growth(frame, collection_slices())
    write_csv_atomic(Path(table), frame)
    write_csv_atomic(Path(projection), fits)
    figure = scale_figure(frame, fits)
    with atomic_path(Path(plot)) as tmp:
        figure.savefig(tmp, format="png", dpi=figure.dpi)
    return frame
