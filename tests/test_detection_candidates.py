"""Candidates from synthetic probability maps (lungseg.detection.candidates, .predict)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungseg.detection.candidates import find_candidates
from lungseg.detection.predict import COLUMNS, scan_candidates
from lungseg.detection.settings import DetectorSettings


def blob(shape, centre, radius, peak):
    grid = np.indices(shape, dtype=float)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return peak * np.exp(-d2 / (2 * radius**2))


def test_components_centre_peak_diameter_and_order():
    shape = (20, 30, 30)
    prob = np.maximum(blob(shape, (5, 10, 10), 1.5, 0.6), blob(shape, (14, 20, 21.5), 2.0, 0.95))
    found = find_candidates(prob, 0.1, 100, (2.0, 1.0, 1.0))
    assert len(found) == 2
    # the peak voxel lies half a voxel off the second blob's centre
    assert found["probability"].tolist() == pytest.approx([0.95 * np.exp(-0.25 / 8), 0.6])
    assert found[["center_z", "center_y", "center_x"]].iloc[0].tolist() == pytest.approx(
        [14, 20, 21.5], abs=0.05
    )  # sub-voxel: probability-weighted centroid
    voxels = found["voxels"].iloc[1]
    assert found["diameter_mm"].iloc[1] == pytest.approx(np.cbrt(6 * voxels * 2.0 / np.pi))


def test_threshold_limit_and_empty_map():
    prob = np.zeros((10, 10, 10), dtype=np.float32)
    assert find_candidates(prob, 0.1, 100, (1, 1, 1)).empty
    for i in range(5):  # five isolated voxels, probabilities 0.2 .. 0.6
        prob[2 * i, 2 * i, 2 * i] = 0.2 + 0.1 * i
    found = find_candidates(prob, 0.25, 3, (1, 1, 1))
    assert found["probability"].tolist() == pytest.approx([0.6, 0.5, 0.4])
    assert found["center_z"].tolist() == [8, 6, 4]


def test_diagonal_voxels_form_one_component():
    prob = np.zeros((5, 5, 5), dtype=np.float32)
    prob[1, 1, 1] = prob[2, 2, 2] = 0.5
    assert len(find_candidates(prob, 0.1, 100, (1, 1, 1))) == 1


def test_scan_candidates_in_source_voxels_and_world_mm():
    settings = DetectorSettings.from_config({"candidate_threshold": 0.2})
    prob = np.zeros((8, 8, 8), dtype=np.float32)
    prob[2, 3, 4] = 0.9
    row = pd.Series(
        {
            "series_uid": "1.2",
            "patient_id": "P",
            "step_z": 2.0, "step_y": 4.0, "step_x": 4.0,
            "offset_z": -1.0, "offset_y": 10.0, "offset_x": 5.0,
            "source_spacing_z": 2.5, "source_spacing_y": 1.0, "source_spacing_x": 1.0,
            "source_origin_z": -100.0, "source_origin_y": -50.0, "source_origin_x": -60.0,
            "source_direction": "1 0 0 0 1 0 0 0 1",
        }
    )  # fmt: skip
    found = scan_candidates(prob, row, settings, (5.0, 4.0, 4.0), settings.to_config())
    assert list(found.columns) == COLUMNS and len(found) == 1
    source = [-1 + 2 * 2, 10 + 3 * 4, 5 + 4 * 4]  # offset + canvas * step
    assert found[["center_z", "center_y", "center_x"]].iloc[0].tolist() == pytest.approx(source)
    world = [-60 + source[2] * 1.0, -50 + source[1] * 1.0, -100 + source[0] * 2.5]
    assert found[["coordX", "coordY", "coordZ"]].iloc[0].tolist() == pytest.approx(world)
