"""Candidates from synthetic probability maps (lungseg.detection.candidates, .predict); the
geometry of candidates and reference nodules comes from the detection volume, not scans.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from detection_helpers import ORIGIN, SPACING, chest_volume

from lungseg.core.errors import InputError
from lungseg.detection import predict
from lungseg.detection.candidates import find_candidates
from lungseg.detection.predict import COLUMNS, scan_candidates
from lungseg.detection.scans import (
    GEOMETRY,
    read_scan_table,
    volume_geometry,
    write_scan_table,
)
from lungseg.detection.settings import DetectorSettings, VolumeSettings
from lungseg.detection.volumes import detection_volume
from lungseg.evaluation.detection import reference_findings
from lungseg.figures.detection import detections_figure
from lungseg.io.hdf5 import read_volume

SERIES = "1.2.826.0.1.9201"


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
    attrs = {  # a detection volume's attrs, as read_volume returns them
        "series_uid": "1.2",
        "patient_id": "P",
        "spacing": (5.0, 4.0, 4.0),
        "step": (2.0, 4.0, 4.0),
        "offset": (-1.0, 10.0, 5.0),
        "source_spacing": (2.5, 1.0, 1.0),
        "source_origin": (-100.0, -50.0, -60.0),
        "source_direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    }
    found = scan_candidates(prob, attrs, settings, settings.to_config())
    assert list(found.columns) == COLUMNS and len(found) == 1
    assert found[["seriesuid", "patient_id"]].iloc[0].tolist() == ["1.2", "P"]
    source = [-1 + 2 * 2, 10 + 3 * 4, 5 + 4 * 4]  # offset + canvas * step
    assert found[["center_z", "center_y", "center_x"]].iloc[0].tolist() == pytest.approx(source)
    world = [-60 + source[2] * 1.0, -50 + source[1] * 1.0, -100 + source[0] * 2.5]
    assert found[["coordX", "coordY", "coordZ"]].iloc[0].tolist() == pytest.approx(world)


@pytest.fixture
def one_scan(tmp_path):
    """A real detection volume (val), its nodules.csv and scans.csv with its geometry columns
    garbled: geometry must come from the volume's attrs, never from the table."""
    path, nodules = chest_volume(
        tmp_path / "volumes", "LIDC-IDRI-9201", SERIES, [((20.0, 46.0, 28.0), 10.0, True)]
    )
    nodules.to_csv(tmp_path / "nodules.csv", index=False)
    detection = tmp_path / "detection_volumes" / "LIDC-IDRI-9201" / f"{SERIES}.h5"
    detection_volume(
        volume=str(path),
        nodules=str(tmp_path / "nodules.csv"),
        detection=str(detection),
        settings=VolumeSettings.from_config({"spacing": [5.0, 4.0, 4.0], "shape": [16, 24, 24]}),
    )
    pd.DataFrame([{"patient_id": "LIDC-IDRI-9201", "subset": "val"}]).to_csv(
        tmp_path / "patients.csv", index=False
    )
    scans = tmp_path / "scans.csv"
    write_scan_table(
        volumes=[str(detection)], patients=str(tmp_path / "patients.csv"), table=str(scans)
    )
    table = pd.read_csv(scans, dtype={"source_direction": str})
    assert table["source_direction"].item() == "1 0 0 0 1 0 0 0 1"  # the record for people
    for name in ("step", "offset", "source_spacing", "source_origin"):
        for a in "zyx":
            table[f"{name}_{a}"] = table[f"{name}_{a}"] * 3 + 7
    table["source_direction"] = "garbled"
    table.to_csv(scans, index=False)
    return tmp_path, detection


def test_geometry_comes_from_the_volume_not_the_scan_table(one_scan, monkeypatch):
    root, detection = one_scan
    _, _, attrs = read_volume(detection)
    geometry = volume_geometry(detection)
    assert tuple(geometry) == GEOMETRY
    for name, value in geometry.items():
        assert value.dtype == float and value.tolist() == pytest.approx(list(attrs[name]))

    # reference: the nodule centroid (source voxels) in patient mm, (x, y, z) = origin + c * spacing
    table = read_scan_table(root / "scans.csv")
    reference = reference_findings(str(root / "nodules.csv"), table)
    expected = [
        ORIGIN[2] + 28.0 * SPACING[2],
        ORIGIN[1] + 46.0 * SPACING[1],
        ORIGIN[0] + 20.0 * SPACING[0],
    ]
    assert reference[["coordX", "coordY", "coordZ"]].iloc[0].tolist() == pytest.approx(expected)

    # candidates: a synthetic probability map instead of a trained detector
    settings = DetectorSettings.from_config({"candidate_threshold": 0.2, "device": "cpu"})
    # the peak on the nodule's canvas voxel, so that the figure below shows a hit
    nodule = (np.array([20.0, 46.0, 28.0]) - attrs["offset"]) / attrs["step"]
    peak = tuple(int(v) for v in np.rint(nodule))
    probability = np.zeros((16, 24, 24), dtype=np.float32)
    probability[peak] = 0.9
    monkeypatch.setattr(predict, "load_model", lambda best, device: (None, settings.to_config()))
    monkeypatch.setattr(predict, "probability_map", lambda model, image, trained: probability)
    predict.detect(
        scans=str(root / "scans.csv"),
        volumes=[str(detection)],
        best="unused.pt",
        candidates=str(root / "candidates.csv"),
        settings=settings,
    )
    found = pd.read_csv(root / "candidates.csv", dtype={"seriesuid": str, "patient_id": str})
    assert found[["seriesuid", "patient_id"]].iloc[0].tolist() == [SERIES, "LIDC-IDRI-9201"]
    source = np.asarray(attrs["offset"]) + np.asarray(peak) * np.asarray(attrs["step"])
    assert found[["center_z", "center_y", "center_x"]].iloc[0].tolist() == pytest.approx(source)
    world = [ORIGIN[2] + source[2] * SPACING[2], ORIGIN[1] + source[1] * SPACING[1]]
    world.append(ORIGIN[0] + source[0] * SPACING[0])
    assert found[["coordX", "coordY", "coordZ"]].iloc[0].tolist() == pytest.approx(world)

    # the slab figure places both from the volume too (no error on the garbled table)
    figure = detections_figure(found, table, str(root / "nodules.csv"), threshold=0.5)
    assert len(figure.axes) == 1 and figure.axes[0].get_title().endswith("10 mm, hit")


def test_the_scan_table_needs_only_the_columns_the_code_reads(one_scan):
    root, _ = one_scan
    table = pd.read_csv(root / "scans.csv")
    minimal = root / "minimal.csv"
    table[["patient_id", "series_uid", "subset", "path"]].to_csv(minimal, index=False)
    assert list(read_scan_table(minimal).columns) == ["patient_id", "series_uid", "subset", "path"]
    table.drop(columns="path").to_csv(minimal, index=False)
    with pytest.raises(InputError, match="missing"):
        read_scan_table(minimal)
