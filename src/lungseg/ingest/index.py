"""Checkpoint ``index``: a DICOM folder -> ``series.csv`` (one row per series), ``files.csv``,
``unreadable.csv`` (folders that could not be listed) and ``manifest.csv`` (what was found vs
the IDC manifest of LIDC-IDRI, :mod:`lungseg.ingest.manifest`).

Data problems become a status and a reason in ``series.csv`` (a slice file shorter than its
pixel data skips its series, the file named); only series with status ``ok`` or ``excluded``
are converted, so one bad series never stops the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.core.errors import InputError
from lungseg.ingest.convert import annotation_problem
from lungseg.ingest.dicom import scan_folder
from lungseg.ingest.manifest import MANIFEST_COLUMNS, check_manifest
from lungseg.ingest.series import SeriesPlan, group_by_series, plan_series
from lungseg.ingest.settings import IndexSettings
from lungseg.ingest.status import STATUS_EXCLUDED, STATUS_OK, STATUS_SKIPPED
from lungseg.ingest.tables import FILES_COLUMNS, SERIES_COLUMNS, UNREADABLE_COLUMNS

log = logging.getLogger(__name__)


def apply_irregular_policy(plan: SeriesPlan, exclude_irregular: bool) -> SeriesPlan:
    """Missing/irregular slices exclude a series from training unless the config keeps them."""
    if plan.status == STATUS_EXCLUDED and not exclude_irregular:
        plan.status = STATUS_OK
    return plan


def check_annotations(plan: SeriesPlan, db_zvals) -> SeriesPlan:
    """Exclude a series whose annotated slice positions are not all on disk (nodules could not
    be placed); note series the annotation database does not know (converted, no nodules)."""
    if plan.status == STATUS_SKIPPED:
        return plan
    if db_zvals is None:
        plan.notes.append("not in the annotation database (no nodules)")
        return plan
    problem = annotation_problem(plan, db_zvals)
    if problem:
        plan.status = STATUS_EXCLUDED
        plan.reasons.append(problem)
    return plan


def series_row(plan: SeriesPlan, annotated: bool) -> dict:
    return {
        "patient_id": plan.patient_id,
        "study_uid": plan.study_uid,
        "series_uid": plan.series_uid,
        "modality": plan.modality,
        "n_files": plan.n_files,
        "n_slices": plan.n_slices,
        "status": plan.status,
        "reason": plan.reason,
        "slice_thickness": plan.slice_thickness,
        "slice_spacing": plan.spacing[0] if plan.spacing else None,
        "rows": plan.rows or None,
        "columns": plan.columns or None,
        "annotated": annotated,
    }


def build_index(
    root: str | os.PathLike[str],
    *,
    workers: int,
    spacing_tolerance: float,
    exclude_irregular: bool,
    annotation_zvals: Mapping[str, Sequence[float]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str], pd.DataFrame]:
    """``(series, files, problems, unreadable)`` for every DICOM file under ``root`` (headers
    only); ``unreadable``: the folders that could not be listed (``path, error``).

    ``annotation_zvals`` (series uid -> the annotation database's slice z positions) adds the
    check that every annotated slice is on disk; None skips it.
    """
    headers, problems, unreadable = scan_folder(root, workers=workers)
    rows, files = [], []
    for series_uid, members in group_by_series(headers).items():
        plan = apply_irregular_policy(plan_series(members, spacing_tolerance), exclude_irregular)
        if annotation_zvals is not None:
            plan = check_annotations(plan, annotation_zvals.get(series_uid))
        rows.append(series_row(plan, annotation_zvals is None or series_uid in annotation_zvals))
        files.extend((series_uid, h.path) for h in members)
    series = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    series = series.sort_values(["patient_id", "series_uid"], kind="stable").reset_index(drop=True)
    files = pd.DataFrame(files, columns=FILES_COLUMNS)
    return series, files, problems, pd.DataFrame(unreadable, columns=UNREADABLE_COLUMNS)


def write_index(
    root: str | os.PathLike[str],
    series_csv: str | os.PathLike[str],
    files_csv: str | os.PathLike[str],
    unreadable_csv: str | os.PathLike[str] | None = None,
    *,
    workers: int,
    spacing_tolerance: float,
    exclude_irregular: bool,
    check_annotation_db: bool = True,
    manifest_csv: str | os.PathLike[str] | None = None,
    manifest_patients: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Index ``root``; write ``series_csv``, ``files_csv`` and ``unreadable_csv``.

    The settings are those of :class:`IndexSettings` (``workers`` is ``index_workers``); they
    have no defaults here. ``manifest_patients`` not None: compare with the IDC manifest (the
    series of those patients expected; empty: every patient of the collection) and write
    ``manifest_csv``; None: no check (``manifest_csv``, if given, gets the header only).

    Logs every skipped file and every folder that could not be read.
    """
    zvals = None
    if check_annotation_db:
        from lungseg.lidc import adapter as lidc

        zvals = {scan.series_uid: scan.slice_zvals for scan in lidc.all_scans()}
    series, files, problems, unreadable = build_index(
        root,
        workers=workers,
        spacing_tolerance=spacing_tolerance,
        exclude_irregular=exclude_irregular,
        annotation_zvals=zvals,
    )
    for folder in unreadable.itertuples():
        log.warning(
            "cannot read folder %s: %s (its files are not indexed)", folder.path, folder.error
        )
    for message in problems:
        log.warning("skipped file: %s", message)
    if series.empty:
        raise InputError(
            f"{root}: no DICOM series found ({len(problems)} unusable files, "
            f"{len(unreadable)} unreadable folders)"
        )
    manifest = pd.DataFrame(columns=MANIFEST_COLUMNS)
    if manifest_patients is not None:
        series, manifest = check_manifest(series, manifest_patients)
    else:
        log.info("IDC manifest check off (ingest.manifest_check: false)")
    counts = series["status"].value_counts().to_dict()
    log.info(
        "indexed %s: %d DICOM files in %d series (%s); %d non-DICOM/unreadable files skipped, "
        "%d unreadable folders",
        root,
        len(files),
        len(series),
        ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none",
        len(problems),
        len(unreadable),
    )
    for row in series.itertuples():
        if row.status != STATUS_OK:
            log.warning(
                "series %s (%s) %s: %s", row.series_uid, row.patient_id, row.status, row.reason
            )
    if unreadable_csv is not None:
        write_csv_atomic(unreadable_csv, unreadable)
    if manifest_csv is not None:
        write_csv_atomic(manifest_csv, manifest)
    write_csv_atomic(files_csv, files)
    write_csv_atomic(series_csv, series)
    return series


def run_index(
    *,
    root: str,
    series: str,
    files: str,
    unreadable: str,
    manifest: str,
    settings: IndexSettings,
    manifest_patients: list[str] | None = None,
) -> None:
    """Index the DICOM files under ``root``: write ``series`` (series.csv), ``files``,
    ``unreadable`` (folders that could not be read: ``path, error``) and ``manifest`` (found vs
    the IDC manifest; ``manifest_patients``: whose series are expected, default every patient
    of LIDC-IDRI)."""
    write_index(
        root,
        series,
        files,
        unreadable,
        workers=settings.index_workers,
        spacing_tolerance=settings.spacing_tolerance,
        exclude_irregular=settings.exclude_irregular,
        manifest_csv=manifest,
        manifest_patients=(manifest_patients or []) if settings.manifest_check else None,
    )
