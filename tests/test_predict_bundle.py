"""The predictor's bundles take the preprocessing a model was trained with from its checkpoint,
never from the (possibly changed) config: a crop model's crop grid (crops.h5's attributes, kept
by the trainer), a detector's detection-volume geometry."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from lungseg.core.errors import InputError
from lungseg.core.settings import schema_defaults
from lungseg.inference.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from lungseg.nets.models import build_model
from lungseg.predict.bundle import DETECTOR, SEGMENTER, read_bundle, write_predictor
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
