"""Heatmap targets, the Gaussian focal loss and peak candidates (lungseg.detection.heatmap),
with hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lungseg.detection.candidates import candidates_of
from lungseg.detection.heatmap import (
    PRIOR_BIAS,
    centres_of,
    find_peaks,
    gaussian_focal_loss,
    gaussian_heatmap,
)

E = math.exp


@pytest.mark.parametrize(
    ("centres", "sigma", "corner", "voxel", "expected"),
    [
        ([(2, 2, 2)], (1, 1, 1), (0, 0, 0), (2, 2, 2), 1.0),  # the peak voxel
        ([(2, 2, 2)], (1, 1, 1), (0, 0, 0), (2, 2, 3), E(-0.5)),  # one voxel off along x
        ([(2, 2, 2)], (1, 1, 1), (0, 0, 0), (3, 3, 2), E(-1.0)),  # diagonal: d^2 = 2
        ([(2, 2, 2)], (0.5, 1, 1), (0, 0, 0), (3, 2, 2), E(-2.0)),  # anisotropic sigma
        ([(2.4, 1.6, 2)], (1, 1, 1), (0, 0, 0), (2, 2, 2), 1.0),  # peak at the rounded centre
        ([(6, 6, 6)], (1, 1, 1), (4, 4, 4), (2, 2, 2), 1.0),  # box at a corner of the canvas
        ([(6, 2, 2)], (1, 1, 1), (0, 0, 0), (4, 2, 2), E(-2.0)),  # centre outside the box
        ([(2, 2, 1), (2, 2, 4)], (1, 1, 1), (0, 0, 0), (2, 2, 3), 1 * E(-0.5)),  # max, not sum
        ([(20, 20, 20)], (1, 1, 1), (0, 0, 0), (4, 4, 4), 0.0),  # beyond 4 sigma: nothing
    ],
)
def test_gaussian_heatmap(centres, sigma, corner, voxel, expected):
    heat = gaussian_heatmap((5, 5, 5), np.array(centres, dtype=float), sigma, corner)
    assert heat.dtype == np.float32 and heat.shape == (5, 5, 5)
    assert heat[voxel] == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_centres_of_components():
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[1:3, 1:3, 1:3] = True  # centroid (1.5, 1.5, 1.5)
    mask[5, 5, 4:6] = True  # centroid (5, 5, 4.5)
    assert centres_of(mask).tolist() == [[1.5, 1.5, 1.5], [5.0, 5.0, 4.5]]
    assert centres_of(np.zeros((3, 3, 3), dtype=bool)).shape == (0, 3)


LOG2 = math.log(2)


@pytest.mark.parametrize(
    ("heat", "valid", "logits", "expected"),
    [
        # peak at p = 0.5: (1 - p)^2 * -log p
        ([1.0], [1.0], [0.0], 0.25 * LOG2),
        # a peak and a neighbour (y = 0.5) at p = 0.5: + (1 - y)^4 p^2 * -log(1 - p)
        ([1.0, 0.5], [1.0, 1.0], [0.0, 0.0], 0.25 * LOG2 + 0.0625 * 0.25 * LOG2),
        # the neighbour ignored (valid 0) adds nothing
        ([1.0, 0.5], [1.0, 0.0], [0.0, 0.0], 0.25 * LOG2),
        # no peak: the sum over the background, divided by 1
        ([0.0, 0.0], [1.0, 1.0], [0.0, 0.0], 2 * 0.25 * LOG2),
        # two peaks: divided by 2
        ([1.0, 1.0], [1.0, 1.0], [0.0, 0.0], 0.25 * LOG2),
        # an ignored peak is not a peak: the other voxel's background term, / 1
        ([1.0, 0.0], [0.0, 1.0], [0.0, 0.0], 0.25 * LOG2),
        # a confident right answer costs (almost) nothing
        ([1.0, 0.0], [1.0, 1.0], [20.0, -20.0], 0.0),
    ],
)
def test_gaussian_focal_loss(heat, valid, logits, expected):
    shape = (1, 1, 1, 1, len(heat))
    loss = gaussian_focal_loss(
        torch.tensor(logits).reshape(shape),
        torch.tensor(heat).reshape(shape),
        torch.tensor(valid).reshape(shape),
    )
    assert float(loss) == pytest.approx(expected, abs=1e-6)


def test_focal_loss_gradient_pulls_peaks_up_background_down():
    logits = torch.zeros(1, 1, 1, 1, 2, requires_grad=True)
    heat = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 1, 2)
    gaussian_focal_loss(logits, heat, torch.ones_like(heat)).backward()
    assert logits.grad[0, 0, 0, 0, 0] < 0 < logits.grad[0, 0, 0, 0, 1]


def test_prior_bias_is_one_percent():
    assert torch.sigmoid(torch.tensor(PRIOR_BIAS)) == pytest.approx(0.01)


def bump(shape, centre, sigma, peak):
    grid = np.indices(shape, dtype=float)
    return peak * np.exp(
        -sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) / sigma**2 / 2
    )


def test_peaks_order_centre_and_size():
    shape = (12, 16, 16)
    prob = np.maximum(bump(shape, (3, 4, 4), 1.0, 0.4), bump(shape, (8, 10, 10.5), 1.0, 0.9))
    found = find_peaks(prob, 0.05, 10, (2.0, 1.0, 1.0))
    assert found["probability"].tolist() == pytest.approx([0.9 * E(-0.125), 0.4])
    # peak voxel x = 10 (ties with 11: first in C order); the 3x3x3 centroid moves it towards
    # the true 10.5: (9 e^-1.125 + 10 e^-0.125 + 11 e^-0.125) / (e^-1.125 + 2 e^-0.125)
    x = (9 * E(-1.125) + 21 * E(-0.125)) / (E(-1.125) + 2 * E(-0.125))
    assert found[["center_z", "center_y", "center_x"]].iloc[0].tolist() == pytest.approx(
        [8, 10, x], abs=1e-6
    )
    assert found[["center_z", "center_y", "center_x"]].iloc[1].tolist() == pytest.approx(
        [3, 4, 4], abs=1e-9
    )
    # the half-maximum region of a sigma-1 bump: |d|^2 <= 2 ln 2 -> 7 voxels (centre, 6 faces)
    assert found["voxels"].iloc[1] == 7
    assert found["diameter_mm"].iloc[1] == pytest.approx(np.cbrt(6 * 7 * 2.0 / np.pi))


@pytest.mark.parametrize(
    ("threshold", "limit", "expected"),
    [(0.05, 10, [0.6, 0.5, 0.4, 0.3]), (0.35, 10, [0.6, 0.5, 0.4]), (0.05, 2, [0.6, 0.5])],
)
def test_peaks_threshold_and_limit(threshold, limit, expected):
    prob = np.zeros((10, 10, 10), dtype=np.float32)
    for i, p in enumerate([0.3, 0.4, 0.5, 0.6]):
        prob[2 * i, 2 * i, 2 * i] = p  # diagonal neighbours two voxels apart: separate peaks
    found = find_peaks(prob, threshold, limit, (1, 1, 1))
    assert found["probability"].tolist() == pytest.approx(expected)


def test_plateau_gives_one_peak_and_empty_map_none():
    prob = np.zeros((6, 6, 6), dtype=np.float32)
    assert find_peaks(prob, 0.01, 10, (1, 1, 1)).empty
    prob[2, 2, 2:4] = 0.5  # a two-voxel plateau
    found = find_peaks(prob, 0.01, 10, (1, 1, 1))
    assert len(found) == 1 and found["center_x"].iloc[0] == pytest.approx(2.5)


def test_candidates_of_dispatches_on_the_trained_method():
    prob = np.zeros((8, 8, 8), dtype=np.float32)
    prob[2, 2, 2], prob[2, 2, 3] = 0.5, 0.4  # one component, one peak
    prob[6, 6, 6] = 0.3
    trained = {"candidate_threshold": 0.1, "max_candidates": 100}
    peaks = candidates_of(prob, {**trained, "candidate_method": "peaks"}, (1, 1, 1))
    parts = candidates_of(prob, {**trained, "candidate_method": "components"}, (1, 1, 1))
    assert len(peaks) == 2 and len(parts) == 2
    assert (
        candidates_of(prob, {**trained, "candidate_method": "peaks"}, (1, 1, 1), 0.35).shape[0] == 1
    )
    with pytest.raises(ValueError, match="candidate_method"):
        candidates_of(prob, {**trained, "candidate_method": "boxes"}, (1, 1, 1))
