"""k-fold cross-validation in the workflow (split.folds >= 2): a tiny 2-fold run trains and
evaluates every model once per fold and scores every validation nodule exactly once."""

from __future__ import annotations

import pandas as pd
import pytest
from workflow_helpers import copy_workflow, deep_update, dry_run_jobs, snakemake, tiny_config

pytestmark = pytest.mark.slow

CV_RULES = {"fold_split", "train_fold", "evaluate_fold", "cv_summary", "plot_cv"}


@pytest.fixture(scope="module")
def two_fold_run(tmp_path_factory, sample_lidc):
    updates = deep_update(tiny_config(sample_lidc.lidc_root), {"split": {"folds": 2}})
    workdir = copy_workflow(tmp_path_factory.mktemp("cv"), updates)
    snakemake(workdir, "--profile", "profiles/default", "--cores", "2", "cv", timeout=1500)
    return workdir


def test_every_validation_nodule_is_scored_once_per_model(two_fold_run):
    split = pd.read_csv(two_fold_run / "results/split/split.csv")
    fold_of = dict(zip(split["nodule_id"], split["fold"], strict=True))
    assert sorted(set(fold_of.values())) == [0, 1]
    pooled = pd.read_csv(two_fold_run / "results/cv/nodules.csv")
    assert set(pooled["model"]) == {"unet", "iunet"}
    for model, rows in pooled.groupby("model"):
        assert sorted(rows["nodule_id"]) == sorted(fold_of), model  # each exactly once
        assert [fold_of[n] for n in rows["nodule_id"]] == rows["fold"].tolist(), model
    for fold in (0, 1):
        own = pd.read_csv(two_fold_run / f"results/cv/fold_{fold}/split.csv")
        val = set(own.loc[own["subset"] == "val", "nodule_id"])
        assert val == {n for n, f in fold_of.items() if f == fold}
        assert set(own.loc[own["subset"] == "train", "nodule_id"]) == set(fold_of) - val
        for model in ("unet", "iunet"):
            scored = pd.read_csv(
                two_fold_run / f"results/models/{model}/fold_{fold}/evaluation.csv"
            )
            assert set(scored["nodule_id"]) == val


def test_the_comparison_and_figures_are_written(two_fold_run):
    comparison = pd.read_csv(two_fold_run / "results/cv/comparison.csv")
    assert {"unet", "iunet"} <= set(comparison["model"])
    assert "all" in set(comparison["size_bucket"])
    for name in ("cv_curves.png", "cv_comparison.png"):
        assert (two_fold_run / "results/plots" / name).stat().st_size > 0


@pytest.mark.parametrize(("folds", "expected"), [(0, set()), (2, CV_RULES)])
def test_cross_validation_jobs_only_with_folds(tmp_path, sample_lidc, folds, expected):
    updates = deep_update(tiny_config(sample_lidc.lidc_root), {"split": {"folds": folds}})
    workdir = copy_workflow(tmp_path, updates)
    jobs = dry_run_jobs(workdir)
    assert CV_RULES & set(jobs) == expected
    if folds:
        assert jobs["train_fold"] == 2 * folds and jobs["train"] == 2
