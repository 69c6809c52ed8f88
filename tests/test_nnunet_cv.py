"""nnU-Net over the cross-validation folds (lungseg.bench.nnunet_cv): nnU-Net's real export and
planning of a 3-fold crops set; its training and prediction replaced by a stand-in that writes
each validation case's true mask as nnU-Net's probabilities (the real ones take ~10 min a fold
on CPU: docs/nnunet.md measures them). What is checked is everything around them: each fold
trains on the right cases, the scores pool with the crop models' into one more comparison row
with hand-computed values, a rerun with the same inputs trains nothing, bad inputs are named.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from nnunet_crops import write_crop_set

from lungseg.bench import nnunet_cv
from lungseg.bench.nnunet import MODEL
from lungseg.bench.nnunet_export import read_nifti_zyx
from lungseg.core.errors import DataError
from lungseg.evaluation.evaluate import EVALUATION_COLUMNS
from lungseg.evaluation.settings import CrossValidationSettings, EvaluationSettings

pytestmark = pytest.mark.slow

SETTINGS = EvaluationSettings(
    size_buckets_mm=(6.0, 10.0), threshold=0.5, batch_size=2, device="cpu"
)
CV = CrossValidationSettings(
    baseline="iunet", bootstrap_draws=200, bootstrap_seed=0, confidence=0.95
)
# Dice of the crop models on the six nodules (two per patient, patient k = fold k)
DICE = {"iunet": [0.5, 0.7, 0.6, 0.8, 0.4, 0.6], "unet": [0.6, 0.8, 0.6, 0.8, 0.5, 0.7]}


def write_cv_tables(folder, paths) -> dict[str, str]:
    """results/cv/nodules.csv and overfitting.csv of two crop models on the crops set."""
    crops = pd.read_csv(paths["crops.csv"])
    split = pd.read_csv(paths["split.csv"])
    rows = []
    for model, dice in DICE.items():
        for nodule, patient, fold, d in zip(
            crops["nodule_id"], crops["patient_id"], split["fold"], dice, strict=True
        ):
            row = dict.fromkeys(EVALUATION_COLUMNS, 1.0)
            row |= {"nodule_id": nodule, "patient_id": patient, "dice": d, "diameter_mm": 6.0}
            rows.append({"model": model, "fold": fold, **row, "size_bucket": "6-10 mm"})
    nodules = folder / "nodules.csv"
    pd.DataFrame(rows).to_csv(nodules, index=False)
    overfit = pd.DataFrame(
        {"model": ["iunet", "unet"], "fold": "mean", "peak_epoch": [3.0, 4.0], "drop": 0.1}
    )
    overfitting = folder / "overfitting.csv"
    overfit.to_csv(overfitting, index=False)
    return {"cv_nodules": str(nodules), "cv_overfitting": str(overfitting)}


class PerfectNnunet:
    """Stands in for nnU-Net's training and prediction: the true label as probabilities;
    counts its calls (bad inputs must fail before any)."""

    def __init__(self):
        self.calls = []

    def __call__(self, space, fold, trainer, val_cases, predictions):
        self.calls.append((fold, sorted(val_cases)))
        shutil.rmtree(predictions, ignore_errors=True)  # as nnU-Net's step does
        predictions.mkdir(parents=True)
        for case in val_cases:
            label, _ = read_nifti_zyx(space.raw / "labelsTr" / f"{case}.nii.gz")
            foreground = label.astype(np.float32)
            np.savez(
                predictions / f"{case}.npz", probabilities=np.stack([1 - foreground, foreground])
            )
        return {"train_seconds": 1.0, "predict_seconds": 0.5, "iterations": 250}


def run(paths, tables, workdir):
    return nnunet_cv.run_bench_nnunet_cv(
        crops=str(paths["crops.h5"]),
        table=str(paths["crops.csv"]),
        split=str(paths["split.csv"]),
        workdir=str(workdir),
        settings=SETTINGS,
        cv=CV,
        threads=1,
        **tables,
    )


def test_every_fold_scored_and_compared_then_resumed(nnunetv2, tmp_path, monkeypatch):
    paths = write_crop_set(tmp_path, folds=True)
    tables = write_cv_tables(tmp_path, paths)
    fake = PerfectNnunet()
    monkeypatch.setattr(nnunet_cv, "train_and_predict", fake)
    workdir = tmp_path / "nnunet_cv"
    comparison = run(paths, tables, workdir)

    cases = pd.read_csv(paths["crops.csv"])["nodule_id"].str.replace(".", "_").tolist()
    assert fake.calls == [(k, sorted(cases[2 * k : 2 * k + 2])) for k in range(3)]
    nodules = pd.read_csv(workdir / "nodules.csv")
    mine = nodules[nodules["model"] == MODEL]
    assert len(mine) == 6 and mine["nodule_id"].is_unique
    assert mine["fold"].tolist() == [0, 0, 1, 1, 2, 2]
    assert np.allclose(mine["dice"], 1.0)
    assert list(dict.fromkeys(nodules["model"])) == ["iunet", "unet", MODEL]

    row = comparison.set_index(["model", "size_bucket"]).loc[(MODEL, "all")]
    # nnU-Net 1.0 on every nodule; iunet's mean 0.6: +0.4; every patient's difference > 0
    assert row["n_nodules"] == 6 and row["n_patients"] == 3
    assert row["dice_mean"] == pytest.approx(1.0)
    assert row["difference_mean"] == pytest.approx(0.4)
    assert 0.3 <= row["difference_low"] <= row["difference_high"] <= 0.5
    assert bool(row["significant"])
    assert np.isnan(row["peak_epoch_mean"]) and np.isnan(row["drop_mean"])
    assert row["trainer"] == "nnUNetTrainer_1epoch" and row["nnunetv2_version"].count(".") == 2
    unet = comparison.set_index(["model", "size_bucket"]).loc[("unet", "all")]
    assert unet["difference_mean"] == pytest.approx(0.4 / 6) and unet["peak_epoch_mean"] == 4.0
    assert pd.read_csv(workdir / "comparison.csv").shape == comparison.shape
    summary = pd.read_csv(workdir / "summary.csv")
    assert summary["fold"].tolist() == [0, 1, 2] and set(summary["optimizer_steps"]) == {250}
    assert summary["train_seconds"].tolist() == [1.0] * 3 and "wall_seconds" not in summary
    assert (workdir / "comparison.png").stat().st_size > 0

    run(paths, tables, workdir)  # same inputs: every fold is reused
    assert len(fake.calls) == 3
    split = pd.read_csv(paths["split.csv"])
    split["comment"] = "edited"  # any change of an input: trained again
    split.to_csv(paths["split.csv"], index=False)
    run(paths, tables, workdir)
    assert len(fake.calls) == 6


def test_bad_inputs_are_named(nnunetv2, tmp_path, monkeypatch):
    paths = write_crop_set(tmp_path, folds=True)
    tables = write_cv_tables(tmp_path, paths)
    fake = PerfectNnunet()
    monkeypatch.setattr(nnunet_cv, "train_and_predict", fake)
    nodules = pd.read_csv(tables["cv_nodules"])
    nodules.iloc[1:].to_csv(tables["cv_nodules"], index=False)  # iunet lacks a nodule
    with pytest.raises(DataError, match="did not score nodule"):
        run(paths, tables, tmp_path / "a")
    first = nodules["nodule_id"] == nodules["nodule_id"].iloc[0]
    nodules[~first].to_csv(tables["cv_nodules"], index=False)  # no model has it
    with pytest.raises(DataError, match=r"nodules.csv: has no nodule LIDC-IDRI-9000_1234.0_01 of"):
        run(paths, tables, tmp_path / "a")
    nodules.drop(columns="dice").to_csv(tables["cv_nodules"], index=False)
    with pytest.raises(DataError, match=r"nodules.csv: missing column\(s\) \['dice'\]"):
        run(paths, tables, tmp_path / "b")
    nodules.to_csv(tables["cv_nodules"], index=False)
    (tmp_path / "single").mkdir()
    single = write_crop_set(tmp_path / "single")  # a single split: no fold column
    with pytest.raises(DataError, match="split.folds >= 2"):
        run(single, tables, tmp_path / "c")
    assert fake.calls == []  # each failed before nnU-Net's export, planning and training
    assert not any((tmp_path / name).exists() for name in "abc")
