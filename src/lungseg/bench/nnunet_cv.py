"""nnU-Net over the cross-validation's folds: one more row of its comparison
(``lungseg bench-nnunet-cv``; docs/training.md).

On a finished cross-validation (``split.folds >= 2``: split.csv with its ``fold`` column and
``results/cv/nodules.csv``, ``overfitting.csv``): the crops and the folds as one nnU-Net raw
dataset (``splits_final.json`` holds our folds), then per fold nnU-Net's ``3d_fullres``
trained on the other folds and its validation crops predicted and scored as lungseg scores its
own models (:mod:`lungseg.bench.nnunet`). The folds' scores pool with the crop models' into
``nodules.csv``; ``comparison.csv`` is ``results/cv/comparison.csv`` with nnU-Net as one more
model (the same paired cluster bootstrap against ``cv.baseline``,
:func:`lungseg.evaluation.cross_validation.comparison_table`) and two more columns,
``nnunetv2_version`` and ``trainer``, filled on nnU-Net's rows; its ``peak_epoch_mean`` and
``drop_mean`` are empty (nnU-Net's fixed-length trainers keep their last epoch); ``summary.csv``
has a row per fold (seconds, Dice) and ``comparison.png`` is the forest plot of the table.

A fold already done with the same inputs (crops, split, trainer, nnU-Net version: their
fingerprint in the fold's ``summary.csv``) is not trained again: an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.bench.nnunet import (
    MODEL,
    SUMMARY_COLUMNS,
    nnunet_version,
    prepare,
    score_split,
    summary_row,
    train_and_predict,
    trainer_epochs,
)
from lungseg.bench.nnunet_export import export_cases, nnunet_splits
from lungseg.core.atomic import write_csv_atomic
from lungseg.core.errors import DataError
from lungseg.dataset.split import fold_split
from lungseg.evaluation.cross_validation import comparison_table, pool_evaluations
from lungseg.evaluation.evaluate import EVALUATION_COLUMNS, size_bucket, size_bucket_labels
from lungseg.evaluation.settings import CrossValidationSettings, EvaluationSettings

logger = logging.getLogger(__name__)

#: summary.csv: a row per fold, with the seconds of its own steps (planning: once, on each row)
FOLD_COLUMNS = ["fold", *(c for c in SUMMARY_COLUMNS if c != "wall_seconds"), "fingerprint"]


def fingerprint(paths: list[str], *words: str) -> str:
    """sha256 of the files' bytes and ``words``: what a fold's result was computed from."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    for word in words:
        digest.update(word.encode())
    return digest.hexdigest()[:16]


def _done(fold_dir: Path, mark: str) -> pd.DataFrame | None:
    """The fold's summary row when its evaluation exists and was computed from ``mark``."""
    summary, evaluation = fold_dir / "summary.csv", fold_dir / "evaluation.csv"
    if not (summary.is_file() and evaluation.is_file()):
        return None
    row = pd.read_csv(summary, dtype={"fingerprint": str})
    return row if row["fingerprint"].tolist() == [mark] else None


def read_cv_tables(cv_nodules: str, cv_overfitting: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cross-validation's pooled nodules and overfitting tables (results/cv/)."""
    nodules, overfit = pd.read_csv(cv_nodules), pd.read_csv(cv_overfitting, dtype={"fold": str})
    missing = [c for c in ["model", "fold", *EVALUATION_COLUMNS] if c not in nodules.columns]
    if missing:
        raise DataError(f"{cv_nodules}: missing column(s) {missing}; run `snakemake cv` first")
    if MODEL in set(nodules["model"]):
        raise DataError(f"{cv_nodules}: already has a model named {MODEL}")
    return nodules, overfit


def check_same_nodules(pooled: pd.DataFrame, cases: pd.DataFrame, cv_nodules: str, split: str):
    """The cross-validation scored exactly the nodules that the split puts in a fold."""
    theirs, ours = set(pooled["nodule_id"]), set(cases["nodule_id"])
    for missing, where, other in (
        (ours - theirs, cv_nodules, split),
        (theirs - ours, split, cv_nodules),
    ):
        if missing:
            raise DataError(
                f"{where}: has no nodule {sorted(missing)[0]} of {other} ({len(missing)} "
                "nodule(s) missing): the cross-validation and the split must be of the same run"
            )


def run_bench_nnunet_cv(
    *,
    crops: str = "results/crops/crops.h5",
    table: str = "results/crops/crops.csv",
    split: str = "results/split/split.csv",
    cv_nodules: str = "results/cv/nodules.csv",
    cv_overfitting: str = "results/cv/overfitting.csv",
    workdir: str = "results/nnunet_cv",
    trainer: str = "nnUNetTrainer_1epoch",
    dataset_id: int = 502,
    settings: EvaluationSettings,
    cv: CrossValidationSettings,
    threads: int = 2,
) -> pd.DataFrame:
    """nnU-Net trained and scored on every fold; writes ``<workdir>/nodules.csv``,
    ``comparison.csv`` (returned), ``summary.csv`` and ``comparison.png``."""
    from lungseg.figures.cross_validation import cv_comparison_figure, save_figure
    from lungseg.inference.model import choose_device

    start = time.perf_counter()
    version, _ = nnunet_version(), trainer_epochs(trainer)
    theirs, overfit = read_cv_tables(cv_nodules, cv_overfitting)
    if "fold" not in pd.read_csv(split, nrows=0).columns:
        raise DataError(
            f"{split}: no column fold; nnU-Net's cross-validation needs split.folds >= 2"
        )
    cases = export_cases(table, split)
    crop_models = [part for _, part in theirs.groupby("model", sort=False)]
    check_same_nodules(pool_evaluations(crop_models, f"{cv_nodules}: "), cases, cv_nodules, split)
    root = Path(workdir)
    folds = sorted(int(f) for f in cases["fold"].unique())
    mark = fingerprint([crops, table, split], trainer, version)
    rows = {fold: _done(root / f"fold_{fold}", mark) for fold in folds}
    todo = [fold for fold in folds if rows[fold] is None]
    if todo:  # nnU-Net's export and planning only when a fold is to be trained
        device = choose_device(settings.device).type
        space, plan_s = prepare(crops, table, split, workdir, dataset_id, threads, device)
    for index, fold_cases in enumerate(nnunet_splits(cases)):
        fold = folds[index]
        fold_dir = root / f"fold_{fold}"
        if fold in todo:
            fold_csv = fold_dir / "split.csv"
            write_csv_atomic(fold_csv, fold_split(split, fold))
            predictions = fold_dir / "predictions"
            timing = train_and_predict(space, index, trainer, fold_cases["val"], predictions)
            scores = score_split(space, crops, table, str(fold_csv), predictions, settings)
            write_csv_atomic(fold_dir / "evaluation.csv", scores)
            values = summary_row(space, trainer, timing, scores) | {
                "plan_seconds": round(plan_s, 1)
            }
            row = pd.DataFrame([{**values, "fold": fold, "fingerprint": mark}])
            rows[fold] = row.reindex(columns=FOLD_COLUMNS)
            write_csv_atomic(fold_dir / "summary.csv", rows[fold])
        else:
            logger.info("nnU-Net fold %d: done earlier with the same inputs (%s)", fold, fold_dir)
    frames = [
        pd.read_csv(root / f"fold_{fold}" / "evaluation.csv").assign(model=MODEL, fold=fold)[
            ["model", "fold", *EVALUATION_COLUMNS]
        ]
        for fold in folds
    ]
    pooled = pool_evaluations([*crop_models, *frames], "nnU-Net cross-validation: ")
    edges = settings.size_buckets_mm
    pooled["size_bucket"] = size_bucket(pooled["diameter_mm"].to_numpy(dtype=float), edges)
    comparison = comparison_table(pooled, overfit, size_bucket_labels(edges), cv)
    ours = comparison["model"] == MODEL  # which nnU-Net, on nnU-Net's rows
    comparison["nnunetv2_version"] = np.where(ours, version, "")
    comparison["trainer"] = np.where(ours, trainer, "")
    summary = pd.concat(list(rows.values()), ignore_index=True)[FOLD_COLUMNS]
    write_csv_atomic(root / "nodules.csv", pooled[["model", "fold", *EVALUATION_COLUMNS]])
    write_csv_atomic(root / "comparison.csv", comparison)
    write_csv_atomic(root / "summary.csv", summary)
    save_figure(cv_comparison_figure(comparison), root / "comparison.png")
    mine = comparison[(comparison["model"] == MODEL) & (comparison["size_bucket"] == "all")]
    logger.info(
        "nnU-Net over %d folds (%.0f s): Dice %.3f; difference vs %s %+.3f (%.3f .. %.3f)",
        len(folds),
        time.perf_counter() - start,
        *mine[["dice_mean"]].iloc[0],
        cv.baseline,
        *mine[["difference_mean", "difference_low", "difference_high"]].iloc[0],
    )
    return comparison
