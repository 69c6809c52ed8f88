"""The Dice coefficients that pick ``best.pt`` (training and detection) and that the evaluation
reports (:mod:`lungseg.evaluation.metrics` builds its other metrics on :func:`check_pair`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_pair(
    predicted: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays of one shape; ``spacing``, if given: one positive mm per axis."""
    predicted = np.asarray(predicted)
    truth = np.asarray(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"mask shapes differ: predicted {predicted.shape}, truth {truth.shape}")
    if spacing is not None:
        if len(spacing) != truth.ndim:
            raise ValueError(
                f"spacing {tuple(spacing)} has not one value per axis of {truth.shape}"
            )
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be positive and finite, got {tuple(spacing)}")
    return predicted.astype(bool), truth.astype(bool)


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient ``2|P & T| / (|P| + |T|)``; 1.0 when both masks are empty."""
    predicted, truth = check_pair(predicted, truth)
    total = int(predicted.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(predicted, truth).sum()) / total


def balanced_dice(dices: list[float], has_target: list[bool]) -> float:
    """Mean of the mean Dice over the crops with a target and over those without (one group
    alone when the other is absent). A model that predicts nothing scores 1 on every empty crop:
    on a set of 80 % empty crops its plain mean Dice is 0.8, its balanced Dice 0.5."""
    if not dices:
        raise ValueError("balanced Dice of no crops")
    pairs = list(zip(dices, has_target, strict=True))
    groups = [[d for d, t in pairs if bool(t) == flag] for flag in (True, False)]
    return float(np.mean([np.mean(group) for group in groups if group]))
