"""Does averaging the cross-validation folds' models help? (``lungseg bench-ensemble``)

Held-out crops (crops.h5 / crops.csv of patients in no fold: every crop of the table is scored)
are segmented by each fold model of one variant alone (members ``fold_<k>``) and by their
ensemble (``ensemble``: the mean of their sigmoid probabilities,
:func:`lungseg.inference.model.predict` with the list of models, as ``lungseg predict`` runs a
segmenter bundled with ``predict.ensemble_folds``), and scored as the evaluation scores the crop
models (:func:`lungseg.evaluation.evaluate.score_predictions`: same threshold, other nodules'
voxels removed, size buckets).

- ``nodules``: one row per member and nodule: ``member`` and the ``evaluation.csv`` columns.
- ``summary``: one row per member and size bucket (``all`` first, then each bucket, empty ones
  with ``n_nodules`` 0): ``n_nodules``, ``n_patients``, ``dice_mean``; the ``ensemble`` rows
  also compare it with the expected single model (:data:`SINGLE`: per nodule, the mean Dice of
  the fold models, i.e. what one fold model drawn at random scores): ``difference_mean`` (mean
  over nodules of the ensemble's Dice minus that mean), ``difference_low``/``_high`` (the paired
  cluster bootstrap over patients of :mod:`lungseg.evaluation.statistics`, ``cv.bootstrap_draws``
  draws seeded ``cv.bootstrap_seed``, at ``cv.confidence``), ``confidence``, ``significant``
  (the interval excludes 0).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.core.errors import InputError
from lungseg.evaluation.evaluate import (
    EVALUATION_COLUMNS,
    read_crop_rows,
    score_predictions,
    size_bucket_labels,
)
from lungseg.evaluation.settings import CrossValidationSettings, EvaluationSettings
from lungseg.evaluation.statistics import ALL, paired_bootstrap_by_bucket

logger = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
#: the baseline of the ensemble's comparison: per nodule, the mean Dice of the fold models
SINGLE = "single_mean"
NODULE_COLUMNS = ["member", *EVALUATION_COLUMNS]
SUMMARY_COLUMNS = [
    "member",
    "size_bucket",
    "n_nodules",
    "n_patients",
    "dice_mean",
    "difference_mean",
    "difference_low",
    "difference_high",
    "confidence",
    "significant",
]
DIFFERENCE_COLUMNS = SUMMARY_COLUMNS[5:]


def read_all_crops(crops_h5: str | Path, crops_csv: str | Path) -> tuple[pd.DataFrame, dict]:
    """Every row of crops.csv and the ``image``, ``mask``, ``other`` arrays of crops.h5."""
    table, arrays = read_crop_rows(crops_h5, crops_csv)
    if table.empty:
        raise InputError(f"{crops_csv}: no crops to score")
    return table, arrays


def member_names(checkpoints: Sequence[str | Path]) -> list[str]:
    """``fold_<k>`` of each ``.../fold_<k>/best.pt`` (in the given order); distinct."""
    from lungseg.predict.bundle import fold_number

    names = [f"fold_{fold_number(path)}" for path in checkpoints]
    if len(set(names)) != len(names):
        raise InputError(f"checkpoints: a fold given twice ({', '.join(names)})")
    return names


def load_members(checkpoints: Sequence[str | Path], crops_h5: str | Path, device: str):
    """(models, settings) of the fold checkpoints: one network settings and crop grid for all
    (those of crops.h5 too), else an :class:`InputError` naming the checkpoint and key."""
    from lungseg.inference.checkpoint import read_checkpoint
    from lungseg.inference.model import load_model
    from lungseg.predict.bundle import network_settings, require_same
    from lungseg.training.data import crop_grid

    grid = crop_grid(crops_h5)
    models, first = [], None
    for path in checkpoints:
        model, settings = load_model(path, device)
        recorded = read_checkpoint(path).get("crop_grid") or {}
        require_same(path, "crop_grid", grid, recorded, reference=str(crops_h5))
        if first is None:
            first = settings
        require_same(
            path,
            "settings",
            network_settings(first),
            network_settings(settings),
            reference=str(checkpoints[0]),
        )
        models.append(model)
    return models, first


def summarise_members(
    nodules: pd.DataFrame,
    bucket_edges_mm: Sequence[float] | None,
    *,
    draws: int,
    seed: int,
    confidence: float,
) -> pd.DataFrame:
    """:data:`SUMMARY_COLUMNS` of the per-member nodule scores (``member`` + evaluation
    columns; the members ``fold_<k>`` and :data:`ENSEMBLE`, all on the same nodules)."""
    labels = size_bucket_labels(bucket_edges_mm)
    members = list(dict.fromkeys(nodules["member"]))
    folds = [m for m in members if m != ENSEMBLE]
    compared: dict[str, dict] = {}
    if ENSEMBLE in members and folds:
        keys = ["nodule_id", "patient_id", "size_bucket"]
        single = nodules[nodules["member"].isin(folds)].groupby(keys, sort=False)["dice"].mean()
        ensemble = nodules.loc[nodules["member"] == ENSEMBLE, [*keys, "dice"]]
        pairs = pd.concat(
            [single.reset_index().assign(model=SINGLE), ensemble.assign(model=ENSEMBLE)],
            ignore_index=True,
        )
        table = paired_bootstrap_by_bucket(
            pairs, SINGLE, buckets=labels, draws=draws, seed=seed, confidence=confidence
        )
        compared = {row["size_bucket"]: row for row in table.to_dict("records")}
    rows = []
    for member in members:
        mine = nodules[nodules["member"] == member]
        for bucket in [ALL, *labels]:
            part = mine if bucket == ALL else mine[mine["size_bucket"] == bucket]
            row = {
                "member": member,
                "size_bucket": bucket,
                "n_nodules": len(part),
                "n_patients": int(part["patient_id"].nunique()),
                "dice_mean": round(float(part["dice"].mean()), 6) if len(part) else np.nan,
            }
            if member == ENSEMBLE and compared:
                found = compared[bucket]
                row |= {c: found[c] for c in DIFFERENCE_COLUMNS}
                row |= {c: round(found[c], 6) for c in DIFFERENCE_COLUMNS[:3]}
            rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def run_bench_ensemble(
    *,
    crops: str,
    table: str,
    checkpoints: list[str],
    nodules: str = "results/bench_ensemble/nodules.csv",
    summary: str = "results/bench_ensemble/summary.csv",
    settings: EvaluationSettings,
    cv: CrossValidationSettings,
    threads: int = 1,
) -> pd.DataFrame:
    """Segment held-out crops (``crops``, ``table``: patients in no fold) with each fold model
    of one variant (``checkpoints``: fold_<k>/best.pt) alone and with their ensemble (mean
    probability); writes per-nodule scores (``nodules``) and the ``summary`` (returned)."""
    import torch

    from lungseg.inference.model import choose_device, predict

    start = time.perf_counter()
    torch.set_num_threads(max(1, int(threads)))
    names = member_names(checkpoints)
    frame, arrays = read_all_crops(crops, table)
    device = str(choose_device(settings.device))
    models, network = load_members(checkpoints, crops, device)
    scored = []
    runs = [*zip(names, models, strict=True), (ENSEMBLE, models)]
    for member, model in runs:
        probabilities = predict(model, arrays["image"], network, settings.batch_size)
        scores = score_predictions(
            probabilities,
            arrays["mask"],
            arrays["other"],
            frame,
            settings.threshold,
            settings.size_buckets_mm,
        )
        scored.append(scores.assign(member=member)[NODULE_COLUMNS])
        logger.info("%s: Dice mean %.4f over %d nodules", member, scores["dice"].mean(), len(frame))
    per_nodule = pd.concat(scored, ignore_index=True)
    result = summarise_members(
        per_nodule,
        settings.size_buckets_mm,
        draws=cv.bootstrap_draws,
        seed=cv.bootstrap_seed,
        confidence=cv.confidence,
    )
    write_csv_atomic(nodules, per_nodule)
    write_csv_atomic(summary, result)
    overall = result[(result["member"] == ENSEMBLE) & (result["size_bucket"] == ALL)].iloc[0]
    logger.info(
        "ensemble of %d folds on %d nodules of %d patients: Dice %.4f, %+.4f vs the mean single "
        "model (%.4f .. %.4f, %s) in %.1f s",
        len(models),
        len(frame),
        frame["patient_id"].nunique(),
        overall["dice_mean"],
        overall["difference_mean"],
        overall["difference_low"],
        overall["difference_high"],
        "significant" if overall["significant"] else "not significant",
        time.perf_counter() - start,
    )
    return result
