"""Step 3: what each segmented nodule measures: nodules.csv.

Columns (a stable interface, docs/predict.md): ``label`` (value in nodules.nii.gz and segment
number in nodules.seg.dcm), ``coordX, coordY, coordZ`` (mask centroid, DICOM patient
coordinates in mm, LUNA16's order), ``center_z, center_y, center_x`` (the same point in scan
voxels: slice, row, column in the series' sorted slice order), ``probability`` (the detector's,
the candidate's maximum), ``diameter_mm`` (greatest axial diameter: the longest distance
between two mask voxel centres in one slice, plus one pixel spacing for the voxels' extent),
``volume_mm3``, ``mean_hu``, ``std_hu``, ``voxels``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.distance import pdist

COLUMNS = [
    "label",
    "coordX",
    "coordY",
    "coordZ",
    "center_z",
    "center_y",
    "center_x",
    "probability",
    "diameter_mm",
    "volume_mm3",
    "mean_hu",
    "std_hu",
    "voxels",
]


def voxel_to_patient(points_zyx: np.ndarray, spacing, origin, direction) -> np.ndarray:
    """Scan voxels (N, 3) z y x -> DICOM patient coordinates (N, 3) as x, y, z mm."""
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    scaled = np.asarray(points_zyx, dtype=float).reshape(-1, 3) * np.asarray(spacing, dtype=float)
    return (np.asarray(origin, dtype=float) + scaled @ matrix)[:, ::-1]


def axial_diameter_mm(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Greatest in-slice distance between voxel centres of ``mask`` plus one pixel spacing."""
    pixel = (float(spacing[1]) + float(spacing[2])) / 2
    longest = 0.0
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        layer = mask[z]
        edge = layer & ~ndimage.binary_erosion(layer)  # the longest chord ends on the edge
        points = np.argwhere(edge) * np.array([spacing[1], spacing[2]], dtype=float)
        if len(points) > 1:
            longest = max(longest, float(pdist(points).max()))
    return longest + pixel


def measure_nodules(
    image: np.ndarray,
    labels: np.ndarray,
    probabilities: Sequence[float],
    spacing,
    origin,
    direction,
) -> pd.DataFrame:
    """One nodules.csv row per label 1..N of ``labels`` (``probabilities[k-1]`` its detection)."""
    rows = []
    voxel_volume = float(np.prod(spacing))
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        mask = labels[found] == index
        coords = np.argwhere(mask) + np.array([s.start for s in found])
        centre = coords.mean(axis=0)
        world = voxel_to_patient(centre, spacing, origin, direction)[0]
        values = image[found][mask].astype(np.float64)
        rows.append(
            {
                "label": index,
                "coordX": world[0],
                "coordY": world[1],
                "coordZ": world[2],
                "center_z": centre[0],
                "center_y": centre[1],
                "center_x": centre[2],
                "probability": float(probabilities[index - 1]),
                "diameter_mm": axial_diameter_mm(mask, spacing),
                "volume_mm3": len(coords) * voxel_volume,
                "mean_hu": float(values.mean()),
                "std_hu": float(values.std()),
                "voxels": len(coords),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)
