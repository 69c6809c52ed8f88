"""The second stage's jobs (detectors of mode ``rescore``; the method: :mod:`.rescore`).

- ``rescorer_samples``: training crops around the cohort nodules and stage 1's highest
  ``rescore_negatives`` candidates of each training scan (``samples.h5`` in crops.h5's layout:
  ``image``, ``mask``; ``samples.csv`` with ``nodule_id`` = sample id and ``subset``), and
  validation crops (the validation scans' cohort nodules and as many stage-1 candidates, no
  jittered copies) that pick ``best.pt`` by their balanced Dice (:func:`train_rescorer`);
- ``train_rescorer``: lungseg's crop :class:`~lungseg.training.Trainer` on those crops
  (``metrics.csv``, ``best.pt``, ``last.pt``, exact resume); best.pt records the crop grid;
- ``rescore``: stage 1's validation candidates re-scored and re-centred (candidates.csv).

Stage 1's candidates of the training scans come from rule ``detect_training_scans``
(:func:`lungseg.detection.predict.detect` with ``subset`` train).
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from lungseg.core.atomic import atomic_path, write_csv_atomic
from lungseg.core.errors import InputError
from lungseg.core.settings import schema_defaults
from lungseg.dataset.crops import volume_locator
from lungseg.detection.predict import COLUMNS
from lungseg.detection.rescore import class_map, rescore_scan, scan_samples, trained_shape_weight
from lungseg.detection.scans import read_scan_table, volume_geometry
from lungseg.detection.settings import DetectorSettings
from lungseg.detection.volumes import to_world
from lungseg.inference.checkpoint import read_checkpoint
from lungseg.inference.model import choose_device, load_model, predict
from lungseg.io.hdf5 import compression_options, read_volume
from lungseg.training.trainer import train

logger = logging.getLogger(__name__)

CENTROIDS = ["centroid_z", "centroid_y", "centroid_x"]
CENTRES = ["center_z", "center_y", "center_x"]


def _candidates(path: str, series_uid: str) -> pd.DataFrame:
    table = pd.read_csv(path)
    missing = {"seriesuid", *CENTRES, "probability"} - set(table.columns)
    if missing:
        raise InputError(f"{path}: missing column(s) {sorted(missing)}")
    return table[table["seriesuid"].astype(str) == series_uid]


def write_rescorer_samples(
    *,
    train_candidates: str,
    val_candidates: str,
    scans: str,
    nodules: str,
    volumes: list[str],
    samples: str,
    table: str,
    settings: DetectorSettings,
) -> None:
    """The second stage's training and validation crops (module docstring), written scan by
    scan: memory holds one scan and its crops, whatever the number of scans."""
    scan_table = read_scan_table(scans)
    findings = pd.read_csv(nodules)
    locate = volume_locator(volumes)
    rng = np.random.default_rng(settings.seed)
    size = [int(s) for s in settings.rescore_crop_size]
    spacing = [float(s) for s in settings.rescore_crop_spacing]
    rows: list[dict] = []
    with atomic_path(samples) as tmp, h5py.File(tmp, "w") as file:
        options = {"chunks": (1, *size), "maxshape": (None, *size)}
        options |= compression_options("blosc-lz4")
        datasets = [file.create_dataset(name, (0, *size), dtype, **options)
                    for name, dtype in (("image", np.int16), ("mask", np.uint8))]  # fmt: skip
        file.attrs["size"] = size
        file.attrs["target_spacing"] = str(spacing)
        for scan in scan_table[scan_table["subset"].isin(("train", "val"))].itertuples():
            series, subset = str(scan.series_uid), str(scan.subset)
            image, labels, attrs = read_volume(locate(str(scan.patient_id), series))
            own = findings[findings["series_uid"].astype(str) == series]
            cohort = own[own["in_cohort"].astype(bool)]
            found = _candidates(train_candidates if subset == "train" else val_candidates, series)
            found = found.sort_values("probability", ascending=False, kind="stable")
            found = found.head(settings.rescore_negatives)
            crops, targets, described = scan_samples(
                image,
                class_map(labels, cohort["label"].astype(int).tolist()),
                attrs["spacing"],
                cohort[CENTROIDS].to_numpy(dtype=float),
                found[CENTRES].to_numpy(dtype=float),
                size=size,
                target_spacing=spacing,
                positive_copies=settings.rescore_copies if subset == "train" else 0,
                jitter_mm=settings.rescore_jitter_mm,
                rng=rng,
            )
            for k, row in enumerate(described):
                row.update(
                    nodule_id=f"{series}:{k}", patient_id=scan.patient_id, series_uid=series,
                    subset=subset,
                )  # fmt: skip
            if crops:
                for dataset, values in zip(datasets, (crops, targets), strict=True):
                    dataset.resize(len(rows) + len(crops), axis=0)
                    dataset[len(rows) :] = np.stack(values)
            rows += described
        frame = pd.DataFrame(rows)
        for subset in ("train", "val"):
            if not (frame.get("subset", pd.Series(dtype=str)) == subset).any():
                raise InputError(
                    f"{scans}: no {subset} scan gave a crop; the second stage needs both"
                )
    columns = ["nodule_id", "patient_id", "series_uid", "subset", "kind", *CENTRES, "mask_voxels"]
    write_csv_atomic(table, frame[columns])
    counts = frame.groupby(["subset", "kind"]).size().to_dict()
    logger.info("%d crops of %s at %s mm: %s", len(frame), size, spacing, counts)


def trainer_settings(settings: DetectorSettings) -> dict:
    """The crop trainer's settings of a second stage: the training defaults, then the
    detector's (network, loss, optimiser, window, augmentation, rescore keys)."""
    return {**schema_defaults("training"), **settings.model_settings()}


def train_rescorer(
    *,
    samples: str,
    table: str,
    metrics: str,
    best: str,
    settings: DetectorSettings,
    threads: int = 1,
) -> None:
    """Train the second stage's crop model; metrics.csv, best.pt (and last.pt) in one folder.

    best.pt is the epoch of the highest balanced validation Dice: most validation crops are
    stage-1 false positives with an empty target, on which a model that predicts nothing scores
    Dice 1, so the plain mean Dice picked such a model (a bench seed whose best.pt scored every
    candidate near 0; docs/decisions_detection.md)."""
    out_dir = Path(metrics).parent
    if Path(best).parent != out_dir:
        raise InputError(f"best ({best}) and metrics ({metrics}) must share a folder")
    options = trainer_settings(settings)
    train(samples, table, table, out_dir, options, threads, settings.device, "val_balanced_dice")


def rescore(
    *,
    candidates: str,
    scans: str,
    volumes: list[str],
    best: str,
    rescored: str,
    settings: DetectorSettings,
    threads: int = 1,
) -> None:
    """Stage 1's validation candidates re-scored by the crop model of ``best``."""
    torch.set_num_threads(max(1, int(threads)))
    model, trained = load_model(best, str(choose_device(settings.device)))
    grid = read_checkpoint(best)["crop_grid"]
    scan_table = read_scan_table(scans)
    locate = volume_locator(volumes)
    stage1 = pd.read_csv(candidates)
    frames = []
    for scan in scan_table[scan_table["subset"] == "val"].itertuples():
        found = stage1[stage1["seriesuid"].astype(str) == str(scan.series_uid)]
        image, _, attrs = read_volume(locate(str(scan.patient_id), str(scan.series_uid)))
        out = rescore_scan(
            image,
            attrs["spacing"],
            found,
            lambda crops: predict(model, crops, trained, batch_size=16),
            grid["crop_size"],
            grid["target_spacing"],
            float(trained["rescore_stage1_weight"]),
            trained_shape_weight(trained),
        ).head(int(trained["max_candidates"]))
        world = to_world(out[CENTRES].to_numpy(dtype=float), volume_geometry(scan.path))
        out["coordX"], out["coordY"], out["coordZ"] = world[:, 0], world[:, 1], world[:, 2]
        logger.info("%s: %d candidate(s) re-scored", scan.series_uid, len(out))
        frames.append(out[COLUMNS])
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    write_csv_atomic(rescored, table)


__all__ = ["rescore", "train_rescorer", "trainer_settings", "write_rescorer_samples"]
