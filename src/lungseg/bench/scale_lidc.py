"""The scale benchmark's projection to the 1018 scans with config/lidc.yaml: CPU h, disk, GPU h.

The sample runs use config.yaml's settings; config/lidc.yaml (merged over it, as Snakemake's
``--configfile``) changes what a scan costs in some stages. The starting figure of a stage:

- stages of one job per scan (:data:`PER_SCAN`: ``convert``, ``detection_volume``,
  ``predict``, which runs on the validation scans): linear in the scans, the largest run's
  cost x 1018 / its scans (jobs alike: the validation share is the largest run's);
- the other stages: the scale projection (``growth``: ``<cost>_at_1018_by_slices``, else the
  power law in N).

Then, per stage:

- stages config/lidc.yaml does not change (index .. split but crops, detection_scans, cascade):
  that figure.
- ``crops``: disk and CPU times the crop voxels' ratio (64^3 / 32^3 = 8); the CPU figure is an
  upper bound (reading the volumes does not grow with the crops).
- ``detection_volume``: measured, not scaled: :func:`detection_volume_costs` makes the detection
  volumes of a few of the largest run's scans with both settings in one process
  (``time.process_time``, file sizes). CPU: that figure + jobs x the mean extra CPU seconds a
  scan; disk: that figure x the ratio of the files' sizes.
- ``detect``: per detector, the CPU seconds one more validation scan costs in the runs
  (:func:`detector_scan_seconds`: difference of its ``detect`` job's CPU seconds between the two
  largest runs over the difference in validation scans), times the canvas voxels' ratio, times
  the ratio of the lidc.yaml network's forward CPU seconds to the sample's on the same input
  (:func:`network_costs`, one thread), times (patch mode) the ratio of the sliding windows'
  voxels (:func:`window_coverage`), times the validation scans at 1018 (``predict``'s jobs).
- ``predict`` (one row per detector ``predict`` may pick): that figure plus, per scan, that
  detector's extra seconds of the line above; the crop model's part (the 64^3 crops and wider
  networks of lidc.yaml) is not rescaled.
- GPU hours: lidc.yaml gives GPUs to ``train`` and ``train_detector`` only (the other jobs run on
  CPU as configured). No GPU was measured: those rows say "not measured here" and the command.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.bench.scale_stages import REPO, deep_update, logged_job_resources, read_yaml

LIDC_COLUMNS = ["stage", "jobs", "cpu_h", "disk_gb", "gpu_h", "method"]
LIDC_SCANS = 1018
#: stages config/lidc.yaml leaves as the sample measures them
UNCHANGED = ("index", "annotations", "convert", "nodules", "cohort", "split")
UNCHANGED += ("detection_scans", "cascade")


def stage1_detectors(config: dict) -> list[str]:
    """The detectors that train on and run over whole scans; second stages (mode rescore) are
    not projected (docs/cluster.md)."""
    from lungseg.detection.settings import detector_settings

    return [n for n in config["detectors"] if detector_settings(config, n).mode != "rescore"]


#: rows of the projection, in workflow order (``train``, ``train_detector``: GPU jobs)
ORDER = ("index", "annotations", "convert", "nodules", "cohort", "crops", "split", "train")
ORDER += ("detection_volume", "detection_scans", "train_detector", "detect", "predict")
ORDER += ("cascade",)
#: stages of one job per scan (predict: per validation scan), projected linearly in the scans
PER_SCAN = ("convert", "detection_volume", "predict")
GPU_COMMAND = (
    "not measured here: on a GPU node `snakemake --configfile config/lidc.yaml --config "
    "lidc_root=... {target}`, then `s` of {benchmark} (wall seconds of the GPU job)"
)
GPU_STAGES = {
    "train": GPU_COMMAND.format(target="train_all", benchmark="benchmarks/train/<model>.tsv"),
    "train_detector": GPU_COMMAND.format(
        target="results/detection/<detector>/best.pt",
        benchmark="benchmarks/train_detector/<detector>.tsv",
    ),
}


def lidc_config(path: str | Path = "config/lidc.yaml") -> dict:
    """config.yaml with the overrides of ``path`` merged in (Snakemake's ``--configfile``)."""
    return deep_update(read_yaml(REPO / "config.yaml"), read_yaml(path))


def window_coverage(canvas, patch, overlap: float) -> float:
    """Voxels MONAI's sliding windows cover (overlaps counted) per canvas voxel.

    Per axis ``n = ceil((size - patch) / int(patch * (1 - overlap))) + 1`` windows (one when the
    patch covers the axis; a smaller canvas is padded to the patch)."""
    covered = 1.0
    for size, side in zip(canvas, patch, strict=True):
        size, side = int(size), int(side)
        step = max(int(side * (1 - overlap)), 1)
        windows = 1 if side >= size else math.ceil((size - side) / step) + 1
        covered *= windows * side / max(size, side)
    return covered


def detector_scan_seconds(run_dirs: dict[int, Path]) -> pd.DataFrame:
    """Per detector: CPU seconds of one more validation scan in ``detect`` (two largest runs).

    Validation scans of a run = its ``predict`` jobs (both: the validation series of status ok).
    Without a difference (equal scans, or a smaller second figure) the mean of the larger run."""
    rows = []
    for scans, run_dir in sorted(run_dirs.items()):
        val = len(list((run_dir / "benchmarks" / "predict").glob("*.tsv")))
        for detector, used in logged_job_resources(run_dir, "detect").items():
            rows.append({"scans": scans, "detector": detector, "val_scans": val, **used})
    frame = pd.DataFrame(rows)
    out = []
    for detector, group in frame.groupby("detector", sort=False):
        group = group.sort_values("scans").tail(2)
        last = group.iloc[-1]
        seconds, method = last["cpu_s"] / max(last["val_scans"], 1), "mean of the largest run"
        if len(group) == 2:
            first = group.iloc[0]
            extra = last["val_scans"] - first["val_scans"]
            if extra > 0 and last["cpu_s"] > first["cpu_s"]:
                seconds = (last["cpu_s"] - first["cpu_s"]) / extra
                method = f"difference {int(first['scans'])} -> {int(last['scans'])} scans"
        out.append({"detector": detector, "cpu_s_per_scan": seconds, "method": method})
    return pd.DataFrame(out)


def network_costs(sample: dict, lidc: dict, repeats: int = 2) -> pd.DataFrame:
    """Per detector of ``lidc``: forward CPU seconds (one thread, ``time.process_time``, the
    least of ``repeats`` after a warm-up) of its network with the sample's and with lidc.yaml's
    settings on one input of the sample's canvas shape; their ratio."""
    import torch

    from lungseg.detection.settings import VolumeSettings

    volumes = (sample.get("detection") or {}).get("volumes") or {}
    shape = VolumeSettings.from_config(volumes).shape

    from lungseg.detection.settings import detector_settings
    from lungseg.nets.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.rand((1, 1, *shape))
    rows = []
    try:
        for name in stage1_detectors(lidc):
            row = {"detector": name}
            for label, config in (("sample", sample), ("lidc", lidc)):
                settings = detector_settings(config, name)
                model = build_model(settings.model_settings()).eval()
                times = []
                with torch.no_grad():
                    for _ in range(repeats + 1):
                        start = time.process_time()
                        model(x)
                        times.append(time.process_time() - start)
                row[f"{label}_arch"] = f"{settings.arch} C{settings.channels} L{settings.levels}"
                row[f"{label}_arch"] += f" B{settings.blocks_per_level}"
                row[f"{label}_forward_s"] = round(min(times[1:]), 3)
            row["ratio"] = row["lidc_forward_s"] / row["sample_forward_s"]
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    return pd.DataFrame(rows)


def detection_volume_costs(run_dir: Path, lidc: dict, sample: dict, count: int = 4):
    """Detection volumes of ``count`` of the run's scans (spread over their slices) with the
    sample's and lidc.yaml's volume settings: CPU seconds (``time.process_time``) and MB each."""
    from lungseg.detection.settings import VolumeSettings
    from lungseg.detection.volumes import detection_volume
    from lungseg.io.hdf5 import open_hdf5

    volumes = sorted((run_dir / "results" / "volumes").glob("*/*.h5"))
    slices = []
    for path in volumes:
        with open_hdf5(path) as f:
            slices.append(int(f["image"].shape[0]))
    order = np.argsort(slices, kind="stable")
    picks = sorted({int(order[int(q * (len(order) - 1))]) for q in np.linspace(0, 1, count)})
    nodules = str(run_dir / "results" / "nodules.csv")
    out = run_dir / "lidc_detection_volume"
    rows = []
    for i in picks:
        row = {"volume": volumes[i].name, "slices": slices[i]}
        for label, config in (("sample", sample), ("lidc", lidc)):
            settings = VolumeSettings.from_config(config["detection"]["volumes"])
            path = out / label / volumes[i].name
            path.parent.mkdir(parents=True, exist_ok=True)
            start = time.process_time()
            detection_volume(
                volume=str(volumes[i]), nodules=nodules, detection=str(path), settings=settings
            )
            row[f"{label}_cpu_s"] = round(time.process_time() - start, 3)
            row[f"{label}_mb"] = round(path.stat().st_size / 1e6, 3)
        rows.append(row)
    return pd.DataFrame(rows)


def _base(fit: pd.Series, metric: str) -> float:
    """The stage's projection: by slices where there is one, else by the power law in N."""
    by_slices = fit.get(f"{metric}_at_1018_by_slices", math.nan)
    return float(by_slices if pd.notna(by_slices) else fit[f"{metric}_at_1018"])


def _row(stage: str, jobs, cpu_s: float, disk_mb: float, gpu_h: float, method: str) -> dict:
    return {
        "stage": stage,
        "jobs": int(round(jobs)) if pd.notna(jobs) else np.nan,
        "cpu_h": round(cpu_s / 3600, 3) if pd.notna(cpu_s) else np.nan,
        "disk_gb": round(disk_mb / 1000, 3) if pd.notna(disk_mb) else np.nan,
        "gpu_h": gpu_h,
        "method": method,
    }


def lidc_projection(
    frame: pd.DataFrame,
    fits: pd.DataFrame,
    sample: dict,
    lidc: dict,
    *,
    volumes: pd.DataFrame | None = None,
    detectors: pd.DataFrame | None = None,
    networks: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per stage at 1018 scans with config/lidc.yaml: jobs, CPU hours, disk GB, GPU hours, how
    (module docstring). ``frame``, ``fits``: the scale table and projection; ``volumes``,
    ``detectors``, ``networks``: the measurements above. Stages the runs did not measure are
    left out, but for the GPU stages."""
    fit = fits.set_index("stage")
    largest = int(frame["scans"].max())
    last = frame[frame["scans"] == largest].set_index("stage")
    per_scan = LIDC_SCANS / largest

    def start(stage: str) -> tuple[float, float, float, str]:
        if stage in PER_SCAN:
            cost = last.loc[stage]
            how = f"{largest} scans x {per_scan:.1f}"
            return (
                cost["jobs"] * per_scan,
                cost["cpu_s"] * per_scan,
                cost["disk_mb"] * per_scan,
                how,
            )
        cpu, disk = _cpu_disk(fit.loc[stage])
        if pd.isna(disk):  # outputs of 0.00 MB (rounded) have no exponent: the largest run's
            disk = last.loc[stage, "disk_mb"]
        return fit.loc[stage, "jobs_at_1018"], cpu, disk, "projection"

    extra_of = _detector_scale(sample, lidc, detectors, networks)
    val_1018 = last.loc["predict", "jobs"] * per_scan if "predict" in last.index else math.nan
    rows = []
    for stage in ORDER:
        if stage in GPU_STAGES:
            names = lidc["models"] if stage == "train" else stage1_detectors(lidc)
            rows.append(_row(stage, len(names), math.nan, math.nan, math.nan, GPU_STAGES[stage]))
            continue
        if stage not in fit.index or stage not in last.index:
            continue
        jobs, cpu, disk, base = start(stage)
        if stage in UNCHANGED:
            rows.append(_row(stage, jobs, cpu, disk, 0.0, f"{base}; settings unchanged"))
        elif stage == "crops":
            ratio = float(np.prod(lidc["crops"]["size"]) / np.prod(sample["crops"]["size"]))
            how = f"{base} x crop voxels {ratio:.3g} (CPU: upper bound)"
            rows.append(_row(stage, jobs, cpu * ratio, disk * ratio, 0.0, how))
        elif stage == "detection_volume":
            rows.append(_volume_row(jobs, cpu, disk, volumes, base))
        elif stage == "detect" and extra_of:
            cpu = sum(val_1018 * seconds * factor for seconds, factor, _ in extra_of.values())
            how = "; ".join(f"{d}: {s:.2f} s x {h}" for d, (s, _, h) in extra_of.items())
            how = f"{val_1018:.0f} validation scans x ({how})"
            rows.append(_row(stage, len(extra_of), cpu, disk, 0.0, how))
        elif stage == "predict":
            for detector, (seconds, factor, _) in extra_of.items():
                more = seconds * (factor - 1)
                how = f"{base}, +{more:.0f} CPU s a scan for {detector}; crops not rescaled"
                name = f"predict[{detector}]"
                rows.append(_row(name, jobs, cpu + val_1018 * more, disk, 0.0, how))
    return pd.DataFrame(rows, columns=LIDC_COLUMNS)


def _cpu_disk(fit: pd.Series) -> tuple[float, float]:
    return _base(fit, "cpu_s"), _base(fit, "disk_mb")


def _volume_row(jobs, cpu: float, disk: float, volumes: pd.DataFrame | None, base: str):
    if volumes is None or not len(volumes):
        return _row("detection_volume", jobs, math.nan, math.nan, 0.0, "not measured")
    extra = float((volumes["lidc_cpu_s"] - volumes["sample_cpu_s"]).mean())
    size = float(volumes["lidc_mb"].sum() / volumes["sample_mb"].sum())
    how = f"{base}, +{extra:.2f} CPU s a scan, disk x{size:.1f} (both on {len(volumes)} scans)"
    return _row("detection_volume", jobs, cpu + jobs * extra, disk * size, 0.0, how)


def _detector_scale(sample, lidc, detectors, networks) -> dict[str, tuple[float, float, str]]:
    """``{detector: (sample CPU s a scan, lidc / sample factor, how)}`` of lidc's detectors."""
    from lungseg.detection.settings import detector_settings

    if detectors is None or networks is None or not len(detectors):
        return {}
    seconds = detectors.set_index("detector")["cpu_s_per_scan"]
    ratio = networks.set_index("detector")["ratio"]
    shape, mine_shape = (
        lidc["detection"]["volumes"]["shape"],
        sample["detection"]["volumes"]["shape"],
    )
    canvas = float(np.prod(shape) / np.prod(mine_shape))
    out = {}
    for name in stage1_detectors(lidc):
        if name not in seconds.index or name not in ratio.index:
            continue
        factor, how = canvas * ratio[name], f"voxels {canvas:.1f} x network {ratio[name]:.2f}"
        mine, theirs = detector_settings(sample, name), detector_settings(lidc, name)
        if theirs.mode == "patch":
            windows = window_coverage(shape, theirs.patch_size, theirs.sw_overlap)
            windows /= window_coverage(mine_shape, mine.patch_size, mine.sw_overlap)
            factor, how = factor * windows, f"{how} x windows {windows:.2f}"
        out[name] = (float(seconds[name]), float(factor), f"{how} = {factor:.0f}")
    return out
