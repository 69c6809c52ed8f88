"""The intensity normalisation every model sees: HU clipped to a window, mapped to [0, 1]."""

from __future__ import annotations

import numpy as np
import torch


def normalise_hu(images_hu: np.ndarray | torch.Tensor, hu_min: float, hu_max: float):
    """Clip HU to ``[hu_min, hu_max]`` and map linearly to ``[0, 1]`` (float32)."""
    if hu_max <= hu_min:
        raise ValueError(f"intensity window needs hu_min < hu_max, got {hu_min}, {hu_max}")
    if isinstance(images_hu, torch.Tensor):
        return ((images_hu.float().clamp(hu_min, hu_max) - hu_min) / (hu_max - hu_min)).float()
    clipped = np.clip(images_hu.astype(np.float32), hu_min, hu_max)
    return ((clipped - hu_min) / (hu_max - hu_min)).astype(np.float32)
