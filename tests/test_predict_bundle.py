"""The predictor's bundles take the preprocessing a model was trained with from its checkpoint,
never from the (possibly changed) config: a crop model's crop grid (crops.h5's attributes, kept
by the trainer), a detector's detection-volume geometry."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from detection_helpers import chest_volume

from lungseg.core.errors import InputError
from lungseg.core.settings import schema_defaults
from lungseg.inference.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from lungseg.io.hdf5 import read_volume
from lungseg.nets.models import build_model
from lungseg.predict.bundle import (
    DETECTOR,
    SEGMENTER,
    bundle_model,
    read_bundle,
    write_predictor,
)
from lungseg.predict.find import detect_candidates
from lungseg.predict.settings import PredictorSettings
from lungseg.training.data import crop_grid

TINY = {"arch": "unet", "channels": 2, "levels": 2}
#: the detection volumes a detector was trained on (not the schema's 4 mm canvas)
TRAINED_VOLUMES = {
    "spacing": [3.0, 3.0, 3.0],
    "shape": [40, 48, 48],
    "body_threshold_hu": -450.0,
    "margin_mm": 6.0,
    "pad_hu": -1000,
}


def crops_h5(path, size, spacing) -> None:
    """crops.h5's grid attributes as the crops rule writes them (dataset.crops)."""
    with h5py.File(path, "w") as file:
        file["image"] = np.zeros((1, *size), np.int16)
        file.attrs["size"] = size
        file.attrs["target_spacing"] = str(spacing)


def checkpoint(path, settings: dict, **recorded) -> None:
    torch.manual_seed(0)
    state = {"format": CHECKPOINT_FORMAT, "settings": settings, "epoch": 3}
    save_checkpoint({**state, **recorded, "model": build_model(settings).state_dict()}, path)


@pytest.fixture
def trained(tmp_path):
    """A crop model trained on 24^3 crops at 1.25 mm and a detector on 3 mm canvases, with the
    tables the predictor chooses from."""
    crops_h5(tmp_path / "crops.h5", [24, 24, 24], [1.25, 1.25, 1.25])
    segmenter = tmp_path / "models" / "tiny" / "best.pt"
    segmenter.parent.mkdir(parents=True)
    training = schema_defaults("training") | TINY
    checkpoint(segmenter, training, crop_grid=crop_grid(tmp_path / "crops.h5"))
    detector = tmp_path / "detection" / "det" / "best.pt"
    detector.parent.mkdir(parents=True)
    detection = schema_defaults("detection") | TINY | {"mode": "whole", "deep_supervision": False}
    detection.pop("volumes")
    checkpoint(detector, detection | {"volumes": TRAINED_VOLUMES})
    point = detector.parent / "operating_point.json"
    point.write_text(json.dumps({"threshold": 0.4, "fps_per_scan_target": 1.0}))
    pd.DataFrame({"detector": ["det"], "cpm": [0.5], "sensitivity_8": [0.7]}).to_csv(
        tmp_path / "detection.csv", index=False
    )
    pd.DataFrame({"model": ["tiny"], "size_bucket": ["all"], "dice_mean": [0.8]}).to_csv(
        tmp_path / "evaluation.csv", index=False
    )
    return tmp_path, segmenter, detector, point


def bundle(folder, segmenter, detector, point) -> tuple[dict, dict]:
    write_predictor(
        detection_table=str(folder / "detection.csv"),
        evaluation_table=str(folder / "evaluation.csv"),
        detector_checkpoints=[str(detector)],
        operating_points=[str(point)],
        segmenter_checkpoints=[str(segmenter)],
        detector=str(folder / "out" / "detector.pt"),
        segmenter=str(folder / "out" / "segmenter.pt"),
        choice=str(folder / "out" / "choice.json"),
        settings=PredictorSettings.from_config({}),
    )
    return (
        read_bundle(folder / "out" / "detector.pt", DETECTOR),
        read_bundle(folder / "out" / "segmenter.pt", SEGMENTER),
    )


def test_bundles_carry_what_the_models_were_trained_on(trained):
    det, seg = bundle(*trained)
    # the config's defaults differ (32^3 crops at 1 mm, 4 mm canvases of 88 x 80 x 96)
    assert (seg["crop_size"], seg["target_spacing"]) == ([24, 24, 24], [1.25, 1.25, 1.25])
    assert schema_defaults("crops")["size"] != seg["crop_size"]
    assert det["volumes"] == TRAINED_VOLUMES
    assert schema_defaults("detection")["volumes"]["spacing"] != det["volumes"]["spacing"]
    assert det["operating_point"]["threshold"] == 0.4


@pytest.mark.parametrize("what", ["crop_grid", "volumes"])
def test_a_checkpoint_without_its_preprocessing_is_refused(trained, what):
    folder, segmenter, detector, point = trained
    path = segmenter if what == "crop_grid" else detector
    state = torch.load(path, weights_only=True)
    if what == "crop_grid":
        del state["crop_grid"]
    else:
        del state["settings"]["volumes"]["margin_mm"]
    save_checkpoint(state, path)
    with pytest.raises(InputError, match=rf"{path}: the checkpoint does not record its {what}"):
        bundle(folder, segmenter, detector, point)


@pytest.fixture
def second_stage(trained):
    """A second stage (mode rescore) over detector ``det``, trained on 16^3 crops at 2 mm, with
    a higher CPM than ``det`` (so ``best`` picks it) and its own operating point."""
    folder, segmenter, detector, _ = trained
    crops_h5(folder / "samples.h5", [16, 16, 16], [2.0, 2.0, 2.0])
    fpr = folder / "detection" / "fpr" / "best.pt"
    fpr.parent.mkdir(parents=True)
    settings = schema_defaults("training") | TINY | {"mode": "rescore", "stage1": "det"}
    settings |= {"rescore_stage1_weight": 0.5, "max_candidates": 100}
    checkpoint(fpr, settings, crop_grid=crop_grid(folder / "samples.h5"))
    point = fpr.parent / "operating_point.json"
    point.write_text(json.dumps({"threshold": 0.2, "fps_per_scan_target": 1.0}))
    pd.DataFrame(
        {"detector": ["det", "fpr"], "cpm": [0.5, 0.7], "sensitivity_8": [0.7, 0.8]}
    ).to_csv(folder / "detection.csv", index=False)
    return folder, segmenter, detector, fpr


def write_second_stage_predictor(folder, segmenter, checkpoints):
    write_predictor(
        detection_table=str(folder / "detection.csv"),
        evaluation_table=str(folder / "evaluation.csv"),
        detector_checkpoints=[str(c) for c in checkpoints],
        operating_points=[str(c.parent / "operating_point.json") for c in checkpoints],
        segmenter_checkpoints=[str(segmenter)],
        detector=str(folder / "out" / "detector.pt"),
        segmenter=str(folder / "out" / "segmenter.pt"),
        choice=str(folder / "out" / "choice.json"),
        settings=PredictorSettings.from_config({}),
    )


def test_a_second_stage_bundles_its_stage1_and_its_crop_model(second_stage):
    folder, segmenter, detector, fpr = second_stage
    write_second_stage_predictor(folder, segmenter, [detector, fpr])
    det = read_bundle(folder / "out" / "detector.pt", DETECTOR)
    stage1 = torch.load(detector, weights_only=True)
    # stage 1's network and volumes, the second stage's name and operating point
    assert (det["name"], det["stage1"], det["volumes"]) == ("fpr", "det", TRAINED_VOLUMES)
    assert det["settings"]["mode"] == "whole"
    assert all(torch.equal(det["model"][k], v) for k, v in stage1["model"].items())
    assert det["operating_point"]["threshold"] == 0.2
    rescorer = det["rescorer"]
    assert (rescorer["crop_size"], rescorer["target_spacing"]) == ([16, 16, 16], [2.0, 2.0, 2.0])
    assert rescorer["settings"]["mode"] == "rescore"
    assert json.loads((folder / "out" / "choice.json").read_text())["detector"] == "fpr"


def test_a_second_stage_without_its_stage1_checkpoint_is_refused(second_stage):
    folder, segmenter, _, fpr = second_stage
    with pytest.raises(InputError, match=r"stage-1 detector 'det' has no best.pt"):
        write_second_stage_predictor(folder, segmenter, [fpr])


def test_detect_candidates_runs_both_stages(second_stage):
    """lungseg predict's detect step with a second-stage bundle: stage 1's candidates,
    re-scored, at or above the second stage's threshold; without its network: an error."""
    folder, segmenter, detector, fpr = second_stage
    write_second_stage_predictor(folder, segmenter, [detector, fpr])
    det = read_bundle(folder / "out" / "detector.pt", DETECTOR)
    det["operating_point"]["threshold"] = 0.0  # keep every re-scored candidate
    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 200, (40, 64, 64)).astype(np.int16)
    found = detect_candidates(image, (2.5, 2.0, 2.0), bundle_model(det, "cpu"), det,
                              bundle_model(det["rescorer"], "cpu"))  # fmt: skip
    assert list(found.columns) == ["center_z", "center_y", "center_x", "probability", "diameter_mm"]
    assert 0 < len(found) <= 100
    assert found["probability"].is_monotonic_decreasing
    assert found["probability"].between(0, 1).all()
    with pytest.raises(ValueError, match="fpr: a second-stage bundle needs its crop model"):
        detect_candidates(image, (2.5, 2.0, 2.0), bundle_model(det, "cpu"), det)


def test_lungs_larger_than_the_canvas_are_searched_whole(trained, tmp_path, caplog):
    """A user's lungs that exceed the detector's training canvas: the canvas grows (divisible by
    2**(levels-1)), so candidates can lie anywhere in the lungs, not only in a central cut."""
    det, _ = bundle(*trained)
    det["operating_point"]["threshold"] = 0.0  # keep every candidate
    det["volumes"] = {**TRAINED_VOLUMES, "shape": [8, 8, 8]}  # 24 mm: far smaller than the lungs
    path, _ = chest_volume(tmp_path / "v", "LIDC-IDRI-9003", "1.2.3", [])
    image, _, attrs = read_volume(path)
    with caplog.at_level(logging.INFO, logger="lungseg.predict.find"):
        found = detect_candidates(image, attrs["spacing"], bundle_model(det, "cpu"), det)
    assert "on a canvas of [" in caplog.text and "to hold the lungs" in caplog.text
    assert len(found) > 1
    # a centrally cut 8-voxel canvas at 3 mm spans 24 mm: 9.6 slices of 2.5 mm, 24 rows of 1 mm
    span = (
        found[["center_z", "center_y", "center_x"]].max()
        - found[["center_z", "center_y", "center_x"]].min()
    )
    assert span["center_z"] > 9.6 or span["center_y"] > 24 or span["center_x"] > 24


def test_a_detector_with_test_spacing_searches_the_scan_at_it(trained, tmp_path, caplog):
    """The bundle's detector settings carry test_spacing (best.pt's): lungseg predict searches
    at it, as detect did on the validation scans, and the candidates' diameters are in mm."""
    det, _ = bundle(*trained)
    det["operating_point"]["threshold"] = 0.0
    path, _ = chest_volume(tmp_path / "v", "LIDC-IDRI-9004", "1.2.3", [((20, 46, 28), 12.0, True)])
    image, _, attrs = read_volume(path)
    found = {}
    for test_spacing in (None, [1.5, 1.5, 1.5]):
        det["settings"]["test_spacing"] = test_spacing
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lungseg.predict.find"):
            found[str(test_spacing)] = detect_candidates(
                image, attrs["spacing"], bundle_model(det, "cpu"), det
            )
    assert "searched at [1.5, 1.5, 1.5] mm" in caplog.text
    assert len(found["None"]) > 0 and len(found["[1.5, 1.5, 1.5]"]) > 0
    # 2x the voxels along each axis of the 3 mm canvas: different peaks, not a copy
    assert not found["None"].equals(found["[1.5, 1.5, 1.5]"])
