"""Candidates from a probability map: connected components above a low threshold.

Each component (26-connected, probability >= ``threshold``) is one candidate: centre = the
probability-weighted centroid of its voxels (sub-voxel), probability = the component's maximum,
``diameter_mm`` = the diameter of a sphere of the component's volume. At most ``max_candidates``
are kept, highest probability first (ties: lower centre z, y, x first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

COLUMNS = ("center_z", "center_y", "center_x", "probability", "diameter_mm", "voxels")


def find_candidates(
    probability: np.ndarray,
    threshold: float,
    max_candidates: int,
    spacing_mm: Sequence[float],
) -> pd.DataFrame:
    """The candidates of one ``(D, H, W)`` probability map, in its voxel coordinates."""
    probability = np.asarray(probability, dtype=np.float32)
    labels, n = ndimage.label(probability >= threshold, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in COLUMNS})
    index = np.arange(1, n + 1)
    centres = np.array(ndimage.center_of_mass(probability, labels, index)).reshape(-1, 3)
    peaks = np.asarray(ndimage.maximum(probability, labels, index), dtype=float)
    voxels = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    volume = voxels * float(np.prod(spacing_mm))
    frame = pd.DataFrame(
        {
            "center_z": centres[:, 0],
            "center_y": centres[:, 1],
            "center_x": centres[:, 2],
            "probability": peaks,
            "diameter_mm": np.cbrt(6.0 * volume / np.pi),
            "voxels": voxels.astype(int),
        }
    )
    frame = frame.sort_values(
        ["probability", "center_z", "center_y", "center_x"],
        ascending=[False, True, True, True],
        kind="stable",
    )
    return frame.head(max_candidates).reset_index(drop=True)
