"""Helpers of the prediction tests: predictor bundles.

- CT series: written by tests/dicom_writer.py (``write_series``), not here.
- ``tiny_bundles(dest, threshold=...)``: a detector and a segmenter bundle of small untrained
  networks (weights of a seeded initialisation), written with lungseg's bundle writer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lungseg.core.settings import schema_defaults
from lungseg.nets.models import build_model
from lungseg.predict.bundle import BUNDLE_FORMAT, DETECTOR, SEGMENTER, save_bundle


def _state(settings: dict, seed: int) -> dict:
    torch.manual_seed(seed)
    return build_model(settings).state_dict()


def tiny_bundles(dest: Path, threshold: float | None = 0.0) -> tuple[Path, Path]:
    """(detector.pt, segmenter.pt) of untrained width-2 U-Nets; detector canvas 8 mm."""
    dest.mkdir(parents=True, exist_ok=True)
    detection = schema_defaults("detection")
    volumes = detection.pop("volumes") | {"spacing": [8.0, 8.0, 8.0], "shape": [24, 48, 48]}
    detection.pop("resources")
    detector_settings = detection | {"arch": "unet", "mode": "whole", "channels": 2, "levels": 2}
    detector_settings["deep_supervision"] = False
    segmenter_settings = schema_defaults("training") | {"arch": "unet", "channels": 2, "levels": 2}
    segmenter_settings.pop("resources")
    detector = {
        "kind": DETECTOR,
        "format": BUNDLE_FORMAT,
        "name": "tiny_detector",
        "settings": detector_settings,
        "volumes": volumes,
        "operating_point": {"threshold": threshold, "fps_per_scan_target": 1.0},
        "epoch": 0,
        "model": _state(detector_settings, 0),
    }
    segmenter = {
        "kind": SEGMENTER,
        "format": BUNDLE_FORMAT,
        "name": "tiny_segmenter",
        "settings": segmenter_settings,
        "crop_size": [16, 16, 16],
        "target_spacing": [1.0, 1.0, 1.0],
        "epoch": 0,
        "model": _state(segmenter_settings, 1),
    }
    save_bundle(detector, dest / "detector.pt")
    save_bundle(segmenter, dest / "segmenter.pt")
    return dest / "detector.pt", dest / "segmenter.pt"
