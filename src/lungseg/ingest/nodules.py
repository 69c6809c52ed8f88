"""Rule ``nodules``: the per-volume nodule tables merged into ``results/nodules.csv``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.ingest.cohort import nodule_in_cohort
from lungseg.ingest.settings import CohortCriteria
from lungseg.ingest.tables import NODULE_COLUMNS

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


def run_nodules(*, series: str, tables: list[str], nodules: str, criteria: CohortCriteria) -> None:
    """Merge the per-volume ``tables`` into ``nodules``, marking ``in_cohort`` by ``criteria``."""
    merged = merge_nodule_tables(tables, series, criteria)
    write_csv_atomic(nodules, merged)
    log.info("%d nodules, %d in the cohort -> %s", len(merged), merged["in_cohort"].sum(), nodules)
