"""``lungseg download``: the plan from the real IDC manifest, the checks before a transfer, the
recount after one. Nothing is fetched: these tests never reach a bucket (the network test uses a
host of the reserved ``.invalid`` domain, which never resolves)."""

from __future__ import annotations

import socket

import duckdb
import idc_index_data
import pandas as pd
import pytest

from lungseg import cli
from lungseg.core.errors import DataError, InputError, OutputError
from lungseg.download import fetch
from lungseg.download.fetch import SERIES_COLUMNS, check_disk, check_network, plan, verify

PATIENTS = ("LIDC-IDRI-0043", "LIDC-IDRI-0078")


def manifest_rows(patients) -> pd.DataFrame:
    """The patients' CT series as DuckDB reads the manifest (independent of lungseg's reader)."""
    ids = ", ".join(f"'{p}'" for p in patients)
    return duckdb.sql(
        "SELECT PatientID AS patient_id, SeriesInstanceUID AS series_uid, instanceCount AS "
        f"instances, series_size_MB AS size_mb FROM '{idc_index_data.IDC_INDEX_PARQUET_FILEPATH}'"
        f" WHERE collection_id = 'lidc_idri' AND Modality = 'CT' AND PatientID IN ({ids})"
        " ORDER BY patient_id"
    ).df()


def run_cli(*args) -> int:
    return cli.main(["download", *args])


def test_dry_run_lists_the_manifest_series_and_fetches_nothing(tmp_path, capsys):
    root, table = tmp_path / "lidc", tmp_path / "series.csv"
    patients = "[" + ", ".join(PATIENTS) + "]"
    code = run_cli("--lidc_root", str(root), "--series", str(table), "--patients", patients,
                   "--dry-run")  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().err
    written = pd.read_csv(table)
    assert list(written.columns) == SERIES_COLUMNS
    want = manifest_rows(PATIENTS)
    assert written[["patient_id", "series_uid", "instances"]].equals(
        want[["patient_id", "series_uid", "instances"]].astype({"instances": int})
    )
    assert list(written["instances"]) == [113, 87]  # the sample's slice counts, too
    assert set(written["status"]) == {"missing"} and not root.exists()
    total_gb = want["size_mb"].sum() / 1e3
    assert f"2 CT series of 2 patients, {total_gb:.2f} GB" in printed
    assert "to fetch: 2 series" in printed and "dry run: nothing fetched" in printed
    for uid in want["series_uid"]:
        assert uid in printed


def test_no_network_is_one_clear_line_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(fetch.ENDPOINTS, "aws", "https://lungseg-test.invalid")
    root = tmp_path / "lidc"
    code = run_cli("--lidc_root", str(root), "--series", str(tmp_path / "s.csv"),
                   "--patients", "[LIDC-IDRI-0043]")  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "no network: cannot reach lungseg-test.invalid:443" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not root.exists() and not (tmp_path / "s.csv").exists()


def test_a_closed_port_is_no_network():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(InputError, match=f"cannot reach 127.0.0.1:{port}"):
        check_network(f"http://127.0.0.1:{port}", timeout=2)


def test_too_little_disk_is_named_before_any_transfer(tmp_path):
    with pytest.raises(OutputError, match=rf"{tmp_path}/new: not enough disk space: .* GB free"):
        check_disk(tmp_path / "new", need_mb=1e12)
    check_disk(tmp_path / "new", need_mb=1.0)


def lay_out(root, row, n_files, total_bytes) -> None:
    """``n_files`` .dcm files of ``total_bytes`` in the series' download folder."""
    folder = fetch.series_folder(root, row)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [total_bytes // n_files] * n_files
    sizes[-1] += total_bytes - sum(sizes)
    for i, size in enumerate(sizes):
        (folder / f"{i:04d}.dcm").write_bytes(b"\0" * size)


def test_a_partial_download_is_planned_again_and_named_after_a_failed_transfer(tmp_path):
    root = tmp_path / "lidc"
    before = plan(root, PATIENTS)
    full, part = before.iloc[0], before.iloc[1]
    lay_out(root, full, int(full.instances), round(full.size_mb * 1e6))
    lay_out(root, part, 40, 40_000)
    after = plan(root, PATIENTS).set_index("patient_id")
    assert after.loc[full.patient_id, "status"] == "complete"
    assert after.loc[part.patient_id, "status"] == "partial"
    assert after.loc[part.patient_id, "found_instances"] == 40
    assert "1 complete on disk; to fetch: 1 series" in fetch.describe(plan(root, PATIENTS))
    with pytest.raises(DataError, match=rf"{part.series_uid}: 40 of {part.instances}.*resume"):
        verify(root, before)


def test_all_instances_with_other_sizes_pass_the_count_but_are_fetched_again(tmp_path):
    """s5cmd's sync compares sizes: a series whose files differ in size is synced again."""
    root = tmp_path / "lidc"
    row = plan(root, PATIENTS[:1]).iloc[0]
    lay_out(root, row, int(row.instances), 1000)
    assert plan(root, PATIENTS[:1])["status"].tolist() == ["partial"]
    assert verify(root, plan(root, PATIENTS[:1]))["found_instances"].tolist() == [row.instances]


def test_an_empty_lidc_root_is_refused():
    assert run_cli("--lidc_root", "", "--dry-run") == 1
