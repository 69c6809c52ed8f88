"""The LIDC-IDRI CT series as the NCI Imaging Data Commons lists them, offline.

``idc-index-data`` ships IDC's whole manifest as a parquet file (one row per DICOM series of
every IDC collection, with its instance count and size); the ``lidc_idri`` collection holds the
1018 CT series of LIDC-IDRI (plus the annotations as SEG and SR series, not used here). This
module reads the CT rows only, with the columns lungseg needs, named as lungseg's tables name
them. The index checks a download against it (:mod:`lungseg.ingest.manifest`) and
``lungseg download`` plans from it (:mod:`lungseg.download`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lungseg.core.errors import InputError, SettingsError

COLLECTION = "lidc_idri"
#: lungseg's column -> the IDC index's column
COLUMNS = {
    "patient_id": "PatientID",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "instances": "instanceCount",
    "size_mb": "series_size_MB",
    "crdc_series_uuid": "crdc_series_uuid",
}


def manifest_path() -> Path:
    """The parquet file of the installed ``idc-index-data``."""
    try:
        import idc_index_data
    except ImportError as exc:  # the lock installs it; a hand-made environment may not
        raise InputError(
            "the IDC manifest needs the package idc-index-data (pip install idc-index-data); "
            "or turn the check off with ingest.manifest_check: false"
        ) from exc
    return Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)


@functools.cache
def _collection_series() -> pd.DataFrame:
    path = manifest_path()
    try:
        table = pd.read_parquet(
            path,
            columns=[*COLUMNS.values(), "collection_id", "Modality"],
            filters=[("collection_id", "==", COLLECTION), ("Modality", "==", "CT")],
        )
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the IDC manifest ({exc})") from exc
    table = table.rename(columns={v: k for k, v in COLUMNS.items()})[list(COLUMNS)]
    table["instances"] = table["instances"].astype(int)
    return table.sort_values(["patient_id", "series_uid"], kind="stable").reset_index(drop=True)


def ct_series(patients: Iterable[str]) -> pd.DataFrame:
    """The collection's CT series (columns :data:`COLUMNS`), all or those of ``patients``.

    A patient the collection does not have is a :class:`SettingsError` naming it.
    """
    table = _collection_series()
    wanted = list(dict.fromkeys(patients))
    if not wanted:
        return table.copy()
    unknown = sorted(set(wanted) - set(table["patient_id"]))
    if unknown:
        raise SettingsError(
            f"patients not in the IDC's LIDC-IDRI collection: {', '.join(unknown)} "
            f"(it has {table['patient_id'].nunique()} patients, LIDC-IDRI-0001 ... -1012)"
        )
    return table[table["patient_id"].isin(wanted)].reset_index(drop=True)
