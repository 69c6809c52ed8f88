"""Bad input (issue 16): one bad file costs its series only, nothing vanishes silently, every
message names the file and what to do.

Each case runs on real files made for the test (truncated slice, linked and looping folders, an
unreadable folder, a slice with short pixel data), checks the promised behaviour, that the raw
files are unchanged and that no earlier result was deleted. Corrupt results and a full disk:
test_faults_results.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from dicom_writer import rewrite, short_pixel_data, write_series
from fault_helpers import truncate as _truncate
from ingest_helpers import index_keywords

from lungseg.core.errors import InputError
from lungseg.ingest.convert import run_convert, series_paths
from lungseg.ingest.index import write_index
from lungseg.ingest.nodules import run_nodules
from lungseg.ingest.settings import CohortCriteria, ConvertSettings
from lungseg.io.hdf5 import read_volume

SHAPE = (16, 16)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def patient(root: Path, number: int, zs=(0.0, 2.5, 5.0, 7.5)) -> tuple[str, list[Path]]:
    """A patient folder with one small CT series; returns its series uid and files."""
    pid = f"LIDC-IDRI-98{number:02d}"
    uid = f"1.2.826.0.1.3680043.8.498.9{number:02d}"
    folder = root / pid / "01-01-2000-NA-1" / f"3000.{number}-NA"
    return uid, write_series(folder, zs=zs, series_uid=uid, patient_id=pid, shape=SHAPE).paths


def index(root: Path, out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    write_index(
        root, out / "series.csv", out / "files.csv", out / "unreadable.csv",
        check_annotation_db=False, **index_keywords(),
    )  # fmt: skip
    read = lambda name: pd.read_csv(out / name, dtype=str, keep_default_na=False)  # noqa: E731
    return read("series.csv"), read("files.csv"), read("unreadable.csv")


# --- the DICOM tree -----------------------------------------------------------------------------


def _truncated_slice(raw: Path, outside: Path) -> dict:
    uid, files = patient(raw, 1)
    patient(raw, 2)
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 300])  # half-written: 212 of 512 pixel bytes left
    return {"skipped": {uid: f"{files[2]}: pixel data truncated (212 of 512 bytes"}, "ok": 1}


def _linked_patient_folder(raw: Path, outside: Path) -> dict:
    patient(raw, 1)
    patient(outside, 2)  # data on another disk, linked into the download
    (raw / "LIDC-IDRI-9802").symlink_to(outside / "LIDC-IDRI-9802", target_is_directory=True)
    return {"skipped": {}, "ok": 2}


def _link_loop(raw: Path, outside: Path) -> dict:
    patient(raw, 1)
    patient(outside, 2)
    (raw / "LIDC-IDRI-9802").symlink_to(outside / "LIDC-IDRI-9802", target_is_directory=True)
    # a link back up the tree (a loop) and a second link to a folder already walked
    (outside / "LIDC-IDRI-9802" / "loop").symlink_to(raw, target_is_directory=True)
    (raw / "again").symlink_to(raw / "LIDC-IDRI-9801", target_is_directory=True)
    return {"skipped": {}, "ok": 2, "log": "walked already"}


TREE_CASES = {
    "truncated slice": _truncated_slice,
    "linked patient folder": _linked_patient_folder,
    "link loop and a folder linked twice": _link_loop,
}


@pytest.mark.parametrize("make", TREE_CASES.values(), ids=TREE_CASES.keys())
def test_index_over_damaged_or_linked_trees(tmp_path, caplog, make):
    raw, outside, out = tmp_path / "raw", tmp_path / "other_disk", tmp_path / "out"
    expected = make(raw, outside)
    hashes = tree_hashes(raw), tree_hashes(outside)
    with caplog.at_level(logging.INFO):
        series, files, unreadable = index(raw, out)
    assert (tree_hashes(raw), tree_hashes(outside)) == hashes  # raw files unchanged
    assert (series["status"] == "ok").sum() == expected["ok"]
    for uid, reason in expected["skipped"].items():
        row = series.set_index("series_uid").loc[uid]
        assert row["status"] == "skipped" and row["reason"].startswith(reason), row["reason"]
    assert not files["path"].duplicated().any()  # each real file once, loops or not
    assert unreadable.empty and list(unreadable.columns) == ["path", "error"]
    assert expected.get("log", "indexed") in caplog.text


def _unreadable_index(raw: Path, out: Path) -> subprocess.CompletedProcess:
    """The index with root's permission override dropped (the tests run as root)."""
    code = (
        "import sys; from lungseg.ingest.index import write_index; from lungseg.core.log import "
        "setup_logging; setup_logging(); write_index(sys.argv[1], *sys.argv[2:5], "
        f"check_annotation_db=False, **{index_keywords()!r})"
    )
    argv = [sys.executable, "-c", code, str(raw), *(str(out / n) for n in
            ("series.csv", "files.csv", "unreadable.csv"))]  # fmt: skip
    if os.geteuid() == 0:
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


needs_setpriv = pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None,
    reason="running as root without setpriv: cannot drop the permission override",
)


@needs_setpriv
@pytest.mark.parametrize("what", ["series folder", "root"])
def test_unreadable_folders_are_reported_not_lost(tmp_path, what):
    raw, out = tmp_path / "raw", tmp_path / "out"
    patient(raw, 1)
    uid, files = patient(raw, 2)
    locked = files[0].parent if what == "series folder" else raw
    hashes = tree_hashes(raw)
    out.mkdir()
    locked.chmod(0)
    try:
        result = _unreadable_index(raw, out)
    finally:
        locked.chmod(0o755)
    assert tree_hashes(raw) == hashes
    if what == "root":
        assert result.returncode != 0
        assert f"cannot read the DICOM folder {raw}: Permission denied" in result.stderr
        assert not (out / "series.csv").exists()
        return
    assert result.returncode == 0, result.stderr
    assert f"cannot read folder {locked}: Permission denied" in result.stderr
    unreadable = pd.read_csv(out / "unreadable.csv")
    assert unreadable.to_dict("records") == [{"path": str(locked), "error": "Permission denied"}]
    series = pd.read_csv(out / "series.csv", dtype=str)
    assert uid not in set(series["series_uid"]) and len(series) == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("x") and p, "is a file, not a folder"),
        (lambda p: p, "DICOM folder not found"),
    ],
    ids=["a file given as lidc_root", "a missing lidc_root"],
)
def test_bad_root_is_a_clear_error(tmp_path, make, message):
    root = make(tmp_path / "LIDC-IDRI")
    with pytest.raises(InputError, match=message):
        index(root, tmp_path / "out")
    assert not (tmp_path / "out" / "series.csv").exists()


# --- conversion: a bad series costs that series only --------------------------------------------


def _short_pixel_data(path: Path) -> None:
    """A consistent file whose pixel data are shorter than its matrix (the index cannot tell)."""
    rewrite(path, short_pixel_data(10))


def test_convert_takes_its_files_from_the_workflow_without_reading_the_index(tmp_path):
    """The rule hands each job its series' files (looked up once for all jobs): the job must
    not read files.csv, which lists every series (N^2 over N scans)."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    patient(raw, 1)
    series, _, _ = index(raw, out)
    uid, pid = series.loc[0, "series_uid"], series.loc[0, "patient_id"]
    paths = series_paths(out / "files.csv", uid)
    (out / "files.csv").unlink()
    stem = out / "volumes" / pid / uid
    job = {
        "files": str(out / "files.csv"), "series_uid": uid, "patient_id": pid,
        "volume": f"{stem}.h5", "nodules": f"{stem}.nodules.csv",
        "status": f"{stem}.status.csv", "settings": ConvertSettings.from_config({}),
    }  # fmt: skip
    run_convert(**job, paths=paths)
    image, _, _ = read_volume(f"{stem}.h5")
    assert image.shape == (4, *SHAPE)
    with pytest.raises(ValueError, match=rf"files\.csv: no files listed for series {uid}"):
        run_convert(**job, paths=[])


def test_a_failing_series_is_recorded_and_the_others_go_on(tmp_path, caplog):
    raw, out = tmp_path / "raw", tmp_path / "out"
    good, _ = patient(raw, 1)
    bad, bad_files = patient(raw, 2)
    _short_pixel_data(bad_files[1])
    series, _, _ = index(raw, out)
    assert set(series["status"]) == {"ok"}  # nothing the headers show
    hashes = tree_hashes(raw)
    settings = ConvertSettings.from_config({})
    made = {}
    for uid, pid in zip(series["series_uid"], series["patient_id"], strict=True):
        stem = out / "volumes" / pid / uid
        made[uid] = {k: f"{stem}.{k}" for k in ("h5", "nodules.csv", "status.csv")}
        run_convert(
            files=str(out / "files.csv"), series_uid=uid, patient_id=pid,
            volume=made[uid]["h5"], nodules=made[uid]["nodules.csv"],
            status=made[uid]["status.csv"], settings=settings,
        )  # fmt: skip
    assert tree_hashes(raw) == hashes
    image, _, _ = read_volume(made[good]["h5"])
    assert image.shape == (4, *SHAPE)
    with pytest.raises(InputError, match=rf"conversion of series {bad} failed .*1-002\.dcm"):
        read_volume(made[bad]["h5"])
    with caplog.at_level(logging.INFO):
        run_nodules(
            series=str(out / "series.csv"),
            tables=[m["nodules.csv"] for m in made.values()],
            statuses=[m["status.csv"] for m in made.values()],
            nodules=str(out / "nodules.csv"),
            conversion=str(out / "conversion.csv"),
            criteria=CohortCriteria.from_config({}),
        )
    table = pd.read_csv(out / "conversion.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == [
        "patient_id",
        "series_uid",
        "index_status",
        "conversion",
        "reason",
    ]
    outcome = table.set_index("series_uid")
    assert outcome.at[good, "conversion"] == "converted"
    assert outcome.at[bad, "conversion"] == "failed"
    assert "1-002.dcm: pixel data of 10 bytes, expected 512" in outcome.at[bad, "reason"]
    assert "1 series converted, 1 failed, 0 skipped" in caplog.text
    assert f"series {bad} (LIDC-IDRI-9802) failed" in caplog.text


# --- the whole workflow -------------------------------------------------------------------------

#: Two more small sample patients, damaged: one truncated slice (found by the index) and one
#: slice whose pixel data are shorter than its matrix (found by its convert job).
TRUNCATED_PATIENT, SHORT_PIXELS_PATIENT = "LIDC-IDRI-0983", "LIDC-IDRI-0611"


@pytest.mark.slow
def test_workflow_completes_for_the_good_series_and_names_the_bad_files(sample_lidc, tmp_path):
    from workflow_helpers import copy_workflow, dry_run_jobs, snakemake, tiny_config

    from lungseg.sample.generate import write_patient

    raw = tmp_path / "LIDC-IDRI"
    for pid in sample_lidc.patients:
        shutil.copytree(sample_lidc.lidc_root / pid, raw / pid)
    for pid in (TRUNCATED_PATIENT, SHORT_PIXELS_PATIENT):
        write_patient(tmp_path, pid, sample_lidc.seed)
    truncated = sorted((raw / TRUNCATED_PATIENT).rglob("1-050.dcm"))[0]
    _truncate(truncated, 0.6)
    short = sorted((raw / SHORT_PIXELS_PATIENT).rglob("1-020.dcm"))[0]
    _short_pixel_data(short)
    hashes = tree_hashes(raw)

    work = copy_workflow(tmp_path / "work", tiny_config(raw))
    snakemake(work, "--profile", "profiles/default", "--cores", "2", timeout=600)
    assert tree_hashes(raw) == hashes

    series = pd.read_csv(work / "results/index/series.csv", dtype=str, keep_default_na=False)
    by_patient = series.set_index("patient_id")
    assert by_patient.at[TRUNCATED_PATIENT, "status"] == "skipped"
    assert by_patient.at[TRUNCATED_PATIENT, "reason"].startswith(f"{truncated}: pixel data trunc")
    conversion = pd.read_csv(work / "results/index/conversion.csv", dtype=str).set_index(
        "patient_id"
    )
    assert conversion.at[SHORT_PIXELS_PATIENT, "conversion"] == "failed"
    assert str(short) in conversion.at[SHORT_PIXELS_PATIENT, "reason"]
    assert conversion.at[TRUNCATED_PATIENT, "conversion"] == "skipped"
    assert set(conversion.loc[list(sample_lidc.patients), "conversion"]) == {"converted"}
    summary = (work / "logs/nodules.log").read_text()
    assert str(truncated) in summary and str(short) in summary
    assert "2 series converted, 1 failed, 1 skipped by the index" in summary

    crops = pd.read_csv(work / "results/crops/crops.csv")
    assert set(crops["patient_id"]) == set(sample_lidc.patients)
    assert (work / "results/evaluation.csv").exists()

    # A volume deleted afterwards is converted again by asking for any stage that reads it, and
    # the crops are rebuilt from it.
    pid = sample_lidc.patients[0]
    volume = next((work / "results/volumes" / pid).glob("*.h5"))
    volume.unlink()
    for target in ("crops_all", "train_all", "all"):
        jobs = dry_run_jobs(work, target)
        assert (jobs.get("convert"), jobs.get("crops")) == (1, 1), (target, jobs)
