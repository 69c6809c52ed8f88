"""Ingestion of quirky series: index statuses, conversion, nodule tables, raw data untouched,
Snakemake fan-out.

Quirky series are real DICOM files written for the test (tests/dicom_writer.py); the LIDC-shaped
sample data (annotated series) are in test_ingest_sample_lidc.py.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicom_writer import write_series, write_slice
from ingest_helpers import convert_keywords, criteria, index_keywords
from workflow_helpers import copy_workflow

from lungseg.core.errors import InputError
from lungseg.ingest.convert import convert_series, series_paths
from lungseg.ingest.index import write_index
from lungseg.ingest.nodules import merge_nodule_tables
from lungseg.ingest.tables import NODULE_COLUMNS
from lungseg.io.hdf5 import read_volume

#: series uid -> (how it is written, expected status, expected reason fragment)
QUIRKS = {
    "1.2.826.0.1.3680043.8.498.101": ("good", "ok", "not in the annotation database"),
    "1.2.826.0.1.3680043.8.498.102": ("cr", "skipped", "modality CR, not CT"),
    "1.2.826.0.1.3680043.8.498.103": ("gap", "excluded", "missing slices"),
    "1.2.826.0.1.3680043.8.498.104": ("mixed", "skipped", "mixed matrix sizes"),
    "1.2.826.0.1.3680043.8.498.105": ("dup", "ok", "duplicate positions"),
    "1.2.826.0.1.3680043.8.498.106": ("unsigned", "ok", ""),
}


def write_quirky_tree(root: Path) -> None:
    """One folder per kind of problem, in a mix of NBIA and UID-style folder names."""
    for i, (uid, (kind, _, _)) in enumerate(QUIRKS.items()):
        patient = f"LIDC-IDRI-90{i:02d}"
        folder = root / patient / f"01-01-2000-NA-{i}" / (uid if i % 2 else f"3000.{i}-NA")
        common = {"series_uid": uid, "patient_id": patient, "shape": (16, 16)}
        if kind == "cr":
            write_series(folder, zs=[0.0], **{**common, "modality": "CR"})
        elif kind == "gap":
            write_series(folder, zs=[0, 2.5, 5, 10, 12.5], **common)
        elif kind == "mixed":
            write_series(folder, zs=[0, 2.5, 5], **common)
            write_slice(folder / "odd.dcm", z=7.5, **{**common, "shape": (16, 12)})
        elif kind == "dup":
            write_series(folder, zs=[0, 2.5, 5, 7.5], **common)
            write_slice(folder / "dup.dcm", z=2.5, instance=50, **common)
            write_slice(
                folder / "scout.dcm",
                z=0.0,
                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                **common,
            )
        elif kind == "unsigned":
            write_series(folder, zs=[0, 1.25, 2.5, 3.75], dtype=np.uint16, **common)
        else:
            write_series(folder, zs=[-5, -2.5, 0, 2.5, 5], **common)
    (root / "LIDC-IDRI-9000" / "readme.txt").write_text("not DICOM")


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
    """A raw folder of quirky series and its index."""
    base = tmp_path_factory.mktemp("quirky")
    raw = base / "raw"
    write_quirky_tree(raw)
    hashes = tree_hashes(raw)
    series = write_index(raw, base / "series.csv", base / "files.csv", **index_keywords())
    return {"raw": raw, "base": base, "series": series, "hashes": hashes}


@pytest.mark.parametrize(("uid", "expected"), QUIRKS.items())
def test_index_gives_each_series_a_status_and_reason(quirky, uid, expected):
    _, status, reason = expected
    row = quirky["series"].set_index("series_uid").loc[uid]
    assert row["status"] == status
    assert reason in row["reason"]
    assert not row["annotated"]


def test_index_lists_files_and_names_skipped_ones(quirky, caplog):
    files = pd.read_csv(quirky["base"] / "files.csv", dtype=str)
    assert len(files) == len(list(quirky["raw"].rglob("*.dcm")))
    assert set(files["series_uid"]) == set(QUIRKS)
    with caplog.at_level(logging.INFO):
        write_index(
            quirky["raw"], quirky["base"] / "s2.csv", quirky["base"] / "f2.csv", **index_keywords()
        )
    assert "readme.txt" in caplog.text
    assert "1 non-DICOM/unreadable files skipped" in caplog.text


def test_empty_folder_fails_with_clear_error(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(InputError, match="no DICOM series found"):
        write_index(tmp_path / "raw", tmp_path / "s.csv", tmp_path / "f.csv", **index_keywords())


@pytest.mark.parametrize(
    ("uid", "n_slices", "first_hu"),
    [
        # signed storage, intercept -1024: stored 1000 + z at voxel 0
        ("1.2.826.0.1.3680043.8.498.101", 5, 1000 - 5 - 1024),
        # unsigned storage: same values, no wrap-around
        ("1.2.826.0.1.3680043.8.498.106", 4, 1000 - 1024),
        ("1.2.826.0.1.3680043.8.498.105", 4, 1000 - 1024),
        ("1.2.826.0.1.3680043.8.498.103", 5, 1000 - 1024),
    ],
)
def test_convert_writes_volume_and_empty_nodule_table(quirky, uid, n_slices, first_hu):
    out = quirky["base"] / "volumes"
    plan = convert_series(
        series_paths(quirky["base"] / "files.csv", uid),
        out / f"{uid}.h5",
        out / f"{uid}.csv",
        **convert_keywords(),
    )
    image, mask, attrs = read_volume(out / f"{uid}.h5")
    assert image.shape == (n_slices, 16, 16) and image.dtype == np.int16
    assert image[0, 0, 0] == first_hu
    assert np.all(np.diff(image[:, 0, 0].astype(int)) > 0)  # z ascending
    assert not mask.any()
    assert attrs["series_uid"] == uid and attrs["patient_id"] == plan.patient_id
    assert attrs["spacing"][1:] == (0.7, 0.7)
    assert attrs["n_source_files"] == plan.n_files
    assert {"pydicom", "h5py", "lungseg"} <= set(attrs["software_versions"])
    table = pd.read_csv(out / f"{uid}.csv")
    assert table.empty and list(table.columns) == NODULE_COLUMNS


def test_convert_refuses_a_skipped_series(quirky):
    uid = "1.2.826.0.1.3680043.8.498.104"
    paths = series_paths(quirky["base"] / "files.csv", uid)
    with pytest.raises(ValueError, match="mixed matrix sizes"):
        convert_series(
            paths, quirky["base"] / "x.h5", quirky["base"] / "x.csv", **convert_keywords()
        )
    assert not (quirky["base"] / "x.h5").exists()


def test_raw_files_are_never_modified(quirky):
    out = quirky["base"] / "again"
    write_index(quirky["raw"], out / "series.csv", out / "files.csv", **index_keywords())
    for uid in ("1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.105"):
        paths = series_paths(out / "files.csv", uid)
        convert_series(paths, out / f"{uid}.h5", out / f"{uid}.csv", **convert_keywords())
    assert tree_hashes(quirky["raw"]) == quirky["hashes"]


def _nodule_table(path: Path, series_uid: str, rows: list[tuple[int, int, float]]) -> Path:
    frame = pd.DataFrame(
        [
            {
                "nodule_id": f"P_{series_uid[-8:]}_{label:02d}",
                "patient_id": "P",
                "series_uid": series_uid,
                "label": label,
                "n_readers": readers,
                "diameter_mm": diameter,
            }
            for label, readers, diameter in rows
        ]
    ).reindex(columns=NODULE_COLUMNS)
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        # LUNA16: >= 3 readers, >= 3 mm, thin ok series only
        (criteria(), [False, True, False, False, False, False]),
        (criteria(min_readers=1), [True, True, False, False, False, False]),
        (
            criteria(min_diameter_mm=2.0),
            [False, True, True, False, False, False],
        ),
        (
            criteria(max_slice_thickness=3.0),
            [False, True, False, True, False, False],
        ),
        # excluded series never count: the index applies exclude_irregular itself
        (
            criteria(exclude_irregular=False),
            [False, True, False, False, False, False],
        ),
        (
            criteria(min_readers=4, max_slice_thickness=3.0),
            [False, True, False, True, False, False],
        ),
    ],
)
def test_merged_nodule_table_marks_the_cohort(tmp_path, criteria, expected):
    series = pd.DataFrame(
        {
            "series_uid": ["1.1.11111111", "1.1.22222222", "1.1.33333333"],
            "status": ["ok", "ok", "excluded"],
            "slice_thickness": [2.5, 3.0, 1.0],
        }
    )
    series.to_csv(tmp_path / "series.csv", index=False)
    tables = [
        _nodule_table(tmp_path / "a.csv", "1.1.11111111", [(1, 2, 8.0), (2, 4, 3.0), (3, 3, 2.9)]),
        _nodule_table(tmp_path / "b.csv", "1.1.22222222", [(1, 4, 10.0)]),
        _nodule_table(tmp_path / "c.csv", "1.1.33333333", [(1, 4, 10.0)]),
        _nodule_table(tmp_path / "d.csv", "1.1.44444444", [(1, 4, 10.0)]),  # not indexed
    ]
    merged = merge_nodule_tables(tables, tmp_path / "series.csv", criteria)
    assert list(merged["in_cohort"]) == expected
    assert list(merged["series_status"]) == ["ok"] * 4 + ["excluded", "unknown"]


@pytest.mark.slow
def test_snakemake_fans_out_over_the_index_and_survives_bad_series(tmp_path):
    """Real Snakemake: checkpoint index, one convert job per convertible series, nodules.csv."""
    raw = tmp_path / "raw"
    write_quirky_tree(raw)
    work = copy_workflow(tmp_path / "work")
    command = [
        sys.executable, "-m", "snakemake", "volumes", "--cores", "2",
        "--workflow-profile", "none", "--config", f"lidc_root={raw}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    series = pd.read_csv(work / "results/index/series.csv", dtype=str, keep_default_na=False)
    for row in series.itertuples():
        volume = work / "results/volumes" / row.patient_id / f"{row.series_uid}.h5"
        assert volume.exists() == (row.status in ("ok", "excluded")), row
    nodules = pd.read_csv(work / "results/nodules.csv")
    assert "in_cohort" in nodules.columns and "series_status" in nodules.columns
    assert (work / "benchmarks/index.tsv").exists()
    # not LIDC-IDRI: every series found is named, the whole collection (download.patients
    # empty) is expected and absent, and the check excludes nothing
    manifest = pd.read_csv(work / "results/index/manifest.csv")
    counts = manifest["status"].value_counts().to_dict()
    assert counts == {"absent": 1018, "not_in_manifest": len(series)}, counts
    assert (
        "IDC manifest: 0 of 1018 expected series complete" in (work / "logs/index.log").read_text()
    )
