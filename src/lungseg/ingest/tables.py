"""Columns of the ingestion tables (a public interface: docs/architecture.md) and nodule ids."""

from __future__ import annotations

import pandas as pd

from lungseg.ingest.status import STATUS_EXCLUDED, STATUS_OK

SERIES_COLUMNS = [
    "patient_id",
    "study_uid",
    "series_uid",
    "modality",
    "n_files",
    "n_slices",
    "status",
    "reason",
    "slice_thickness",
    "slice_spacing",
    "rows",
    "columns",
    "annotated",
]
FILES_COLUMNS = ["series_uid", "path"]
#: Leading columns of every nodule table (median characteristics follow).
NODULE_COLUMNS = [
    "nodule_id",
    "patient_id",
    "study_uid",
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
    "volume_mm3",
]


def nodule_id(patient_id: str, series_uid: str, label: int) -> str:
    """``<patient_id>_<last 8 characters of series_uid>_<label as two digits>``."""
    return f"{patient_id}_{series_uid[-8:]}_{label:02d}"


def convertible(series: pd.DataFrame) -> pd.DataFrame:
    """The rows of an index that get an HDF5 volume (status ok or excluded)."""
    return series[series["status"].isin([STATUS_OK, STATUS_EXCLUDED])]
