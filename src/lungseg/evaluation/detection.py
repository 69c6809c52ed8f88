"""Score a detector's candidates with LUNA16's FROC and CPM; the table of all detectors.

Reference = the cohort nodules (``in_cohort``) of the validation scans in results/nodules.csv;
every other annotated finding of those scans is irrelevant (LUNA16's excluded annotations).
Centres: the nodule centroids (source voxels) in patient mm, as the candidates.

Per detector (rule ``evaluate_detector``): ``froc.csv`` (``fps_per_scan, sensitivity,
threshold``), ``froc_bootstrap.csv`` (``fps_per_scan, sensitivity_mean, sensitivity_low,
sensitivity_high`` on a log grid 1/8..8), ``summary.csv`` (one row of results/detection.csv) and
``operating_point.json``: the candidate probability threshold at ``operating_fps`` false
positives per scan on the validation FROC (the lowest FROC threshold at or below that rate),
which ``lungseg predict`` applies next to ``best.pt``.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd

from lungseg.core.atomic import write_csv_atomic, write_text_atomic
from lungseg.core.errors import InputError
from lungseg.detection.scans import read_scan_table, volume_geometry
from lungseg.detection.settings import DetectorSettings
from lungseg.detection.volumes import to_world
from lungseg.evaluation.froc import OPERATING_POINTS, bootstrap, froc_entries, froc_of

logger = logging.getLogger(__name__)


def point_name(fps: float) -> str:
    return f"sensitivity_{fps:g}"


SUMMARY_COLUMNS = [
    "detector",
    "scans",
    "nodules",
    "cpm",
    "cpm_low",
    "cpm_high",
    *[point_name(p) for p in OPERATING_POINTS],
    "peak_memory_mb",
    "seconds_per_epoch",
]


def reference_findings(nodules_csv: str, scan_table: pd.DataFrame) -> pd.DataFrame:
    """LUNA16 reference rows (``seriesuid, coordX/Y/Z, diameter_mm, relevant``) of the scans.

    World coordinates from the geometry of each scan's detection volume (``path``), not from
    the table's geometry columns."""
    nodules = pd.read_csv(nodules_csv)
    missing = {"series_uid", "centroid_z", "diameter_mm", "in_cohort"} - set(nodules.columns)
    if missing:
        raise InputError(f"{nodules_csv}: missing column(s) {sorted(missing)}")
    rows = []
    for _, scan in scan_table.iterrows():
        own = nodules[nodules["series_uid"] == scan["series_uid"]]
        if own.empty:
            continue
        centroids = own[["centroid_z", "centroid_y", "centroid_x"]].to_numpy()
        world = to_world(centroids, volume_geometry(scan["path"]))
        rows.append(
            pd.DataFrame(
                {
                    "seriesuid": scan["series_uid"],
                    "coordX": world[:, 0],
                    "coordY": world[:, 1],
                    "coordZ": world[:, 2],
                    "diameter_mm": own["diameter_mm"].to_numpy(dtype=float),
                    "relevant": own["in_cohort"].astype(bool).to_numpy(),
                    "nodule_id": own["nodule_id"].to_numpy(),
                }
            )
        )
    columns = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "relevant", "nodule_id"]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)


def evaluate_detector(
    *,
    candidates: str,
    scans: str,
    nodules: str,
    metrics: str,
    froc: str,
    bootstrap_table: str,
    summary: str,
    operating_point: str,
    detector: str,
    settings: DetectorSettings,
) -> None:
    """FROC, bootstrap, summary row and operating point of one detector (module docstring)."""
    table = read_scan_table(scans)
    val = table[table["subset"] == "val"]
    series = list(val["series_uid"])
    reference = reference_findings(nodules, val)
    found = pd.read_csv(candidates)
    entries = froc_entries(found, reference, series, max_candidates=100)
    curve = froc_of(entries, len(series))
    draws = bootstrap(entries, series, settings.bootstrap_draws, settings.bootstrap_seed)
    low, high = draws.cpm_interval()
    write_csv_atomic(froc, curve.table())
    write_csv_atomic(
        bootstrap_table,
        pd.DataFrame(
            {
                "fps_per_scan": draws.grid,
                "sensitivity_mean": draws.sensitivity_mean,
                "sensitivity_low": draws.sensitivity_low,
                "sensitivity_high": draws.sensitivity_high,
            }
        ),
    )
    history = pd.read_csv(metrics)
    row = {
        "detector": detector,
        "scans": len(series),
        "nodules": curve.n_nodules,
        "cpm": curve.cpm(),
        "cpm_low": low,
        "cpm_high": high,
        **{point_name(p): s for p, s in zip(OPERATING_POINTS, curve.sensitivity_at(), strict=True)},
        "peak_memory_mb": float(history["peak_memory_mb"].max()),
        "seconds_per_epoch": float(history["seconds"].mean()),
    }
    write_csv_atomic(summary, pd.DataFrame([row], columns=SUMMARY_COLUMNS))
    threshold = curve.threshold_at(settings.operating_fps)
    within = np.flatnonzero(curve.fps_per_scan <= settings.operating_fps)[-1]
    point = {
        "detector": detector,
        "fps_per_scan_target": settings.operating_fps,
        "threshold": None if math.isinf(threshold) else threshold,
        "fps_per_scan": float(curve.fps_per_scan[within]),
        "sensitivity": float(curve.sensitivity[within]),
        "candidate_threshold": settings.candidate_threshold,
        "validation_scans": len(series),
        "note": "a candidate is a finding when its probability >= threshold "
        "(null: no threshold keeps FPs/scan at or below the target)",
    }
    write_text_atomic(operating_point, json.dumps(point, indent=2) + "\n")
    logger.info(
        "%s: %d scans, %d nodules, CPM %.3f (95%% %.3f-%.3f), threshold at %g FP/scan: %s",
        detector,
        len(series),
        curve.n_nodules,
        row["cpm"],
        low,
        high,
        settings.operating_fps,
        point["threshold"],
    )


def summarise_detectors(*, summaries: list[str], table: str) -> None:
    """results/detection.csv: the summary rows of every detector, in config order."""
    frames = [pd.read_csv(path) for path in summaries]
    write_csv_atomic(table, pd.concat(frames, ignore_index=True)[SUMMARY_COLUMNS])
