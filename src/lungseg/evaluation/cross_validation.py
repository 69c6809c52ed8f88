"""Rule ``cv_summary``: the model variants over the folds of k-fold cross-validation.

Each model is trained and evaluated once per fold (``results/models/{model}/fold_{k}/``
``metrics.csv`` and ``evaluation.csv``); every nodule is in exactly one fold's validation set, so
the folds' evaluations pool into one score per model and nodule. Written to ``results/cv/``:

- ``nodules.csv``: ``model, fold`` + the evaluation columns, one row per model and nodule;
- ``curves.csv``: training and validation Dice per model and epoch, mean over folds with a band
  (:func:`lungseg.evaluation.statistics.mean_curves`);
- ``overfitting.csv``: per model and fold the validation-Dice peak and its drop by the last
  epoch, plus one row per model with fold ``mean``
  (:func:`lungseg.evaluation.statistics.overfitting`);
- ``comparison.csv``: per model and size bucket (``all`` first) the mean Dice and, against the
  baseline variant, the mean per-nodule Dice difference with a patient-level bootstrap interval
  (:func:`lungseg.evaluation.statistics.paired_bootstrap_by_bucket`), and the model's mean peak
  epoch and drop.

Rule ``plot_cv`` draws the figures from these tables (:mod:`lungseg.figures.cross_validation`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.core.errors import DataError
from lungseg.evaluation.evaluate import EVALUATION_COLUMNS, size_bucket, size_bucket_labels
from lungseg.evaluation.settings import BucketSettings, CrossValidationSettings
from lungseg.evaluation.statistics import (
    ALL,
    BOOTSTRAP_COLUMNS,
    OVERFITTING_COLUMNS,
    mean_curves,
    paired_bootstrap_by_bucket,
)
from lungseg.evaluation.statistics import overfitting as curve_overfitting

logger = logging.getLogger(__name__)

METRICS_COLUMNS = ["epoch", "train_dice", "val_dice"]
#: Columns of results/cv/comparison.csv, in order.
COMPARISON_COLUMNS = [
    "model",
    "size_bucket",
    "n_nodules",
    "n_patients",
    "dice_mean",
    *BOOTSTRAP_COLUMNS[:1],  # baseline
    *BOOTSTRAP_COLUMNS[3:],  # difference_mean .. significant
    "peak_epoch_mean",
    "drop_mean",
]
MEAN_FOLD = "mean"


def _read(path: str, columns: Sequence[str], model: str, fold: int) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (model {model}, fold {fold})")
    frame.insert(0, "fold", int(fold))
    frame.insert(0, "model", model)
    return frame


def _check_jobs(evaluations, metrics, models, folds) -> None:
    lengths = {len(evaluations), len(metrics), len(models), len(folds)}
    if len(lengths) != 1:
        raise ValueError(
            f"evaluations ({len(evaluations)}), metrics ({len(metrics)}), models ({len(models)}) "
            f"and folds ({len(folds)}) must be parallel lists, one entry per model and fold"
        )
    jobs = list(zip(models, map(int, folds), strict=True))
    repeated = sorted({job for job in jobs if jobs.count(job) > 1})
    if repeated:
        raise ValueError(f"model and fold given more than once: {repeated}")


def pool_evaluations(frames: Sequence[pd.DataFrame], where: str = "") -> pd.DataFrame:
    """The folds' evaluations (each with ``model, fold`` columns) as one table, sorted by model
    order and nodule; a nodule in no or several folds of a model, or scored by some models
    only, is a :class:`DataError` naming it (and the folds)."""
    pooled = pd.concat(frames, ignore_index=True)
    for model, part in pooled.groupby("model", sort=False):
        folds_of = part.groupby("nodule_id")["fold"].agg(list)
        repeated = folds_of[folds_of.map(len) > 1]
        if len(repeated):
            nodule, in_folds = repeated.index[0], sorted(repeated.iloc[0])
            raise DataError(
                f"{where}nodule {nodule} is evaluated in folds {in_folds} of model {model}; "
                "each nodule must be in exactly one fold's validation set "
                f"({len(repeated)} such nodule(s))"
            )
    scored = pooled.groupby("model", sort=False)["nodule_id"].agg(set)
    everyone = set().union(*scored)
    for model, nodules in scored.items():
        missing = sorted(everyone - nodules)
        if missing:
            raise DataError(
                f"{where}model {model} did not score nodule {missing[0]} that other models did "
                f"({len(missing)} nodule(s) missing): all models must score the same nodules"
            )
    order = {m: i for i, m in enumerate(dict.fromkeys(pooled["model"]))}
    pooled = pooled.sort_values(
        ["model", "nodule_id"], key=lambda c: c.map(order) if c.name == "model" else c
    )
    return pooled.reset_index(drop=True)


def overfitting_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Overfitting (:func:`lungseg.evaluation.statistics.overfitting`) per model and fold,
    then per model a row of fold ``mean`` (the mean over its folds)."""
    table = curve_overfitting(metrics, by=("model", "fold"))
    table["fold"] = table["fold"].astype(str)
    means = table.groupby("model", sort=False)[OVERFITTING_COLUMNS].mean().reset_index()
    means.insert(1, "fold", MEAN_FOLD)
    rows = []
    for model in dict.fromkeys(table["model"]):
        rows += [table[table["model"] == model], means[means["model"] == model]]
    return pd.concat(rows, ignore_index=True)[["model", "fold", *OVERFITTING_COLUMNS]]


def comparison_table(
    nodules: pd.DataFrame,
    overfit: pd.DataFrame,
    buckets: Sequence[str],
    settings: CrossValidationSettings,
) -> pd.DataFrame:
    """results/cv/comparison.csv: one row per model (the baseline too, without a difference)
    and size bucket (``all``, then ``buckets``); a model with no ``mean`` row in ``overfit``
    gets an empty ``peak_epoch_mean`` and ``drop_mean``."""
    baseline = settings.baseline
    differences = paired_bootstrap_by_bucket(
        nodules,
        baseline,
        buckets=buckets,
        draws=settings.bootstrap_draws,
        seed=settings.bootstrap_seed,
        confidence=settings.confidence,
    ).set_index(["model", "size_bucket"])
    means = overfit[overfit["fold"].astype(str) == MEAN_FOLD].set_index("model")
    rows = []
    for model, part in nodules.groupby("model", sort=False):
        for bucket in [ALL, *buckets]:
            mine = part if bucket == ALL else part[part["size_bucket"] == bucket]
            row = {
                "model": model,
                "size_bucket": bucket,
                "n_nodules": len(mine),
                "n_patients": int(mine["patient_id"].nunique()),
                "dice_mean": float(mine["dice"].mean()) if len(mine) else np.nan,
                "baseline": baseline,
                "difference_mean": np.nan,
                "difference_low": np.nan,
                "difference_high": np.nan,
                "confidence": settings.confidence,
                "significant": False,
            }
            if model != baseline:
                found = differences.loc[(model, bucket)]
                row |= {k: found[k] for k in BOOTSTRAP_COLUMNS[3:]}
                row["significant"] = bool(row["significant"])
            # a model without training curves (nnU-Net's fixed-length trainers): left empty
            mean_of = means.loc[model] if model in means.index else {}
            row["peak_epoch_mean"] = float(mean_of.get("peak_epoch", np.nan))
            row["drop_mean"] = float(mean_of.get("drop", np.nan))
            rows.append(row)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def run_cv_summary(
    *,
    evaluations: list[str],
    metrics: list[str],
    models: list[str],
    folds: list[int],
    nodules: str,
    curves: str,
    overfitting: str,
    comparison: str,
    settings: CrossValidationSettings,
    buckets: BucketSettings,
) -> None:
    """Rule ``cv_summary``: ``evaluations``, ``metrics``, ``models`` and ``folds`` are parallel
    lists, one entry per model and fold job; writes the four tables of results/cv/."""
    _check_jobs(evaluations, metrics, models, folds)
    names = list(dict.fromkeys(models))
    if settings.baseline not in names:
        raise DataError(
            f"cv.baseline: {settings.baseline!r} is not among the cross-validated models "
            f"({', '.join(names)})"
        )
    jobs = list(zip(evaluations, metrics, models, folds, strict=True))
    pooled = pool_evaluations(
        [_read(e, EVALUATION_COLUMNS, m, f) for e, _, m, f in jobs], "cross-validation: "
    )
    edges = buckets.size_buckets_mm
    pooled["size_bucket"] = size_bucket(pooled["diameter_mm"].to_numpy(dtype=float), edges)
    curves_of = pd.concat([_read(c, METRICS_COLUMNS, m, f) for _, c, m, f in jobs])
    for (model, fold), curve in curves_of.groupby(["model", "fold"], sort=False):
        if curve["val_dice"].isna().all():
            raise DataError(f"{model} fold {fold}: metrics.csv has no validation Dice")
    overfit = overfitting_table(curves_of)
    table = comparison_table(pooled, overfit, size_bucket_labels(edges), settings)
    write_csv_atomic(nodules, pooled[["model", "fold", *EVALUATION_COLUMNS]])
    write_csv_atomic(curves, mean_curves(curves_of))
    write_csv_atomic(overfitting, overfit)
    write_csv_atomic(comparison, table)
    logger.info(
        "cross-validation of %d model(s) over %d fold(s), %d nodules; baseline %s",
        len(names),
        len(set(folds)),
        pooled["nodule_id"].nunique(),
        settings.baseline,
    )
