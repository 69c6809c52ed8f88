"""A trained model applied: the device, a checkpoint's model, the crop model's forward pass."""

from __future__ import annotations

from collections.abc import Sequence
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


def _members(model: torch.nn.Module | Sequence[torch.nn.Module]) -> list[torch.nn.Module]:
    """The networks of ``model``: itself, or the members of an ensemble (at least one)."""
    if isinstance(model, torch.nn.Module):
        return [model]
    members = list(model)
    if not members or not all(isinstance(m, torch.nn.Module) for m in members):
        raise ValueError("expected a torch module or a non-empty sequence of them")
    return members


def _probability(model: torch.nn.Module, chunk: np.ndarray) -> np.ndarray:
    """Sigmoid of the full-resolution output of one model on normalised crops ``(n, D, H, W)``."""
    device = next(model.parameters()).device
    model.eval()
    logits = model(torch.from_numpy(chunk).unsqueeze(1).to(device))[0]
    return torch.sigmoid(logits.float())[:, 0].cpu().numpy()


@torch.no_grad()
def predict(
    model: torch.nn.Module | Sequence[torch.nn.Module],
    images_hu: np.ndarray,
    settings: dict[str, Any],
    batch_size: int,
) -> np.ndarray:
    """Foreground probabilities ``(N, D, H, W)`` float32 for int16 HU crops ``(N, D, H, W)``.

    Applies the training intensity window (``hu_min``/``hu_max`` of ``settings``) and reads the
    full-resolution output; runs on the model's device in float32. ``model`` may be a sequence
    of models (an ensemble, e.g. the cross-validation folds' models): then the result is the
    mean of their sigmoid probabilities (probabilities averaged, not logits, as nnU-Net
    averages its folds' softmax outputs), every member with the same window of ``settings``.
    """
    if images_hu.ndim != 4:
        raise ValueError(f"expected HU crops of shape (N, D, H, W), got {images_hu.shape}")
    members = _members(model)
    window = {**schema_defaults("training"), **settings}  # as the trainer's settings read it
    hu_min, hu_max = window["hu_min"], window["hu_max"]
    probabilities = np.empty(images_hu.shape, dtype=np.float32)
    for start in range(0, len(images_hu), batch_size):
        chunk = normalise_hu(images_hu[start : start + batch_size], hu_min, hu_max)
        total = _probability(members[0], chunk)
        for member in members[1:]:
            total += _probability(member, chunk)
        if len(members) > 1:
            total /= np.float32(len(members))
        probabilities[start : start + batch_size] = total
    return probabilities
