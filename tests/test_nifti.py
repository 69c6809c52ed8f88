"""NIfTI output: real DICOM series in, the file read back by nibabel and by SimpleITK.

Every check compares with positions computed from the DICOM files alone
(:func:`predict_helpers.voxel_lps`), so a missing LPS -> RAS flip, a transposed axis or a
reversed slice order fails.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from predict_helpers import ORIENTATIONS, PROBES, lps_to_ras, probe_series, voxel_lps

from lungseg.core.errors import OutputError
from lungseg.ingest.pixels import read_series
from lungseg.predict.nifti import affine_ras, write_nifti


@pytest.fixture(params=ORIENTATIONS, ids=lambda o: o.name)
def written(request, tmp_path):
    series = probe_series(tmp_path / "dicom", request.param)
    plan, volume = read_series(series.paths)
    out = write_nifti(tmp_path / "ct.nii.gz", volume, plan.spacing, plan.origin, plan.direction)
    return series, plan, volume, out


def test_nibabel_places_each_voxel_at_its_dicom_position(written):
    series, _plan, _volume, out = written
    image = nib.load(out)
    data = np.asanyarray(image.dataobj)
    assert image.get_data_dtype() == np.int16
    assert data.shape == (10, 12, 6)  # (x, y, z): columns, rows, slices
    assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
    np.testing.assert_allclose(image.get_qform(), image.affine, atol=1e-5)
    np.testing.assert_allclose(image.get_sform(), image.affine, atol=1e-5)
    inverse = np.linalg.inv(image.affine)
    for file_index, row, column in PROBES:
        path = series.paths[file_index]
        ras = lps_to_ras(voxel_lps(path, row, column))
        ijk = (inverse @ [*ras, 1.0])[:3]
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-4)
        index = tuple(int(v) for v in np.round(ijk))
        np.testing.assert_allclose((image.affine @ [*index, 1.0])[:3], ras, atol=1e-4)
        assert index[:2] == (column, row)  # i = column, j = row, whatever the orientation
        assert data[index] == series.hu[path][row, column]


def test_simpleitk_reads_the_same_positions_and_values(written):
    series, _plan, _volume, out = written
    image = sitk.ReadImage(str(out))
    assert image.GetPixelID() == sitk.sitkInt16
    assert image.GetSize() == (10, 12, 6)
    for file_index, row, column in PROBES:
        path = series.paths[file_index]
        lps = voxel_lps(path, row, column)
        index = image.TransformPhysicalPointToIndex(tuple(lps))
        assert index[:2] == (column, row)
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(index), lps, atol=1e-3)
        assert image.GetPixel(index) == series.hu[path][row, column]


def test_slices_run_along_the_volume_order(written):
    """NIfTI slice k is the volume's z index k, i.e. the file of ``plan.slices[k]``."""
    series, plan, _volume, out = written
    data = np.asanyarray(nib.load(out).dataobj)
    for k, header in enumerate(plan.slices):
        np.testing.assert_array_equal(data[:, :, k].T, series.hu[Path(header.path)])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["uint8", "uint16"])
def test_label_map_keeps_its_type(tmp_path, dtype):
    labels = np.zeros((4, 5, 6), dtype=dtype)
    labels[1, 2, 3], labels[2, 0, 5] = 1, 2
    out = write_nifti(tmp_path / "labels.nii.gz", labels, (2.0, 0.5, 0.7), (0, 0, 0), np.eye(3))
    image = nib.load(out)
    assert image.get_data_dtype() == dtype
    data = np.asanyarray(image.dataobj)
    assert data.dtype == dtype and data[3, 2, 1] == 1 and data[5, 0, 2] == 2
    assert sitk.ReadImage(str(out)).GetPixel(5, 0, 2) == 2


def test_affine_of_an_axial_series_by_hand():
    """Identity direction: RAS = (-(x0 + i dx), -(y0 + j dy), z0 + k dz)."""
    affine = affine_ras((2.5, 0.7, 0.9), (-80.0, 33.25, -120.5), np.eye(3).ravel())
    expected = np.array(
        [[-0.9, 0, 0, 120.5], [0, -0.7, 0, -33.25], [0, 0, 2.5, -80.0], [0, 0, 0, 1]]
    )
    np.testing.assert_allclose(affine, expected)


def test_output_is_atomic_and_named_nii_gz(tmp_path):
    volume = np.zeros((3, 4, 5), dtype=np.int16)
    with pytest.raises(OutputError, match="ct.nii"):
        write_nifti(tmp_path / "ct.nii", volume, (1, 1, 1), (0, 0, 0), np.eye(3).ravel())
    write_nifti(tmp_path / "ct.nii.gz", volume, (1, 1, 1), (0, 0, 0), np.eye(3).ravel())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]
    first = (tmp_path / "ct.nii.gz").read_bytes()
    write_nifti(tmp_path / "ct.nii.gz", volume, (1, 1, 1), (0, 0, 0), np.eye(3).ravel())
    assert (tmp_path / "ct.nii.gz").read_bytes() == first  # no gzip timestamp
