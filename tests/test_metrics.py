"""Segmentation metrics: hand-computed values on small arrays, spheres with anisotropic spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungseg.evaluation import metrics
from lungseg.inference.metrics import balanced_dice, dice


def voxels(shape, *points):
    mask = np.zeros(shape, dtype=bool)
    for point in points:
        mask[point] = True
    return mask


def sphere(radius_mm, spacing, extent_mm=24.0, center_mm=(0.0, 0.0, 0.0)):
    """Ball of radius_mm on a grid of the given spacing, voxel centres symmetric about 0."""
    axes = [
        (np.arange(round(2 * extent_mm / s)) - (round(2 * extent_mm / s) - 1) / 2) * s - c
        for s, c in zip(spacing, center_mm, strict=True)
    ]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return z**2 + y**2 + x**2 <= radius_mm**2


# name, predicted, truth, dice, iou
OVERLAP_CASES = [
    ("half overlap", [1, 1, 0, 0], [0, 1, 1, 0], 0.5, 1 / 3),
    ("identical", [0, 1, 1, 0], [0, 1, 1, 0], 1.0, 1.0),
    ("disjoint", [1, 0, 0, 0], [0, 0, 0, 1], 0.0, 0.0),
    ("predicted inside truth", [0, 1, 1, 0, 0], [1, 1, 1, 1, 0], 2 * 2 / 6, 2 / 4),
    ("both empty", [0, 0, 0], [0, 0, 0], 1.0, 1.0),
    ("empty prediction", [0, 0, 0], [0, 1, 0], 0.0, 0.0),
    ("empty truth", [0, 1, 0], [0, 0, 0], 0.0, 0.0),
    ("2d", [[1, 1], [1, 0]], [[1, 0], [1, 1]], 2 * 2 / 6, 2 / 4),
]


@pytest.mark.parametrize(
    "predicted, truth, expected_dice, expected_iou",
    [case[1:] for case in OVERLAP_CASES],
    ids=[case[0] for case in OVERLAP_CASES],
)
def test_dice_and_iou(predicted, truth, expected_dice, expected_iou):
    assert dice(np.array(predicted), np.array(truth)) == pytest.approx(expected_dice)
    assert metrics.iou(np.array(predicted), np.array(truth)) == pytest.approx(expected_iou)


# name, per-crop Dice, crop has a target, balanced Dice
BALANCED_CASES = [
    # predicts nothing on 4 empty crops and 1 nodule crop: plain mean 0.8
    ("nothing predicted, mostly empty", [1, 1, 1, 1, 0], [0, 0, 0, 0, 1], 0.5),
    ("both groups", [0.8, 0.6, 1.0, 0.5], [1, 1, 0, 0], (0.7 + 0.75) / 2),
    ("targets only: the mean", [0.2, 0.4], [1, 1], 0.3),
    ("empty crops only: the mean", [1.0, 0.0], [0, 0], 0.5),
]


@pytest.mark.parametrize(
    "dices, has_target, expected",
    [case[1:] for case in BALANCED_CASES],
    ids=[case[0] for case in BALANCED_CASES],
)
def test_balanced_dice(dices, has_target, expected):
    assert balanced_dice(dices, [bool(t) for t in has_target]) == pytest.approx(expected)


@pytest.mark.parametrize(
    "dices, has_target, message",
    [([], [], "no crops"), ([1.0, 0.5], [True], "shorter")],
)
def test_balanced_dice_bad_input(dices, has_target, message):
    with pytest.raises(ValueError, match=message):
        balanced_dice(dices, has_target)


SHAPE = (5, 5, 5)
SPACING = (2.5, 1.0, 0.5)
TWO_VOXELS = voxels(SHAPE, (1, 1, 1), (3, 3, 3))
# name, predicted, truth, spacing, hd95 (mm), surface Dice at 1 mm
DISTANCE_CASES = [
    # single voxels 2 slices, 1 row, 3 columns apart: sqrt(5^2 + 1^2 + 1.5^2) mm both ways
    (
        "single voxels",
        voxels(SHAPE, (0, 0, 0)),
        voxels(SHAPE, (2, 1, 3)),
        SPACING,
        math.sqrt(28.25),
        0.0,
    ),
    # one column apart at 0.5 mm: within the 1 mm tolerance
    ("neighbour columns", voxels(SHAPE, (1, 1, 1)), voxels(SHAPE, (1, 1, 2)), SPACING, 0.5, 1.0),
    # one row apart at 1.0 mm: exactly at the tolerance, which counts as close
    ("neighbour rows", voxels(SHAPE, (1, 1, 1)), voxels(SHAPE, (1, 2, 1)), SPACING, 1.0, 1.0),
    # one slice apart at 2.5 mm: outside
    ("neighbour slices", voxels(SHAPE, (1, 1, 1)), voxels(SHAPE, (2, 1, 1)), SPACING, 2.5, 0.0),
    # predicted surface {0 mm, 1.5 mm} from the truth, true surface {0 mm}: 95th percentile of
    # [0, 1.5] (linear) = 1.425 mm; 2 of 3 surface voxels within 1 mm
    (
        "one stray voxel",
        voxels(SHAPE, (0, 0, 0), (0, 0, 3)),
        voxels(SHAPE, (0, 0, 0)),
        SPACING,
        1.425,
        2 / 3,
    ),
    ("identical", TWO_VOXELS, TWO_VOXELS.copy(), SPACING, 0.0, 1.0),
    ("both empty", voxels(SHAPE), voxels(SHAPE), SPACING, 0.0, 1.0),
    ("empty prediction", voxels(SHAPE), voxels(SHAPE, (2, 2, 2)), SPACING, math.nan, 0.0),
    ("empty truth", voxels(SHAPE, (2, 2, 2)), voxels(SHAPE), SPACING, math.nan, 0.0),
]  # fmt: skip


@pytest.mark.parametrize(
    "predicted, truth, spacing, expected_hd95, expected_surface_dice",
    [case[1:] for case in DISTANCE_CASES],
    ids=[case[0] for case in DISTANCE_CASES],
)
def test_distance_metrics(predicted, truth, spacing, expected_hd95, expected_surface_dice):
    hd95 = metrics.hausdorff95(predicted, truth, spacing)
    assert hd95 == pytest.approx(expected_hd95, nan_ok=True)
    assert metrics.surface_dice(predicted, truth, spacing, 1.0) == pytest.approx(
        expected_surface_dice
    )
    combined = metrics.segmentation_metrics(predicted, truth, spacing)
    assert combined["hd95_mm"] == pytest.approx(expected_hd95, nan_ok=True)
    assert combined["surface_dice_1mm"] == pytest.approx(expected_surface_dice)
    assert combined["dice"] == dice(predicted, truth)
    assert combined["predicted_volume_mm3"] == predicted.sum() * 1.25


def test_surface_is_the_shell_of_a_block_with_border_voxels_counted():
    block = np.zeros((4, 5, 5), dtype=bool)
    block[:3, 1:4, 1:4] = True  # touches the array border at z = 0
    shell = metrics.surface(block)
    # the only interior voxel has all six face neighbours inside: (1, 2, 2)
    assert shell.sum() == block.sum() - 1
    assert not shell[1, 2, 2]


ANISOTROPIC = (1.0, 0.5, 0.25)


@pytest.mark.parametrize("spacing", [ANISOTROPIC, ANISOTROPIC[::-1], (0.5, 0.5, 0.5)])
def test_concentric_spheres_are_their_radius_difference_apart(spacing):
    # radius 10 mm vs 7 mm: every surface point is 3 mm from the other surface, up to the
    # voxel discretisation (at most one voxel side per surface)
    truth, predicted = sphere(10.0, spacing), sphere(7.0, spacing)
    assert metrics.hausdorff95(predicted, truth, spacing) == pytest.approx(3.0, abs=max(spacing))
    assert metrics.surface_dice(predicted, truth, spacing, 1.0) == 0.0
    # tolerance beyond the gap: every surface voxel counts
    assert metrics.surface_dice(predicted, truth, spacing, 3.0 + 2 * max(spacing)) == 1.0
    # Dice of nested balls: 2 r^3 / (R^3 + r^3)
    assert dice(predicted, truth) == pytest.approx(2 * 7**3 / (10**3 + 7**3), abs=0.02)
    assert metrics.volume_mm3(truth, spacing) == pytest.approx(4 / 3 * math.pi * 1000, rel=0.02)


def test_shifted_sphere_in_physical_units_not_voxels():
    # A ball of radius R moved by d: a point at polar cosine u of one surface lies
    # |sqrt(R^2 + d^2 - 2 R d u) - R| from the other; u is uniform over the surface area, so
    # the 95th percentile follows by sampling u. The 3 mm shift is 3 slices along z but 12
    # columns along x; in mm both land on the same value, up to the voxel discretisation.
    radius, shift, spacing = 8.0, 3.0, ANISOTROPIC
    u = np.linspace(-1.0, 1.0, 200_001)
    expected = np.percentile(
        np.abs(np.sqrt(radius**2 + shift**2 - 2 * radius * shift * u) - radius), 95
    )
    truth = sphere(radius, spacing)
    for center in [(shift, 0.0, 0.0), (0.0, shift, 0.0), (0.0, 0.0, shift)]:
        moved = sphere(radius, spacing, center_mm=center)
        assert metrics.hausdorff95(moved, truth, spacing) == pytest.approx(expected, abs=0.5)


def test_distances_scale_with_spacing():
    truth, predicted = sphere(6.0, (1.0, 1.0, 1.0)), sphere(4.0, (1.0, 1.0, 1.0))
    unit = metrics.hausdorff95(predicted, truth, (1.0, 1.0, 1.0))
    assert metrics.hausdorff95(predicted, truth, (2.0, 2.0, 2.0)) == pytest.approx(2 * unit)


@pytest.mark.parametrize(
    "predicted, truth, spacing, message",
    [
        (np.zeros((2, 2)), np.zeros((2, 3)), (1.0, 1.0), "shapes differ"),
        (np.zeros((2, 2)), np.zeros((2, 2)), (1.0,), "one value per axis"),
        (np.zeros((2, 2)), np.zeros((2, 2)), (1.0, 0.0), "positive"),
    ],
)
def test_bad_input_is_named(predicted, truth, spacing, message):
    with pytest.raises(ValueError, match=message):
        metrics.segmentation_metrics(predicted, truth, spacing)
