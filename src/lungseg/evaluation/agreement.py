"""Agreement of radiomics features between two segmentations of the same nodules.

A predicted segmentation is as good as the reference for radiomics when the features computed
on it rank the nodules as the reference's do: the intraclass correlation ICC(3,1) of Shrout &
Fleiss (1979; two-way mixed, consistency, single measures), per feature, and per feature class
the share of features with ICC at or above a threshold (0.9: "excellent", Koo & Li 2016).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

FEATURE_PREFIX = "original_"


def feature_class(name: str) -> str:
    """The feature class of a pyradiomics feature name: ``original_glcm_Contrast`` -> ``glcm``."""
    parts = name.split("_")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"{name!r} is no pyradiomics feature name (imagetype_class_feature)")
    return parts[1]


def icc_3_1(ratings: np.ndarray) -> float:
    """ICC(3,1) of ``ratings`` (n subjects x k raters) = (MSR - MSE) / (MSR + (k - 1) MSE).

    Consistency: a rater's constant offset does not lower it. NaN for fewer than two subjects
    or raters, any NaN rating, or no variance at all (0 / 0).
    """
    x = np.asarray(ratings, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"ratings must be (subjects, raters), got shape {x.shape}")
    n, k = x.shape
    if n < 2 or k < 2 or np.isnan(x).any():
        return math.nan
    grand = x.mean()
    ss_rows = k * float(((x.mean(axis=1) - grand) ** 2).sum())
    ss_columns = n * float(((x.mean(axis=0) - grand) ** 2).sum())
    ss_error = max(float(((x - grand) ** 2).sum()) - ss_rows - ss_columns, 0.0)
    ms_rows = ss_rows / (n - 1)
    ms_error = ss_error / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error
    scale = max(abs(ms_rows), abs(ms_error), 1.0)
    if denominator <= 1e-12 * scale:
        return math.nan
    return (ms_rows - ms_error) / denominator


def _features(frame: pd.DataFrame) -> list[str]:
    return [
        name
        for name in frame.columns
        if str(name).startswith(FEATURE_PREFIX) and pd.api.types.is_numeric_dtype(frame[name])
    ]


def _unique(frame: pd.DataFrame, key: str, which: str) -> None:
    if key not in frame.columns:
        raise ValueError(f"{which} features have no {key!r} column")
    duplicated = frame[key][frame[key].duplicated()].unique().tolist()
    if duplicated:
        raise ValueError(f"{which} features list {key} {duplicated[:5]} more than once")


def feature_agreement(
    predicted: pd.DataFrame, reference: pd.DataFrame, key: str = "nodule_id"
) -> pd.DataFrame:
    """ICC(3,1) per shared numeric ``original_*`` feature: columns feature, feature_class, n, icc.

    Rows are paired on ``key`` (nodules in one table only are left out); per feature, pairs
    with a NaN are dropped and ``n`` says how many remain.
    """
    _unique(predicted, key, "predicted")
    _unique(reference, key, "reference")
    shared = set(_features(reference))
    features = [name for name in _features(predicted) if name in shared]
    pairs = predicted[[key, *features]].merge(
        reference[[key, *features]], on=key, suffixes=("_predicted", "_reference")
    )
    rows = []
    for name in features:
        both = pairs[[f"{name}_predicted", f"{name}_reference"]].dropna().to_numpy(dtype=float)
        rows.append(
            {
                "feature": name,
                "feature_class": feature_class(name),
                "n": len(both),
                "icc": icc_3_1(both),
            }
        )
    return pd.DataFrame(rows, columns=["feature", "feature_class", "n", "icc"])


def class_agreement(table: pd.DataFrame, threshold: float = 0.9) -> pd.DataFrame:
    """Per feature class (then ``all``): features, icc_ge_threshold (NaN counts as below), share."""
    good = table["icc"].ge(threshold)  # NaN >= t is False
    rows = []
    groups = [(cls, table["feature_class"] == cls) for cls in table["feature_class"].unique()]
    for cls, members in [*groups, ("all", pd.Series(True, index=table.index))]:
        count, above = int(members.sum()), int((good & members).sum())
        share = above / count if count else math.nan
        rows.append(
            {"feature_class": cls, "features": count, "icc_ge_threshold": above, "share": share}
        )
    return pd.DataFrame(rows, columns=["feature_class", "features", "icc_ge_threshold", "share"])
