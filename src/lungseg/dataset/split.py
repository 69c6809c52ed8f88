"""Patient-level train/validation split (or k folds), seeded and stratified by nodule size.

All nodules of one patient land in the same subset (fold), so no patient is seen in training and
validation. Within that constraint the assignment is balanced per size stratum: patients are
taken largest first (seeded random order among equals) and each goes to the subset whose
per-stratum nodule counts fall furthest short of their targets (a greedy like scikit-learn's
``StratifiedGroupKFold``, with arbitrary target fractions). The nodule split reads only
``nodules.csv``: changing the crops never changes it.

``patients.csv`` places every scanned patient (``conversion.csv``, written by the same job as
``nodules.csv``): those with training nodules in their nodule subset, the others (no cohort
nodule) in their own seeded order at the same fractions, so the detectors are trained and scored
on scans without nodules too, as LUNA16 scores false positives on every scan.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.dataset.settings import SplitSettings

logger = logging.getLogger(__name__)

#: Columns of nodules.csv the crops and the split read.
REQUIRED_COLUMNS = (
    "nodule_id",
    "patient_id",
    "series_uid",
    "label",
    "n_readers",
    "centroid_z",
    "centroid_y",
    "centroid_x",
    "bbox_z0",
    "bbox_z1",
    "bbox_y0",
    "bbox_y1",
    "bbox_x0",
    "bbox_x1",
    "diameter_mm",
    "series_status",
    "in_cohort",
)
SUBSETS = ("train", "val")


def _as_bool(values: pd.Series) -> pd.Series:
    """``in_cohort`` as bool whether pandas read it as bool or as text."""
    if values.dtype == bool:
        return values
    text = values.astype(str).str.strip().str.lower()
    known = text.isin(["true", "false", "1", "0"])
    if not known.all():
        raise ValueError(f"in_cohort must be true/false, got {sorted(set(text[~known]))[:3]}")
    return text.isin(["true", "1"])


def training_nodules(nodules_csv: str | Path) -> pd.DataFrame:
    """The rows of nodules.csv used for training: ``series_status == ok`` and ``in_cohort``.

    Raises ``ValueError`` naming the file when columns are missing, ids repeat or nothing is left.
    """
    path = Path(nodules_csv)
    if not path.is_file():
        raise FileNotFoundError(f"nodule table not found: {path}")
    nodules = pd.read_csv(path, dtype={"series_uid": str, "patient_id": str, "nodule_id": str})
    missing = [c for c in REQUIRED_COLUMNS if c not in nodules.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    repeated = nodules["nodule_id"][nodules["nodule_id"].duplicated()].tolist()
    if repeated:
        raise ValueError(f"{path}: repeated nodule_id(s) {repeated[:5]}")
    try:
        in_cohort = _as_bool(nodules["in_cohort"])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    selected = nodules[(nodules["series_status"] == "ok") & in_cohort]
    if selected.empty:
        raise ValueError(
            f"{path}: no nodule has series_status == ok and in_cohort == true "
            f"({len(nodules)} rows); nothing to crop or split"
        )
    return selected.sort_values("nodule_id", kind="stable").reset_index(drop=True)


def size_strata(diameters_mm: pd.Series, bins_mm: Sequence[float]) -> pd.Series:
    """Size stratum label of each diameter, e.g. ``<6``, ``6-10``, ``>=20`` for bins (6, 10, 20)."""
    edges = sorted(float(b) for b in bins_mm)
    names = [f"<{edges[0]:g}"] if edges else ["all"]
    names += [f"{lo:g}-{hi:g}" for lo, hi in zip(edges, edges[1:], strict=False)]
    names += [f">={edges[-1]:g}"] if edges else []
    index = np.searchsorted(edges, diameters_mm.to_numpy(dtype=float), side="right")
    return pd.Series([names[i] for i in index], index=diameters_mm.index, dtype=str)


def assign_groups(
    counts: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Bucket of each group (patient) so that per-stratum counts approach ``fractions``.

    ``counts[g, s]``: items (nodules) of group g in stratum s. Groups are visited in a random order
    (``rng``); each goes to the bucket where it adds the least squared excess over the buckets'
    target counts, relative to the bucket's size (ties: the least filled bucket). Groups are taken
    largest first, in random order among equals. Every bucket gets at least one group.
    """
    n_groups, _ = counts.shape
    fractions = np.asarray(fractions, dtype=float)
    n_buckets = len(fractions)
    if n_groups < n_buckets:
        raise ValueError(f"{n_groups} patient(s) cannot fill {n_buckets} subsets/folds")
    targets = fractions[:, None] * counts.sum(axis=0)[None, :]  # (bucket, stratum)
    filled = np.zeros_like(targets)
    members = np.zeros(n_buckets, dtype=int)
    bucket_of = np.full(n_groups, -1, dtype=int)
    # Random order, then largest groups first (stable): big groups are placed while every
    # bucket still has room and small ones even out the rest.
    order = rng.permutation(n_groups)
    order = order[np.argsort(-counts.sum(axis=1)[order], kind="stable")]
    scale = np.maximum(targets.sum(axis=1), 1e-9)  # relative to the bucket's size
    for position, group in enumerate(order):
        add = counts[group]
        # (c + a - t)^2 - (c - t)^2 summed over strata: the growth of the squared deviation.
        cost = ((filled + add - targets) ** 2 - (filled - targets) ** 2).sum(axis=1) / scale
        fill = filled.sum(axis=1) / scale
        empty = np.flatnonzero(members == 0)
        # When as many groups are left as buckets are empty, the rest must fill them.
        must_fill = len(empty) >= n_groups - position
        candidates = empty if must_fill else np.arange(n_buckets)
        best = min(candidates, key=lambda b: (cost[b], fill[b], b))
        bucket_of[group] = best
        filled[best] += add
        members[best] += 1
    return bucket_of


def bucket_fractions(settings: SplitSettings) -> list[float]:
    """Target share of each bucket: k equal folds, or (train, val) = (1 - val_fraction, it)."""
    folds, val_fold, val_fraction = settings.folds, settings.val_fold, settings.val_fraction
    if folds >= 2:
        if not 0 <= val_fold < folds:
            raise ValueError(f"val_fold must lie in 0..{folds - 1}, got {val_fold}")
        return [1.0 / folds] * folds
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    return [1.0 - val_fraction, val_fraction]


def bucket_subsets(buckets: np.ndarray, settings: SplitSettings) -> np.ndarray:
    """``train``/``val`` of each bucket index (with folds: ``val`` for fold ``val_fold``)."""
    buckets = np.asarray(buckets, dtype=int)
    if settings.folds >= 2:
        return np.where(buckets == settings.val_fold, "val", "train")
    return np.asarray(SUBSETS)[buckets]


def split_nodules(nodules: pd.DataFrame, settings: SplitSettings) -> pd.DataFrame:
    """``nodule_id, patient_id, subset[, fold], size_stratum, diameter_mm`` of every nodule.

    ``folds`` < 2: one train/val split with ``val_fraction`` of the nodules (by patient) in val.
    ``folds`` >= 2: k patient-level folds of equal size; ``fold`` is each nodule's fold and subset
    ``val`` marks fold ``val_fold`` (``val_fraction`` is then unused).
    """
    fractions, folds = bucket_fractions(settings), settings.folds
    table = nodules[["nodule_id", "patient_id", "diameter_mm"]].copy()
    table["size_stratum"] = size_strata(table["diameter_mm"], settings.size_bins_mm)
    counts_frame = pd.crosstab(table["patient_id"], table["size_stratum"]).sort_index()
    patients = counts_frame.index.to_numpy()
    rng = np.random.default_rng(settings.seed)
    buckets = assign_groups(counts_frame.to_numpy(), fractions, rng)
    bucket_of = dict(zip(patients, buckets, strict=True))
    bucket = table["patient_id"].map(bucket_of).astype(int)
    table["subset"] = bucket_subsets(bucket.to_numpy(), settings)
    if folds >= 2:
        table["fold"] = bucket
    columns = ["nodule_id", "patient_id", "subset", *(["fold"] if folds >= 2 else [])]
    return table[[*columns, "size_stratum", "diameter_mm"]].reset_index(drop=True)


def scanned_patients(conversion_csv: str | Path) -> list[str]:
    """Patients with a series of index status ``ok`` that converted (results/index/conversion.csv).

    These are the scans a detector is scored on, nodules or not (LUNA16 counts false positives on
    every scan).
    """
    path = Path(conversion_csv)
    if not path.is_file():
        raise FileNotFoundError(f"conversion table not found: {path}")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"patient_id", "index_status", "conversion"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    usable = (table["index_status"] == "ok") & (table["conversion"] == "converted")
    return sorted(set(table.loc[usable, "patient_id"]))


def place_in_order(n_items: int, fractions: Sequence[float]) -> np.ndarray:
    """Bucket of each of ``n_items`` taken in order: each goes to the bucket furthest below its
    share of the items placed so far (ties: the lower bucket), so bucket b ends with
    ``fractions[b] * n_items`` items, within one."""
    fractions = np.asarray(fractions, dtype=float)
    members = np.zeros(len(fractions), dtype=int)
    buckets = np.empty(n_items, dtype=int)
    for position in range(n_items):
        bucket = int(np.argmax(fractions * (position + 1) - members))
        buckets[position] = bucket
        members[bucket] += 1
    return buckets


def split_patients(
    split: pd.DataFrame, patients: Sequence[str], settings: SplitSettings
) -> pd.DataFrame:
    """``patient_id, subset[, fold], n_nodules`` of every patient in ``split`` or ``patients``.

    A patient with training nodules keeps the subset (fold) of the nodule split. The others (no
    cohort nodule: the detector's scans without a nodule) are placed in a seeded random order so
    that each subset (fold) gets its fraction of them; the nodule split does not move.
    """
    columns = ["patient_id", "subset", *(["fold"] if settings.folds >= 2 else [])]
    placed = split.groupby("patient_id", sort=True).agg(
        subset=("subset", "first"),
        **({"fold": ("fold", "first")} if settings.folds >= 2 else {}),
        n_nodules=("nodule_id", "size"),
    )
    placed = placed.reset_index()
    others = np.array(sorted(set(patients) - set(placed["patient_id"])), dtype=object)
    others = others[np.random.default_rng(settings.seed).permutation(len(others))]
    buckets = place_in_order(len(others), bucket_fractions(settings))
    extra = pd.DataFrame(
        {"patient_id": others, "subset": bucket_subsets(buckets, settings), "n_nodules": 0}
    )
    if settings.folds >= 2:
        extra["fold"] = buckets
    table = pd.concat([placed, extra], ignore_index=True) if len(extra) else placed
    table = table[[*columns, "n_nodules"]].sort_values("patient_id", kind="stable")
    return table.reset_index(drop=True)


def log_balance(split: pd.DataFrame) -> None:
    """Log nodules and patients per subset and size stratum."""
    nodules = pd.crosstab(split["size_stratum"], split["subset"], margins=True)
    patients = split.groupby("subset")["patient_id"].nunique()
    logger.info("nodules per size stratum and subset:\n%s", nodules.to_string())
    logger.info("patients per subset: %s", patients.to_dict())


def write_split(
    nodules_csv: str | Path, out_csv: str | Path, settings: SplitSettings
) -> pd.DataFrame:
    """Split the training nodules of ``nodules_csv`` and write ``out_csv`` atomically."""
    split = split_nodules(training_nodules(nodules_csv), settings)
    log_balance(split)
    write_csv_atomic(out_csv, split)
    return split


def run_split(
    *, nodules: str, conversion: str, split: str, patients: str, settings: SplitSettings
) -> None:
    """Split the training nodules of ``nodules`` by patient into ``split`` (split.csv), and place
    every scanned patient of ``conversion`` (conversion.csv) in ``patients`` (patients.csv)."""
    nodule_split = write_split(nodules, split, settings)
    table = split_patients(nodule_split, scanned_patients(conversion), settings)
    logger.info(
        "patients per subset (with / without training nodules): %s",
        table.groupby(["subset", table["n_nodules"] > 0]).size().to_dict(),
    )
    write_csv_atomic(patients, table)


def fold_split(split_csv: str | Path, fold: int) -> pd.DataFrame:
    """``split_csv`` (written with ``folds`` >= 2) with fold ``fold`` as the validation subset and
    every other fold as training: one cross-validation fold's split, in split.csv's columns."""
    table = pd.read_csv(split_csv)
    if "fold" not in table.columns:
        raise ValueError(f"{split_csv}: no column fold (cross-validation needs split.folds >= 2)")
    folds = sorted(int(f) for f in table["fold"].unique())
    if fold not in folds:
        raise ValueError(f"{split_csv}: no fold {fold} (folds {folds})")
    table["subset"] = np.where(table["fold"] == fold, "val", "train")
    return table


def run_fold_split(*, split: str, fold: int, fold_split_csv: str) -> None:
    """Write cross-validation fold ``fold``'s split (``fold_split_csv``) from ``split``: the
    same trainer and evaluation then run on it as on the single split."""
    table = fold_split(split, int(fold))
    logger.info(
        "fold %d: %d validation nodule(s) of %d patient(s), %d training nodule(s)",
        fold,
        int((table["subset"] == "val").sum()),
        table.loc[table["subset"] == "val", "patient_id"].nunique(),
        int((table["subset"] == "train").sum()),
    )
    write_csv_atomic(fold_split_csv, table)
