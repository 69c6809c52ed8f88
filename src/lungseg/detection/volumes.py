"""Detection volumes: a scan cropped to its lungs, resampled, on a fixed canvas, with a target.

Steps (one scan, :func:`make_detection_volume`):

1. **Resample** the HU image to ``detection.volumes.spacing`` (mm, z y x): a Gaussian prefilter
   of ``sigma = 0.4 * step`` source voxels along every axis that is downsampled (against
   aliasing), then trilinear interpolation. Detection voxel ``j`` lies at source voxel
   ``offset + j * step`` (``step`` = target / source spacing; ``offset`` centres the grid).
2. **Lung box**: body = the largest 3-D connected component above ``body_threshold_hu``
   (default -500 HU: tissue, not air or lung); its axial slices are hole-filled, and the lungs are
   the filled body's voxels below the threshold, the two largest components (a component smaller
   than 5 % of the largest is dropped). The box is the lungs' bounding box grown by ``margin_mm``
   (the body's box when no lung is found, the whole scan when no body is).
3. **Canvas**: the box centred on a canvas of ``detection.volumes.shape`` voxels; outside the
   scan the canvas holds ``pad_hu`` (air). A box larger than the canvas is cut centrally
   (``clipped`` attribute, logged): choose the shape from the spacing and the largest lungs.
4. **Target** label map: 1 = a cohort nodule (``in_cohort`` in results/nodules.csv; the
   trilinearly resampled mask >= 0.5, plus the voxel of its centroid so that no nodule vanishes at
   a coarse spacing), 2 = :data:`IGNORE` = any other annotated finding (resampled mask > 0), which
   the loss skips (LUNA16's irrelevant findings), 0 = background.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from lungseg.core.errors import InputError
from lungseg.detection.settings import VolumeSettings
from lungseg.io.hdf5 import read_attrs, read_volume, write_failed_volume, write_volume

logger = logging.getLogger(__name__)

NODULE, IGNORE = 1, 2
FORMAT = 1


def resample_grid(
    source_shape: Sequence[int], source_spacing: Sequence[float], spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(step, offset, shape) of the resampled grid: detection voxel j = source offset + j*step."""
    n = np.asarray(source_shape, dtype=float)
    step = np.asarray(spacing, dtype=float) / np.asarray(source_spacing, dtype=float)
    shape = np.floor((n - 1) / step).astype(int) + 1
    offset = ((n - 1) - (shape - 1) * step) / 2
    return step, offset, tuple(int(s) for s in shape)


def resample(
    volume: np.ndarray, step: np.ndarray, offset: np.ndarray, shape: tuple[int, ...], cval: float
) -> np.ndarray:
    """Trilinear resampling of ``volume`` on the grid ``offset + j * step`` (float32)."""
    return ndimage.affine_transform(
        volume.astype(np.float32, copy=False),
        np.asarray(step, dtype=float),
        offset=np.asarray(offset, dtype=float),
        output_shape=shape,
        order=1,
        mode="constant",
        cval=cval,
        prefilter=False,
    )


def _largest_components(mask: np.ndarray, count: int, min_share: float) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:count]
    keep = [i + 1 for i in order if sizes[i] >= min_share * sizes[order[0]]]
    return np.isin(labels, keep)


def lung_box(
    image: np.ndarray, threshold_hu: float, margin_voxels: Sequence[int]
) -> tuple[tuple[int, int, int, int, int, int], str]:
    """Half-open (z0, z1, y0, y1, x0, x1) of the lungs (see module docstring) and what it is of."""
    body = _largest_components(image > threshold_hu, 1, 0.0)
    found = "lungs"
    if not body.any():
        region, found = np.ones(image.shape, dtype=bool), "scan"
    else:
        filled = np.stack([ndimage.binary_fill_holes(s) for s in body])
        region = _largest_components(filled & ~body, 2, 0.05)
        if not region.any():
            region, found = body, "body"
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(region.any(axis=other))
        lo = max(int(present[0]) - int(margin_voxels[axis]), 0)
        hi = min(int(present[-1]) + 1 + int(margin_voxels[axis]), image.shape[axis])
        box += [lo, hi]
    return tuple(box), found


def _canvas(volume: np.ndarray, start: Sequence[int], shape: Sequence[int], fill) -> np.ndarray:
    """``volume[start : start + shape]`` per axis, ``fill`` where that lies outside."""
    out = np.full(tuple(shape), fill, dtype=volume.dtype)
    src, dst = [], []
    for axis in range(3):
        lo, hi = start[axis], start[axis] + shape[axis]
        a, b = max(lo, 0), min(hi, volume.shape[axis])
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - lo, a - lo + max(0, b - a)))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def canvas_shape(box: Sequence[int], shape: Sequence[int], fit_multiple: int = 0) -> list[int]:
    """The canvas of a lung ``box`` (z0, z1, y0, y1, x0, x1): ``shape``; with ``fit_multiple``
    k > 0, an axis the box exceeds grows to the smallest multiple of k that holds it."""
    out = [int(s) for s in shape]
    if fit_multiple > 0:
        for a in range(3):
            extent = int(box[2 * a + 1]) - int(box[2 * a])
            if extent > out[a]:
                out[a] = -(-extent // fit_multiple) * fit_multiple
    return out


def make_detection_volume(
    image: np.ndarray,
    mask: np.ndarray | None,
    source_spacing: Sequence[float],
    nodules: pd.DataFrame | None,
    settings: VolumeSettings,
    fit_multiple: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(HU int16 canvas, uint8 target, geometry) of one scan; ``nodules``: its nodules.csv rows.

    ``mask`` and ``nodules`` None: an unannotated scan (``lungseg predict``), an empty target.
    ``fit_multiple`` > 0 (``lungseg predict``): a lung box larger than the canvas grows the
    canvas (:func:`canvas_shape`) instead of being cut, so that no part of the lungs goes
    unsearched; the workflow's volumes keep the fixed canvas (0).
    """
    step, offset, grid_shape = resample_grid(image.shape, source_spacing, settings.spacing)
    smoothed = image.astype(np.float32)
    sigma = [0.4 * s if s > 1 else 0.0 for s in step]
    if any(sigma):
        smoothed = ndimage.gaussian_filter(smoothed, sigma, mode="nearest")
    coarse = resample(smoothed, step, offset, grid_shape, float(settings.pad_hu))
    del smoothed
    margin = [int(np.ceil(settings.margin_mm / s)) for s in settings.spacing]
    box, found = lung_box(coarse, settings.body_threshold_hu, margin)
    shape = canvas_shape(box, settings.shape, fit_multiple)
    start = [int(round((box[2 * a] + box[2 * a + 1]) / 2 - shape[a] / 2)) for a in range(3)]
    clipped = any(box[2 * a + 1] - box[2 * a] > shape[a] for a in range(3))
    hu = np.clip(np.rint(_canvas(coarse, start, shape, float(settings.pad_hu))), -32768, 32767)

    if mask is None or nodules is None:
        cohort, labels = set(), np.zeros(0, dtype=int)
    else:
        cohort = set(nodules.loc[nodules["in_cohort"].astype(bool), "label"].astype(int))
        labels = np.unique(mask[mask > 0]).astype(int)
    target = np.zeros(shape, dtype=np.uint8)
    other_labels = [lab for lab in labels if lab not in cohort]
    if other_labels:
        other = resample(np.isin(mask, other_labels), step, offset, grid_shape, 0.0)
        target[_canvas(other, start, shape, 0.0) > 0] = IGNORE
    if cohort:
        fraction = resample(np.isin(mask, sorted(cohort)), step, offset, grid_shape, 0.0)
        target[_canvas(fraction, start, shape, 0.0) >= 0.5] = NODULE
        for _, row in nodules[nodules["label"].isin(cohort)].iterrows():
            centroid = np.array([row["centroid_z"], row["centroid_y"], row["centroid_x"]])
            voxel = np.rint((centroid - offset) / step).astype(int) - np.asarray(start)
            if all(0 <= v < s for v, s in zip(voxel, shape, strict=True)):
                target[tuple(voxel)] = NODULE
    canvas_offset = offset + np.asarray(start) * step  # source voxel of canvas voxel 0
    geometry = {
        "step": tuple(float(s) for s in step),
        "offset": tuple(float(o) for o in canvas_offset),
        "lung_box": tuple(float(offset[a // 2] + box[a] * step[a // 2]) for a in range(6)),
        "box_in_canvas": tuple(int(box[a] - start[a // 2]) for a in range(6)),
        "box_of": found,
        "clipped": bool(clipped),
        "n_nodules": len(cohort),
        "n_ignored": len(other_labels),
    }
    return hu.astype(np.int16), target, geometry


def detection_volume(
    *, volume: str, nodules: str, detection: str, settings: VolumeSettings
) -> None:
    """Write one scan's detection volume (HU canvas, target label map, geometry attributes).

    A series whose conversion failed (its volume is the placeholder ``convert`` leaves) gets a
    placeholder too, which the scan table leaves out: one bad series costs that series only.
    """
    source = read_attrs(volume)
    if source.get("conversion") == "failed":
        logger.warning("%s: conversion failed, no detection volume (%s)", volume, source["reason"])
        write_failed_volume(detection, source["patient_id"], source["series_uid"], source["reason"])
        return
    image, mask, attrs = read_volume(volume)
    table = pd.read_csv(nodules)
    missing = {"series_uid", "label", "in_cohort", "centroid_z"} - set(table.columns)
    if missing:
        raise InputError(f"{nodules}: missing column(s) {sorted(missing)}")
    own = table[table["series_uid"] == attrs["series_uid"]]
    hu, target, geometry = make_detection_volume(image, mask, attrs["spacing"], own, settings)
    if geometry["clipped"]:
        logger.warning(
            "%s: lung box larger than detection.volumes.shape %s at %s mm: cut centrally",
            volume,
            list(settings.shape),
            list(settings.spacing),
        )
    out_attrs = {
        "format": FORMAT,
        "patient_id": attrs["patient_id"],
        "study_uid": attrs.get("study_uid", ""),
        "series_uid": attrs["series_uid"],
        "spacing": tuple(float(s) for s in settings.spacing),
        "source": str(Path(volume)),
        "source_shape": tuple(int(s) for s in image.shape),
        "source_spacing": tuple(float(s) for s in attrs["spacing"]),
        "source_origin": tuple(float(s) for s in attrs["origin"]),
        "source_direction": tuple(float(s) for s in attrs["direction"]),
        "body_threshold_hu": float(settings.body_threshold_hu),
        "margin_mm": float(settings.margin_mm),
        "pad_hu": int(settings.pad_hu),
        "labels": {"background": 0, "nodule": NODULE, "ignore": IGNORE},
        **geometry,
    }
    write_volume(detection, hu, target, out_attrs, compression=settings.compression)
    logger.info(
        "%s: %s -> canvas %s at %s mm (box of %s %s), %d nodule(s), %d ignored finding(s)",
        attrs["series_uid"],
        image.shape,
        list(settings.shape),
        list(settings.spacing),
        geometry["box_of"],
        geometry["box_in_canvas"],
        geometry["n_nodules"],
        geometry["n_ignored"],
    )


def to_source_voxels(points_zyx: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """Detection-canvas voxel coordinates (N, 3) -> source volume voxel coordinates."""
    return np.asarray(attrs["offset"]) + np.asarray(points_zyx, dtype=float) * np.asarray(
        attrs["step"]
    )


def to_world(source_voxels_zyx: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """Source voxel (z, y, x) -> patient coordinates (N, 3) as (x, y, z) mm (LUNA16's order)."""
    direction = np.asarray(attrs["source_direction"], dtype=float).reshape(3, 3)
    scaled = np.asarray(source_voxels_zyx, dtype=float) * np.asarray(attrs["source_spacing"])
    patient_zyx = np.asarray(attrs["source_origin"], dtype=float) + scaled @ direction
    return patient_zyx[:, ::-1]
