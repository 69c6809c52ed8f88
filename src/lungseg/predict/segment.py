"""Step 2: the crop model on each detection, masks pasted back into the scan's own grid.

Each kept candidate gets the crop the segmenter was trained on, centred on the candidate
(:func:`lungseg.dataset.crops.crop_geometry`: ``crop_size`` voxels at ``target_spacing``, cubic
B-spline image, air outside the scan). The crop's probability map is resampled (trilinear) onto
the scan voxels inside the crop's extent; the voxels at or above ``mask_threshold`` that form
the component nearest the candidate's centre are the nodule. Where two nodules claim a voxel,
the higher probability wins. Labels are 1..N in order of detection probability; a candidate
whose mask ends up empty is dropped (logged).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from lungseg.dataset.boxes import padded_box
from lungseg.dataset.crops import AIR_HU, crop_geometry, cut_crop, source_box
from lungseg.inference.model import predict

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Piece:
    """One candidate's probability on the scan voxels ``[lo, lo + probability.shape)``."""

    lo: tuple[int, int, int]
    probability: np.ndarray
    centre: tuple[float, float, float]


def paste_region(geometry, shape: Sequence[int]) -> tuple[list[int], list[int]]:
    """Half-open scan voxel box whose centres lie inside the crop's extent (clipped to scan)."""
    lo, hi = [], []
    for axis in range(3):
        first, last = geometry.extent(axis)
        lo.append(max(0, math.ceil(first - 1e-6)))
        hi.append(min(int(shape[axis]), math.floor(last + 1e-6) + 1))
    return lo, hi


def crop_probability_to_scan(
    probability: np.ndarray, geometry, lo: Sequence[int], hi: Sequence[int]
) -> np.ndarray:
    """The crop's probability sampled (trilinear) at scan voxels ``[lo, hi)``."""
    step = np.asarray(geometry.step, dtype=float)
    first = np.array([geometry.coordinates(a)[0] for a in range(3)])
    return ndimage.affine_transform(
        probability.astype(np.float32, copy=False),
        1.0 / step,
        offset=(np.asarray(lo, dtype=float) - first) / step,
        output_shape=tuple(h - low for low, h in zip(lo, hi, strict=True)),
        order=1,
        mode="nearest",
    )


def segment_candidates(
    image: np.ndarray,
    spacing: Sequence[float],
    candidates: pd.DataFrame,
    model: torch.nn.Module | Sequence[torch.nn.Module],
    bundle: dict,
) -> list[Piece]:
    """The crop model's probability around every candidate, on scan voxels (``model`` a
    sequence: the ensemble's mean probability, :func:`lungseg.inference.model.predict`)."""
    pieces = []
    for row in candidates.itertuples():
        centre = (float(row.center_z), float(row.center_y), float(row.center_x))
        geometry = crop_geometry(centre, bundle["crop_size"], spacing, bundle["target_spacing"])
        paste_lo, paste_hi = paste_region(geometry, image.shape)
        if any(low >= high for low, high in zip(paste_lo, paste_hi, strict=True)):
            # a detection on the canvas' padding, beyond the scan (e.g. a scan smaller than the
            # detector's canvas): no scan voxel to segment
            logger.info("candidate at %s (scan voxels) lies outside the scan: dropped", centre)
            continue
        lo, hi = source_box(geometry)
        box = padded_box(image, lo, hi, AIR_HU)
        # the image only: an empty mask, any interpolation (nearest is the cheaper)
        crop, _, _ = cut_crop(box, np.zeros(box.shape, np.uint8), geometry, lo, 1, "nearest")
        probability = predict(model, crop[None], bundle["settings"], batch_size=1)[0]
        scan_probability = crop_probability_to_scan(probability, geometry, paste_lo, paste_hi)
        pieces.append(Piece(tuple(paste_lo), scan_probability, centre))
    return pieces


def nearest_component(mask: np.ndarray, centre: Sequence[float]) -> np.ndarray:
    """The 26-connected component of ``mask`` holding (else nearest to) ``centre`` (box voxels)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return labels > 0
    point = tuple(int(np.clip(round(c), 0, s - 1)) for c, s in zip(centre, mask.shape, strict=True))
    if labels[point]:
        return labels == labels[point]
    coords = np.argwhere(labels > 0)
    nearest = np.argmin(((coords - np.asarray(centre)) ** 2).sum(axis=1))
    return labels == labels[tuple(coords[nearest])]


def label_map(
    shape: Sequence[int], pieces: Sequence[Piece], threshold: float
) -> tuple[np.ndarray, list[int]]:
    """(uint16 label map, index of the piece behind each label 1..N) of the pasted masks."""
    labels = np.zeros(tuple(shape), dtype=np.uint16)
    best = np.zeros(tuple(shape), dtype=np.float32)
    regions = []
    for k, piece in enumerate(pieces, start=1):
        local_centre = [c - low for c, low in zip(piece.centre, piece.lo, strict=True)]
        mask = nearest_component(piece.probability >= threshold, local_centre)
        region = tuple(
            slice(low, low + n) for low, n in zip(piece.lo, piece.probability.shape, strict=True)
        )
        take = mask & (piece.probability > best[region])
        labels[region][take] = k
        best[region][take] = piece.probability[take]
        regions.append(region)
    # A label can only lie in its own piece's region: look there, not over the whole scan.
    present = [k for k, region in enumerate(regions, start=1) if np.any(labels[region] == k)]
    for k in set(range(1, len(pieces) + 1)) - set(present):
        logger.info("detection %d: empty mask after thresholding and overlaps; dropped", k)
    renumber = np.zeros(len(pieces) + 1, dtype=np.uint16)
    renumber[present] = np.arange(1, len(present) + 1)
    return renumber[labels], [k - 1 for k in present]
