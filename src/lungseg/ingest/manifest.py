"""The index's completeness check: what was found on disk vs the IDC manifest of LIDC-IDRI.

The index finds missing slices only from gaps in the slice positions: a series whose last
slices never arrived, or a patient missing altogether, leaves no gap. The manifest
(:mod:`lungseg.lidc.idc`) says how many instances each series has, so ``results/index/manifest.csv``
lists, per series:

- ``complete``: every instance found;
- ``incomplete``: fewer found (the series becomes ``excluded``, the counts in its reason);
- ``extra``: more files than the manifest's instances (duplicates; the index's own checks
  decide about the series);
- ``absent``: in the manifest (for the expected patients) but not found at all;
- ``not_in_manifest``: found, but not a CT series of the collection (another data set).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd

from lungseg.ingest.status import STATUS_EXCLUDED, STATUS_SKIPPED
from lungseg.lidc import idc

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "patient_id",
    "series_uid",
    "expected_instances",
    "found_instances",
    "status",
    "reason",
]
#: problem lines logged per status (the table has them all: 1017 absent series for one patient)
LOGGED_PER_STATUS = 10
COMPLETE, INCOMPLETE, EXTRA, ABSENT, NOT_IN_MANIFEST = (
    "complete",
    "incomplete",
    "extra",
    "absent",
    "not_in_manifest",
)


def _row(patient, series_uid, expected, found, status, reason="") -> dict:
    return {
        "patient_id": patient,
        "series_uid": series_uid,
        "expected_instances": expected,
        "found_instances": found,
        "status": status,
        "reason": reason,
    }


def compare(series: pd.DataFrame, manifest: pd.DataFrame, patients: Sequence[str]) -> pd.DataFrame:
    """The manifest table (:data:`MANIFEST_COLUMNS`) of the index's ``series`` (its
    ``n_files`` per series) against ``manifest`` (:func:`lungseg.lidc.idc.ct_series`).

    ``patients``: whose series are expected; empty = every patient of the manifest.
    """
    expected = manifest if not patients else manifest[manifest["patient_id"].isin(patients)]
    known = manifest.set_index("series_uid")["instances"]
    found = series.set_index("series_uid")
    rows = []
    for row in found.itertuples():
        if row.Index not in known.index:
            rows.append(
                _row(
                    row.patient_id,
                    row.Index,
                    None,
                    row.n_files,
                    NOT_IN_MANIFEST,
                    "not a CT series of the IDC's LIDC-IDRI collection",
                )
            )
            continue
        want = int(known[row.Index])
        if row.n_files < want:
            status, reason = INCOMPLETE, f"{row.n_files} of {want} instances of the IDC manifest"
        elif row.n_files > want:
            status, reason = EXTRA, f"{row.n_files} files for {want} instances of the IDC manifest"
        else:
            status, reason = COMPLETE, ""
        rows.append(_row(row.patient_id, row.Index, want, row.n_files, status, reason))
    for row in expected[~expected["series_uid"].isin(found.index)].itertuples():
        rows.append(_row(row.patient_id, row.series_uid, row.instances, 0, ABSENT, "no file found"))
    table = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    table["expected_instances"] = table["expected_instances"].astype("Int64")
    return table.sort_values(["patient_id", "series_uid"], kind="stable").reset_index(drop=True)


def exclude_incomplete(series: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """``series`` with every ``incomplete`` series ``excluded`` (skipped ones stay skipped) and
    the counts added to its reason."""
    series = series.copy()
    short = table[table["status"] == INCOMPLETE].set_index("series_uid")["reason"]
    for i in series.index[series["series_uid"].isin(short.index)]:
        reason = short[series.at[i, "series_uid"]]
        if series.at[i, "status"] != STATUS_SKIPPED:
            series.at[i, "status"] = STATUS_EXCLUDED
        old = series.at[i, "reason"]
        series.at[i, "reason"] = f"{old}; {reason}" if isinstance(old, str) and old else reason
    return series


def summary_line(table: pd.DataFrame) -> str:
    """One line: how many expected series are complete, and what is wrong with the others."""
    counts = table["status"].value_counts()
    expected = int(table["expected_instances"].notna().sum())
    problems = [
        f"{counts.get(status, 0)} {status.replace('_', ' ')}"
        for status in (INCOMPLETE, ABSENT, EXTRA, NOT_IN_MANIFEST)
    ]
    return (
        f"IDC manifest: {counts.get(COMPLETE, 0)} of {expected} expected series complete, "
        + ", ".join(problems)
    )


def check_manifest(
    series: pd.DataFrame, patients: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(series, manifest table)``: the index's series with incomplete ones excluded, and the
    table of every found and expected series; logs the summary and each problem."""
    table = compare(series, idc.ct_series([]), patients)
    log.info("%s", summary_line(table))
    for status, rows in table[table["status"] != COMPLETE].groupby("status", sort=False):
        for row in rows.head(LOGGED_PER_STATUS).itertuples():
            log.warning("manifest: series %s (%s) %s: %s", row.series_uid, row.patient_id,
                        status.replace("_", " "), row.reason)  # fmt: skip
        if len(rows) > LOGGED_PER_STATUS:
            log.warning("manifest: ... and %d more %s series (results/index/manifest.csv)",
                        len(rows) - LOGGED_PER_STATUS, status.replace("_", " "))  # fmt: skip
    return exclude_incomplete(series, table), table
