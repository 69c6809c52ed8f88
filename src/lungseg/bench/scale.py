"""How the workflow's cost grows with the number of scans: the same DAG on 10, 30, 100 sample scans.

For each number of scans ``N`` (:func:`scale_patients`: ``N`` patients spread evenly over the
annotation database's 1010 patients, so that their scans are as long as the collection's) the
workflow is copied into ``workdir/N<n>`` and run there on generated sample data, up to the
split (and, with ``epochs > 0``, one U-Net trained for that many epochs; with
``detection_epochs > 0`` on to the detection volumes, ``detect``, ``predict`` and the cascade:
:mod:`lungseg.bench.scale_stages`). Each job's Snakemake
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
own number of slices. With the detection stages, :mod:`lungseg.bench.scale_lidc` turns the
projection into CPU hours, disk and GPU hours per stage for config/lidc.yaml (``lidc_table``).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.bench.scale_stages import (
    DETECTION_STAGES,
    STAGE_OUTPUTS,
    STAGES,
    disk_mb,
    measured_stages,
    read_yaml,
    run_workflow,
    scale_config,
    stage_costs,
    targets,
)
from lungseg.core.atomic import atomic_path, write_csv_atomic

__all__ = ["STAGES", "growth", "run_scale", "scale_figure", "scale_patients", "stage_costs"]

log = logging.getLogger(__name__)

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
    from matplotlib import colormaps

    k = fits.set_index("stage")
    colours = colormaps["tab20"].colors
    for i, (stage, group) in enumerate(frame.groupby("stage", sort=False)):
        group = group.sort_values("scans")
        style = {"color": colours[i % len(colours)], "marker": "o"}
        style["linestyle"] = "--" if stage in DETECTION_STAGES else "-"
        # disk_mb (the outputs' size), not io_out: Snakemake's io_out is 0 for some small jobs
        for axis, metric in ((ax_cpu, "cpu_s"), (ax_rss, "max_rss_mb"), (ax_disk, "disk_mb")):
            exponent = k.loc[stage, f"k_{metric}"] if stage in k.index else math.nan
            axis.plot(group["scans"], group[metric], label=f"{stage} (k={exponent:.2f})", **style)
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
    detection_epochs: int = 0,
    overrides: str | None = None,
    lidc_config: str = "config/lidc.yaml",
    lidc_table: str = "results/benchmarks/scale_lidc.csv",
    threads: int = 2,
    timeout_s: int = 7200,
) -> pd.DataFrame:
    """Run the workflow on each number of sample ``scans``; per-stage costs, growth, projection.

    ``detection_epochs > 0`` adds detection volumes, detect, predict and cascade (detectors
    trained that many short epochs) and the projection for ``lidc_config`` (``lidc_table``, and
    its measurements as ``<lidc_table>_networks.csv`` and ``_volumes.csv``);
    ``overrides``: a YAML merged over each run's config.yaml last."""
    from lungseg.bench import scale_lidc

    frames, run_dirs, config = [], {}, {}
    extra = read_yaml(overrides) if overrides else {}
    stages = measured_stages(epochs, detection_epochs)
    sizes = sorted(int(s) for s in scans or (10, 30, 100))
    volumes = None
    for n in sizes:
        run_dir = run_dirs[n] = Path(workdir) / f"N{n}"
        patients = scale_patients(n)
        config = scale_config(patients, epochs, detection_epochs, extra)
        done = run_dir / "run_wall_s.txt"  # a finished run is reused (delete it to rerun)
        if done.exists():
            wall = float(done.read_text())
            log.info("%d scans: reusing the finished run in %s", n, run_dir)
        else:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            log.info("workflow on %d sample scans in %s", n, run_dir)
            wall = run_workflow(
                run_dir, config, targets(epochs, detection_epochs), threads, timeout_s
            )
        costs = stage_costs(run_dir, stages).assign(
            scans=n, slices=scan_slices(patients), run_wall_s=round(wall, 1)
        )
        log.info("%d scans: %.0f s wall\n%s", n, wall, costs.to_string(index=False))
        frames.append(costs)
        measured = run_dir / "benchmarks" / "lidc_detection_volume.csv"
        if detection_epochs > 0 and n == sizes[-1] and not measured.exists():
            lidc = scale_lidc.lidc_config(lidc_config)
            log.info("%d scans: detection volumes with %s's settings", n, lidc_config)
            write_csv_atomic(measured, scale_lidc.detection_volume_costs(run_dir, lidc, config))
        if measured.exists():
            volumes = pd.read_csv(measured)
        if not done.exists():
            for stage in costs["stage"]:  # what each stage left on disk, before it goes
                (run_dir / "benchmarks" / f"{stage}.disk_mb").write_text(
                    str(disk_mb(run_dir, STAGE_OUTPUTS[stage]))
                )
            shutil.rmtree(run_dir / "results", ignore_errors=True)  # keep benchmarks/, logs/
            shutil.rmtree(run_dir / "lidc_detection_volume", ignore_errors=True)
            done.write_text(f"{wall:.1f}")
    frame = pd.concat(frames, ignore_index=True)[SCALE_COLUMNS].round(2)
    fits = growth(frame, collection_slices())
    write_csv_atomic(Path(table), frame)
    write_csv_atomic(Path(projection), fits)
    figure = scale_figure(frame, fits)
    with atomic_path(Path(plot)) as tmp:
        figure.savefig(tmp, format="png", dpi=figure.dpi)
    if detection_epochs > 0:
        lidc = scale_lidc.lidc_config(lidc_config)
        networks = Path(workdir) / "lidc_networks.csv"  # measured once, then reused
        if not networks.exists():
            write_csv_atomic(networks, scale_lidc.network_costs(config, lidc))
        detectors = scale_lidc.detector_scan_seconds(run_dirs)
        projected = scale_lidc.lidc_projection(
            frame,
            fits,
            config,
            lidc,
            volumes=volumes,
            detectors=detectors,
            networks=pd.read_csv(networks),
        )
        log.info("projection for %s:\n%s", lidc_config, projected.to_string(index=False))
        write_csv_atomic(Path(lidc_table), projected)
        measured = {"networks": pd.read_csv(networks), "volumes": volumes}
        for name, found in measured.items():  # the measurements, next to the table
            if found is not None:
                stem = Path(lidc_table).stem
                write_csv_atomic(Path(lidc_table).with_name(f"{stem}_{name}.csv"), found)
    return frame
