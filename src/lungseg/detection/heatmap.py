"""Detection targets made for detection: nodule-centre heatmaps and their focal loss.

A binary nodule mask at 4 mm gives a 6 mm nodule 1-3 voxels among ~700 000 and a 20 mm one
~100: a segmentation loss hardly sees the small ones, and a component's probability says little
about whether it is a nodule. CenterNet's design (Zhou et al. 2019, "Objects as points") instead
asks for one peak per nodule:

- :func:`centres_of`: the nodule centres (canvas voxels) = centroids of the 26-connected
  components of the target's nodule label, read once per scan.
- :func:`gaussian_heatmap`: per voxel ``max_k exp(-|v - round(c_k)|^2 / (2 sigma^2))`` with
  ``sigma = heatmap_sigma_mm / spacing`` per axis: exactly 1 at each nodule's peak voxel.
- :func:`gaussian_focal_loss`: CenterNet's penalty-reduced focal loss (alpha 2, beta 4) over the
  voxels that are not ignored, normalised by the number of peaks.
- :func:`find_peaks`: candidates = local maxima (3x3x3) of the probability at or above a
  threshold, centre refined to the probability-weighted centroid of the peak's 3x3x3
  neighbourhood, size = the sphere of the peak's half-maximum region.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage

ALPHA, BETA = 2.0, 4.0
#: Initial bias of a focal-loss head: sigmoid(bias) = 0.01 everywhere (RetinaNet's prior), so
#: the ~10^6 background voxels do not swamp the first steps.
PRIOR_BIAS = -float(np.log((1 - 0.01) / 0.01))
PEAK_COLUMNS = ("center_z", "center_y", "center_x", "probability", "diameter_mm", "voxels")


def centres_of(nodule: np.ndarray) -> np.ndarray:
    """Centroids ``(K, 3)`` (voxels) of the 26-connected components of a boolean mask."""
    labels, n = ndimage.label(nodule, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return np.zeros((0, 3))
    return np.array(ndimage.center_of_mass(nodule, labels, np.arange(1, n + 1))).reshape(-1, 3)


def gaussian_heatmap(
    shape: Sequence[int],
    centres: np.ndarray,
    sigma_vox: Sequence[float],
    corner: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Heatmap ``shape`` (float32) of the box at ``corner`` of a canvas holding ``centres``."""
    out = np.zeros(tuple(int(s) for s in shape), dtype=np.float32)
    sigma = np.asarray(sigma_vox, dtype=float)
    for centre in np.rint(np.asarray(centres, dtype=float).reshape(-1, 3)):
        local = centre - np.asarray(corner, dtype=float)
        # only a box of 4 sigma around the peak matters (exp(-8) < 4e-4)
        low = np.maximum(np.floor(local - 4 * sigma), 0).astype(int)
        high = np.minimum(np.ceil(local + 4 * sigma) + 1, out.shape).astype(int)
        if np.any(high <= low):
            continue
        axes = [
            np.exp(-((np.arange(lo, hi) - c) ** 2) / (2 * s**2))
            for lo, hi, c, s in zip(low, high, local, sigma, strict=True)
        ]
        bump = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
        np.maximum(out[box], bump.astype(np.float32), out=out[box])
    return out


def gaussian_focal_loss(logits: torch.Tensor, heatmap: torch.Tensor, valid: torch.Tensor):
    """CenterNet's focal loss of ``logits`` against ``heatmap``; voxels with ``valid`` 0 skipped.

    Peak voxels (heatmap 1): ``-(1 - p)^alpha log p``; others: ``-(1 - y)^beta p^alpha
    log(1 - p)``; the sum over the batch divided by the number of peaks (at least 1).
    """
    logits = logits.float()
    p = torch.sigmoid(logits)
    peak = (heatmap >= 1.0 - 1e-6) & (valid > 0)
    positive = -((1 - p) ** ALPHA) * F.logsigmoid(logits)
    negative = -((1 - heatmap) ** BETA) * p**ALPHA * F.logsigmoid(-logits)
    total = torch.where(peak, positive, negative * valid).sum()
    return total / peak.sum().clamp(min=1)


def find_peaks(
    probability: np.ndarray,
    threshold: float,
    max_candidates: int,
    spacing_mm: Sequence[float],
) -> pd.DataFrame:
    """Candidates of one ``(D, H, W)`` probability map at its local maxima (module docstring).

    Plateaus give one candidate (the first voxel in z, y, x order). Highest probability first
    (ties: lower z, y, x first), at most ``max_candidates``.
    """
    probability = np.asarray(probability, dtype=np.float32)
    local_max = ndimage.maximum_filter(probability, size=3, mode="constant", cval=-np.inf)
    is_peak = (probability == local_max) & (probability >= threshold)
    # one voxel per plateau: its first voxel in C order
    labels, n = ndimage.label(is_peak, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in PEAK_COLUMNS})
    flat = labels.ravel()
    order = np.flatnonzero(flat)
    _, first = np.unique(flat[order], return_index=True)
    voxels = np.column_stack(np.unravel_index(order[first], probability.shape))
    peaks = probability[tuple(voxels.T)]
    keep = np.lexsort((voxels[:, 2], voxels[:, 1], voxels[:, 0], -peaks))[:max_candidates]
    voxels, peaks = voxels[keep], peaks[keep]
    rows = [
        _describe(probability, v, float(p), spacing_mm) for v, p in zip(voxels, peaks, strict=True)
    ]
    return pd.DataFrame(rows, columns=list(PEAK_COLUMNS))


def _describe(probability: np.ndarray, voxel: np.ndarray, peak: float, spacing_mm) -> dict:
    low = np.maximum(voxel - 1, 0)
    high = np.minimum(voxel + 2, probability.shape)
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
    weights = probability[box].astype(float)
    grid = np.indices(weights.shape).reshape(3, -1).T + low
    centre = (weights.ravel()[:, None] * grid).sum(0) / max(weights.sum(), 1e-12)
    # the half-maximum region containing the peak, within 8 voxels: the candidate's extent
    low8 = np.maximum(voxel - 8, 0)
    high8 = np.minimum(voxel + 9, probability.shape)
    window = probability[tuple(slice(lo, hi) for lo, hi in zip(low8, high8, strict=True))]
    labels, _ = ndimage.label(window >= peak / 2, structure=np.ones((3, 3, 3), dtype=bool))
    n_voxels = int((labels == labels[tuple(voxel - low8)]).sum())
    volume = n_voxels * float(np.prod(spacing_mm))
    return {
        "center_z": centre[0],
        "center_y": centre[1],
        "center_x": centre[2],
        "probability": peak,
        "diameter_mm": float(np.cbrt(6.0 * volume / np.pi)),
        "voxels": n_voxels,
    }
