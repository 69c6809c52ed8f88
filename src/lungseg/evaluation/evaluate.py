"""Evaluate a trained model on the validation crops; summarise all models by nodule size.

Per validation nodule (:func:`evaluate_model`): the best checkpoint's probabilities, thresholded,
compared with the consensus mask in millimetres (:mod:`lungseg.evaluation.metrics`).
Voxels of *other*
nodules in the crop (``other`` in crops.h5) are removed from the prediction first: finding a
neighbouring nodule is not an error on this one. The probabilities are kept in
``predictions.h5`` so the figures never run a model.

Summary (:func:`summarise`): one row per model and size bucket (``all`` first), mean, median and
standard deviation of each metric; HD95 statistics over the nodules where it is defined (both
masks non-empty), with the number of empty predictions alongside.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 (registers the Blosc filters crops.h5 is written with)
import numpy as np
import pandas as pd

from lungseg.core.atomic import atomic_path, write_csv_atomic
from lungseg.core.errors import DataError
from lungseg.core.settings import schema_defaults
from lungseg.evaluation.metrics import SURFACE_TOLERANCE_MM, segmentation_metrics
from lungseg.evaluation.settings import BucketSettings, EvaluationSettings
from lungseg.io.hdf5 import REBUILD_CROPS, open_hdf5

logger = logging.getLogger(__name__)

#: Columns of results/models/{model}/evaluation.csv, in order.
EVALUATION_COLUMNS = [
    "nodule_id",
    "patient_id",
    "dice",
    "iou",
    "hd95_mm",
    "surface_dice_1mm",
    "predicted_volume_mm3",
    "true_volume_mm3",
    "diameter_mm",
    "n_readers",
    "size_bucket",
]
METRIC_COLUMNS = ["dice", "iou", "hd95_mm", "surface_dice_1mm"]
CROP_COLUMNS = ["nodule_id", "patient_id", "spacing_z", "spacing_y", "spacing_x", "diameter_mm"]
#: Default bucket edges (mm): < 6 (Lung-RADS' lowest solid category), 6-10, 10-20, >= 20.


def default_bucket_edges() -> tuple[float, ...]:
    """The schema's ``evaluation.size_buckets_mm`` (the one place the default lives)."""
    return tuple(schema_defaults("evaluation")["size_buckets_mm"])


def size_bucket_labels(edges_mm: Sequence[float] | None = None) -> list[str]:
    """Readable labels of the buckets cut at ``edges_mm`` (default: the schema's):
    ``<6 mm, 6-10 mm, ..., >=20 mm``."""
    edges = [float(e) for e in (default_bucket_edges() if edges_mm is None else edges_mm)]
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)) or any(e <= 0 for e in edges):
        raise ValueError(f"size bucket edges must be positive and increasing, got {edges}")
    if not edges:
        return ["all sizes"]
    text = [f"{e:g}" for e in edges]
    middle = [f"{a}-{b} mm" for a, b in zip(text, text[1:], strict=False)]
    return [f"<{text[0]} mm", *middle, f">={text[-1]} mm"]


def size_bucket(
    diameters_mm: Sequence[float], edges_mm: Sequence[float] | None = None
) -> list[str]:
    """The bucket label of each diameter (left-closed intervals: 6.0 mm is in 6-10 mm)."""
    edges_mm = default_bucket_edges() if edges_mm is None else edges_mm
    labels = size_bucket_labels(edges_mm)
    positions = np.searchsorted(np.asarray(edges_mm, dtype=float), diameters_mm, side="right")
    return [labels[i] for i in positions]


def read_crop_rows(
    crops_h5: str | Path, crops_csv: str | Path, rows: Sequence[int] | None = None
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Rows ``rows`` (ascending; None: all) of crops.csv and their ``image``, ``mask``,
    ``other`` arrays of crops.h5; a :class:`DataError` naming the file that does not fit."""
    table = pd.read_csv(crops_csv)
    missing = [c for c in [*CROP_COLUMNS, "n_readers"] if c not in table.columns]
    if missing:
        raise DataError(f"{crops_csv}: missing column(s) {missing}")
    picked = slice(None) if rows is None else rows
    arrays = {}
    with open_hdf5(crops_h5, REBUILD_CROPS) as file:
        for name in ("image", "mask", "other"):
            if name not in file:
                raise DataError(f"{crops_h5}: no dataset {name!r}")
            if len(file[name]) != len(table):
                raise DataError(
                    f"{crops_h5}: {name!r} has {len(file[name])} crops, {crops_csv} "
                    f"{len(table)} rows"
                )
            arrays[name] = file[name][picked]  # rows ascending: h5py reads them directly
    return table.iloc[picked].reset_index(drop=True), arrays


def read_validation_crops(
    crops_h5: str | Path, crops_csv: str | Path, split_csv: str | Path
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The validation rows of crops.csv and their ``image``, ``mask``, ``other`` arrays."""
    from lungseg.training.data import read_subset_indices  # torch import: only when evaluating

    return read_crop_rows(crops_h5, crops_csv, read_subset_indices(crops_csv, split_csv)["val"])


def score_predictions(
    probabilities: np.ndarray,
    truth: np.ndarray,
    other: np.ndarray,
    crops: pd.DataFrame,
    threshold: float,
    bucket_edges_mm: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Per-nodule metrics (``EVALUATION_COLUMNS``) of thresholded probabilities vs the masks."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    if not probabilities.shape == truth.shape == other.shape or len(truth) != len(crops):
        raise ValueError(
            f"probabilities {probabilities.shape}, masks {truth.shape}, other {other.shape} and "
            f"{len(crops)} table rows do not match"
        )
    records = []
    for i, row in enumerate(crops.itertuples(index=False)):
        spacing = (row.spacing_z, row.spacing_y, row.spacing_x)
        predicted = (probabilities[i] >= threshold) & (other[i] == 0)
        scores = segmentation_metrics(predicted, truth[i] > 0, spacing, SURFACE_TOLERANCE_MM)
        records.append(
            {
                "nodule_id": row.nodule_id,
                "patient_id": row.patient_id,
                **scores,
                "diameter_mm": row.diameter_mm,
                "n_readers": row.n_readers,
            }
        )
    frame = pd.DataFrame.from_records(records, columns=EVALUATION_COLUMNS[:-1])
    frame["size_bucket"] = size_bucket(frame["diameter_mm"].to_numpy(), bucket_edges_mm)
    return frame[EVALUATION_COLUMNS].round(6)


def write_predictions(path: str | Path, nodule_ids: Sequence[str], probabilities, threshold):
    """predictions.h5: ``probability`` float16 ``(N, D, H, W)``, ``nodule_id``, attr threshold."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as file:
        file.create_dataset(
            "probability",
            data=probabilities.astype(np.float16),
            chunks=(1, *probabilities.shape[1:]),
            compression="gzip",
        )
        file.create_dataset(
            "nodule_id", data=np.array(nodule_ids, dtype=object), dtype=h5py.string_dtype()
        )
        file.attrs["threshold"] = float(threshold)


def read_predictions(path: str | Path) -> tuple[list[str], np.ndarray, float]:
    """Nodule ids, float32 probabilities and threshold of a predictions.h5."""
    with h5py.File(path, "r") as file:
        if "probability" not in file or "nodule_id" not in file:
            raise ValueError(f"{path}: not a predictions file (needs probability, nodule_id)")
        ids = [v.decode() if isinstance(v, bytes) else str(v) for v in file["nodule_id"][()]]
        return ids, file["probability"][()].astype(np.float32), float(file.attrs["threshold"])


def evaluate_model(
    checkpoint: str | Path,
    crops_h5: str | Path,
    crops_csv: str | Path,
    split_csv: str | Path,
    out_csv: str | Path,
    predictions_h5: str | Path | None = None,
    *,
    threshold: float,
    bucket_edges_mm: Sequence[float] | None,
    batch_size: int,
    device: str,
    threads: int = 1,
) -> pd.DataFrame:
    """Run ``checkpoint`` on the validation crops; write per-nodule metrics (and probabilities).

    The settings are ``evaluation`` keys (:class:`EvaluationSettings`; ``bucket_edges_mm`` is
    ``size_buckets_mm``, None the schema's); they have no defaults here."""
    import torch

    from lungseg.inference.model import choose_device, load_model, predict

    torch.set_num_threads(max(1, int(threads)))
    crops, arrays = read_validation_crops(crops_h5, crops_csv, split_csv)
    model, settings = load_model(checkpoint, str(choose_device(device)))
    probabilities = predict(model, arrays["image"], settings, batch_size)
    frame = score_predictions(
        probabilities, arrays["mask"], arrays["other"], crops, threshold, bucket_edges_mm
    )
    write_csv_atomic(out_csv, frame)
    if predictions_h5:
        write_predictions(predictions_h5, list(crops["nodule_id"]), probabilities, threshold)
    logger.info(
        "%s: %d validation nodules, Dice mean %.3f median %.3f, HD95 median %.2f mm",
        checkpoint,
        len(frame),
        frame["dice"].mean(),
        frame["dice"].median(),
        frame["hd95_mm"].median(),
    )
    return frame


def summarise(
    evaluations: Mapping[str, pd.DataFrame],
    bucket_edges_mm: Sequence[float] | None = None,
) -> pd.DataFrame:
    """One row per model and size bucket (``all``, then each bucket in size order, empty ones
    included with ``n_nodules`` 0): ``model, size_bucket, n_nodules, n_empty_predictions`` and
    ``<metric>_mean/_median/_std`` (std with ``ddof=1``; nan for fewer than two nodules)."""
    rows = []
    for model, frame in evaluations.items():
        missing = [c for c in EVALUATION_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"evaluation of model {model!r}: missing column(s) {missing}")
        buckets = size_bucket(frame["diameter_mm"].to_numpy(), bucket_edges_mm)
        groups = [("all", frame)] + [
            (label, frame[np.array(buckets) == label])
            for label in size_bucket_labels(bucket_edges_mm)
        ]
        for label, group in groups:
            row = {
                "model": model,
                "size_bucket": label,
                "n_nodules": len(group),
                "n_empty_predictions": int((group["predicted_volume_mm3"] == 0).sum()),
            }
            for metric in METRIC_COLUMNS:
                values = group[metric].astype(float)  # pandas skips nan (undefined HD95)
                row[f"{metric}_mean"] = values.mean()
                row[f"{metric}_median"] = values.median()
                row[f"{metric}_std"] = values.std(ddof=1)
            rows.append(row)
    return pd.DataFrame(rows).round(6)


def summarise_files(
    models: Sequence[str],
    evaluation_csvs: Sequence[str | Path],
    out_csv: str | Path,
    bucket_edges_mm: Sequence[float] | None = None,
) -> pd.DataFrame:
    """:func:`summarise` of the per-model evaluation tables, written to ``out_csv``."""
    if len(models) != len(evaluation_csvs):
        raise ValueError(f"{len(models)} model names but {len(evaluation_csvs)} evaluation files")
    summary = summarise(
        {m: pd.read_csv(p) for m, p in zip(models, evaluation_csvs, strict=True)}, bucket_edges_mm
    )
    write_csv_atomic(out_csv, summary)
    return summary


def run_evaluate(
    *,
    checkpoint: str,
    crops: str,
    crops_table: str,
    split: str,
    evaluation: str,
    predictions: str | None = None,
    settings: EvaluationSettings,
    threads: int = 1,
) -> None:
    """Evaluate ``checkpoint`` (best.pt) on the validation crops: per-nodule ``evaluation`` CSV
    and, when given, the probabilities (``predictions``, HDF5)."""
    evaluate_model(
        checkpoint,
        crops,
        crops_table,
        split,
        evaluation,
        predictions_h5=predictions,
        threshold=settings.threshold,
        bucket_edges_mm=settings.size_buckets_mm,
        batch_size=settings.batch_size,
        device=settings.device,
        threads=threads,
    )


def run_evaluate_summary(
    *, evaluations: list[str], models: list[str], summary: str, settings: BucketSettings
) -> None:
    """One table (``summary``) of the ``evaluations`` of ``models``, per size bucket."""
    summarise_files(models, evaluations, summary, settings.size_buckets_mm)
