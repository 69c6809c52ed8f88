"""Detection volumes from real HDF5 volumes written with lungseg's writer (synthetic chests)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from detection_helpers import ORIGIN, SPACING, chest_volume

from lungseg.detection.settings import VolumeSettings
from lungseg.detection.volumes import (
    IGNORE,
    NODULE,
    canvas_shape,
    detection_volume,
    make_detection_volume,
    to_source_voxels,
    to_world,
)
from lungseg.io.hdf5 import read_volume

SERIES = "1.2.3.4.5.6.7.8"


def settings(**changes) -> VolumeSettings:
    base = {"spacing": [5.0, 4.0, 4.0], "shape": [24, 24, 32]}
    return VolumeSettings.from_config({**base, **changes})


@pytest.fixture
def scan(tmp_path):
    # a cohort nodule in the left lung, a non-cohort finding in the right one
    path, table = chest_volume(
        tmp_path / "volumes",
        "LIDC-IDRI-9001",
        SERIES,
        [((20.0, 46.0, 28.0), 10.0, True), ((12.0, 40.0, 70.0), 8.0, False)],
    )
    nodules = tmp_path / "nodules.csv"
    table.to_csv(nodules, index=False)
    return path, nodules, table


def run(tmp_path, scan, **changes):
    path, nodules, _ = scan
    out = tmp_path / "detection" / "d.h5"
    detection_volume(
        volume=str(path), nodules=str(nodules), detection=str(out), settings=settings(**changes)
    )
    return read_volume(out)


def test_canvas_geometry_target_and_lung_box(tmp_path, scan):
    hu, target, attrs = run(tmp_path, scan)
    assert hu.dtype == np.int16 and hu.shape == (24, 24, 32) and target.shape == hu.shape
    assert set(np.unique(target)) == {0, NODULE, IGNORE}
    assert attrs["box_of"] == "lungs" and not attrs["clipped"]
    assert attrs["step"] == pytest.approx((2.0, 4.0, 4.0))
    z0, z1, y0, y1, x0, x1 = attrs["box_in_canvas"]
    # lungs: source z 4..35 (2.5 mm), y 18..74, x 13..83 (1 mm); box = lungs + 10 mm margin
    lung_source = np.array([[4, 18, 13], [35, 74, 83]], dtype=float)
    lung_canvas = (lung_source - np.asarray(attrs["offset"])) / np.asarray(attrs["step"])
    assert z0 <= lung_canvas[0, 0] and z1 >= lung_canvas[1, 0]
    assert y0 <= lung_canvas[0, 1] and y1 >= lung_canvas[1, 1]
    assert x0 <= lung_canvas[0, 2] and x1 >= lung_canvas[1, 2]
    assert (y1 - y0) * 4 <= (74 - 18) + 2 * 10 + 2 * 4  # the box is the lungs', not the body's
    # the cohort nodule is label 1 at its centroid, the other finding is ignored
    nodule = np.rint((np.array([20.0, 46.0, 28.0]) - attrs["offset"]) / attrs["step"]).astype(int)
    assert target[tuple(nodule)] == NODULE and hu[tuple(nodule)] > -300
    other = np.rint((np.array([12.0, 40.0, 70.0]) - attrs["offset"]) / attrs["step"]).astype(int)
    assert target[tuple(other)] == IGNORE
    # a nodule of 10 mm at 4-5 mm voxels: a handful of voxels, not the whole lung
    assert 2 <= (target == NODULE).sum() <= 30
    # canvas voxels outside the scan are air
    assert attrs["offset"][0] < 0 and (hu[0] == -1000).all()


def test_canvas_to_source_to_world(tmp_path, scan):
    _, _, attrs = run(tmp_path, scan)
    source = to_source_voxels(np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]), attrs)
    assert source[1] - source[0] == pytest.approx([2.0, 8.0, 12.0])
    world = to_world(np.array([[0.0, 0.0, 0.0], [2.0, 3.0, 4.0]]), attrs)
    assert world[0] == pytest.approx(ORIGIN[::-1])  # (x, y, z) of voxel 0
    assert world[1] - world[0] == pytest.approx([4 * SPACING[2], 3 * SPACING[1], 2 * SPACING[0]])


def test_tiny_nodule_keeps_its_centroid_voxel(tmp_path):
    path, table = chest_volume(
        tmp_path / "volumes", "LIDC-IDRI-9002", SERIES, [((20.0, 46.0, 28.0), 3.0, True)]
    )
    nodules = tmp_path / "nodules.csv"
    table.to_csv(nodules, index=False)
    out = tmp_path / "d.h5"
    detection_volume(
        volume=str(path),
        nodules=str(nodules),
        detection=str(out),
        settings=settings(spacing=[10.0, 8.0, 8.0], shape=[8, 16, 16]),
    )
    _, target, attrs = read_volume(out)
    assert (target == NODULE).sum() >= 1 and attrs["n_nodules"] == 1


def test_box_larger_than_canvas_is_cut_centrally_and_logged(tmp_path, scan, caplog):
    with caplog.at_level(logging.WARNING):
        hu, _, attrs = run(tmp_path, scan, shape=[8, 8, 8])
    assert hu.shape == (8, 8, 8) and attrs["clipped"]
    assert "cut centrally" in caplog.text


@pytest.mark.parametrize(
    ("box", "shape", "fit_multiple", "expected"),
    [
        ((0, 20, 0, 10, 5, 15), (24, 24, 32), 0, [24, 24, 32]),  # fits: the canvas
        ((0, 30, 0, 10, 5, 15), (24, 24, 32), 0, [24, 24, 32]),  # too long, no fit: cut
        ((0, 30, 0, 10, 5, 15), (24, 24, 32), 4, [32, 24, 32]),  # 30 -> next multiple of 4
        ((0, 32, 0, 10, 5, 15), (24, 24, 32), 4, [32, 24, 32]),  # 32 is one already
        ((3, 36, 1, 26, 0, 40), (24, 24, 32), 8, [40, 32, 40]),  # every axis grows
        ((0, 24, 0, 24, 0, 32), (24, 24, 32), 8, [24, 24, 32]),  # equal: no growth
        ((0, 10, 0, 10, 0, 10), (6, 6, 6), 1, [10, 10, 10]),  # patch mode: any size
    ],
)
def test_canvas_shape(box, shape, fit_multiple, expected):
    assert canvas_shape(box, shape, fit_multiple) == expected


def test_a_box_larger_than_canvas_grows_it_when_asked(tmp_path, scan):
    """lungseg predict's volumes: the whole lung box on a canvas divisible by fit_multiple, the
    geometry consistent with the canvas actually used."""
    image, _, attrs = read_volume(scan[0])
    small = settings(shape=[8, 8, 8])
    hu, target, geometry = make_detection_volume(image, None, attrs["spacing"], None, small, 4)
    z0, z1, y0, y1, x0, x1 = geometry["box_in_canvas"]
    assert not geometry["clipped"] and hu.shape == target.shape
    assert all(s % 4 == 0 and s >= 8 for s in hu.shape) and hu.shape != (8, 8, 8)
    for a, (lo, hi) in enumerate(((z0, z1), (y0, y1), (x0, x1))):
        assert 0 <= lo < hi <= hu.shape[a]  # the whole box is on the canvas
        assert hu.shape[a] == 8 or hu.shape[a] - (hi - lo) < 4  # the smallest such canvas
    # the same canvas voxels as the fixed canvas where the fixed one holds the box
    fixed, _, fixed_geometry = make_detection_volume(
        image, None, attrs["spacing"], None, settings(), 4
    )
    reference, _, _ = make_detection_volume(image, None, attrs["spacing"], None, settings())
    assert np.array_equal(fixed, reference) and not fixed_geometry["clipped"]
    # the nodule lies in the grown canvas at its centroid
    nodule = np.rint((np.array([20.0, 46.0, 28.0]) - geometry["offset"]) / geometry["step"])
    assert hu[tuple(nodule.astype(int))] > -300
