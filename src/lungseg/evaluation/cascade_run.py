"""Rule ``cascade``: the cascade table, its summary, and radiomics agreement with the references
(rule ``plot_cascade`` draws them: :mod:`lungseg.figures.cascade`).

Radiomics agreement: for every detected reference nodule, each pyradiomics feature of the
predicted mask (its prediction's radiomics.csv) against the same feature of the radiologists'
consensus mask (computed here with the same parameter file, on the same HU image): ICC(3,1)
per feature over the matched nodules (:func:`lungseg.evaluation.agreement.feature_agreement`),
and the share of features with ICC >= 0.9 per feature class.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.evaluation.agreement import class_agreement, feature_agreement
from lungseg.evaluation.cascade import cascade_table
from lungseg.evaluation.settings import BucketSettings
from lungseg.io.hdf5 import read_volume
from lungseg.predict.radiomics import extract_features
from lungseg.predict.settings import PredictSettings

logger = logging.getLogger(__name__)

#: ICC at or above which a feature counts as reproduced (a common radiomics cut-off).
ICC_GOOD = 0.9


def matched_features(
    table: pd.DataFrame,
    nodules: pd.DataFrame,
    predictions: dict[str, Path],
    volumes: dict[str, str],
    params: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predicted, reference) feature rows of the detected nodules, keyed by ``nodule_id``."""
    predicted_rows, reference_rows = [], []
    detected = table[table["detected"]]
    for uid, part in detected.groupby("series_uid", sort=True):
        features = pd.read_csv(predictions[uid] / "radiomics.csv").set_index("label")
        image, mask, attrs = read_volume(volumes[uid])
        labels = nodules.set_index("nodule_id").loc[part["nodule_id"], "label"].astype(int)
        reference = extract_features(
            image,
            mask,
            attrs["spacing"],
            attrs["origin"],
            attrs["direction"],
            [int(v) for v in labels],
            params,
        ).set_index("label")
        for row in part.itertuples():
            mine = features.loc[int(row.predicted_label)]
            predicted_rows.append({"nodule_id": row.nodule_id, **mine.to_dict()})
            truth = reference.loc[int(labels.loc[row.nodule_id])]
            reference_rows.append({"nodule_id": row.nodule_id, **truth.to_dict()})
    empty = {"nodule_id": pd.Series([], dtype=str)}  # no match: the tables keep their key
    return (
        pd.DataFrame(predicted_rows) if predicted_rows else pd.DataFrame(empty),
        pd.DataFrame(reference_rows) if reference_rows else pd.DataFrame(empty),
    )


def run_cascade(
    *,
    predictions: list[str],
    nodules: str,
    volumes: list[str],
    evaluations: list[str],
    choice: str,
    cascade: str,
    summary: str,
    reference_features: str,
    agreement: str,
    agreement_classes: str,
    buckets: BucketSettings,
    settings: PredictSettings,
) -> None:
    """Score the predicted validation scans against their reference nodules."""
    segmenter = json.loads(Path(choice).read_text())["segmenter"]
    crop_evaluation = {Path(p).parent.name: p for p in evaluations}[segmenter]
    table, by_bucket = cascade_table(
        predictions, nodules, volumes, crop_evaluation, buckets.size_buckets_mm
    )
    write_csv_atomic(cascade, table)
    write_csv_atomic(summary, by_bucket)
    by_series = {
        json.loads((Path(p) / "summary.json").read_text())["series_uid"]: Path(p)
        for p in predictions
    }
    volume_of = {Path(v).name[: -len(".h5")]: v for v in volumes}
    params = PredictSettings.radiomics_params_file(settings.radiomics_params)
    predicted, reference = matched_features(
        table, pd.read_csv(nodules), by_series, volume_of, params
    )
    write_csv_atomic(reference_features, reference)
    features = feature_agreement(predicted, reference, key="nodule_id")
    classes = class_agreement(features, threshold=ICC_GOOD)
    write_csv_atomic(agreement, features)
    write_csv_atomic(agreement_classes, classes)
    overall = by_bucket[by_bucket["size_bucket"] == "all"].iloc[0]
    logger.info(
        "cascade: %d/%d reference nodules detected, mean Dice %.3f (crop model at the true "
        "centre: %.3f), %s false positive(s) on %s scan(s); radiomics ICC on %d matched nodules",
        overall["detected"],
        overall["nodules"],
        overall["dice_mean"],
        overall["crop_dice_mean"],
        overall["false_positives"],
        overall["scans"],
        len(predicted),
    )
    if len(predicted) < 3:
        logger.warning(
            "only %d matched nodule(s): ICCs are undefined or meaningless", len(predicted)
        )
