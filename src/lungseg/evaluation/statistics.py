"""Statistics of cross-validated model variants (numpy and pandas only).

- :func:`paired_differences` / :func:`paired_bootstrap`: per-nodule differences of a metric
  between each variant and a baseline (nodules matched by ``nodule_id``), their mean and a
  percentile bootstrap interval that resamples *patients* with replacement (a cluster bootstrap:
  all nodules of a drawn patient come along, so nodules of one patient, which are not
  independent, never count as independent evidence). :func:`paired_bootstrap_by_bucket` does
  the same over all nodules and within each size bucket.
- :func:`overfitting`: per training curve, where the validation Dice peaked and how far it fell
  by the last epoch, and the train-validation gap at the last epoch.
- :func:`mean_curves`: per variant and epoch, training and validation Dice averaged over folds
  with a band (minimum, maximum, standard deviation over folds).

Frames are long: one row per model and nodule (column ``model``), or per model, fold and epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: Columns of :func:`paired_bootstrap`'s rows (after ``model``, and ``size_bucket`` by bucket).
BOOTSTRAP_COLUMNS = [
    "baseline",
    "n_nodules",
    "n_patients",
    "difference_mean",
    "difference_low",
    "difference_high",
    "confidence",
    "significant",
]
#: Columns of :func:`overfitting`'s rows after the curve's own columns (``model``, ``fold``).
OVERFITTING_COLUMNS = [
    "n_epochs",
    "peak_epoch",
    "peak_val_dice",
    "last_epoch",
    "last_val_dice",
    "drop",
    "last_train_dice",
    "train_val_gap",
]
CURVE_VALUES = ("train_dice", "val_dice")
ALL = "all"


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}")


def paired_differences(
    frame: pd.DataFrame, baseline: str, *, value: str = "dice", by: str = "patient_id"
) -> pd.DataFrame:
    """Per variant (every ``model`` but ``baseline``) and nodule: ``value`` of the variant minus
    the baseline's. Columns ``model, nodule_id, <by>, difference`` (+ ``size_bucket`` when the
    frame has it, the baseline's). A nodule scored by one side only, or twice by one model, is a
    ``ValueError`` naming it; so is an unknown baseline."""
    _require(frame, ["model", "nodule_id", by, value], "paired differences")
    models = list(dict.fromkeys(frame["model"]))
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not among the models ({', '.join(models)})")
    repeated = frame.loc[frame.duplicated(["model", "nodule_id"]), ["model", "nodule_id"]]
    if len(repeated):
        model, nodule = repeated.iloc[0]
        raise ValueError(f"nodule {nodule} appears more than once for model {model}")
    bucket = ["size_bucket"] if "size_bucket" in frame else []
    columns = list(dict.fromkeys(["model", "nodule_id", by, "difference", *bucket]))
    keep = list(dict.fromkeys(["nodule_id", by, value, *bucket]))
    base = frame.loc[frame["model"] == baseline, keep].set_index("nodule_id", drop=False)
    parts = []
    for model in models:
        if model == baseline:
            continue
        other = frame.loc[frame["model"] == model, ["nodule_id", value]].set_index("nodule_id")
        only = sorted(set(other.index) ^ set(base.index))
        if only:
            side = model if only[0] in other.index else baseline
            raise ValueError(
                f"nodule {only[0]} is scored by model {side} only ({model} vs baseline "
                f"{baseline}; {len(only)} unmatched nodule(s))"
            )
        part = base.drop(columns=[value]).copy()
        part["difference"] = other[value].reindex(base.index) - base[value]
        part.insert(0, "model", model)
        parts.append(part.reset_index(drop=True))
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def cluster_bootstrap_interval(
    values: np.ndarray, clusters: np.ndarray, *, draws: int, seed: int, confidence: float
) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` over ``draws`` resamples of the clusters
    (drawn with replacement, as many as there are; each brings all its values along; the mean is
    over the drawn values). NaN for no values."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, got {confidence}")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    labels, index = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=len(labels))
    counts = np.bincount(index, minlength=len(labels)).astype(float)
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(labels), size=(draws, len(labels)))
    means = sums[chosen].sum(axis=1) / counts[chosen].sum(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _bootstrap_row(
    part: pd.DataFrame, by: str, *, draws: int, seed: int, confidence: float
) -> dict[str, object]:
    low, high = cluster_bootstrap_interval(
        part["difference"].to_numpy(),
        part[by].to_numpy(),
        draws=draws,
        seed=seed,
        confidence=confidence,
    )
    mean = float(part["difference"].mean()) if len(part) else float("nan")
    return {
        "n_nodules": len(part),
        "n_patients": int(part[by].nunique()),
        "difference_mean": mean,
        "difference_low": low,
        "difference_high": high,
        "confidence": confidence,
        "significant": bool(low > 0 or high < 0),  # False for NaN (no nodules)
    }


def paired_bootstrap(
    frame: pd.DataFrame,
    baseline: str,
    value: str = "dice",
    by: str = "patient_id",
    *,
    draws: int,
    seed: int,
    confidence: float,
) -> pd.DataFrame:
    """One row per variant: ``model`` and :data:`BOOTSTRAP_COLUMNS`. The interval resamples the
    values of ``by`` (patients; ``by="nodule_id"`` resamples nodules) with replacement ``draws``
    times with a generator seeded ``seed`` (a fresh one per variant: a variant's interval does
    not depend on the others); ``significant``: the interval excludes 0."""
    differences = paired_differences(frame, baseline, value=value, by=by)
    rows = []
    for model, part in differences.groupby("model", sort=False):
        row = _bootstrap_row(part, by, draws=draws, seed=seed, confidence=confidence)
        rows.append({"model": model, "baseline": baseline, **row})
    return pd.DataFrame(rows, columns=["model", *BOOTSTRAP_COLUMNS])


def paired_bootstrap_by_bucket(
    frame: pd.DataFrame,
    baseline: str,
    value: str = "dice",
    by: str = "patient_id",
    *,
    buckets: Sequence[str] | None = None,
    draws: int,
    seed: int,
    confidence: float,
) -> pd.DataFrame:
    """:func:`paired_bootstrap` over all nodules (``size_bucket`` ``all``) and within each size
    bucket (the baseline's ``size_bucket`` of the nodule; ``buckets``: their order, empty ones
    included with ``n_nodules`` 0; default: the buckets present, in order of appearance)."""
    _require(frame, ["size_bucket"], "paired bootstrap by size bucket")
    differences = paired_differences(frame, baseline, value=value, by=by)
    order = list(dict.fromkeys(differences["size_bucket"])) if buckets is None else list(buckets)
    rows = []
    for model in dict.fromkeys(frame["model"]):
        if model == baseline:
            continue
        mine = differences[differences["model"] == model]
        for bucket in [ALL, *order]:
            part = mine if bucket == ALL else mine[mine["size_bucket"] == bucket]
            row = _bootstrap_row(part, by, draws=draws, seed=seed, confidence=confidence)
            rows.append({"model": model, "size_bucket": bucket, "baseline": baseline, **row})
    return pd.DataFrame(rows, columns=["model", "size_bucket", *BOOTSTRAP_COLUMNS])


def _curve_summary(curve: pd.DataFrame) -> dict[str, float]:
    curve = curve.sort_values("epoch")
    val = curve["val_dice"].to_numpy(dtype=float)
    peak = int(np.nanargmax(val))  # the first epoch reaching the maximum
    last = curve.iloc[-1]
    return {
        "n_epochs": len(curve),
        "peak_epoch": int(curve["epoch"].iloc[peak]),
        "peak_val_dice": float(val[peak]),
        "last_epoch": int(last["epoch"]),
        "last_val_dice": float(last["val_dice"]),
        "drop": float(val[peak] - last["val_dice"]),
        "last_train_dice": float(last["train_dice"]),
        "train_val_gap": float(last["train_dice"] - last["val_dice"]),
    }


def overfitting(metrics: pd.DataFrame, by: Sequence[str] = ("model", "fold")) -> pd.DataFrame:
    """One row per training curve (the rows sharing the ``by`` columns present; the whole frame
    when none is): those columns and :data:`OVERFITTING_COLUMNS`. ``peak_epoch``: the first
    epoch whose validation Dice is the curve's maximum; ``drop`` = peak - last epoch's
    validation Dice (>= 0); ``train_val_gap`` = training - validation Dice at the last epoch."""
    _require(metrics, ["epoch", *CURVE_VALUES], "overfitting")
    keys = [c for c in by if c in metrics.columns]
    groups = metrics.groupby(keys, sort=False) if keys else [((), metrics)]
    rows = []
    for key, curve in groups:
        if curve["val_dice"].isna().all():
            raise ValueError(f"curve {key}: no validation Dice")
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key, strict=True)), **_curve_summary(curve)})
    return pd.DataFrame(rows, columns=[*keys, *OVERFITTING_COLUMNS])


def mean_curves(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per ``model`` and ``epoch`` (columns ``model, fold, epoch, train_dice, val_dice``, one
    curve per model and fold): ``n_folds`` (folds that reached the epoch) and, for training and
    validation Dice, ``<value>_mean``, ``_std`` (sample standard deviation over folds, NaN for
    one fold), ``_min`` and ``_max`` (the band)."""
    _require(metrics, ["model", "fold", "epoch", *CURVE_VALUES], "mean curves")
    grouped = metrics.groupby(["model", "epoch"], sort=False)
    table = grouped["fold"].nunique().rename("n_folds").to_frame()
    for name in CURVE_VALUES:
        stats = grouped[name].agg(["mean", "std", "min", "max"])
        table = table.join(stats.add_prefix(f"{name}_"))
    order = {m: i for i, m in enumerate(dict.fromkeys(metrics["model"]))}
    table = table.reset_index()
    table = table.sort_values(
        ["model", "epoch"], key=lambda c: c.map(order) if c.name == "model" else c
    )
    return table.reset_index(drop=True)
