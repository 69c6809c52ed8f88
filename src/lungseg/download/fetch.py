"""``lungseg download``: LIDC-IDRI's CT series from the NCI Imaging Data Commons (IDC).

IDC hosts LIDC-IDRI in public buckets (no account). The plan comes from the offline manifest
(:mod:`lungseg.lidc.idc`): every CT series of the chosen patients, its instance count and size.
Files go to ``lidc_root/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/`` (a layout the
index reads; it groups files by their headers anyway). The transfer is idc-index's
``download_from_selection`` with s5cmd's ``sync``, so a rerun fetches only what is missing or
differs. Before it: what will be fetched (series, GB), the free disk and whether the bucket is
reachable, each a one-line error. After it: every series is counted again against the manifest
and ``series.csv`` says what is there; a series short of instances is an error naming it.
"""

from __future__ import annotations

import logging
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.core.errors import DataError, InputError, OutputError
from lungseg.download.settings import DownloadSettings
from lungseg.lidc import idc

log = logging.getLogger(__name__)

#: IDC's public buckets (idc-index uses the same endpoints)
ENDPOINTS = {"aws": "https://s3.amazonaws.com", "gcs": "https://storage.googleapis.com"}
#: idc-index's folder template: lidc_root/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/
DIR_TEMPLATE = "%PatientID/%StudyInstanceUID/%SeriesInstanceUID"
#: results/download/series.csv (and the dry run's table)
SERIES_COLUMNS = [
    "patient_id",
    "study_uid",
    "series_uid",
    "instances",
    "size_mb",
    "found_instances",
    "found_mb",
    "status",
]
COMPLETE, PARTIAL, MISSING = "complete", "partial", "missing"
#: size agreement allowed between the manifest's series size and the files on disk
SIZE_TOLERANCE = 0.001
#: disk kept free beyond the plan's need (filesystem overhead, the index's outputs)
DISK_MARGIN = 0.02


def series_folder(root: Path, row) -> Path:
    return root / row.patient_id / row.study_uid / row.series_uid


def _found(folder: Path) -> tuple[int, float]:
    """(DICOM files, MB) in one series folder."""
    if not folder.is_dir():
        return 0, 0.0
    sizes = [p.stat().st_size for p in folder.glob("*.dcm") if p.is_file()]
    return len(sizes), sum(sizes) / 1e6


def plan(root: str | Path, patients: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Every CT series of ``patients`` (empty: all) with what ``root`` already holds of it."""
    return count(Path(root), idc.ct_series(patients))


def count(root: Path, table: pd.DataFrame) -> pd.DataFrame:
    """``table``'s series (manifest columns) with the files and MB ``root`` holds of each."""
    table = table.copy()
    found = [_found(series_folder(root, row)) for row in table.itertuples()]
    table["found_instances"] = [n for n, _ in found]
    table["found_mb"] = [round(mb, 6) for _, mb in found]
    size_ok = (table["found_mb"] - table["size_mb"]).abs() <= SIZE_TOLERANCE * table["size_mb"]
    table["status"] = MISSING
    table.loc[table["found_instances"] > 0, "status"] = PARTIAL
    table.loc[(table["found_instances"] == table["instances"]) & size_ok, "status"] = COMPLETE
    return table[SERIES_COLUMNS]


def describe(table: pd.DataFrame) -> str:
    """One line: the selection, what is there, what is left to fetch."""
    todo = table[table["status"] != COMPLETE]
    left_gb = (todo["size_mb"] - todo["found_mb"]).clip(lower=0).sum() / 1e3
    return (
        f"{len(table)} CT series of {table['patient_id'].nunique()} patients, "
        f"{table['size_mb'].sum() / 1e3:.2f} GB; {int((table['status'] == COMPLETE).sum())} "
        f"complete on disk; to fetch: {len(todo)} series, {left_gb:.2f} GB"
    )


def check_disk(root: Path, need_mb: float) -> None:
    """An :class:`OutputError` when ``root``'s filesystem has less free space than needed."""
    existing = root
    while not existing.exists():
        existing = existing.parent
    free_mb = shutil.disk_usage(existing).free / 1e6
    if free_mb < need_mb * (1 + DISK_MARGIN):
        raise OutputError(
            f"{root}: not enough disk space: the download needs {need_mb / 1e3:.2f} GB, "
            f"{free_mb / 1e3:.2f} GB free (free space, or choose fewer download.patients)"
        )


def check_network(url: str, timeout: float = 10.0) -> None:
    """An :class:`InputError` in one line when ``url``'s host does not answer (s5cmd itself
    would retry for minutes before failing)."""
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise InputError(
            f"no network: cannot reach {host}:{port} ({exc.strerror or exc}); nothing was "
            "fetched. Check the connection (or proxy), then run the same command again"
        ) from exc


def fetch(root: Path, table: pd.DataFrame, source: str) -> None:
    """idc-index + s5cmd sync of the series of ``table`` into ``root``."""
    from idc_index import IDCClient
    from idc_index.index import IDCClientInsufficientDiskSpaceError

    root.mkdir(parents=True, exist_ok=True)
    try:
        IDCClient().download_from_selection(
            downloadDir=str(root),
            seriesInstanceUID=list(table["series_uid"]),
            dirTemplate=DIR_TEMPLATE,
            use_s5cmd_sync=True,
            quiet=False,
            show_progress_bar=True,
            source_bucket_location=source,
        )
    except IDCClientInsufficientDiskSpaceError as exc:
        raise OutputError(f"{root}: not enough disk space ({exc})") from exc
    except KeyboardInterrupt:  # Ctrl-C: one line, and what to do
        raise DataError(
            f"{root}: download interrupted; run the same command again to resume"
        ) from None


def verify(root: Path, table: pd.DataFrame) -> pd.DataFrame:
    """The plan recounted after a transfer; a series short of instances is a :class:`DataError`."""
    after = count(root, table.drop(columns=["found_instances", "found_mb", "status"]))
    short = after[after["found_instances"] < after["instances"]]
    if not short.empty:
        free_mb = shutil.disk_usage(root).free / 1e6
        cause = "the disk is full" if free_mb < 100 else "the transfer stopped or failed"
        first = short.iloc[0]
        raise DataError(
            f"{root}: download incomplete ({cause}): {len(short)} of {len(after)} series short "
            f"of instances, e.g. {first.patient_id} {first.series_uid}: "
            f"{first.found_instances} of {first.instances}; run the same command again to resume"
        )
    for row in after[after["status"] != COMPLETE].itertuples():
        log.warning("series %s (%s): %d instances, %.3f MB on disk vs %.3f MB in the manifest",
                    row.series_uid, row.patient_id, row.found_instances, row.found_mb,
                    row.size_mb)  # fmt: skip
    return after


def run_download(
    *,
    lidc_root: str,
    series: str = "results/download/series.csv",
    settings: DownloadSettings,
    dry_run: bool = False,
) -> None:
    """Download LIDC-IDRI's CT series (download.patients; all when empty) from IDC into
    LIDC_ROOT, resumably; write SERIES (one row per series: expected and found instances).

    --dry-run prints the plan and writes SERIES as found now, and fetches nothing.
    """
    if not lidc_root:
        raise InputError(
            "lidc_root is empty: set it to the folder to download into "
            "(--lidc_root DIR, or --config lidc_root=DIR)"
        )
    root = Path(lidc_root)
    if root.exists() and not root.is_dir():
        raise InputError(f"lidc_root {root}: a file, not a folder")
    table = plan(root, settings.patients)
    log.info("%s", describe(table))
    todo = table[table["status"] != COMPLETE]
    for row in todo.itertuples():
        log.info("  %s %s: %d instances, %.1f MB (%s)", row.patient_id, row.series_uid,
                 row.instances, row.size_mb, row.status)  # fmt: skip
    if dry_run or todo.empty:
        write_csv_atomic(series, table)
        log.info("dry run: nothing fetched" if dry_run else f"{root}: nothing left to fetch")
        return
    check_disk(root, float((todo["size_mb"] - todo["found_mb"]).clip(lower=0).sum()))
    check_network(ENDPOINTS[settings.source])
    fetch(root, todo, settings.source)
    after = verify(root, table)
    write_csv_atomic(series, after)
    log.info("%s: %s", root, describe(after))
