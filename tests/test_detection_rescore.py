"""The second stage of detection (lungseg.detection.rescore): the crop score of a crop model's
probabilities, the training crops of a scan and the re-scoring of stage-1 candidates, with
hand-computed cases on synthetic arrays (no trained model: probabilities are functions of the
crop's HU)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lungseg.dataset.crops import crop_geometry
from lungseg.detection.rescore import (
    COHORT,
    OTHER,
    class_map,
    compactness,
    crop_component,
    padded_box,
    rescore_scan,
    scan_samples,
    to_scan_voxels,
    trained_shape_weight,
)

CUBE = slice(12, 20)  # 8 voxels about the middle 15.5 of a 32-voxel axis


def probability_of(background, boxes, shape=(32, 32, 32)):
    """A float32 crop probability: ``background`` with ``(slices, value)`` boxes on top."""
    probability = np.full(shape, background, dtype=np.float32)
    for where, value in boxes:
        probability[where] = value
    return probability


@pytest.mark.parametrize(
    ("background", "boxes", "score", "centre", "voxels"),
    [
        # a cube about the crop centre: its mean, its centroid, its 8^3 voxels
        (0.0, [((CUBE, CUBE, CUBE), 0.8)], 0.8, (15.5, 15.5, 15.5), 512),
        # the component on the centre wins over a farther, more probable one
        (
            0.0,
            [((slice(14, 18),) * 3, 0.6), ((slice(20, 24),) * 3, 0.95)],
            0.6,
            (15.5, 15.5, 15.5),
            64,
        ),
        # off the centre, nearest voxel 23 on every axis: |23 - 15.5| = 7.5 <= REACH * 32 = 8
        (0.1, [((slice(23, 27),) * 3, 0.7)], 0.7, (24.5, 24.5, 24.5), 64),
        # the same on the low side: nearest voxel 8, 7.5 voxels off
        (0.1, [((slice(5, 9),) * 3, 0.7)], 0.7, (6.5, 6.5, 6.5), 64),
        # at exactly COMPONENT = 0.5 a voxel belongs to a component
        (0.0, [((15, 15, 15), 0.5)], 0.5, (15, 15, 15), 1),
        # diagonal neighbours are one component (26-connectivity): mean (0.6 + 0.8) / 2
        (0.0, [((15, 15, 15), 0.6), ((16, 16, 16), 0.8)], 0.7, (15 + 8 / 14,) * 3, 2),
        # weights 0.6 and 0.9 along x: x = (0.6 * 15 + 0.9 * 16) / 1.5 = 15.6
        (0.0, [((15, 15, 15), 0.6), ((15, 15, 16), 0.9)], 0.75, (15, 15, 15.6), 2),
        # beyond REACH, i.e. outside the central box (voxels 8..23): the highest probability in
        # the central box counts (0.4), not the one outside it (0.45 at a corner)
        (
            0.1,
            [((slice(26, 30),) * 3, 0.9), ((10, 10, 10), 0.4), ((3, 3, 3), 0.45)],
            0.4,
            None,
            0,
        ),
        # one voxel beyond REACH (nearest voxel 24, 8.5 off): no component, and its 0.9 is
        # outside the central box, so the score stays below COMPONENT
        (0.0, [((slice(24, 28),) * 3, 0.9)], 0.0, None, 0),
        # nothing reaches COMPONENT: the plain maximum
        (0.3, [], 0.3, None, 0),
    ],
    ids=[
        "centred-cube",
        "centre-beats-brighter",
        "within-reach-high",
        "within-reach-low",
        "threshold-inclusive",
        "diagonal-connectivity",
        "weighted-centroid",
        "outside-reach",
        "just-beyond-reach",
        "empty",
    ],
)
def test_crop_component(background, boxes, score, centre, voxels):
    found_score, found_centre, component = crop_component(probability_of(background, boxes))
    found_voxels = 0 if component is None else int(component.sum())
    assert found_score == pytest.approx(score, rel=1e-6)
    assert found_voxels == voxels
    if centre is None:
        assert found_centre is None
    else:
        assert found_centre.tolist() == pytest.approx(list(centre), abs=1e-6)


def test_class_map():
    """Cohort labels become COHORT, every other label OTHER, background stays 0."""
    mask = np.array([[[0, 1, 2, 3, 4]]], dtype=np.uint16)
    classes = class_map(mask, [1, 3])
    assert classes.dtype == np.uint8
    assert classes.tolist() == [[[0, COHORT, OTHER, COHORT, OTHER]]]
    assert (COHORT, OTHER) == (1, 2)


ARRAY = np.arange(24, dtype=np.int16).reshape(2, 3, 4)  # value = 12 z + 4 y + x


@pytest.mark.parametrize(
    ("lo", "hi", "inside"),
    [
        # partly outside: box voxel (1, 0, 0) is array voxel (0, 1, 2)
        ((-1, 1, 2), (1, 4, 6), {(1, 0, 0): 6, (1, 0, 1): 7, (1, 1, 0): 10, (1, 1, 1): 11}),
        # fully inside: array[1, 1:3, 1:3]
        ((1, 1, 1), (2, 3, 3), {(0, 0, 0): 17, (0, 0, 1): 18, (0, 1, 0): 21, (0, 1, 1): 22}),
        # past the far end, before the near end: all fill
        ((2, 0, 0), (3, 2, 2), {}),
        ((0, -3, 0), (2, -1, 1), {}),
    ],
    ids=["partly-outside", "inside", "past-the-end", "before-the-start"],
)
def test_padded_box(lo, hi, inside):
    box = padded_box(ARRAY, lo, hi, -1)
    assert box.dtype == np.int16
    assert box.shape == tuple(h - low for low, h in zip(lo, hi, strict=True))
    expected = np.full(box.shape, -1, dtype=np.int16)
    for voxel, value in inside.items():
        expected[voxel] = value
    assert box.tolist() == expected.tolist()


SPACING = (2.0, 1.0, 1.0)
NODULE = (10.0, 20.0, 20.0)  # scan voxels
FINDING = (30.0, 20.0, 20.0)


def sphere(shape, centre, radius_mm, spacing=SPACING):
    grid = np.indices(shape, dtype=float)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing, strict=True))
    return d2 <= radius_mm**2


@pytest.fixture(scope="module")
def scan():
    """A 40^3 scan at (2, 1, 1) mm: air, a cohort nodule (label 1) and another finding (label
    5), both 100 HU spheres of radius 4 mm, 40 mm apart in z."""
    shape = (40, 40, 40)
    image = np.full(shape, -1000, dtype=np.int16)
    mask = np.zeros(shape, dtype=np.uint16)
    for centre, label in ((NODULE, 1), (FINDING, 5)):
        inside = sphere(shape, centre, 4.0)
        image[inside], mask[inside] = 100, label
    return image, class_map(mask, [1])


CANDIDATES = np.array(
    [
        FINDING,  # on the other finding only: left out
        (10.0, 22.0, 20.0),  # 2 mm off the nodule: a positive crop
        (20.0, 5.0, 35.0),  # background
        (30.0, 20.0, 30.0),  # the finding in the crop (x 22.5..37.5) but not in its middle
    ]
)


def samples(scan, rng, nodules=(NODULE,), candidates=CANDIDATES):
    image, classes = scan
    return scan_samples(
        image,
        classes,
        SPACING,
        np.array(nodules, dtype=float),
        candidates,
        size=[16, 16, 16],
        target_spacing=[1.0, 1.0, 1.0],
        positive_copies=3,
        jitter_mm=3.0,
        rng=rng,
    )


def test_scan_samples_kinds_centres_and_masks(scan):
    images, masks, rows = samples(scan, np.random.default_rng(0))
    kinds = [row["kind"] for row in rows]
    assert kinds == ["nodule"] + ["jittered"] * 3 + ["candidate"] * 3
    assert len(images) == len(masks) == len(rows)
    for image, mask, row in zip(images, masks, rows, strict=True):
        assert image.shape == mask.shape == (16, 16, 16)
        assert image.dtype == np.int16 and mask.dtype == np.uint8
        assert row["mask_voxels"] == int(mask.sum())
    centres = np.array([[row[f"center_{a}"] for a in "zyx"] for row in rows])
    assert centres[0].tolist() == list(NODULE)
    # jitter: up to 3 mm per axis = 1.5 voxels in z, 3 in y and x
    offsets = np.abs(centres[1:4] - np.array(NODULE))
    assert (offsets <= np.array([1.5, 3.0, 3.0])).all() and (offsets > 0).all()
    assert centres[4:].tolist() == CANDIDATES[1:].tolist()  # the first candidate left out
    # the nodule crop: bright nodule voxels masked about the middle (7.5 in crop voxels)
    assert images[0][7:9, 7:9, 7:9].min() > 0 and masks[0][7:9, 7:9, 7:9].all()
    assert all(row["mask_voxels"] > 0 for row in rows[:5])  # nodule, jittered, on the nodule
    assert [row["mask_voxels"] for row in rows[5:]] == [0, 0]  # background, near the finding


def test_scan_samples_without_nodules_keeps_only_candidates(scan):
    _, _, rows = samples(scan, np.random.default_rng(0), nodules=np.zeros((0, 3)))
    assert [row["kind"] for row in rows] == ["candidate"] * 3


def test_scan_samples_are_deterministic_per_seed(scan):
    """The same seed gives the same jitter, hence the same crops; another seed other jitter."""
    first = samples(scan, np.random.default_rng(7))
    again = samples(scan, np.random.default_rng(7))
    other = samples(scan, np.random.default_rng(8))
    assert first[2] == again[2]
    for a, b in zip(first[0] + first[1], again[0] + again[1], strict=True):
        assert np.array_equal(a, b)
    assert [r["center_y"] for r in first[2][1:4]] != [r["center_y"] for r in other[2][1:4]]


SCAN_SPACING = (2.0, 1.0, 1.0)
SIZE = (16, 16, 16)
TARGET = (1.0, 1.0, 1.0)
ON_CUBE = (9.75, 21.5, 19.5)  # 2 voxels off the cube's centre in y, 0.25 in z
IN_AIR = (30.0, 8.0, 30.0)


@pytest.fixture(scope="module")
def cube_scan():
    """Air with a 100 HU cube at z 8..11, y 18..21, x 18..21 (centre 9.5, 19.5, 19.5)."""
    image = np.full((40, 40, 40), -1000, dtype=np.int16)
    image[8:12, 18:22, 18:22] = 100
    return image


def bright(crops):
    """The probability of a stand-in crop model: 1 where the crop is above 0 HU."""
    assert crops.shape == (len(crops), *SIZE) and crops.dtype == np.int16
    return (crops > 0).astype(np.float32)


def frame(rows):
    columns = ["seriesuid", "center_z", "center_y", "center_x", "probability", "diameter_mm"]
    return pd.DataFrame(rows, columns=columns)


@pytest.mark.parametrize(
    ("weight", "expected"), [(0.0, 1.0), (0.5, 0.5), (1.0, 0.25)], ids=["w0", "w0.5", "w1"]
)
def test_rescore_scan(cube_scan, weight, expected):
    """The candidate on the cube is re-centred on it with probability 1 * 0.25 ** w; the one in
    air keeps its centre and diameter with probability 0 * 0.9 ** w, and drops below it."""
    candidates = frame([("air", *IN_AIR, 0.9, 7.0), ("cube", *ON_CUBE, 0.25, 3.0)])
    out = rescore_scan(cube_scan, SCAN_SPACING, candidates, bright, SIZE, TARGET, weight)
    assert out["seriesuid"].tolist() == ["cube", "air"] and out.index.tolist() == [0, 1]
    assert out["probability"].tolist() == pytest.approx([expected, 0.0])
    # crop z samples 9.75 + (i - 7.5) * 0.5 = 6 + i / 2: above 0 HU at z 8, 8.5, .., 11
    # (i 4..10); y samples 14 + j: y 18..21 (j 4..7); x samples 12 + k: x 18..21 (k 6..9).
    # Centroid (7, 5.5, 7.5) -> scan (6 + 7 * 0.5, 14 + 5.5, 12 + 7.5) = the cube's centre.
    cube = out.iloc[0]
    assert [cube.center_z, cube.center_y, cube.center_x] == pytest.approx([9.5, 19.5, 19.5])
    voxels = 7 * 4 * 4  # at 1 mm^3 each
    assert cube.diameter_mm == pytest.approx((6 * voxels / math.pi) ** (1 / 3))
    air = out.iloc[1]
    assert [air.center_z, air.center_y, air.center_x, air.diameter_mm] == [*IN_AIR, 7.0]
    # the input frame is not changed
    assert candidates["probability"].tolist() == [0.9, 0.25]


def test_rescore_scan_of_no_candidates():
    def never(crops):
        raise AssertionError("no crops to score")

    out = rescore_scan(
        np.zeros((8, 8, 8), np.int16), SCAN_SPACING, frame([]), never, SIZE, TARGET, 0.5
    )
    assert out.empty and list(out.columns) == list(frame([]).columns)


@pytest.mark.parametrize(
    ("target", "crop_voxel", "expected"),
    [
        # steps (0.4, 2, 1): first crop voxel at (10 - 3.5 * 0.4, 20 - 7.5 * 2, 30 - 7.5)
        ((1.0, 1.0, 1.0), (0, 0, 0), (8.6, 5.0, 22.5)),
        ((1.0, 1.0, 1.0), (3.5, 7.5, 7.5), (10.0, 20.0, 30.0)),  # the middle: the centre
        ((1.0, 1.0, 1.0), (1, 2, 3), (9.0, 9.0, 25.5)),
        ((1.0, 1.0, 1.0), (7, 15, 15), (11.4, 35.0, 37.5)),  # the last crop voxel
        # y native: start floor(20 - 7.5 + 0.5) = 13, step 1
        ((1.0, None, 1.0), (1, 2, 3), (9.0, 15.0, 25.5)),
    ],
    ids=["first", "middle", "inner", "last", "native-y"],
)
def test_to_scan_voxels(target, crop_voxel, expected):
    geometry = crop_geometry((10.0, 20.0, 30.0), (8, 16, 16), (2.5, 0.5, 1.0), target)
    found = to_scan_voxels(geometry, np.asarray(crop_voxel, dtype=float))
    assert found.tolist() == pytest.approx(list(expected))


def voxels(shape, *where):
    """A boolean array of ``shape``, True at the index tuples ``where``."""
    out = np.zeros(shape, dtype=bool)
    for index in where:
        out[index] = True
    return out


@pytest.mark.parametrize(
    ("component", "spacing", "expected"),
    [
        # each voxel adds spacing**2 / 12 per axis; a line of n voxels: n**2 / 12 along it
        (voxels((4, 4, 4), (1, 2, 3)), (1.0, 1.0, 1.0), 1.0),  # one voxel
        (voxels((5, 5, 5), (slice(1, 4),) * 3), (1.0, 1.0, 1.0), 1.0),  # a 3^3 cube
        (voxels((3, 3, 8), (1, 1, slice(1, 6))), (1.0, 1.0, 1.0), 0.2),  # 5 in a row: 1/5
        (voxels((4, 4, 9), (slice(1, 3), slice(1, 3), slice(0, 8))), (1.0, 1.0, 1.0), 0.25),
        # 5 in a row along z at 0.2 mm: 1 mm long, as thick as wide: a cube's moments
        (voxels((7, 3, 3), (slice(1, 6), 1, 1)), (0.2, 1.0, 1.0), 1.0),
        # 4 on the y-x diagonal: moments 1.25 + 1/12 on y and x, 1.25 between them, 1/12 on z
        (voxels((1, 4, 4), *[(0, i, i) for i in range(4)]), (1.0, 1.0, 1.0), math.sqrt(1 / 31)),
        (np.zeros((4, 4, 4), dtype=bool), (1.0, 1.0, 1.0), 0.0),  # nothing
    ],
    ids=["voxel", "cube", "line5", "bar2x2x8", "anisotropic", "diagonal", "empty"],
)
def test_compactness(component, spacing, expected):
    assert compactness(component, spacing) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("shape_weight", "expected"), [(0.0, 1.0), (1.0, 4 / 7), (2.0, 16 / 49)], ids=["s0", "s1", "s2"]
)
def test_rescore_scan_shape_weight(cube_scan, shape_weight, expected):
    """The cube's component is 7 x 4 x 4 crop voxels of 1 mm (test_rescore_scan): moments
    49/12, 16/12, 16/12, compactness 4/7; the candidate in air has no component and stays 0."""
    candidates = frame([("air", *IN_AIR, 0.9, 7.0), ("cube", *ON_CUBE, 0.25, 3.0)])
    out = rescore_scan(cube_scan, SCAN_SPACING, candidates, bright, SIZE, TARGET, 0.0, shape_weight)
    assert out["seriesuid"].tolist() == ["cube", "air"]
    assert out["probability"].tolist() == pytest.approx([expected, 0.0])


@pytest.mark.parametrize(
    ("trained", "expected"),
    [({}, 0.0), ({"rescore_shape_weight": None}, 0.0), ({"rescore_shape_weight": 1.5}, 1.5)],
    ids=["before-the-key", "null", "set"],
)
def test_shape_weight_of_a_trained_second_stage(trained, expected):
    assert trained_shape_weight(trained) == expected
