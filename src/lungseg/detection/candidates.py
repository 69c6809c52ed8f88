"""Candidates from a probability map: its peaks, or its connected components above a threshold.

:func:`candidates_of` picks the detector's ``candidate_method``: ``peaks``
(:func:`lungseg.detection.heatmap.find_peaks`, for heatmap-trained detectors) or
``components``. With components, each component (26-connected, probability >= ``threshold``)
is one candidate: centre = the probability-weighted centroid of its voxels (sub-voxel),
probability = the component's maximum, ``diameter_mm`` = the diameter of a sphere of the
component's volume. At most ``max_candidates`` are kept, highest probability first (ties: lower
centre z, y, x first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from lungseg.detection.heatmap import find_peaks

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


def candidates_of(
    probability: np.ndarray,
    settings: Mapping[str, Any],
    spacing_mm: Sequence[float],
    threshold: float | None = None,
    max_candidates: int | None = None,
) -> pd.DataFrame:
    """Candidates by the trained detector's ``candidate_method`` (``settings``: its best.pt's).

    ``threshold`` and ``max_candidates`` default to the trained detector's.
    """
    method = settings["candidate_method"]
    threshold = float(settings["candidate_threshold"] if threshold is None else threshold)
    limit = int(settings["max_candidates"] if max_candidates is None else max_candidates)
    if method == "peaks":
        return find_peaks(probability, threshold, limit, spacing_mm)
    if method == "components":
        return find_candidates(probability, threshold, limit, spacing_mm)
    raise ValueError(f"candidate_method: peaks or components, got {method!r}")
