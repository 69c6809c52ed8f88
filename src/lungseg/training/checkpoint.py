"""Checkpoints of the trainer: written atomically, read back with a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lungseg.core.atomic import atomic_path

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by :class:`Trainer`, with a clear error for anything else."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable lungseg checkpoint ({error})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a lungseg checkpoint of format {CHECKPOINT_FORMAT}")
    return checkpoint
