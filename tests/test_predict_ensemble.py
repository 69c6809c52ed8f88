"""Ensembling the cross-validation folds' models (predict.ensemble_folds): the mean of their
probabilities (inference.model.predict), the segmenter bundle that carries them, the rule's
choice record and the parse-time check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from workflow_helpers import copy_workflow, dry_run_jobs, snakemake, update_config

from lungseg.config_checks import check_ensemble_folds
from lungseg.core.errors import InputError, SettingsError
from lungseg.core.settings import schema_defaults
from lungseg.inference.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from lungseg.inference.model import predict
from lungseg.nets.models import build_model
from lungseg.predict.bundle import (
    SEGMENTER,
    bundle_models,
    fold_number,
    read_bundle,
    segmenter_bundle,
    write_predictor,
)
from lungseg.predict.settings import PredictorSettings
from lungseg.training.data import crop_grid

REPO = Path(__file__).parents[1]
TINY = {"arch": "unet", "channels": 2, "levels": 2}


def logit(p: float) -> float:
    return math.log(p / (1 - p))


class Constant(torch.nn.Module):
    """Logit ``value`` at every voxel (``scale`` x (normalised HU - 0.5) added when set)."""

    def __init__(self, p: float | None = None, scale: float = 0.0) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(0.0 if p is None else logit(p)))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.value + self.scale * (x - 0.5),)


WINDOW = {"hu_min": -1000, "hu_max": 0}


@pytest.mark.parametrize(
    ("members", "hu", "window", "expected"),
    [
        # one model: its probability; a list of one: the same
        (Constant(0.2), -500, WINDOW, 0.2),
        ([Constant(0.2)], -500, WINDOW, 0.2),
        # probabilities averaged, not logits: (0.2 + 0.6) / 2 = 0.4 (mean logit: p = 0.3798)
        ([Constant(0.2), Constant(0.6)], -500, WINDOW, 0.4),
        ([Constant(0.1), Constant(0.5), Constant(0.9)], -500, WINDOW, 0.5),
        ([Constant(0.1), Constant(0.1), Constant(0.7)], -500, WINDOW, 0.3),
        # the window of the settings is every member's: -500 HU in [-1000, 0] is 0.5 -> logit 0
        ([Constant(scale=10.0), Constant(0.5, scale=10.0)], -500, WINDOW, 0.5),
        # ... in [-1000, 1000] it is 0.25 -> logit -2.5 for both: sigmoid(-2.5) = 0.075858
        ([Constant(scale=10.0), Constant(0.5, scale=10.0)], -500, {"hu_max": 1000}, 0.075858),
        # 0.2 and sigmoid(10 * 0.5) = 0.993307: mean 0.596654
        ([Constant(0.2), Constant(scale=10.0)], 0, WINDOW, 0.596654),
    ],
)
def test_an_ensemble_averages_its_members_probabilities(members, hu, window, expected):
    images = np.full((5, 2, 3, 4), hu, np.int16)
    settings = {"hu_min": -1000, **window}
    probabilities = predict(members, images, settings, batch_size=2)
    assert probabilities.shape == images.shape and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


def test_one_network_predicts_as_a_list_of_itself_and_an_ensemble_needs_members():
    torch.manual_seed(0)
    model = build_model(schema_defaults("training") | TINY).eval()
    images = np.random.default_rng(0).integers(-1000, 400, (3, 8, 8, 8)).astype(np.int16)
    alone = predict(model, images, {}, batch_size=2)
    assert np.array_equal(predict([model], images, {}, batch_size=2), alone)
    np.testing.assert_allclose(predict([model, model], images, {}, batch_size=3), alone, atol=1e-7)
    with pytest.raises(ValueError, match="non-empty sequence"):
        predict([], images, {}, batch_size=2)


# --- the bundle ------------------------------------------------------------------------------


def checkpoint(path: Path, settings: dict, seed: int, **recorded) -> None:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, "settings": settings, "epoch": 3}
    save_checkpoint({**state, **recorded, "model": build_model(settings).state_dict()}, path)


@pytest.fixture
def models(tmp_path) -> Path:
    """results/-like folder: crop model ``tiny`` (single split and folds 0-2), the tables."""
    with h5py.File(tmp_path / "crops.h5", "w") as file:
        file["image"] = np.zeros((1, 16, 16, 16), np.int16)
        file.attrs["size"] = [16, 16, 16]
        file.attrs["target_spacing"] = str([1.0, 1.0, 1.0])
    grid = crop_grid(tmp_path / "crops.h5")
    training = schema_defaults("training") | TINY
    checkpoint(tmp_path / "models/tiny/best.pt", training, 0, crop_grid=grid)
    for k in (2, 0, 1):
        checkpoint(tmp_path / f"models/tiny/fold_{k}/best.pt", training, 10 + k, crop_grid=grid)
    detection = schema_defaults("detection") | TINY | {"mode": "whole", "deep_supervision": False}
    checkpoint(tmp_path / "detection/det/best.pt", detection, 0)
    (tmp_path / "detection/det/operating_point.json").write_text(json.dumps({"threshold": 0.4}))
    pd.DataFrame({"detector": ["det"], "cpm": [0.5], "sensitivity_8": [0.7]}).to_csv(
        tmp_path / "detection.csv", index=False
    )
    pd.DataFrame({"model": ["tiny"], "size_bucket": ["all"], "dice_mean": [0.8]}).to_csv(
        tmp_path / "evaluation.csv", index=False
    )
    return tmp_path


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def folds(folder: Path) -> list[str]:
    return [str(folder / f"models/tiny/fold_{k}/best.pt") for k in (2, 0, 1)]


def predictor(folder: Path, ensemble: bool) -> tuple[dict, dict]:
    write_predictor(
        detection_table=str(folder / "detection.csv"),
        evaluation_table=str(folder / "evaluation.csv"),
        detector_checkpoints=[str(folder / "detection/det/best.pt")],
        operating_points=[str(folder / "detection/det/operating_point.json")],
        segmenter_checkpoints=[str(folder / "models/tiny/best.pt")],
        fold_checkpoints=folds(folder),
        detector=str(folder / "out/detector.pt"),
        segmenter=str(folder / "out/segmenter.pt"),
        choice=str(folder / "out/choice.json"),
        settings=PredictorSettings.from_config({"ensemble_folds": ensemble}),
    )
    choice = json.loads((folder / "out/choice.json").read_text())
    return read_bundle(folder / "out/segmenter.pt", SEGMENTER), choice


def test_the_rule_bundles_the_folds_only_when_asked(models):
    single, choice = predictor(models, ensemble=False)
    assert "ensemble" not in single and "segmenter_ensemble_folds" not in choice
    assert isinstance(bundle_models(single, "cpu"), torch.nn.Module)
    bundle, choice = predictor(models, ensemble=True)
    assert bundle["ensemble_folds"] == [0, 1, 2] == choice["segmenter_ensemble_folds"]
    assert same_weights(bundle["model"], single["model"])  # the single model stays
    members = bundle_models(bundle, "cpu")
    assert isinstance(members, list) and len(members) == 3
    for k, member in enumerate(members):  # fold order, each with its own weights
        fold = torch.load(models / f"models/tiny/fold_{k}/best.pt", weights_only=True)
        assert same_weights(member.state_dict(), fold["model"])
        assert not same_weights(member.state_dict(), single["model"])


def test_a_bundle_without_an_ensemble_is_one_network_as_before(models):
    bundle = segmenter_bundle(models / "models/tiny/best.pt", "tiny")
    assert set(bundle) == {
        "kind",
        "format",
        "name",
        "settings",
        "crop_size",
        "target_spacing",
        "epoch",
        "model",
    }
    assert isinstance(bundle_models(bundle | {"ensemble": []}, "cpu"), torch.nn.Module)


@pytest.mark.parametrize(
    ("what", "key", "change"),
    [
        ("crop_grid", "crop_size", {"crop_size": [24] * 3, "target_spacing": [1.0] * 3}),
        ("crop_grid", "target_spacing", {"crop_size": [16] * 3, "target_spacing": [2.0] * 3}),
        ("settings", "channels", {"channels": 4}),
        ("settings", "hu_max", {"hu_max": 300}),
    ],
)
def test_a_fold_model_unlike_the_single_model_is_refused(models, what, key, change):
    path = models / "models/tiny/fold_1/best.pt"
    state = torch.load(path, weights_only=True)
    if what == "settings":
        state["settings"] = state["settings"] | change
        state["model"] = build_model(state["settings"]).state_dict()
    else:
        state["crop_grid"] = change
    save_checkpoint(state, path)
    with pytest.raises(InputError, match=rf"^{path}: {what}\.{key} is "):
        segmenter_bundle(models / "models/tiny/best.pt", "tiny", folds(models))


def test_training_settings_may_differ_between_members(models):
    path = models / "models/tiny/fold_1/best.pt"
    state = torch.load(path, weights_only=True)
    state["settings"] = state["settings"] | {"lr": 0.5, "epochs": 7}
    save_checkpoint(state, path)
    bundle = segmenter_bundle(models / "models/tiny/best.pt", "tiny", folds(models))
    assert bundle["ensemble_folds"] == [0, 1, 2]


def test_the_chosen_models_folds_must_be_there(models):
    with pytest.raises(InputError, match="predict.ensemble_folds: no fold checkpoint of model"):
        write_predictor(
            detection_table=str(models / "detection.csv"),
            evaluation_table=str(models / "evaluation.csv"),
            detector_checkpoints=[str(models / "detection/det/best.pt")],
            operating_points=[str(models / "detection/det/operating_point.json")],
            segmenter_checkpoints=[str(models / "models/tiny/best.pt")],
            fold_checkpoints=[str(models / "models/other/fold_0/best.pt")],
            detector=str(models / "out/detector.pt"),
            segmenter=str(models / "out/segmenter.pt"),
            choice=str(models / "out/choice.json"),
            settings=PredictorSettings.from_config({"ensemble_folds": True}),
        )


@pytest.mark.parametrize(
    ("path", "fold"),
    [("results/models/unet/fold_0/best.pt", 0), ("m/fold_12/best.pt", 12), ("m/best.pt", None)],
)
def test_fold_numbers_come_from_the_folder(path, fold):
    if fold is None:
        with pytest.raises(InputError, match="not a fold's checkpoint"):
            fold_number(path)
    else:
        assert fold_number(path) == fold


# --- the config --------------------------------------------------------------------------------


def test_ensembling_the_folds_needs_folds():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    check_ensemble_folds(config)  # default: false
    assert schema_defaults("predict")["ensemble_folds"] is False
    config["predict"]["ensemble_folds"] = True
    for folds_value in (0, 1):
        config["split"]["folds"] = folds_value
        with pytest.raises(
            SettingsError, match=rf"predict.ensemble_folds: true .* split.folds is {folds_value}"
        ):
            check_ensemble_folds(config)
    config["split"]["folds"] = 2
    check_ensemble_folds(config)


@pytest.mark.parametrize("ensemble", [False, True])
def test_the_predictor_rule_asks_for_the_fold_models_only_when_ensembling(tmp_path, ensemble):
    """The fold models of every model are the predictor's input with predict.ensemble_folds
    (which one is chosen is known only in the job); by default the rule is as before."""
    updates = {"split": {"folds": 2}, "predict": {"ensemble_folds": ensemble}}
    workdir = copy_workflow(tmp_path, updates)
    jobs = dry_run_jobs(workdir, "results/predictor/segmenter.pt")
    models = len(yaml.safe_load((REPO / "config.yaml").read_text())["models"])
    assert jobs["predictor"] == 1
    assert jobs["train_fold"] == (2 * models if ensemble else 0)
    update_config(workdir, {"split": {"folds": 0}})
    failed = snakemake(workdir, "-n", "--cores", "1", check=False)
    assert (failed.returncode != 0) == ensemble
    assert ("predict.ensemble_folds: true" in failed.stdout) == ensemble
