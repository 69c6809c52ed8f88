"""The cascade scored end to end: ``lungseg predict`` on the validation scans vs the references.

Reference = the cohort nodules (results/nodules.csv ``in_cohort``) of the predicted scans, their
masks in results/volumes/ (same reader, same voxel grid as the predictions). A reference nodule
is **detected** when a predicted nodule's centroid lies strictly within its radius (diameter / 2;
LUNA16's hit rule); of several hits the one with the highest Dice is its match. Dice and HD95 of
the match's mask against the reference mask are computed in scan space (a missed nodule: Dice 0,
HD95 undefined); ``crop_dice`` is the same nodule's Dice when the crop model is given the true
centre (results/models/<segmenter>/evaluation.csv, on the crop grid): the upper bound the
detector's misses and offsets are measured against. A predicted nodule hitting no reference
nodule and no other annotated finding is a false positive.

Outputs: ``results/cascade.csv`` (one row per reference nodule, :data:`COLUMNS`),
``results/cascade_summary.csv`` (per size bucket and ``all``), and the radiomics agreement
(:mod:`lungseg.evaluation.cascade_run`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from lungseg.evaluation.evaluate import size_bucket, size_bucket_labels
from lungseg.evaluation.metrics import hausdorff95
from lungseg.inference.metrics import dice
from lungseg.io.hdf5 import read_volume
from lungseg.predict.measure import voxel_to_patient

logger = logging.getLogger(__name__)

COLUMNS = [
    "nodule_id",
    "patient_id",
    "series_uid",
    "diameter_mm",
    "size_bucket",
    "detected",
    "predicted_label",
    "probability",
    "distance_mm",
    "dice",
    "hd95_mm",
    "crop_dice",
    "reference_volume_mm3",
    "predicted_volume_mm3",
]
SUMMARY_COLUMNS = [
    "size_bucket",
    "nodules",
    "detected",
    "sensitivity",
    "dice_mean",
    "dice_detected_mean",
    "crop_dice_mean",
    "hd95_mm_median",
    "predicted_nodules",
    "false_positives",
    "scans",
]
MARGIN = 3  # voxels around both masks for the surface distances


def read_labels(path: Path) -> np.ndarray:
    """A nodules.nii.gz label map back in lungseg's (z, y, x) order."""
    return np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)


def _box(*masks: np.ndarray) -> tuple[slice, ...]:
    union = np.logical_or.reduce(masks)
    found = np.argwhere(union)
    lo = np.maximum(found.min(axis=0) - MARGIN, 0)
    hi = np.minimum(found.max(axis=0) + MARGIN + 1, union.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))


def score_scan(
    reference: pd.DataFrame,
    others: pd.DataFrame,
    volume: str,
    prediction: Path,
) -> tuple[list[dict], int, int]:
    """(rows of the scan's reference nodules, predicted nodules, false positives)."""
    _image, mask, attrs = read_volume(volume)
    spacing, origin, direction = attrs["spacing"], attrs["origin"], attrs["direction"]
    predicted = pd.read_csv(prediction / "nodules.csv")
    labels = read_labels(prediction / "nodules.nii.gz") if len(predicted) else None
    centres = predicted[["coordX", "coordY", "coordZ"]].to_numpy(dtype=float)
    hit_any = np.zeros(len(predicted), dtype=bool)

    def centre(row) -> np.ndarray:  # patient mm (x, y, z) of a nodules.csv row's centroid
        voxel = row[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(dtype=float)
        return voxel_to_patient(voxel, spacing, origin, direction)[0]

    for _, finding in others.iterrows():
        point = centre(finding)
        hit_any |= np.linalg.norm(centres - point, axis=1) < finding["diameter_mm"] / 2
    rows = []
    for _, nodule in reference.iterrows():
        truth = mask == int(nodule["label"])
        point = centre(nodule)
        distances = np.linalg.norm(centres - point, axis=1) if len(predicted) else np.zeros(0)
        hits = np.flatnonzero(distances < nodule["diameter_mm"] / 2)
        hit_any[hits] = True
        row = {
            "nodule_id": nodule["nodule_id"],
            "patient_id": nodule["patient_id"],
            "series_uid": nodule["series_uid"],
            "diameter_mm": float(nodule["diameter_mm"]),
            "detected": bool(len(hits)),
            "predicted_label": pd.NA,
            "probability": np.nan,
            "distance_mm": float(distances.min()) if len(distances) else np.nan,
            "dice": 0.0,
            "hd95_mm": np.nan,
            "reference_volume_mm3": float(truth.sum() * np.prod(spacing)),
            "predicted_volume_mm3": 0.0,
        }
        best = None
        for index in hits:
            label = int(predicted.iloc[index]["label"])
            candidate = labels == label
            box = _box(candidate, truth)
            score = dice(candidate[box], truth[box])
            if best is None or score > best[1]:
                best = (index, score, candidate, box)
        if best is not None:
            index, score, candidate, box = best
            row.update(
                predicted_label=int(predicted.iloc[index]["label"]),
                probability=float(predicted.iloc[index]["probability"]),
                distance_mm=float(distances[index]),
                dice=float(score),
                hd95_mm=hausdorff95(candidate[box], truth[box], spacing),
                predicted_volume_mm3=float(candidate.sum() * np.prod(spacing)),
            )
        rows.append(row)
    return rows, len(predicted), int((~hit_any).sum())


def summarise(table: pd.DataFrame, buckets: list[str], fps: int, predicted: int, scans: int):
    """cascade_summary.csv: one row per size bucket, then ``all``."""
    rows = []
    for bucket in [*buckets, "all"]:
        part = table if bucket == "all" else table[table["size_bucket"] == bucket]
        detected = part[part["detected"]]
        rows.append(
            {
                "size_bucket": bucket,
                "nodules": len(part),
                "detected": len(detected),
                "sensitivity": len(detected) / len(part) if len(part) else np.nan,
                "dice_mean": part["dice"].mean() if len(part) else np.nan,
                "dice_detected_mean": detected["dice"].mean() if len(detected) else np.nan,
                "crop_dice_mean": part["crop_dice"].mean() if len(part) else np.nan,
                "hd95_mm_median": detected["hd95_mm"].median() if len(detected) else np.nan,
                "predicted_nodules": predicted if bucket == "all" else pd.NA,
                "false_positives": fps if bucket == "all" else pd.NA,
                "scans": scans if bucket == "all" else pd.NA,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def cascade_table(
    predictions: Sequence[str],
    nodules: str,
    volumes: Sequence[str],
    crop_evaluation: str,
    size_buckets_mm: Sequence[float],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cascade.csv, cascade_summary.csv) of the predicted scans."""
    table = pd.read_csv(nodules)
    volume_of = {Path(v).name[: -len(".h5")]: v for v in volumes}
    crop = pd.read_csv(crop_evaluation).set_index("nodule_id")["dice"]
    rows, fps, predicted = [], 0, 0
    for folder in map(Path, predictions):
        summary = json.loads((folder / "summary.json").read_text())
        uid = summary["series_uid"]
        own = table[table["series_uid"] == uid]
        reference = own[own["in_cohort"].astype(bool)]
        scan_rows, n_predicted, n_fps = score_scan(
            reference, own[~own["in_cohort"].astype(bool)], volume_of[uid], folder
        )
        rows += scan_rows
        fps += n_fps
        predicted += n_predicted
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("size_bucket", "crop_dice")])
    out["size_bucket"] = size_bucket(out["diameter_mm"].to_numpy(), size_buckets_mm)
    out["crop_dice"] = out["nodule_id"].map(crop).astype(float)
    out = out[COLUMNS]
    summary = summarise(out, size_bucket_labels(size_buckets_mm), fps, predicted, len(predictions))
    return out, summary
