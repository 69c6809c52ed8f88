"""Losses: hand-computed soft Dice / BCE values, target downsampling, per-scale weights."""

from __future__ import annotations

import math

import pytest
import torch

from lungseg.training.losses import (
    MultiScaleLoss,
    build_loss,
    downsample_target,
    fixed_scale_weights,
    segmentation_loss,
    soft_dice_loss,
)

BIG = 50.0  # sigmoid(50) == 1 and sigmoid(-50) == 0 in float32


def volume(values) -> torch.Tensor:
    """A (1, 1, 2, 2, 2) tensor from 8 values."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 2, 2, 2)


TWO_HOT = [1, 1, 0, 0, 0, 0, 0, 0]
OTHER_TWO = [0, 0, 1, 1, 0, 0, 0, 0]


@pytest.mark.parametrize(
    ("logits", "target", "expected"),
    [
        # p = 0.5 everywhere: overlap 1, sums 4 + 2 -> 1 - (2 + 1) / (6 + 1)
        ([0.0] * 8, TWO_HOT, 4 / 7),
        # empty target: overlap 0, sums 4 + 0 -> 1 - 1 / 5
        ([0.0] * 8, [0] * 8, 0.8),
        # perfect prediction -> 0
        ([BIG if t else -BIG for t in TWO_HOT], TWO_HOT, 0.0),
        # disjoint: overlap 0, sums 2 + 2 -> 1 - 1 / 5
        ([BIG if t else -BIG for t in OTHER_TWO], TWO_HOT, 0.8),
        # empty prediction and target -> 0 thanks to the smoothing term
        ([-BIG] * 8, [0] * 8, 0.0),
    ],
)
def test_soft_dice_loss(logits, target, expected):
    assert soft_dice_loss(volume(logits), volume(target)).item() == pytest.approx(expected)


def test_soft_dice_loss_averages_samples():
    logits = torch.cat([volume([0.0] * 8), volume([BIG if t else -BIG for t in TWO_HOT])])
    target = torch.cat([volume(TWO_HOT), volume(TWO_HOT)])
    assert soft_dice_loss(logits, target).item() == pytest.approx((4 / 7 + 0) / 2)


@pytest.mark.parametrize(
    ("name", "logits", "target", "expected"),
    [
        ("bce", [0.0] * 8, TWO_HOT, math.log(2)),
        ("bce", [math.log(3)] * 8, [1] * 8, -math.log(0.75)),  # p = 0.75
        ("bce", [math.log(3)] * 8, [0] * 8, -math.log(0.25)),
        ("dice", [0.0] * 8, TWO_HOT, 4 / 7),
        ("dice_bce", [0.0] * 8, TWO_HOT, 4 / 7 + math.log(2)),
    ],
)
def test_segmentation_loss(name, logits, target, expected):
    value = segmentation_loss(name, volume(logits), volume(target)).item()
    assert value == pytest.approx(expected, rel=1e-6)


def block_target(voxels: list[tuple[int, int, int]], size: int = 4) -> torch.Tensor:
    target = torch.zeros(1, 1, size, size, size)
    for z, y, x in voxels:
        target[0, 0, z, y, x] = 1
    return target


HALF_BLOCK = [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]  # 4 of the 8 voxels of block (0, 0, 0)


@pytest.mark.parametrize(
    ("voxels", "method", "expected_coarse"),
    [
        ([(0, 0, 0)], "area", []),  # 1/8 of a block: not a majority
        ([(0, 0, 0)], "maxpool", [(0, 0, 0)]),  # any voxel counts
        (HALF_BLOCK, "area", [(0, 0, 0)]),  # exactly half: foreground
        (HALF_BLOCK[:3], "area", []),
        ([(3, 3, 3), (2, 3, 3)], "maxpool", [(1, 1, 1)]),
        ([], "maxpool", []),
    ],
)
def test_downsample_target(voxels, method, expected_coarse):
    coarse = downsample_target(block_target(voxels), (2, 2, 2), method)
    assert coarse.shape == (1, 1, 2, 2, 2)
    assert torch.equal(coarse, block_target(expected_coarse, size=2))


def test_downsample_target_keeps_full_resolution():
    target = block_target(HALF_BLOCK)
    assert torch.equal(downsample_target(target, (4, 4, 4), "area"), target)


@pytest.mark.parametrize(
    ("scheme", "n_scales", "expected"),
    [
        ("equal", 3, [1.0, 1.0, 1.0]),
        ("halving", 3, [4 / 7, 2 / 7, 1 / 7]),
        ("halving", 1, [1.0]),
        ([1.0, 0.5, 0.0], 3, [1.0, 0.5, 0.0]),
    ],
)
def test_fixed_scale_weights(scheme, n_scales, expected):
    assert fixed_scale_weights(scheme, n_scales) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("scheme", "n_scales", "message"),
    [
        ([1.0, 0.5], 3, "lists 2 weights but the model has 3"),
        ([0.0, 0.0], 2, "not all 0"),
        ([1.0, -1.0], 2, ">= 0"),
        ("thirds", 2, "unknown scale_weights 'thirds'"),
    ],
)
def test_bad_scale_weights_are_named(scheme, n_scales, message):
    with pytest.raises(ValueError, match=message):
        fixed_scale_weights(scheme, n_scales)


def three_scale_logits(value: float = 0.0) -> list[torch.Tensor]:
    """Constant logits at 8^3, 4^3, 2^3 (BCE of logit 0 is ln 2 at every scale)."""
    return [torch.full((1, 1, s, s, s), value) for s in (8, 4, 2)]


TARGET_8 = torch.zeros(1, 1, 8, 8, 8)
TARGET_8[0, 0, 2:6, 2:6, 2:6] = 1


@pytest.mark.parametrize(
    ("scale_weights", "expected"),
    [
        ("equal", 3 * math.log(2)),
        ("halving", math.log(2)),  # normalised weights sum to 1
        ([2.0, 0.0, 1.0], 3 * math.log(2)),
        ("learned", 3 * math.log(2)),  # log-variances start at 0: weights 1, no penalty
    ],
)
def test_multi_scale_weighting(scale_weights, expected):
    loss = MultiScaleLoss(
        "bce", n_scales=3, scale_weights=scale_weights, target_downsampling="maxpool"
    )
    assert loss(three_scale_logits(), TARGET_8).item() == pytest.approx(expected, rel=1e-6)


def test_multi_scale_targets_follow_each_scale():
    # p = 0.5 against the area-downsampled 4^3 cube: 64 of 512 voxels, 8 of 64, and at 2^3 none
    # (each coarse voxel covers only 8 of its 64 fine voxels: no majority).
    loss = MultiScaleLoss("dice", n_scales=3, scale_weights="equal", target_downsampling="area")
    per_scale = loss.per_scale(three_scale_logits(), TARGET_8)
    expected = [1 - (n + 1) / (total / 2 + n + 1) for n, total in ((64, 512), (8, 64), (0, 8))]
    assert per_scale.tolist() == pytest.approx(expected, rel=1e-6)


def test_learned_weights_are_uncertainty_weights_with_gradients():
    loss = MultiScaleLoss("bce", n_scales=3, scale_weights="learned", target_downsampling="maxpool")
    with torch.no_grad():
        loss.log_variances.copy_(torch.tensor([math.log(2), 0.0, -1.0]))
    value = loss(three_scale_logits(), TARGET_8)
    ln2 = math.log(2)
    expected = (ln2 / 2 + math.log(2)) + ln2 + (math.e * ln2 - 1)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    # d/dv (exp(-v) L + v) = 1 - exp(-v) L
    expected_grad = [1 - ln2 / 2, 1 - ln2, 1 - math.e * ln2]
    assert loss.log_variances.grad.tolist() == pytest.approx(expected_grad, rel=1e-5)
    assert [name for name, _ in loss.named_parameters()] == ["log_variances"]


@pytest.mark.parametrize(
    ("settings", "n_scales", "n_parameters"),
    [
        ({}, 1, 0),
        ({"levels": 3}, 1, 0),
        ({"levels": 3, "deep_supervision": True}, 3, 0),
        ({"levels": 2, "deep_supervision": True, "scale_weights": "learned"}, 2, 2),
        ({"levels": 4, "deep_supervision": True, "scale_weights": [1, 1, 1, 1]}, 4, 0),
    ],
)
def test_build_loss(settings, n_scales, n_parameters):
    loss = build_loss(settings)
    assert loss.n_scales == n_scales
    assert sum(p.numel() for p in loss.parameters()) == n_parameters


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"loss": "focal"}, "unknown loss 'focal'"),
        ({"target_downsampling": "nearest"}, "unknown target_downsampling 'nearest'"),
        ({"levels": 3, "deep_supervision": True, "scale_weights": [1, 1]}, "lists 2 weights"),
    ],
)
def test_bad_loss_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        build_loss(settings)


def test_wrong_number_of_outputs_is_named():
    loss = build_loss({"levels": 3, "deep_supervision": True})
    with pytest.raises(ValueError, match="expected 3 logits tensor"):
        loss(three_scale_logits()[:1], TARGET_8)
