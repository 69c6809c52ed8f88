"""The index's completeness check against the IDC manifest (idc-index-data), on real files.

The expected counts come from the real manifest, read here with DuckDB (an independent reader of
the parquet file); the series are the real-geometry sample DICOM files of conftest.py.
"""

from __future__ import annotations

import shutil

import duckdb
import idc_index_data
import pandas as pd
import pydicom
import pytest

from lungseg.core.errors import SettingsError
from lungseg.ingest.index import write_index
from lungseg.ingest.manifest import MANIFEST_COLUMNS, compare, summary_line
from lungseg.ingest.settings import IndexSettings
from lungseg.lidc import idc

PARQUET = idc_index_data.IDC_INDEX_PARQUET_FILEPATH


def manifest_counts(patients) -> dict[str, int]:
    """series uid -> instanceCount of the patients' CT series, read with DuckDB."""
    ids = ", ".join(f"'{p}'" for p in patients)
    rows = duckdb.sql(
        f"SELECT SeriesInstanceUID, instanceCount FROM '{PARQUET}'"
        f" WHERE collection_id = 'lidc_idri' AND Modality = 'CT' AND PatientID IN ({ids})"
    ).fetchall()
    return {uid: int(n) for uid, n in rows}


def index(root, out, patients, check=True):
    settings = IndexSettings.from_config({})
    return write_index(
        root,
        out / "series.csv",
        out / "files.csv",
        workers=1,
        spacing_tolerance=settings.spacing_tolerance,
        exclude_irregular=settings.exclude_irregular,
        check_annotation_db=False,
        manifest_csv=out / "manifest.csv",
        manifest_patients=list(patients) if check else None,
    )


def test_the_manifest_reader_agrees_with_duckdb():
    table = idc.ct_series([])
    assert len(table) == 1018 and table["patient_id"].nunique() == 1010
    everything = duckdb.sql(
        f"SELECT count(*), sum(instanceCount) FROM '{PARQUET}'"
        " WHERE collection_id = 'lidc_idri' AND Modality = 'CT'"
    ).fetchone()
    assert (len(table), int(table["instances"].sum())) == (everything[0], int(everything[1]))
    some = ("LIDC-IDRI-0043", "LIDC-IDRI-0078")
    chosen = idc.ct_series(some)
    assert dict(zip(chosen["series_uid"], chosen["instances"], strict=True)) == manifest_counts(
        some
    )


def test_a_patient_not_in_the_collection_is_named():
    with pytest.raises(SettingsError, match="LIDC-IDRI-9999"):
        idc.ct_series(["LIDC-IDRI-0043", "LIDC-IDRI-9999"])


def test_every_sample_series_matches_the_manifest(sample_lidc, tmp_path):
    series = index(sample_lidc.lidc_root, tmp_path, sample_lidc.patients)
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert set(manifest["status"]) == {"complete"}
    expected = manifest_counts(sample_lidc.patients)
    assert (
        dict(zip(manifest["series_uid"], manifest["expected_instances"], strict=True)) == expected
    )
    assert set(series["status"]) == {"ok"}


def last_slice(folder):
    """The file of the highest slice position (its loss leaves no gap in the positions)."""

    def height(path):
        return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])

    return max(sorted(folder.rglob("*.dcm")), key=height)


def test_a_lost_last_slice_and_a_missing_patient_are_named(sample_lidc, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(sample_lidc.lidc_root, raw)
    short, gone = sample_lidc.patients
    last_slice(raw / short).unlink()
    shutil.rmtree(raw / gone)
    series = index(raw, tmp_path, sample_lidc.patients)
    manifest = pd.read_csv(tmp_path / "manifest.csv").set_index("patient_id")
    counts = manifest_counts([short])
    ((uid, n),) = counts.items()
    assert manifest.loc[short, "status"] == "incomplete"
    assert manifest.loc[short, "reason"] == f"{n - 1} of {n} instances of the IDC manifest"
    assert manifest.loc[gone, "status"] == "absent"
    assert manifest.loc[gone, "series_uid"] == next(iter(manifest_counts([gone])))
    row = series.set_index("series_uid").loc[uid]
    # the positions have no gap: only the manifest finds the loss
    assert (
        row["status"] == "excluded"
        and row["reason"] == f"{n - 1} of {n} instances of the IDC manifest"
    )
    line = summary_line(pd.read_csv(tmp_path / "manifest.csv"))
    assert line == ("IDC manifest: 0 of 2 expected series complete, 1 incomplete, 1 absent, "
                    "0 extra, 0 not in manifest")  # fmt: skip


def test_the_check_can_be_turned_off(sample_lidc, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(sample_lidc.lidc_root / sample_lidc.patients[0], raw / sample_lidc.patients[0])
    last_slice(raw).unlink()
    series = index(raw, tmp_path, sample_lidc.patients, check=False)
    assert pd.read_csv(tmp_path / "manifest.csv").empty
    assert list(pd.read_csv(tmp_path / "manifest.csv").columns) == MANIFEST_COLUMNS
    assert set(series["status"]) == {"ok"}


@pytest.mark.parametrize(
    ("found", "expected_status", "reason"),
    [
        (113, "complete", ""),
        (112, "incomplete", "112 of 113 instances of the IDC manifest"),
        (114, "extra", "114 files for 113 instances of the IDC manifest"),
    ],
)
def test_found_counts_against_the_manifest(found, expected_status, reason):
    """LIDC-IDRI-0043 has one CT series of 113 instances in the manifest."""
    manifest = idc.ct_series(["LIDC-IDRI-0043"])
    uid = manifest["series_uid"][0]
    series = pd.DataFrame(
        {
            "patient_id": ["LIDC-IDRI-0043", "OTHER"],
            "series_uid": [uid, "1.2.3"],
            "n_files": [found, 5],
        }
    )
    table = compare(series, idc.ct_series([]), ["LIDC-IDRI-0043"]).set_index("series_uid")
    assert (table.loc[uid, "status"], table.loc[uid, "reason"]) == (expected_status, reason)
    assert table.loc["1.2.3", "status"] == "not_in_manifest"
    assert pd.isna(table.loc["1.2.3", "expected_instances"])
    assert len(table) == 2  # no other patient's series expected
