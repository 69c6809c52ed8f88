"""A detector applied to whole detection volumes: one pass, or MONAI's sliding windows.

Mode ``whole`` runs the network once on the whole canvas; mode ``patch`` runs
``monai.inferers.sliding_window_inference`` with windows of ``patch_size``, ``sw_overlap`` and
Gaussian blending of overlapping windows (nnU-Net's choice). Both return full-resolution logits
``(B, 1, D, H, W)`` of the model's first output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lungseg.training.data import normalise_hu


def volume_logits(model: torch.nn.Module, images: torch.Tensor, settings: Mapping[str, Any]):
    """Logits ``(B, 1, D, H, W)`` of normalised images ``(B, 1, D, H, W)`` on the model's device."""
    if settings["mode"] == "whole":
        return model(images)[0]
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(
        images,
        roi_size=tuple(int(s) for s in settings["patch_size"]),
        sw_batch_size=int(settings["sw_batch_size"]),
        predictor=lambda windows: model(windows)[0],
        overlap=float(settings["sw_overlap"]),
        mode="gaussian",
    )


@torch.no_grad()
def probability_map(
    model: torch.nn.Module, image_hu: np.ndarray, settings: Mapping[str, Any]
) -> np.ndarray:
    """Nodule probability ``(D, H, W)`` float32 of one int16 HU canvas (training window)."""
    device = next(model.parameters()).device
    model.eval()
    x = torch.from_numpy(normalise_hu(image_hu, settings["hu_min"], settings["hu_max"]))
    logits = volume_logits(model, x[None, None].to(device), settings)
    return torch.sigmoid(logits.float())[0, 0].cpu().numpy()
