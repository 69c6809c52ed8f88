"""``lungseg bench-unseen``: ``lungseg predict`` on scans that no run has seen, scored as the
cascade scores the validation scans.

The validation scans pick every ``best.pt`` and the operating point; scans of patients in no
config file show what a user's own scans get. Their data come from a run that builds only them
(``config/sample_holdout.yaml``: sample DICOM, conversion, nodule table; nothing trained):
``lungseg predict`` reads their DICOM folders with the predictor bundles of another run, and
:func:`lungseg.evaluation.cascade.cascade_table` scores every series against its cohort
nodules (found = a predicted nodule's mask overlaps the reference, as rule ``cascade``).

Writes ``OUT/predictions/<series_uid>/`` (predict's outputs), ``OUT/cascade.csv`` and
``OUT/cascade_summary.csv`` (rule cascade's columns; ``crop_dice`` empty: no crop model was
evaluated on these nodules).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.core.errors import InputError
from lungseg.evaluation.cascade import cascade_table
from lungseg.evaluation.settings import BucketSettings
from lungseg.predict.pipeline import DEFAULT_DETECTOR, DEFAULT_SEGMENTER, run_predict
from lungseg.predict.settings import PredictSettings

logger = logging.getLogger(__name__)


def bench_unseen(
    *,
    series_dirs: list[str],
    nodules: str,
    volumes: str,
    out: str,
    detector: str = DEFAULT_DETECTOR,
    segmenter: str = DEFAULT_SEGMENTER,
    buckets: BucketSettings,
    settings: PredictSettings,
    threads: int = 1,
) -> None:
    """Predict every CT series under SERIES_DIR... and score it against ``nodules``.

    ``nodules``: results/nodules.csv of the run that built these scans; ``volumes``: its
    results/volumes folder (the reference masks); ``out``: a new folder."""
    files = sorted(str(p) for p in Path(volumes).rglob("*.h5"))
    if not files:
        raise InputError(f"{volumes}: no volume files (<patient>/<series>.h5)")
    predictions = Path(out) / "predictions"
    run_predict(
        series_dirs=series_dirs,
        out=str(predictions),
        detector=detector,
        segmenter=segmenter,
        settings=settings,
        threads=threads,
    )
    folders = sorted(str(p) for p in predictions.iterdir() if (p / "summary.json").is_file())
    no_crops = Path(out) / "crop_evaluation.csv"
    write_csv_atomic(no_crops, pd.DataFrame(columns=["nodule_id", "dice"]))
    table, summary = cascade_table(folders, nodules, files, str(no_crops), buckets.size_buckets_mm)
    write_csv_atomic(Path(out) / "cascade.csv", table)
    write_csv_atomic(Path(out) / "cascade_summary.csv", summary)
    overall = summary[summary["size_bucket"] == "all"].iloc[0]
    logger.info(
        "%d series: %d of %d cohort nodules found, %d false positives",
        len(folders),
        int(overall["detected"]),
        int(overall["nodules"]),
        int(overall["false_positives"]),
    )


bench_unseen.positional = ("series_dirs",)

__all__ = ["bench_unseen"]
