"""The steps of `lungseg predict` on real files: series checks, bundles, crops pasted back."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from dicom_writer import write_series
from scan_helpers import tiny_bundles

from lungseg.core.errors import InputError, SettingsError
from lungseg.core.settings import schema_defaults
from lungseg.predict.bundle import (
    DETECTOR,
    SEGMENTER,
    choose_detector,
    choose_segmenter,
    read_bundle,
)
from lungseg.predict.measure import axial_diameter_mm, measure_nodules, voxel_to_patient
from lungseg.predict.segment import Piece, label_map, segment_candidates
from lungseg.predict.series import find_series, read_scan

AIR = -1000
TOLERANCE = schema_defaults("ingest")["spacing_tolerance"]


def ct(shape=(6, 12, 10), value=-800) -> np.ndarray:
    return np.full(shape, value, dtype=np.int16)


# --- series: one problem stops everything, named with its folder -----------------------------


def _mixed(tmp_path):
    write_series(tmp_path / "s", ct(), name="a{:03d}.dcm", series_uid="1.2.3.4.1")
    write_series(tmp_path / "s", ct(), name="b{:03d}.dcm", series_uid="1.2.3.4.2")
    return tmp_path / "s", "files of 2 series mixed in one folder"


def _not_ct(tmp_path):
    write_series(tmp_path / "s", ct(), modality="MR")
    return tmp_path / "s", "modality MR, not CT"


def _one_slice(tmp_path):
    write_series(tmp_path / "s", ct(shape=(1, 12, 10)))
    return tmp_path / "s", "only 1 CT image(s)"


def _missing_slice(tmp_path):
    write_series(tmp_path / "s", ct(shape=(8, 12, 10))).paths[3].unlink()
    return tmp_path / "s", "missing"


def _empty(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("not DICOM")
    return tmp_path / "s", "no DICOM files found"


def _absent(tmp_path):
    return tmp_path / "nowhere", "series folder not found"


@pytest.mark.parametrize(
    "make", [_mixed, _not_ct, _one_slice, _missing_slice, _empty, _absent], ids=lambda f: f.__name__
)
def test_a_bad_series_is_named_with_its_folder(tmp_path, make):
    folder, message = make(tmp_path)
    with pytest.raises(InputError) as error:
        find_series([folder], TOLERANCE)
    assert message in str(error.value)
    assert str(folder) in str(error.value)


def test_any_layout_one_series_per_folder_and_stray_files_skipped(tmp_path):
    image = np.arange(6 * 12 * 10, dtype=np.int16).reshape(6, 12, 10) - 500
    folder_a = tmp_path / "tree" / "patient A" / "scan"
    uid_a = write_series(folder_a, image, name="{:d}", pixel_spacing=(0.8, 0.8)).series_uid
    uid_b = "1.2.3.4.2"
    write_series(tmp_path / "tree" / "b", ct(), name="IM{:05d}", series_uid=uid_b)
    (tmp_path / "tree" / "b" / "README").write_text("export notes")
    found = find_series([tmp_path / "tree"], TOLERANCE)
    assert sorted(s.series_uid for s in found) == sorted([uid_a, uid_b])
    scan = read_scan(next(s for s in found if s.series_uid == uid_a), TOLERANCE)
    np.testing.assert_array_equal(scan.image, image)
    assert scan.spacing == pytest.approx((2.5, 0.8, 0.8))


def test_the_same_series_in_two_folders_is_an_error(tmp_path):
    uid = write_series(tmp_path / "one", ct()).series_uid
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    with pytest.raises(InputError, match=f"series {uid} found twice"):
        find_series([tmp_path / "one", tmp_path / "two"], TOLERANCE)


# --- bundles: anything but the right kind of bundle is named -----------------------------------


def test_bundles_read_back_and_wrong_files_are_named(tmp_path):
    detector, segmenter = tiny_bundles(tmp_path)
    assert read_bundle(detector, DETECTOR)["name"] == "tiny_detector"
    assert read_bundle(segmenter, SEGMENTER)["crop_size"] == [16, 16, 16]
    with pytest.raises(InputError, match="a lungseg-segmenter file, but a lungseg-detector"):
        read_bundle(segmenter, DETECTOR)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(InputError, match="garbage.pt: not a readable lungseg detector"):
        read_bundle(garbage, DETECTOR)
    bundle = torch.load(detector, weights_only=True)
    other = tmp_path / "future.pt"
    torch.save(bundle | {"format": 99}, other)
    with pytest.raises(InputError, match="bundle format 99; this lungseg reads format 1"):
        read_bundle(other, DETECTOR)
    checkpoint = tmp_path / "best.pt"
    torch.save({"format": 1, "model": {}, "optimizer": {}, "history": []}, checkpoint)
    with pytest.raises(InputError, match="best.pt: not a lungseg segmenter bundle .a training"):
        read_bundle(checkpoint, SEGMENTER)
    with pytest.raises(InputError, match="missing.pt: detector file not found"):
        read_bundle(tmp_path / "missing.pt", DETECTOR)


# --- crops pasted back into the scan grid ------------------------------------------------------


class ThresholdNet(torch.nn.Module):
    """'Segments' voxels brighter than the middle of the HU window: a known answer."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device for the inference code

    def forward(self, x):
        return [(x - 0.5) * 60.0 + self.anchor]


def sphere(shape, centre, radius_mm, spacing) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing, strict=True))
    return r2 <= radius_mm**2


@pytest.mark.parametrize(
    ("target_spacing", "crop_size"),
    [([1.0, 1.0, 1.0], [16, 24, 24]), (None, [16, 32, 32]), ([None, 0.5, 0.5], [16, 48, 48])],
)
@pytest.mark.parametrize("offset", [(0.0, 0.0, 0.0), (1.4, -2.2, 3.1)])
def test_a_crop_mask_lands_on_the_scan_voxels_it_came_from(target_spacing, crop_size, offset):
    spacing = (2.0, 0.8, 0.8)
    shape, centre = (30, 64, 64), (14.3, 30.6, 33.2)
    truth = sphere(shape, centre, 6.0, spacing)
    image = np.where(truth, 40, AIR).astype(np.int16)
    bundle = {
        "crop_size": crop_size,  # 24 mm or more in-plane: the 12 mm sphere fits despite the offset
        "target_spacing": target_spacing,
        "settings": {"hu_min": -1000, "hu_max": 400},
    }
    detected = np.add(centre, np.divide(offset, spacing))  # the detector is off by a few mm
    candidates = pd.DataFrame(
        [dict(zip(("center_z", "center_y", "center_x"), detected, strict=True))]
    )
    pieces = segment_candidates(image, spacing, candidates, ThresholdNet(), bundle)
    labels, kept = label_map(shape, pieces, 0.5)
    assert kept == [0]
    predicted = labels == 1
    overlap = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert overlap > 0.93, overlap
    centroid = np.argwhere(predicted).mean(axis=0)
    np.testing.assert_allclose(centroid, np.argwhere(truth).mean(axis=0), atol=0.35)


def piece(lo, shape, value, centre):
    return Piece(tuple(lo), np.full(shape, value, dtype=np.float32), tuple(centre))


@pytest.mark.parametrize(
    ("pieces", "labels_at", "kept"),
    [
        # overlapping boxes: the overlap goes to the higher probability, either order
        (
            [
                piece((0, 0, 0), (4, 4, 4), 0.9, (1, 1, 1)),
                piece((2, 2, 2), (4, 4, 4), 0.7, (4, 4, 4)),
            ],
            {(3, 3, 3): 1, (5, 5, 5): 2, (1, 1, 1): 1},
            [0, 1],
        ),
        (
            [
                piece((0, 0, 0), (4, 4, 4), 0.7, (1, 1, 1)),
                piece((2, 2, 2), (4, 4, 4), 0.9, (4, 4, 4)),
            ],
            {(3, 3, 3): 2, (5, 5, 5): 2, (1, 1, 1): 1},
            [0, 1],
        ),
        # a piece fully inside a stronger one vanishes; labels stay 1..N
        (
            [
                piece((0, 0, 0), (6, 6, 6), 0.9, (3, 3, 3)),
                piece((1, 1, 1), (2, 2, 2), 0.6, (2, 2, 2)),
                piece((6, 6, 6), (2, 2, 2), 0.8, (7, 7, 7)),
            ],
            {(2, 2, 2): 1, (7, 7, 7): 2},
            [0, 2],
        ),
        # below the threshold: nothing
        ([piece((0, 0, 0), (4, 4, 4), 0.3, (1, 1, 1))], {(1, 1, 1): 0}, []),
    ],
)
def test_overlaps_are_resolved_by_probability(pieces, labels_at, kept):
    labels, found = label_map((8, 8, 8), pieces, 0.5)
    assert found == kept
    for point, label in labels_at.items():
        assert labels[point] == label, point
    assert set(np.unique(labels)) == set(range(len(kept) + 1))


def test_the_component_nearest_the_detection_is_the_nodule():
    probability = np.zeros((10, 10, 10), dtype=np.float32)
    probability[1:3, 1:3, 1:3] = 0.9  # a vessel nearby
    probability[6:9, 6:9, 6:9] = 0.8  # the nodule the detector pointed at
    labels, _ = label_map((10, 10, 10), [Piece((0, 0, 0), probability, (7.2, 6.8, 7.0))], 0.5)
    assert labels[7, 7, 7] == 1 and labels[2, 2, 2] == 0


# --- measures ---------------------------------------------------------------------------------


def test_measures_of_a_known_block():
    spacing, origin = (2.0, 0.5, 0.5), (10.0, -20.0, -30.0)  # z, y, x
    direction = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    image = np.full((5, 20, 20), AIR, dtype=np.int16)
    labels = np.zeros(image.shape, dtype=np.uint16)
    labels[2, 3:13, 5:9] = 1  # 10 x 4 voxels in one slice
    image[2, 3:13, 5:7], image[2, 3:13, 7:9] = 0, 100
    table = measure_nodules(image, labels, [0.8], spacing, origin, direction)
    row = table.iloc[0]
    assert row["voxels"] == 40 and row["volume_mm3"] == pytest.approx(40 * 0.5)
    assert row["mean_hu"] == pytest.approx(50) and row["std_hu"] == pytest.approx(50)
    assert row["diameter_mm"] == pytest.approx(np.hypot(9 * 0.5, 3 * 0.5) + 0.5)
    assert (row["center_z"], row["center_y"], row["center_x"]) == pytest.approx((2, 7.5, 6.5))
    # x = -30 + 6.5 * 0.5, y = -20 + 7.5 * 0.5, z = 10 + 2 * 2
    assert (row["coordX"], row["coordY"], row["coordZ"]) == pytest.approx((-26.75, -16.25, 14.0))
    assert row["probability"] == pytest.approx(0.8)


def test_patient_coordinates_follow_the_direction_cosines():
    # array axes z, y, x along patient -y, +z, +x (a coronal acquisition)
    direction = (0, -1, 0, 1, 0, 0, 0, 0, 1)  # rows: axis in patient (z, y, x)
    point = voxel_to_patient(np.array([[2.0, 3.0, 4.0]]), (1.5, 0.5, 0.25), (0, 0, 0), direction)
    assert point[0] == pytest.approx((4 * 0.25, -2 * 1.5, 3 * 0.5))


def test_axial_diameter_of_a_disk():
    spacing = (1.0, 0.4, 0.4)
    disk = sphere((1, 80, 80), (0, 40, 40), 10.0, (100.0, 0.4, 0.4))
    assert axial_diameter_mm(disk, spacing) == pytest.approx(20.0, abs=0.5)


# --- which models the predictor bundles -----------------------------------------------------

DETECTION = pd.DataFrame(
    {"detector": ["b", "a", "c"], "cpm": [0.5, 0.5, 0.2], "sensitivity_8": [0.6, 0.6, 0.9]}
)
EVALUATION = pd.DataFrame(
    {
        "model": ["unet", "unet", "iunet", "iunet"],
        "size_bucket": ["all", "<6 mm", "all", "<6 mm"],
        "dice_mean": [0.7, 0.9, 0.8, 0.1],
    }
)


@pytest.mark.parametrize(
    ("choose", "table", "wanted", "expected"),
    [
        (choose_detector, DETECTION, "best", "a"),  # CPM tie, sensitivity tie: the name
        (choose_detector, DETECTION, "c", "c"),
        (choose_segmenter, EVALUATION, "best", "iunet"),  # over all nodules, not one bucket
        (choose_segmenter, EVALUATION, "unet", "unet"),
    ],
)
def test_the_predictor_takes_the_named_or_the_best_model(choose, table, wanted, expected):
    assert choose(table, wanted)[0] == expected


@pytest.mark.parametrize("choose", [choose_detector, choose_segmenter])
def test_an_unknown_model_name_is_a_settings_error(choose):
    table = DETECTION if choose is choose_detector else EVALUATION
    with pytest.raises(SettingsError, match="'nope': not in"):
        choose(table, "nope")
