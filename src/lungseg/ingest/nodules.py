"""Rule ``nodules``: the per-volume nodule tables merged into ``results/nodules.csv``, and the
run's summary of what was converted: ``results/index/conversion.csv`` and this job's log."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.ingest.cohort import nodule_in_cohort
from lungseg.ingest.settings import CohortCriteria
from lungseg.ingest.status import STATUS_SKIPPED
from lungseg.ingest.tables import CONVERSION_COLUMNS, NODULE_COLUMNS, STATUS_FILE_COLUMNS

log = logging.getLogger(__name__)


def merge_nodule_tables(
    tables: Iterable[str | os.PathLike[str]],
    series_csv: str | os.PathLike[str],
    criteria: CohortCriteria,
) -> pd.DataFrame:
    """All per-volume nodule tables in one, with ``series_status`` and ``in_cohort``."""

    frames = [pd.read_csv(t, dtype={"series_uid": str, "study_uid": str}) for t in tables]
    frames = [f for f in frames if not f.empty]
    series = pd.read_csv(series_csv, dtype={"series_uid": str, "study_uid": str})
    if frames:
        nodules = pd.concat(frames, ignore_index=True)
    else:
        nodules = pd.DataFrame(columns=NODULE_COLUMNS)
    info = series.set_index("series_uid")
    nodules["series_status"] = nodules["series_uid"].map(info["status"]).fillna("unknown")
    thickness = nodules["series_uid"].map(info["slice_thickness"])
    nodules["in_cohort"] = nodule_in_cohort(nodules, thickness, nodules["series_status"], criteria)
    return nodules.sort_values("nodule_id", kind="stable").reset_index(drop=True)


def conversion_table(
    series_csv: str | os.PathLike[str], statuses: Iterable[str | os.PathLike[str]]
) -> pd.DataFrame:
    """Every indexed series with what became of it: ``converted``, ``failed`` (the convert
    job's error) or ``skipped`` (by the index, with its reason)."""
    series = pd.read_csv(series_csv, dtype=str, keep_default_na=False)
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in statuses]
    done = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=STATUS_FILE_COLUMNS)
    )
    outcome = done.set_index("series_uid")
    rows = []
    for row in series.itertuples():
        if row.status == STATUS_SKIPPED or row.series_uid not in outcome.index:
            conversion, reason = "skipped", row.reason
        else:
            conversion = outcome.at[row.series_uid, "conversion"]
            reason = outcome.at[row.series_uid, "reason"] or row.reason
        rows.append([row.patient_id, row.series_uid, row.status, conversion, reason])
    return pd.DataFrame(rows, columns=CONVERSION_COLUMNS)


def log_conversion_summary(table: pd.DataFrame) -> None:
    """One line of counts, then one warning per series that was not converted, with why."""
    counts = table["conversion"].value_counts()
    log.info(
        "conversion: %d series converted, %d failed, %d skipped by the index",
        counts.get("converted", 0),
        counts.get("failed", 0),
        counts.get("skipped", 0),
    )
    for row in table[table["conversion"] != "converted"].itertuples():
        log.warning(
            "series %s (%s) %s: %s", row.series_uid, row.patient_id, row.conversion, row.reason
        )


def run_nodules(
    *,
    series: str,
    tables: list[str],
    statuses: list[str],
    nodules: str,
    conversion: str,
    criteria: CohortCriteria,
) -> None:
    """Merge the per-volume ``tables`` into ``nodules``, marking ``in_cohort`` by ``criteria``;
    write ``conversion`` (what became of each indexed series) from the convert jobs'
    ``statuses`` and log it: the run's summary of unusable series."""
    merged = merge_nodule_tables(tables, series, criteria)
    summary = conversion_table(series, statuses)
    write_csv_atomic(conversion, summary)
    write_csv_atomic(nodules, merged)
    log_conversion_summary(summary)
    log.info("%d nodules, %d in the cohort -> %s", len(merged), merged["in_cohort"].sum(), nodules)
