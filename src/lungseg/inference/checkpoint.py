"""Checkpoints of the trainer: written atomically, read back with a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lungseg.core.atomic import write_through_file
from lungseg.core.errors import DataError

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` atomically; a full disk is reported as such, with the path."""
    write_through_file(path, lambda file: torch.save(state, file))


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by :class:`Trainer`; :class:`DataError` naming the file otherwise."""
    rebuild = "delete it and rerun `snakemake train_all` (the model is trained again)"
    if not Path(path).is_file():
        raise DataError(f"{path}: checkpoint not found; {rebuild}")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        # torch's own text asks to file an issue with torch: not what a truncated file needs
        kind = type(error).__name__
        raise DataError(
            f"{path}: not a readable lungseg checkpoint, truncated or corrupt ({kind}); {rebuild}"
        ) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise DataError(
            f"{path}: not a lungseg checkpoint of format {CHECKPOINT_FORMAT}; {rebuild}"
        )
    return checkpoint
