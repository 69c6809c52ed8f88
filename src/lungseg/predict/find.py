"""Step 1 of a prediction: the detector on the whole scan, candidates above its operating point.

The scan goes through the same transformation as the detector's validation scans
(:func:`lungseg.detection.inference.search_volume`: the bundle's ``detection.volumes``
settings, at the detector's ``test_spacing`` when it has one; resampling, lung box, canvas,
grown where the lungs exceed it), then one pass of the network (or MONAI's sliding windows, as
trained). Candidates are the probability map's peaks or components, as the detector was trained
(:func:`lungseg.detection.candidates.candidates_of`, the validation's settings), their centres
mapped back to scan voxels; a second stage (a bundle with a ``rescorer``) re-scores and
re-centres them; those at or above the operating-point threshold are kept.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import torch

from lungseg.detection.candidates import candidates_of
from lungseg.detection.inference import probability_map, search_volume
from lungseg.detection.rescore import rescore_scan, trained_shape_weight
from lungseg.detection.volumes import to_source_voxels
from lungseg.inference.model import predict

logger = logging.getLogger(__name__)

COLUMNS = ["center_z", "center_y", "center_x", "probability", "diameter_mm"]


def operating_threshold(bundle: dict) -> float:
    """The bundle's threshold; +inf (nothing kept) when the FROC never reached the target."""
    value = (bundle.get("operating_point") or {}).get("threshold")
    if value is None or not math.isfinite(float(value)):
        return math.inf
    return float(value)


def detect_candidates(
    image: np.ndarray,
    spacing,
    model: torch.nn.Module,
    bundle: dict,
    rescorer: torch.nn.Module | None = None,
) -> pd.DataFrame:
    """Kept candidates of one scan: centre in scan voxels (z, y, x), probability, diameter.

    A bundle with a ``rescorer`` (a second stage; ``rescorer`` its network): every stage-1
    candidate is re-scored and re-centred (:func:`lungseg.detection.rescore.rescore_scan`)
    before the operating point applies, as in the validation."""
    settings = bundle["settings"]
    trained = {**settings, "volumes": bundle["volumes"]}
    hu, geometry, volumes = search_volume(image, spacing, trained)
    if list(hu.shape) != [int(s) for s in volumes.shape]:
        logger.info(
            "searched at %s mm on a canvas of %s, grown from the detector's %s to hold the lungs",
            list(volumes.spacing),
            list(hu.shape),
            list(volumes.shape),
        )
    probability = probability_map(model, hu, settings)
    found = candidates_of(probability, settings, volumes.spacing)
    centres = to_source_voxels(found[["center_z", "center_y", "center_x"]].to_numpy(), geometry)
    found = pd.DataFrame(
        {
            "center_z": centres[:, 0] if len(found) else [],
            "center_y": centres[:, 1] if len(found) else [],
            "center_x": centres[:, 2] if len(found) else [],
            "probability": found["probability"].to_numpy(),
            "diameter_mm": found["diameter_mm"].to_numpy(),
        },
        columns=COLUMNS,
    )
    if "rescorer" in bundle:
        found = second_stage(image, spacing, found, rescorer, bundle["rescorer"])
    threshold = operating_threshold(bundle)
    kept = found[found["probability"] >= threshold].reset_index(drop=True)
    logger.info(
        "detector: %d candidate(s), %d at or above the operating point %.3f",
        len(found),
        len(kept),
        threshold,
    )
    return kept


def second_stage(
    image: np.ndarray, spacing, found: pd.DataFrame, model: torch.nn.Module | None, rescorer: dict
) -> pd.DataFrame:
    """Stage 1's candidates re-scored by the bundle's second stage (at most max_candidates)."""
    if model is None:
        raise ValueError(f"{rescorer.get('name')}: a second-stage bundle needs its crop model")
    settings = rescorer["settings"]
    out = rescore_scan(
        image,
        spacing,
        found,
        lambda crops: predict(model, crops, settings, batch_size=16),
        rescorer["crop_size"],
        rescorer["target_spacing"],
        float(settings["rescore_stage1_weight"]),
        trained_shape_weight(settings),
    )
    return out.head(int(settings["max_candidates"]))[COLUMNS]
