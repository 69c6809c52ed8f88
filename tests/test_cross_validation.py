"""Rules cv_summary and plot_cv on hand-made fold tables (2 models x 2 folds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lungseg.config_checks import check_cv_baseline
from lungseg.core.errors import DataError, SettingsError
from lungseg.evaluation.cross_validation import COMPARISON_COLUMNS, run_cv_summary
from lungseg.evaluation.evaluate import EVALUATION_COLUMNS
from lungseg.evaluation.settings import BucketSettings, CrossValidationSettings
from lungseg.figures.cross_validation import run_plot_cv

#: nodule -> (patient, diameter, fold); fold 0 = patients p1 and p2, fold 1 = p3.
NODULES = {
    "p1_a": ("p1", 4.0, 0),
    "p1_b": ("p1", 12.0, 0),
    "p2_a": ("p2", 8.0, 0),
    "p3_a": ("p3", 5.0, 1),
    "p3_b": ("p3", 25.0, 1),
}
BASE_DICE = {"p1_a": 0.5, "p1_b": 0.8, "p2_a": 0.6, "p3_a": 0.4, "p3_b": 0.9}
GAIN = 0.1  # the variant's Dice is the baseline's + 0.1 on every nodule
#: validation Dice per epoch of (model, fold); training Dice = validation + 0.1 * epoch
VAL = {
    ("unet", 0): [0.2, 0.6, 0.5],
    ("unet", 1): [0.4, 0.4, 0.3],
    ("iunet", 0): [0.3, 0.5, 0.7],
    ("iunet", 1): [0.2, 0.6, 0.6],
}


def evaluation(model: str, fold: int, nodules=None) -> pd.DataFrame:
    rows = []
    for nodule, (patient, diameter, in_fold) in NODULES.items():
        if (nodules is None and in_fold != fold) or (nodules is not None and nodule not in nodules):
            continue
        dice = BASE_DICE[nodule] + (GAIN if model == "iunet" else 0.0)
        rows.append([nodule, patient, dice, dice, 1.0, 1.0, 50.0, 50.0, diameter, 4, "stale"])
    return pd.DataFrame(rows, columns=EVALUATION_COLUMNS)


def write_jobs(tmp_path, evaluations: dict | None = None) -> dict:
    evaluations = evaluations or {}
    jobs = {"evaluations": [], "metrics": [], "models": [], "folds": []}
    for (model, fold), val in VAL.items():
        folder = tmp_path / model / f"fold_{fold}"
        folder.mkdir(parents=True)
        frame = evaluations.get((model, fold), evaluation(model, fold))
        frame.to_csv(folder / "evaluation.csv", index=False)
        epochs = np.arange(1, len(val) + 1)
        pd.DataFrame(
            {
                "epoch": epochs,
                "train_loss": 1.0,
                "train_dice": np.array(val) + 0.1 * epochs,
                "val_loss": 1.0,
                "val_dice": val,
                "seconds": 1.0,
                "peak_memory_mb": 100.0,
            }
        ).to_csv(folder / "metrics.csv", index=False)
        jobs["evaluations"].append(str(folder / "evaluation.csv"))
        jobs["metrics"].append(str(folder / "metrics.csv"))
        jobs["models"].append(model)
        jobs["folds"].append(fold)
    return jobs


def outputs(tmp_path) -> dict:
    names = ("nodules", "curves", "overfitting", "comparison")
    return {name: str(tmp_path / "cv" / f"{name}.csv") for name in names}


def settings(**overrides):
    return {
        "settings": CrossValidationSettings.from_config({"bootstrap_draws": 300, **overrides}),
        "buckets": BucketSettings.from_config({"size_buckets_mm": [6, 10, 20]}),
    }


def summary(tmp_path, **overrides) -> dict[str, pd.DataFrame]:
    out = outputs(tmp_path)
    run_cv_summary(**write_jobs(tmp_path), **out, **settings(**overrides))
    return {name: pd.read_csv(path) for name, path in out.items()}


def test_nodules_are_pooled_once_per_model_with_their_fold(tmp_path):
    nodules = summary(tmp_path)["nodules"]
    assert list(nodules.columns) == ["model", "fold", *EVALUATION_COLUMNS]
    assert len(nodules) == 2 * len(NODULES)
    folds = nodules.drop_duplicates("nodule_id").set_index("nodule_id")["fold"].to_dict()
    assert folds == {n: fold for n, (_, _, fold) in NODULES.items()}
    buckets = nodules.drop_duplicates("nodule_id").set_index("nodule_id")["size_bucket"]
    assert buckets.to_dict() == {  # from the diameters and evaluation.size_buckets_mm
        "p1_a": "<6 mm",
        "p1_b": "10-20 mm",
        "p2_a": "6-10 mm",
        "p3_a": "<6 mm",
        "p3_b": ">=20 mm",
    }


def test_comparison_has_every_model_and_bucket_with_the_bootstrap(tmp_path):
    table = summary(tmp_path)["comparison"]
    assert list(table.columns) == COMPARISON_COLUMNS
    buckets = ["all", "<6 mm", "6-10 mm", "10-20 mm", ">=20 mm"]
    assert table[["model", "size_bucket"]].values.tolist() == [
        [m, b] for m in ("unet", "iunet") for b in buckets
    ]
    assert table["n_nodules"].tolist() == [5, 2, 1, 1, 1] * 2
    assert table["n_patients"].tolist() == [3, 2, 1, 1, 1] * 2
    assert (table["baseline"] == "iunet").all() and (table["confidence"] == 0.95).all()
    base = table[table["model"] == "iunet"]
    assert base["dice_mean"].iloc[0] == pytest.approx(np.mean(list(BASE_DICE.values())) + GAIN)
    assert base["difference_mean"].isna().all() and not base["significant"].any()
    unet = table[table["model"] == "unet"]
    # unet - iunet = -0.1 on every nodule: the interval is -0.1 whatever patients are drawn
    for name in ("difference_mean", "difference_low", "difference_high"):
        assert unet[name].tolist() == pytest.approx([-GAIN] * 5)
    assert unet["significant"].all()
    # mean peak epoch and drop over the folds (VAL): unet (2 + 1) / 2, (0.1 + 0.1) / 2
    assert unet["peak_epoch_mean"].tolist() == pytest.approx([1.5] * 5)
    assert unet["drop_mean"].tolist() == pytest.approx([0.1] * 5)
    assert base["peak_epoch_mean"].tolist() == pytest.approx([2.5] * 5)
    assert base["drop_mean"].tolist() == pytest.approx([0.0] * 5)


def test_overfitting_per_fold_and_mean(tmp_path):
    table = summary(tmp_path)["overfitting"]
    assert table[["model", "fold"]].astype(str).values.tolist() == [
        ["unet", "0"],
        ["unet", "1"],
        ["unet", "mean"],
        ["iunet", "0"],
        ["iunet", "1"],
        ["iunet", "mean"],
    ]
    unet = table[table["model"] == "unet"]
    assert unet["peak_epoch"].tolist() == pytest.approx([2, 1, 1.5])
    assert unet["peak_val_dice"].tolist() == pytest.approx([0.6, 0.4, 0.5])
    assert unet["drop"].tolist() == pytest.approx([0.1, 0.1, 0.1])
    assert unet["train_val_gap"].tolist() == pytest.approx([0.3, 0.3, 0.3])


def test_curves_are_the_mean_over_folds_with_band(tmp_path):
    curves = summary(tmp_path)["curves"]
    unet = curves[curves["model"] == "unet"]
    assert unet["epoch"].tolist() == [1, 2, 3]
    assert unet["n_folds"].tolist() == [2, 2, 2]
    assert unet["val_dice_mean"].tolist() == pytest.approx([0.3, 0.5, 0.4])
    assert unet["val_dice_min"].tolist() == pytest.approx([0.2, 0.4, 0.3])
    assert unet["val_dice_max"].tolist() == pytest.approx([0.4, 0.6, 0.5])
    assert unet["train_dice_mean"].tolist() == pytest.approx([0.4, 0.7, 0.7])


def test_the_seed_fixes_the_intervals(tmp_path):
    first = summary(tmp_path / "a", bootstrap_seed=7)["comparison"]
    again = summary(tmp_path / "b", bootstrap_seed=7)["comparison"]
    pd.testing.assert_frame_equal(first, again)


def test_a_nodule_in_two_folds_is_an_error_naming_it_and_the_folds(tmp_path):
    twice = evaluation("unet", 1, nodules={"p3_a", "p3_b", "p2_a"})
    jobs = write_jobs(tmp_path, {("unet", 1): twice})
    with pytest.raises(
        DataError, match=r"nodule p2_a is evaluated in folds \[0, 1\] of model unet"
    ):
        run_cv_summary(**jobs, **outputs(tmp_path), **settings())
    assert not (tmp_path / "cv").exists()


def test_models_must_score_the_same_nodules(tmp_path):
    fewer = evaluation("unet", 1, nodules={"p3_a"})
    jobs = write_jobs(tmp_path, {("unet", 1): fewer})
    with pytest.raises(DataError, match="model unet did not score nodule p3_b"):
        run_cv_summary(**jobs, **outputs(tmp_path), **settings())


def test_an_unknown_baseline_is_named(tmp_path):
    jobs = write_jobs(tmp_path)
    with pytest.raises(DataError, match="cv.baseline: 'iunet_ms' is not among"):
        run_cv_summary(**jobs, **outputs(tmp_path), **settings(baseline="iunet_ms"))


def test_plot_cv_draws_both_figures_from_the_tables(tmp_path):
    tables = outputs(tmp_path)
    run_cv_summary(**write_jobs(tmp_path), **tables, **settings(baseline="unet"))
    figures = {"curves_figure": tmp_path / "curves.png", "comparison_figure": tmp_path / "cmp.png"}
    run_plot_cv(
        curves=tables["curves"],
        comparison=tables["comparison"],
        overfitting=tables["overfitting"],
        **{k: str(v) for k, v in figures.items()},
    )
    for path in figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_baseline_must_be_a_model_when_cross_validating():
    config = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())
    config["cv"] = {"baseline": "iunet_xl"}
    check_cv_baseline(config)  # folds 0: no cross-validation, no check
    config["split"]["folds"] = 3
    with pytest.raises(SettingsError, match="cv.baseline: 'iunet_xl' is not in models"):
        check_cv_baseline(config)
    config["cv"]["baseline"] = "unet"
    check_cv_baseline(config)
