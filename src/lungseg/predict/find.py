"""Step 1 of a prediction: the detector on the whole scan, candidates above its operating point.

The scan goes through the same transformation as the detection volumes the detector was trained
on (:func:`lungseg.detection.volumes.make_detection_volume` with the bundle's
``detection.volumes`` settings: resampling, lung box, canvas), then one pass of the network (or
MONAI's sliding windows, as trained). Candidates are the probability map's peaks or components,
as the detector was trained (:func:`lungseg.detection.candidates.candidates_of`, the
validation's settings); those at or above the operating-point threshold are kept, their centres
mapped back to scan voxels.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import torch

from lungseg.detection.candidates import candidates_of
from lungseg.detection.inference import probability_map
from lungseg.detection.settings import VolumeSettings
from lungseg.detection.volumes import make_detection_volume, to_source_voxels

logger = logging.getLogger(__name__)

COLUMNS = ["center_z", "center_y", "center_x", "probability", "diameter_mm"]


def operating_threshold(bundle: dict) -> float:
    """The bundle's threshold; +inf (nothing kept) when the FROC never reached the target."""
    value = (bundle.get("operating_point") or {}).get("threshold")
    if value is None or not math.isfinite(float(value)):
        return math.inf
    return float(value)


def detect_candidates(
    image: np.ndarray, spacing, model: torch.nn.Module, bundle: dict
) -> pd.DataFrame:
    """Kept candidates of one scan: centre in scan voxels (z, y, x), probability, diameter."""
    volumes = VolumeSettings.from_config(bundle["volumes"])
    hu, _target, geometry = make_detection_volume(image, None, spacing, None, volumes)
    if geometry["clipped"]:
        logger.warning(
            "lung box larger than the detector's canvas %s at %s mm: cut centrally",
            list(volumes.shape),
            list(volumes.spacing),
        )
    settings = bundle["settings"]
    probability = probability_map(model, hu, settings)
    found = candidates_of(probability, settings, volumes.spacing)
    threshold = operating_threshold(bundle)
    kept = found[found["probability"] >= threshold].reset_index(drop=True)
    logger.info(
        "detector: %d candidate(s), %d at or above the operating point %.3f (max probability %.3f)",
        len(found),
        len(kept),
        threshold,
        float(probability.max()),
    )
    centres = to_source_voxels(kept[["center_z", "center_y", "center_x"]].to_numpy(), geometry)
    return pd.DataFrame(
        {
            "center_z": centres[:, 0] if len(kept) else [],
            "center_y": centres[:, 1] if len(kept) else [],
            "center_x": centres[:, 2] if len(kept) else [],
            "probability": kept["probability"].to_numpy(),
            "diameter_mm": kept["diameter_mm"].to_numpy(),
        },
        columns=COLUMNS,
    )
