"""Segmentation metrics in physical units: Dice, IoU, 95 % Hausdorff distance, surface Dice.

Masks are boolean arrays of the same shape (any number of dimensions, normally ``(z, y, x)``);
``spacing`` is the voxel size in mm per axis, in the same order, so anisotropic CT voxels
(2.5 x 0.7 x 0.7 mm) are measured in millimetres, not in voxels.

Surfaces are the mask voxels with at least one face neighbour (6-connectivity in 3D) outside the
mask; voxels on the array border count as surface (the outside of the array is background).
Distances run between surface voxel centres (Euclidean distance transform with ``sampling =
spacing``), as in MONAI's ``compute_hausdorff_distance`` and ``compute_surface_dice``.

Empty masks (defined so every case has a value and summaries stay meaningful):

==================  ======  ======  =========  =====================
case                dice    iou     hd95_mm    surface_dice
==================  ======  ======  =========  =====================
both empty          1.0     1.0     0.0        1.0
one of them empty   0.0     0.0     nan        0.0
==================  ======  ======  =========  =====================

Both empty is a perfect answer ("no nodule here", and nothing predicted). With one mask empty a
distance to the other's surface does not exist, so the Hausdorff distance is ``nan`` (as in
MONAI); summaries report such cases by count (:func:`segmentation_metrics` returns the volumes).

Dice itself lives in :mod:`lungseg.inference.metrics`: training picks ``best.pt`` by it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from lungseg.inference.metrics import check_pair, dice

#: Tolerance of the surface Dice reported by the workflow (mm).
SURFACE_TOLERANCE_MM = 1.0


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union (Jaccard index); 1.0 when both masks are empty."""
    predicted, truth = check_pair(predicted, truth)
    union = int(np.logical_or(predicted, truth).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(predicted, truth).sum()) / union


def volume_mm3(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a mask in mm^3: voxel count times voxel volume."""
    return float(np.asarray(mask, dtype=bool).sum()) * float(np.prod(spacing))


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: mask voxels with a face neighbour outside the mask or the array."""
    mask = np.asarray(mask, dtype=bool)
    face_neighbours = ndimage.generate_binary_structure(mask.ndim, 1)
    interior = ndimage.binary_erosion(mask, structure=face_neighbours, border_value=0)
    return mask & ~interior


def surface_distances(
    predicted: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each predicted surface voxel to the true surface, and back.

    Both masks must be non-empty.
    """
    predicted, truth = check_pair(predicted, truth, spacing)
    if not predicted.any() or not truth.any():
        raise ValueError("surface distances need two non-empty masks")
    predicted_surface, true_surface = surface(predicted), surface(truth)
    to_truth = ndimage.distance_transform_edt(~true_surface, sampling=spacing)
    to_predicted = ndimage.distance_transform_edt(~predicted_surface, sampling=spacing)
    return to_truth[predicted_surface], to_predicted[true_surface]


def _hd95(predicted_to_truth: np.ndarray, truth_to_predicted: np.ndarray) -> float:
    # MONAI's convention: the larger of the two directed 95th percentiles.
    return float(max(np.percentile(predicted_to_truth, 95), np.percentile(truth_to_predicted, 95)))


def _surface_dice(
    predicted_to_truth: np.ndarray, truth_to_predicted: np.ndarray, tolerance_mm: float
) -> float:
    close = np.count_nonzero(predicted_to_truth <= tolerance_mm) + np.count_nonzero(
        truth_to_predicted <= tolerance_mm
    )
    return close / (predicted_to_truth.size + truth_to_predicted.size)


def hausdorff95(predicted: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95 % Hausdorff distance in mm: max of the two directed 95th percentile surface distances.

    0.0 when both masks are empty, ``nan`` when exactly one is.
    """
    predicted, truth = check_pair(predicted, truth, spacing)
    if not predicted.any() and not truth.any():
        return 0.0
    if not predicted.any() or not truth.any():
        return float("nan")
    return _hd95(*surface_distances(predicted, truth, spacing))


def surface_dice(
    predicted: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = SURFACE_TOLERANCE_MM,
) -> float:
    """Normalised surface Dice: share of both surfaces within ``tolerance_mm`` of the other.

    Counted per surface voxel (Nikolov et al. 2021 weight by surface area; on the near-uniform
    in-plane grid of a crop the two agree closely). 1.0 when both masks are empty, 0.0 when
    exactly one is.
    """
    predicted, truth = check_pair(predicted, truth, spacing)
    if tolerance_mm < 0:
        raise ValueError(f"tolerance must be >= 0 mm, got {tolerance_mm}")
    if not predicted.any() and not truth.any():
        return 1.0
    if not predicted.any() or not truth.any():
        return 0.0
    return _surface_dice(*surface_distances(predicted, truth, spacing), tolerance_mm)


def segmentation_metrics(
    predicted: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = SURFACE_TOLERANCE_MM,
) -> dict[str, float]:
    """All metrics of one case, computing the surface distances once.

    Keys: ``dice, iou, hd95_mm, surface_dice_1mm`` (named for the default tolerance whatever
    ``tolerance_mm`` is), ``predicted_volume_mm3, true_volume_mm3``.
    """
    predicted, truth = check_pair(predicted, truth, spacing)
    result = {
        "dice": dice(predicted, truth),
        "iou": iou(predicted, truth),
        "predicted_volume_mm3": volume_mm3(predicted, spacing),
        "true_volume_mm3": volume_mm3(truth, spacing),
    }
    if predicted.any() and truth.any():
        distances = surface_distances(predicted, truth, spacing)
        result["hd95_mm"] = _hd95(*distances)
        result["surface_dice_1mm"] = _surface_dice(*distances, tolerance_mm)
    else:
        result["hd95_mm"] = hausdorff95(predicted, truth, spacing)
        result["surface_dice_1mm"] = surface_dice(predicted, truth, spacing, tolerance_mm)
    return result
