"""Test-time zoom (``test_spacing``): a detector searches the scan resampled at a finer spacing
than it was trained on (lungseg.detection.inference.search_volume, .predict.detect).

Real HDF5 volumes (tests/detection_helpers.py), real resampling and canvases; the nodule is made
brighter than everything else, so that a probability map computed from the canvas's intensity
must come back to the nodule's own source voxel through the zoomed geometry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from detection_helpers import SPACING, chest_volume
from scipy import ndimage

from lungseg.core.errors import InputError
from lungseg.detection import predict
from lungseg.detection.inference import search_settings, search_volume
from lungseg.detection.scans import write_scan_table
from lungseg.detection.settings import DetectorSettings, VolumeSettings
from lungseg.detection.volumes import detection_volume
from lungseg.io.hdf5 import read_volume, write_volume
from lungseg.nets.models import build_model

PATIENT, SERIES = "LIDC-IDRI-9301", "1.2.826.0.1.9301"
CENTRE = (20.0, 46.0, 28.0)  # source voxels (z, y, x) of the 12 mm nodule
VOLUMES = {"spacing": [5.0, 4.0, 4.0], "shape": [24, 32, 32], "pad_hu": -1010}  # holds the lungs


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoom")
    path, nodules = chest_volume(root / "volumes", PATIENT, SERIES, [(CENTRE, 12.0, True)])
    image, mask, attrs = read_volume(path)
    image[mask == 1] = 400  # brighter than the body (40 HU): the map below peaks on it
    write_volume(path, image, mask, attrs)
    nodules.to_csv(root / "nodules.csv", index=False)
    detection = root / "detection_volumes" / PATIENT / f"{SERIES}.h5"
    detection_volume(
        volume=str(path),
        nodules=str(root / "nodules.csv"),
        detection=str(detection),
        settings=VolumeSettings.from_config(VOLUMES),
    )
    pd.DataFrame([{"patient_id": PATIENT, "subset": "val"}]).to_csv(
        root / "patients.csv", index=False
    )
    write_scan_table(
        volumes=[str(detection)], patients=str(root / "patients.csv"), table=str(root / "scans.csv")
    )
    return root, path, detection


def trained(test_spacing, **changes):
    """best.pt's settings of a small detector trained on VOLUMES."""
    settings = DetectorSettings.from_config(
        {
            "channels": 2,
            "levels": 2,
            "device": "cpu",
            "candidate_threshold": 0.01,
            "test_spacing": test_spacing,
            **changes,
        }
    )
    return settings, {**settings.model_settings(), "volumes": VOLUMES}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, (5.0, 4.0, 4.0)),
        ([2.5, 2.0, 2.0], (2.5, 2.0, 2.0)),
        ("absent", (5.0, 4.0, 4.0)),  # a checkpoint older than the key
    ],
)
def test_search_settings_take_test_spacing_over_the_training_spacing(given, expected):
    _, settings = trained(None)
    if given == "absent":
        del settings["test_spacing"]
    else:
        settings["test_spacing"] = given
    volumes = search_settings(settings)
    assert tuple(volumes.spacing) == expected
    assert list(volumes.shape) == VOLUMES["shape"] and volumes.pad_hu == -1010


@pytest.mark.parametrize("test_spacing", [None, [5.0, 4.0, 4.0], [2.5, 2.0, 2.0], [2.5, 1.5, 1.5]])
def test_the_zoomed_canvas_holds_the_lungs_and_maps_back_to_the_source(scan, test_spacing):
    _, path, _ = scan
    image, _, attrs = read_volume(path)
    _, settings = trained(test_spacing)
    hu, geometry, volumes = search_volume(image, attrs["spacing"], settings)
    spacing = np.asarray(volumes.spacing)
    assert hu.shape == tuple(max(s, b) for s, b in zip(VOLUMES["shape"], hu.shape, strict=True))
    assert all(s % 2 == 0 for s in hu.shape)  # 2**(levels-1): the network takes it
    assert not geometry["clipped"]
    assert np.asarray(geometry["step"]) == pytest.approx(spacing / np.asarray(SPACING))
    # the nodule's source centre lands on its canvas voxels: 400 HU there
    voxel = (np.asarray(CENTRE) - np.asarray(geometry["offset"])) / np.asarray(geometry["step"])
    assert hu[tuple(int(v) for v in np.rint(voxel))] > 200
    # finer spacing, more voxels over the same lungs (the box in mm stays, within a voxel each end)
    box, lungs = np.asarray(geometry["box_in_canvas"]), np.asarray(geometry["lung_box"])
    extent_mm = (box[1::2] - box[::2]) * spacing
    assert extent_mm == pytest.approx((lungs[1::2] - lungs[::2]) * np.asarray(SPACING), abs=1e-6)


def run_detect(root, detection, best_settings, model, candidates, **inputs):
    settings, checkpoint_settings = best_settings
    predict.detect(
        scans=str(root / "scans.csv"),
        volumes=[str(detection)],
        best="unused.pt",
        candidates=str(root / candidates),
        settings=settings,
        **inputs,
    )
    return pd.read_csv(root / candidates, dtype={"seriesuid": str, "patient_id": str})


@pytest.mark.parametrize(
    ("test_spacing", "diameter"),
    [(None, (4.0, 30.0)), ([2.5, 2.0, 2.0], (6.0, 20.0)), ([2.5, 1.5, 1.5], (6.0, 20.0))],
)
def test_detect_finds_the_nodule_at_its_source_voxel_at_every_test_spacing(
    scan, monkeypatch, test_spacing, diameter
):
    root, path, detection = scan
    best = trained(test_spacing)
    spacing = np.asarray(search_settings(best[1]).spacing)
    monkeypatch.setattr(predict, "load_model", lambda best_pt, device: (None, best[1]))
    # a map from the canvas's intensity instead of a network: bright voxels (the nodule at
    # 400 HU, not the body at 40), smoothed by 4 mm so that it peaks at the nodule's centre
    monkeypatch.setattr(
        predict,
        "probability_map",
        lambda model, image, settings: ndimage.gaussian_filter(
            np.clip((image - 100.0) / 300.0, 0, None), 4.0 / spacing
        ),
    )
    found = run_detect(root, detection, best, None, "candidates.csv", source_volumes=[str(path)])
    top = found.iloc[0]
    assert top["patient_id"] == PATIENT  # the highest candidate: checked below, on the nodule
    step = spacing / np.asarray(SPACING)
    centre = top[["center_z", "center_y", "center_x"]].to_numpy(dtype=float)
    assert np.all(np.abs(centre - np.asarray(CENTRE)) <= step)  # within one canvas voxel
    assert diameter[0] <= top["diameter_mm"] <= diameter[1]


def test_test_spacing_at_the_training_spacing_gives_the_trained_search(scan, monkeypatch):
    """The zoom path (resampling the source again) equals reading the detection volume when
    the spacing is the training one: the same canvas, the same network output, the same
    candidates; a real (untrained, seeded) network."""
    root, path, detection = scan
    torch.manual_seed(0)
    plain = trained(None, mode="patch", arch="unet", patch_size=[8, 16, 16])
    zoom = trained([5.0, 4.0, 4.0], mode="patch", arch="unet", patch_size=[8, 16, 16])
    model = build_model(plain[0].model_settings()).eval()
    frames = []
    for name, best in (("plain", plain), ("zoom", zoom)):
        monkeypatch.setattr(predict, "load_model", lambda best_pt, device, s=best[1]: (model, s))
        frames.append(
            run_detect(root, detection, best, model, f"{name}.csv", source_volumes=[str(path)])
        )
    assert len(frames[0]) > 0
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_test_spacing_without_the_source_volumes_names_the_file(scan, monkeypatch):
    root, _, detection = scan
    best = trained([2.5, 2.0, 2.0])
    monkeypatch.setattr(predict, "load_model", lambda best_pt, device: (None, best[1]))
    with pytest.raises(InputError, match=rf"{SERIES}.h5.*test_spacing.*source_volumes"):
        run_detect(root, detection, best, None, "none.csv")


def test_the_jobs_test_spacing_is_the_one_searched(scan, monkeypatch):
    """`lungseg detect --test_spacing ...` over a best.pt trained without it: the job's setting
    is searched (here: it needs the source volumes), so an experiment from the shell is real."""
    root, _, detection = scan
    checkpoint = trained(None)[1]
    monkeypatch.setattr(predict, "load_model", lambda best_pt, device: (None, checkpoint))
    with pytest.raises(InputError, match="test_spacing"):
        run_detect(root, detection, trained([2.5, 2.0, 2.0]), None, "job.csv")
