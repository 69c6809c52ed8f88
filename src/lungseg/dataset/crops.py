"""Tumour-centred crops: a fixed-size box around each training nodule, optionally resampled.

Geometry (per axis, in source voxel coordinates, voxel centres at integers):

- native spacing: the crop is the voxel run ``start .. start + S - 1`` with
  ``start = floor(centroid - (S - 1) / 2 + 1/2)``, so the crop centre ``start + (S - 1) / 2`` lies
  within half a voxel of the centroid, for odd and even S. No interpolation: values are copied.
- target spacing ``t`` (mm): crop voxel ``i`` samples the source at
  ``centroid + (i - (S - 1) / 2) * t / s`` (``s`` the source spacing): the centroid is exactly the
  crop centre and the crop spans ``S * t`` mm. The image is interpolated by cubic B-spline
  (order 3; smooth, values rounded back to int16 HU), the masks by ``nearest`` neighbour or
  ``linear`` (each binary mask interpolated linearly, then thresholded at 0.5).

Only the box the crop needs (plus a few voxels for the spline) is read from the HDF5 volume.
Outside the volume the crop is padded with air (-1000 HU) and empty masks; it is never shifted to
stay inside, and ``outside_fraction`` in the table says how much of it is padding. Intensities
stay in HU: the intensity window is applied at training time (config ``training.hu_min/hu_max``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy import ndimage

from lungseg.core.atomic import atomic_path, write_csv_atomic
from lungseg.core.errors import InputError
from lungseg.dataset.boxes import overlap
from lungseg.dataset.settings import CropSettings
from lungseg.dataset.split import training_nodules
from lungseg.io import hdf5 as volume_files
from lungseg.io.hdf5 import compression_options, read_volume

logger = logging.getLogger(__name__)

AIR_HU = -1000
MASK_INTERPOLATIONS = ("linear", "nearest")
#: Source voxels read beyond the sampled ones so the cubic spline's prefilter sees real data.
SPLINE_MARGIN = 4
CONTRACT_COLUMNS = [
    "nodule_id",
    "patient_id",
    "series_uid",
    "center_z",
    "center_y",
    "center_x",
    "spacing_z",
    "spacing_y",
    "spacing_x",
    "diameter_mm",
    "n_readers",
]
EXTRA_COLUMNS = [
    "label",
    "centroid_z",
    "centroid_y",
    "centroid_x",
    "source_spacing_z",
    "source_spacing_y",
    "source_spacing_x",
    "outside_fraction",
    "fits_in_crop",
    "mask_voxels",
    "other_voxels",
]
AXES = ("z", "y", "x")


@dataclass(frozen=True)
class CropGeometry:
    """Where a crop samples its source volume, per axis (z, y, x), in source voxel coordinates."""

    centre: tuple[float, float, float]  # source coordinate of the crop centre
    step: tuple[float, float, float]  # source voxels per crop voxel (1 on native axes)
    size: tuple[int, int, int]
    resampled: tuple[bool, bool, bool]

    def coordinates(self, axis: int) -> np.ndarray:
        """Source coordinate of each crop voxel along ``axis``."""
        offsets = np.arange(self.size[axis]) - (self.size[axis] - 1) / 2
        return self.centre[axis] + offsets * self.step[axis]

    def extent(self, axis: int) -> tuple[float, float]:
        """Source coordinates of the crop's outer voxel faces along ``axis``."""
        half = self.size[axis] * self.step[axis] / 2
        return self.centre[axis] - half, self.centre[axis] + half


def crop_geometry(
    centroid: Sequence[float],
    size: Sequence[int],
    source_spacing: Sequence[float],
    target_spacing: Sequence[float | None] | None = None,
) -> CropGeometry:
    """The crop around ``centroid`` (source voxels); ``target_spacing`` None/None-axis = native."""
    targets = list(target_spacing) if target_spacing is not None else [None, None, None]
    if len(size) != 3 or len(targets) != 3 or len(source_spacing) != 3:
        raise ValueError("size, source and target spacing need three values (z, y, x)")
    centre, step, resampled = [], [], []
    for c, s, src, tgt in zip(centroid, size, source_spacing, targets, strict=True):
        if int(s) < 1:
            raise ValueError(f"crop size must be positive, got {tuple(size)}")
        if tgt is None:
            start = math.floor(c - (s - 1) / 2 + 0.5)
            centre.append(start + (s - 1) / 2)
            step.append(1.0)
        else:
            if tgt <= 0 or src <= 0:
                raise ValueError(f"spacings must be positive, got target {tgt}, source {src}")
            centre.append(float(c))
            step.append(float(tgt) / float(src))
        resampled.append(tgt is not None)
    return CropGeometry(tuple(centre), tuple(step), tuple(int(s) for s in size), tuple(resampled))


def source_box(geometry: CropGeometry) -> tuple[list[int], list[int]]:
    """Half-open source index box ``[lo, hi)`` holding every voxel the crop reads, per axis."""
    lo, hi = [], []
    for axis in range(3):
        coords = geometry.coordinates(axis)
        if geometry.resampled[axis]:
            lo.append(math.floor(coords[0]) - SPLINE_MARGIN)
            hi.append(math.floor(coords[-1]) + 2 + SPLINE_MARGIN)
        else:
            lo.append(round(coords[0]))
            hi.append(round(coords[-1]) + 1)
    return lo, hi


def read_padded_box(
    volume_path: str | Path, shape: Sequence[int], lo: Sequence[int], hi: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Image and label map of the box ``[lo, hi)``; the part outside the volume is air / 0.

    Only the intersection with the volume is read from the file.
    """
    box_shape = tuple(h - low for low, h in zip(lo, hi, strict=True))
    image = np.full(box_shape, AIR_HU, dtype=np.int16)
    mask = np.zeros(box_shape, dtype=np.uint16)
    if (parts := overlap(shape, lo, hi)) is not None:
        image[parts[1]], mask[parts[1]], _ = read_volume(volume_path, region=parts[0])
    return image, mask


def _resample(box: np.ndarray, geometry: CropGeometry, lo: Sequence[int], order: int) -> np.ndarray:
    offset = [geometry.coordinates(axis)[0] - lo[axis] for axis in range(3)]
    return ndimage.affine_transform(
        box,
        np.asarray(geometry.step),
        offset=offset,
        output_shape=geometry.size,
        order=order,
        mode="nearest",
        output=np.float32,
    )


def cut_crop(
    image_box: np.ndarray,
    mask_box: np.ndarray,
    geometry: CropGeometry,
    lo: Sequence[int],
    label: int,
    mask_interpolation: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image int16, mask uint8, other uint8)`` of the crop from a box read at ``lo``."""
    this = mask_box == label
    other = (mask_box > 0) & ~this
    if not any(geometry.resampled):  # the box is the crop: copy, no interpolation
        return image_box.copy(), this.astype(np.uint8), other.astype(np.uint8)
    if mask_interpolation not in MASK_INTERPOLATIONS:
        raise ValueError(f"mask_interpolation must be one of {MASK_INTERPOLATIONS}")
    info = np.iinfo(np.int16)
    image = np.clip(np.rint(_resample(image_box, geometry, lo, order=3)), info.min, info.max)
    if mask_interpolation == "nearest":
        labels = _resample(mask_box.astype(np.float32), geometry, lo, order=0)
        labels = np.rint(labels).astype(np.int64)
        this_crop, other_crop = labels == label, (labels > 0) & (labels != label)
    else:
        this_crop = _resample(this.astype(np.float32), geometry, lo, order=1) >= 0.5
        other_crop = _resample(other.astype(np.float32), geometry, lo, order=1) >= 0.5
    return image.astype(np.int16), this_crop.astype(np.uint8), other_crop.astype(np.uint8)


def outside_fraction(geometry: CropGeometry, shape: Sequence[int]) -> float:
    """Share of crop voxels whose sample point lies outside the volume (padding)."""
    inside = 1.0
    for axis in range(3):
        coords = geometry.coordinates(axis)
        inside *= np.mean((coords >= -0.5) & (coords <= shape[axis] - 0.5))
    return float(1.0 - inside)


def fits_in_crop(geometry: CropGeometry, bbox: Sequence[int]) -> bool:
    """Whether the nodule's half-open voxel bbox ``(z0, z1, y0, y1, x0, x1)`` lies in the crop."""
    for axis in range(3):
        first, last = geometry.extent(axis)
        b0, b1 = bbox[2 * axis] - 0.5, bbox[2 * axis + 1] - 0.5
        if b0 < first - 1e-6 or b1 > last + 1e-6:
            return False
    return True


@dataclass
class SourceVolume:
    """Shape and spacing of one HDF5 volume, checked against the nodule table."""

    path: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @classmethod
    def open(cls, path: Path, series_uid: str) -> SourceVolume:
        with volume_files.open_hdf5(path) as file:  # names a missing, corrupt or failed one
            volume_files.check_volume(file, path)
            shape = tuple(int(n) for n in file["image"].shape)
            spacing = tuple(float(v) for v in np.ravel(file.attrs.get("spacing", [])))
            stored_uid = file.attrs.get("series_uid")
        if len(shape) != 3 or len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(
                f"{path}: needs a 3-D image and attribute spacing (z, y, x) > 0, "
                f"got shape {shape}, spacing {spacing}"
            )
        if stored_uid is not None and str(stored_uid) != series_uid:
            raise ValueError(f"{path}: holds series {stored_uid}, nodule table says {series_uid}")
        return cls(path, shape, spacing)


def crop_nodule(
    volume: SourceVolume,
    nodule: pd.Series,
    size: Sequence[int],
    target_spacing: Sequence[float | None] | None,
    mask_interpolation: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Crop one nodule row of nodules.csv; returns image, mask, other and its crops.csv row."""
    centroid = [float(nodule[f"centroid_{a}"]) for a in AXES]
    if any(not -0.5 <= c <= n - 0.5 for c, n in zip(centroid, volume.shape, strict=True)):
        raise ValueError(
            f"nodule {nodule['nodule_id']}: centroid {centroid} lies outside {volume.path} "
            f"(shape {volume.shape})"
        )
    geometry = crop_geometry(centroid, size, volume.spacing, target_spacing)
    lo, hi = source_box(geometry)
    image_box, mask_box = read_padded_box(volume.path, volume.shape, lo, hi)
    label = int(nodule["label"])
    if not np.any(mask_box == label):
        raise ValueError(
            f"{volume.path}: no voxel of label {label} (nodule {nodule['nodule_id']}) near its "
            f"centroid {centroid}; volume and nodule table disagree"
        )
    image, mask, other = cut_crop(image_box, mask_box, geometry, lo, label, mask_interpolation)
    bbox = [int(nodule[f"bbox_{a}{end}"]) for a in AXES for end in (0, 1)]
    spacing = [
        volume.spacing[axis] * geometry.step[axis]
        if geometry.resampled[axis]
        else volume.spacing[axis]
        for axis in range(3)
    ]
    row = {
        "nodule_id": nodule["nodule_id"],
        "patient_id": nodule["patient_id"],
        "series_uid": nodule["series_uid"],
        **{f"center_{a}": round(geometry.centre[i], 6) for i, a in enumerate(AXES)},
        **{f"spacing_{a}": round(spacing[i], 6) for i, a in enumerate(AXES)},
        "diameter_mm": nodule["diameter_mm"],
        "n_readers": int(nodule["n_readers"]),
        "label": label,
        **{f"centroid_{a}": centroid[i] for i, a in enumerate(AXES)},
        **{f"source_spacing_{a}": volume.spacing[i] for i, a in enumerate(AXES)},
        "outside_fraction": round(outside_fraction(geometry, volume.shape), 6),
        "fits_in_crop": fits_in_crop(geometry, bbox),
        "mask_voxels": int(mask.sum()),
        "other_voxels": int(other.sum()),
    }
    return image, mask, other, row


def volume_locator(volumes: str | Path | Sequence[str | Path]):
    """``(patient_id, series_uid) -> path``: a folder of ``<patient>/<series>.h5``, or the files."""
    if isinstance(volumes, str | Path):
        return lambda patient, series: Path(volumes) / patient / f"{series}.h5"
    by_series = {Path(p).name[: -len(".h5")]: Path(p) for p in volumes}

    def locate(patient: str, series: str) -> Path:
        if series not in by_series:
            raise InputError(
                f"no volume of series {series} ({patient}) among the {len(by_series)} given; "
                "was it converted? (results/index/series.csv)"
            )
        return by_series[series]

    return locate


def write_crops(
    nodules_csv: str | Path,
    volumes: str | Path | Sequence[str | Path],
    out_h5: str | Path,
    out_csv: str | Path,
    *,
    size: Sequence[int],
    target_spacing: Sequence[float | None] | None,
    mask_interpolation: str,
    compression: str,
) -> pd.DataFrame:
    """Crop every training nodule of ``nodules_csv`` from its volume: ``volumes`` is a folder of
    ``<patient>/<series>.h5`` or the list of volume files. The settings are ``crops`` keys
    (:class:`CropSettings`, ``spacing`` as ``target_spacing``); they have no defaults here.

    Writes ``out_h5`` (``image``, ``mask``, ``other``; one chunk per crop) and ``out_csv`` (row i =
    crop i), both atomically, and returns the table.
    """
    if mask_interpolation not in MASK_INTERPOLATIONS:
        raise ValueError(f"mask_interpolation must be one of {MASK_INTERPOLATIONS}")
    locate = volume_locator(volumes)
    if target_spacing is not None and all(t is None for t in target_spacing):
        target_spacing = None  # every axis native
    nodules = training_nodules(nodules_csv)
    size = tuple(int(s) for s in size)
    shape = (len(nodules), *size)
    rows, volumes = [], {}
    options = compression_options(compression)
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as file:
        chunks = (1, *size)
        datasets = {
            "image": file.create_dataset("image", shape, np.int16, chunks=chunks, **options),
            "mask": file.create_dataset("mask", shape, np.uint8, chunks=chunks, **options),
            "other": file.create_dataset("other", shape, np.uint8, chunks=chunks, **options),
        }
        datasets["image"].attrs["units"] = "HU"
        datasets["mask"].attrs["meaning"] = "1 = this crop's nodule"
        datasets["other"].attrs["meaning"] = "1 = any other nodule of the series"
        for i, nodule in nodules.iterrows():
            series_uid = str(nodule["series_uid"])
            if series_uid not in volumes:
                path = locate(str(nodule["patient_id"]), series_uid)
                volumes[series_uid] = SourceVolume.open(path, series_uid)
            image, mask, other, row = crop_nodule(
                volumes[series_uid], nodule, size, target_spacing, mask_interpolation
            )
            datasets["image"][i], datasets["mask"][i], datasets["other"][i] = image, mask, other
            rows.append(row)
            if not row["fits_in_crop"]:
                logger.warning("nodule %s extends beyond its crop", row["nodule_id"])
        file.attrs["size"] = size
        file.attrs["target_spacing"] = str(list(target_spacing) if target_spacing else None)
        file.attrs["image_interpolation"] = "cubic B-spline" if target_spacing else "none"
        file.attrs["mask_interpolation"] = mask_interpolation if target_spacing else "none"
        file.attrs["pad_hu"] = AIR_HU
    table = pd.DataFrame(rows, columns=CONTRACT_COLUMNS + EXTRA_COLUMNS)
    write_csv_atomic(out_csv, table)
    logger.info(
        "%d crops of %s voxels from %d volumes -> %s; %d padded at a border, %d larger than "
        "their crop",
        len(table),
        "x".join(map(str, size)),
        len(volumes),
        out_h5,
        int((table["outside_fraction"] > 0).sum()),
        int((~table["fits_in_crop"]).sum()),
    )
    return table


def run_crops(
    *, nodules: str, volumes: list[str], crops: str, table: str, settings: CropSettings
) -> None:
    """Cut a crop around every training nodule of ``nodules`` from its volume in ``volumes``."""
    write_crops(
        nodules,
        volumes,
        crops,
        table,
        size=settings.size,
        target_spacing=settings.spacing,
        mask_interpolation=settings.mask_interpolation,
        compression=settings.compression,
    )
