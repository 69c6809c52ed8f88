"""lungseg bench-ensemble: held-out crops scored for each fold model and their ensemble; the
summary's arithmetic by hand, then a run on two tiny trained fold models."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from training_helpers import SETTINGS, run_training, write_crops

from lungseg.bench.ensemble import (
    NODULE_COLUMNS,
    SUMMARY_COLUMNS,
    run_bench_ensemble,
    summarise_members,
)
from lungseg.core.errors import InputError
from lungseg.evaluation.evaluate import score_predictions
from lungseg.evaluation.settings import CrossValidationSettings, EvaluationSettings
from lungseg.inference.model import load_model, predict

#: nodule -> patient, diameter (mm), Dice of fold_0, fold_1, ensemble; buckets <10, >=10 mm
HAND = {
    "a": ("p1", 5.0, 0.5, 0.3, 0.6),  # single mean 0.4, difference +0.2
    "b": ("p1", 12.0, 0.7, 0.9, 0.8),  # single mean 0.8, difference 0.0
    "c": ("p2", 15.0, 0.9, 0.7, 0.9),  # single mean 0.8, difference +0.1
}
SMALL, LARGE = "<10 mm", ">=10 mm"


def hand_nodules() -> pd.DataFrame:
    rows = []
    for i, member in enumerate(("fold_0", "fold_1", "ensemble")):
        for nodule, (patient, diameter, *dice) in HAND.items():
            bucket = SMALL if diameter < 10 else LARGE
            rows.append((member, nodule, patient, diameter, bucket, dice[i]))
    columns = ["member", "nodule_id", "patient_id", "diameter_mm", "size_bucket", "dice"]
    return pd.DataFrame(rows, columns=columns)


# member, bucket -> n_nodules, n_patients, dice_mean, difference_mean, low, high, significant
EXPECTED = {
    ("fold_0", "all"): (3, 2, 0.7, None),
    ("fold_0", SMALL): (1, 1, 0.5, None),
    ("fold_0", LARGE): (2, 2, 0.8, None),
    ("fold_1", "all"): (3, 2, 0.633333, None),
    ("fold_1", SMALL): (1, 1, 0.3, None),
    ("fold_1", LARGE): (2, 2, 0.8, None),
    # every draw of the two patients has mean difference 0.1: p1 brings (0.2 + 0.0), p2 0.1;
    # p1+p1 = 0.4 / 4, p2+p2 = 0.2 / 2, p1+p2 = 0.3 / 3
    ("ensemble", "all"): (3, 2, 0.766667, (0.1, 0.1, 0.1, True)),
    # one patient: the interval is the point
    ("ensemble", SMALL): (1, 1, 0.6, (0.2, 0.2, 0.2, True)),
    # b (p1) 0.0, c (p2) 0.1: draws give 0.0, 0.05 or 0.1; the 2.5th percentile is 0.0
    ("ensemble", LARGE): (2, 2, 0.85, (0.05, 0.0, 0.1, False)),
}


@pytest.mark.parametrize(("key", "expected"), EXPECTED.items(), ids=lambda v: str(v))
def test_the_summary_by_hand(key, expected):
    summary = summarise_members(hand_nodules(), [10.0], draws=2000, seed=0, confidence=0.95)
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert list(summary["size_bucket"][:3]) == ["all", SMALL, LARGE]
    row = summary.set_index(["member", "size_bucket"]).loc[key]
    n_nodules, n_patients, dice, difference = expected
    assert (row["n_nodules"], row["n_patients"]) == (n_nodules, n_patients)
    assert row["dice_mean"] == pytest.approx(dice, abs=1e-6)
    if difference is None:
        assert pd.isna(row["difference_mean"]) and pd.isna(row["significant"])
    else:
        mean, low, high, significant = difference
        assert row["difference_mean"] == pytest.approx(mean, abs=1e-9)
        assert row["difference_low"] == pytest.approx(low, abs=1e-9)
        assert row["difference_high"] == pytest.approx(high, abs=1e-9)
        assert row["confidence"] == 0.95 and row["significant"] == significant


def test_an_empty_bucket_is_listed_with_no_nodules():
    summary = summarise_members(hand_nodules(), [10.0, 30.0], draws=100, seed=0, confidence=0.9)
    empty = summary[summary["size_bucket"] == ">=30 mm"]
    assert list(empty["n_nodules"]) == [0, 0, 0] and empty["dice_mean"].isna().all()
    assert not empty["significant"].iloc[-1]


# --- a run on tiny trained fold models ----------------------------------------------------------

TINY = SETTINGS | {
    "arch": "unet",
    "channels": 2,
    "levels": 2,
    "deep_supervision": False,
    "scale_weights": "equal",
    "epochs": 1,
    "amp": False,
}
DIAMETERS = [4.0, 8.0, 12.0, 25.0, 5.0, 15.0]


@pytest.fixture(scope="module")
def folds(tmp_path_factory) -> tuple[Path, list[str], dict[str, Path]]:
    """Two fold models (fold_0, fold_1) trained on different patients, and held-out crops of
    other spheres with the crops table's geometry columns."""
    root = tmp_path_factory.mktemp("bench_ensemble")
    data = write_crops(root / "crops", n=8, size=16)
    checkpoints = []
    for k in (0, 1):
        split = pd.read_csv(data["split.csv"])
        patients = sorted(split["patient_id"].unique())
        split["subset"] = np.where(split["patient_id"] == patients[k], "val", "train")
        split.to_csv(root / f"split_{k}.csv", index=False)
        out = root / "models" / "tiny" / f"fold_{k}"
        run_training({**data, "split.csv": root / f"split_{k}.csv"}, out, TINY | {"seed": k})
        checkpoints.append(str(out / "best.pt"))
    held = write_crops(root / "held_out", n=len(DIAMETERS), size=16, seed=7)
    table = pd.read_csv(held["crops.csv"])
    for axis in "zyx":
        table[f"spacing_{axis}"] = 1.0
    table["diameter_mm"] = DIAMETERS
    table["n_readers"] = 4
    table.to_csv(held["crops.csv"], index=False)
    return root, checkpoints, held


EVALUATION = EvaluationSettings.from_config({"size_buckets_mm": [6, 10, 20], "device": "cpu"})
CV = CrossValidationSettings.from_config({"bootstrap_draws": 200})


def bench(root: Path, checkpoints: list[str], held: dict[str, Path]) -> pd.DataFrame:
    return run_bench_ensemble(
        crops=str(held["crops.h5"]),
        table=str(held["crops.csv"]),
        checkpoints=checkpoints,
        nodules=str(root / "out" / "nodules.csv"),
        summary=str(root / "out" / "summary.csv"),
        settings=EVALUATION,
        cv=CV,
    )


def test_each_fold_and_the_ensemble_score_every_held_out_crop(folds):
    root, checkpoints, held = folds
    summary = bench(root, checkpoints, held)
    nodules = pd.read_csv(root / "out" / "nodules.csv")
    assert list(nodules.columns) == NODULE_COLUMNS
    assert list(dict.fromkeys(nodules["member"])) == ["fold_0", "fold_1", "ensemble"]
    assert (nodules.groupby("member")["nodule_id"].nunique() == len(DIAMETERS)).all()
    # the same scores from the models run here: each alone, and the mean of their probabilities
    table = pd.read_csv(held["crops.csv"])
    with h5py.File(held["crops.h5"]) as file:
        images, masks, other = (file[n][()] for n in ("image", "mask", "other"))
    probabilities = {}
    for k, path in enumerate(checkpoints):
        model, settings = load_model(path)
        probabilities[f"fold_{k}"] = predict(model, images, settings, 4)
    probabilities["ensemble"] = (probabilities["fold_0"] + probabilities["fold_1"]) / 2
    for member, values in probabilities.items():
        expected = score_predictions(values, masks, other, table, 0.5, [6, 10, 20])
        mine = nodules[nodules["member"] == member].reset_index(drop=True)
        np.testing.assert_allclose(mine["dice"], expected["dice"], atol=1e-5)
        assert list(mine["size_bucket"]) == list(expected["size_bucket"])
    # the summary is the nodules' means; the ensemble's difference is vs the folds' mean
    overall = summary[summary["size_bucket"] == "all"].set_index("member")
    for member in ("fold_0", "fold_1", "ensemble"):
        mean = nodules.loc[nodules["member"] == member, "dice"].mean()
        assert overall.loc[member, "dice_mean"] == pytest.approx(mean, abs=1e-6)
    single = (overall.loc["fold_0", "dice_mean"] + overall.loc["fold_1", "dice_mean"]) / 2
    row = overall.loc["ensemble"]
    assert row["difference_mean"] == pytest.approx(row["dice_mean"] - single, abs=2e-6)
    assert row["difference_low"] <= row["difference_mean"] <= row["difference_high"]
    assert pd.read_csv(root / "out" / "summary.csv").shape == summary.shape


def test_held_out_crops_on_another_grid_are_refused(folds, tmp_path):
    root, checkpoints, held = folds
    moved = {name: tmp_path / Path(path).name for name, path in held.items()}
    for name, path in held.items():
        moved[name].write_bytes(Path(path).read_bytes())
    with h5py.File(moved["crops.h5"], "a") as file:
        file.attrs["target_spacing"] = str([2.0, 2.0, 2.0])
    with pytest.raises(InputError, match=r"fold_0/best.pt: crop_grid.target_spacing is "):
        bench(tmp_path, checkpoints, moved)
    with pytest.raises(InputError, match="a fold given twice"):
        bench(root, [checkpoints[0], checkpoints[0]], held)
