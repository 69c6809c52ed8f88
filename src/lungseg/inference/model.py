"""A trained model applied: the device, a checkpoint's model, the crop model's forward pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungseg.core.settings import schema_defaults
from lungseg.inference.checkpoint import read_checkpoint
from lungseg.inference.intensity import normalise_hu
from lungseg.nets.models import build_model


def choose_device(requested: str = "auto") -> torch.device:
    """``cuda`` when present (or requested), else ``cpu``."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(requested)


def load_model(checkpoint_path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The trained model of a checkpoint (in eval mode, on ``device``) and its settings."""
    checkpoint = read_checkpoint(checkpoint_path, device)
    settings = dict(checkpoint["settings"])
    model = build_model(settings)
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), settings


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    images_hu: np.ndarray,
    settings: dict[str, Any],
    batch_size: int,
) -> np.ndarray:
    """Foreground probabilities ``(N, D, H, W)`` float32 for int16 HU crops ``(N, D, H, W)``.

    Applies the training intensity window (``hu_min``/``hu_max`` of ``settings``) and reads the
    full-resolution output; runs on the model's device in float32.
    """
    if images_hu.ndim != 4:
        raise ValueError(f"expected HU crops of shape (N, D, H, W), got {images_hu.shape}")
    window = {**schema_defaults("training"), **settings}  # as the trainer's settings read it
    hu_min, hu_max = window["hu_min"], window["hu_max"]
    device = next(model.parameters()).device
    model.eval()
    probabilities = np.empty(images_hu.shape, dtype=np.float32)
    for start in range(0, len(images_hu), batch_size):
        chunk = normalise_hu(images_hu[start : start + batch_size], hu_min, hu_max)
        logits = model(torch.from_numpy(chunk).unsqueeze(1).to(device))[0]
        probabilities[start : start + batch_size] = (
            torch.sigmoid(logits.float())[:, 0].cpu().numpy()
        )
    return probabilities
