"""DICOM reading and quirks, on real DICOM files written for each test (tests/dicom_writer.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_writer import rewrite, short_pixel_data, write_series, write_slice
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from lungseg.ingest.dicom import DicomFileError, read_header, scan_folder
from lungseg.ingest.pixels import SPACING_TOLERANCE, _native_pixels, read_hu, read_series
from lungseg.ingest.series import group_by_series, plan_series
from lungseg.ingest.status import STATUS_EXCLUDED, STATUS_OK, STATUS_SKIPPED


def _plan(folder: Path, tolerance: float = SPACING_TOLERANCE):
    headers, problems, _ = scan_folder(folder)
    groups = group_by_series(headers)
    assert len(groups) == 1, groups.keys()
    return plan_series(next(iter(groups.values())), tolerance), problems


@pytest.mark.parametrize(
    ("signed", "stored", "slope", "intercept", "expected"),
    [
        # signed storage, HU = stored + intercept
        (True, [-2000, -1, 0, 1200], 1.0, -1024.0, [-3024, -1025, -1024, 176]),
        # unsigned storage: values above 32767 must not wrap to negative
        (False, [0, 1024, 40000, 65535], 1.0, -1024.0, [-1024, 0, 32767, 32767]),
        (False, [0, 1000, 2024, 3000], 1.0, -1024.0, [-1024, -24, 1000, 1976]),
        # non-unit slope, fractional intercept: rounded to the nearest HU
        (True, [-100, 0, 100, 1001], 0.5, -1000.5, [-1050, -1000, -950, -500]),
        # signed storage near the int16 limits: the shift would overflow, so HU clip
        (True, [-32768, 0, 100, 32767], 1.0, -1024.0, [-32768, -1024, -924, 31743]),
        # signed data with zero intercept (some scanners store HU directly)
        (True, [-1024, -500, 0, 3000], 1.0, 0.0, [-1024, -500, 0, 3000]),
    ],
)
def test_hu_for_signed_and_unsigned_storage(tmp_path, signed, stored, slope, intercept, expected):
    dtype = np.int16 if signed else np.uint16
    pixels = np.array(stored * 4, dtype=dtype).reshape(4, 4)
    path = write_slice(tmp_path / "a.dcm", stored=pixels, slope=slope, intercept=intercept)
    hu = read_hu(path)
    assert hu.dtype == np.int16
    expected = np.array(expected * 4, dtype=np.int16).reshape(4, 4)
    np.testing.assert_array_equal(hu, expected)
    # The series reader (headers read quickly, pixels straight from the files): the same HU.
    series = write_series(
        tmp_path / "series", zs=[0.0, 2.5, 5.0], stored=pixels, slope=slope,
        intercept=intercept,
    )  # fmt: skip
    _, volume = read_series(series.paths)
    np.testing.assert_array_equal(volume, np.stack([expected] * 3))


def test_slices_sorted_by_position_not_by_name_or_instance(tmp_path):
    zs = [-10.0, -17.5, -12.5, -15.0]  # file order and InstanceNumber order both shuffled
    for i, z in enumerate(zs):
        write_slice(tmp_path / f"{9 - i}.dcm", z=z, instance=i + 1)
    plan, problems = _plan(tmp_path)
    assert not problems
    assert plan.status == STATUS_OK and plan.reason == ""
    assert plan.z_positions == [-17.5, -15.0, -12.5, -10.0]
    assert plan.spacing == (2.5, 0.7, 0.7)
    assert plan.origin == (-17.5, -120.0, -100.0)
    assert plan.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    plan2, volume = read_series(sorted(tmp_path.iterdir()))
    assert volume.shape == (4, 8, 8)
    # synthetic stored value = base + z, so HU of voxel 0 rises with z
    assert list(volume[:, 0, 0]) == [1000 + int(z) - 1024 for z in sorted(zs)]
    assert plan2.z_positions == plan.z_positions


def test_series_grouped_by_uid_not_by_folder(tmp_path):
    write_series(tmp_path / "mixed", zs=[0, 2.5, 5], series_uid="1.2.3.1")
    write_series(tmp_path / "mixed2", zs=[0, 1, 2], series_uid="1.2.3.2")
    write_slice(tmp_path / "elsewhere" / "x.dcm", z=7.5, series_uid="1.2.3.1")
    headers, _, _ = scan_folder(tmp_path)
    groups = group_by_series(headers)
    assert sorted(groups) == ["1.2.3.1", "1.2.3.2"]
    assert plan_series(groups["1.2.3.1"], SPACING_TOLERANCE).z_positions == [0, 2.5, 5, 7.5]


def test_non_dicom_and_unreadable_files_are_skipped_and_named(tmp_path):
    write_series(tmp_path, zs=[0, 2.5, 5])
    (tmp_path / "notes.txt").write_text("not a dicom file")
    (tmp_path / "069.xml").write_text("<LidcReadMessage/>")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes((tmp_path / "1-001.dcm").read_bytes()[:140])
    headers, problems, _ = scan_folder(tmp_path)
    assert len(headers) == 3
    assert len(problems) == 3
    for name in ("notes.txt", "069.xml", "truncated.dcm"):
        assert any(name in message for message in problems), (name, problems)
    with pytest.raises(DicomFileError, match="notes.txt"):
        read_header(tmp_path / "notes.txt")


def test_corrupt_pixel_data_names_the_file(tmp_path):
    path = rewrite(write_slice(tmp_path / "a.dcm"), short_pixel_data(10))
    with pytest.raises(DicomFileError, match=r"a\.dcm: cannot decode pixel data"):
        read_hu(path)
    series = write_series(tmp_path / "s", zs=[0.0, 2.5, 5.0]).paths
    rewrite(series[1], short_pixel_data(10))
    # The series reader takes pixels straight from the files; it names the file too.
    with pytest.raises(DicomFileError, match=r"1-002\.dcm: pixel data of 10 bytes, expected 128"):
        read_series(series)


def test_truncated_file_names_the_file(tmp_path):
    series = write_series(tmp_path, zs=[0.0, 2.5, 5.0]).paths
    series[2].write_bytes(series[2].read_bytes()[:-40])  # its length field still says 128
    with pytest.raises(DicomFileError, match=r"1-003\.dcm: pixel data truncated \(88 of 128"):
        read_series(series)


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_non_ct_series_is_skipped(tmp_path, modality):
    write_series(tmp_path, zs=[0], modality=modality, shape=(8, 8))
    plan, _ = _plan(tmp_path)
    assert plan.status == STATUS_SKIPPED
    assert f"modality {modality}, not CT" in plan.reason
    assert read_series(sorted(tmp_path.iterdir()))[1] is None


def test_localizer_inside_ct_series_is_dropped(tmp_path):
    write_series(tmp_path / "s", zs=[0, 2.5, 5, 7.5])
    write_slice(
        tmp_path / "s" / "scout.dcm",
        z=0.0,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        orientation=(0, 1, 0, 0, 0, -1),
        shape=(8, 12),
    )
    plan, _ = _plan(tmp_path)
    assert plan.status == STATUS_OK
    assert plan.n_files == 5 and plan.n_slices == 4
    assert "dropped 1 localizer" in plan.reason
    _, volume = read_series(sorted((tmp_path / "s").iterdir()))
    assert volume.shape == (4, 8, 8)


def test_duplicate_positions_keep_one(tmp_path):
    write_series(tmp_path, zs=[0, 2.5, 5, 7.5])
    write_slice(tmp_path / "dup.dcm", z=5.0, instance=99)
    plan, _ = _plan(tmp_path)
    assert plan.status == STATUS_OK
    assert plan.n_slices == 4 and plan.z_positions == [0, 2.5, 5, 7.5]
    assert "dropped 1 image(s) at duplicate positions" in plan.reason
    assert all(Path(h.path).name != "dup.dcm" for h in plan.slices)  # lower InstanceNumber kept


@pytest.mark.parametrize(
    ("zs", "status", "reason"),
    [
        ([0, 2.5, 5, 7.5, 10], STATUS_OK, ""),
        ([0, 2.5, 5, 10, 12.5, 15], STATUS_EXCLUDED, "missing slices: about 1 absent"),
        ([0, 2.5, 5, 12.5, 15], STATUS_EXCLUDED, "missing slices: about 2 absent"),
        ([0, 2.5, 5, 6.25, 8.75, 11.25], STATUS_EXCLUDED, "irregular slice spacing"),
        # tiny float jitter is regular
        ([0, 2.5001, 5, 7.4999, 10], STATUS_OK, ""),
    ],
)
def test_missing_and_irregular_slices_are_flagged(tmp_path, zs, status, reason):
    write_series(tmp_path, zs=zs)
    plan, _ = _plan(tmp_path)
    assert plan.status == status
    assert reason in plan.reason
    assert plan.spacing[0] == pytest.approx(2.5, abs=1e-3)


@pytest.mark.parametrize(
    ("odd", "reason"),
    [
        ({"shape": (8, 10)}, "mixed matrix sizes"),
        ({"orientation": (1, 0, 0, 0, 0.8, 0.6)}, "mixed orientations"),
        ({"pixel_spacing": (0.8, 0.8)}, "mixed pixel spacings"),
    ],
)
def test_mixed_geometry_is_rejected_with_reason(tmp_path, odd, reason):
    write_series(tmp_path, zs=[0, 2.5, 5])
    write_slice(tmp_path / "odd.dcm", z=7.5, instance=4, **odd)
    plan, _ = _plan(tmp_path)
    assert plan.status == STATUS_SKIPPED
    assert reason in plan.reason
    assert plan.slices == []


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_compressed_transfer_syntaxes_decode(tmp_path, syntax):
    stored = np.random.default_rng(0).integers(-1000, 3000, size=(64, 64)).astype(np.int16)
    plain = write_slice(tmp_path / "plain.dcm", stored=stored)
    packed = write_slice(tmp_path / "packed.dcm", stored=stored, compress=syntax)
    assert read_header(packed).transfer_syntax == syntax
    assert _native_pixels(pydicom.dcmread(packed)) is None  # pydicom + pylibjpeg decode it
    np.testing.assert_array_equal(read_hu(packed), read_hu(plain))


@pytest.mark.parametrize(
    ("signed", "bits_stored", "syntax", "intercept"),
    [
        (True, 16, ExplicitVRLittleEndian, -1024.0),
        (False, 16, ExplicitVRLittleEndian, -1024.0),
        (True, 12, ExplicitVRLittleEndian, -1024.0),
        (False, 12, ExplicitVRLittleEndian, -1024.0),
        (False, 12, ImplicitVRLittleEndian, -1024.0),
        (True, 12, ImplicitVRLittleEndian, 0.0),
        (False, 16, ImplicitVRLittleEndian, 0.0),
    ],
)
def test_native_pixels_equal_pydicom_including_unused_high_bits(
    tmp_path, signed, bits_stored, syntax, intercept
):
    """The buffer fast path gives pydicom's values, also where bits above BitsStored are set."""
    rng = np.random.default_rng(bits_stored)
    dtype = np.int16 if signed else np.uint16
    raw = rng.integers(0, 1 << 16, size=(32, 48), dtype=np.uint32).astype(np.uint16).view(dtype)
    path = write_slice(
        tmp_path / "a.dcm",
        stored=raw,
        bits_stored=bits_stored,
        transfer_syntax=syntax,
        intercept=intercept,
    )
    ds = pydicom.dcmread(path)
    native = _native_pixels(ds)
    assert native is not None
    expected = ds.pixel_array
    assert native.dtype == expected.dtype
    np.testing.assert_array_equal(native, expected)
    if bits_stored < 16:  # garbage above BitsStored was really there, and was dropped
        assert not np.array_equal(raw, expected)
    hu = np.clip(expected.astype(np.int32) + int(intercept), -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(read_hu(path), hu)
    # The series reader takes the pixels straight from the files: the same values.
    folder = tmp_path / "series"
    for i, z in enumerate([5.0, 0.0, 2.5]):
        write_slice(
            folder / f"{i}.dcm",
            z=z,
            stored=np.roll(raw, i, axis=0),
            bits_stored=bits_stored,
            transfer_syntax=syntax,
            intercept=intercept,
        )
    plan, volume = read_series(sorted(folder.iterdir()))
    assert [h.position[2] for h in plan.slices] == [0.0, 2.5, 5.0]
    for k, i in enumerate([1, 2, 0]):
        np.testing.assert_array_equal(volume[k], np.roll(hu, i, axis=0))


def test_series_mixing_compressed_and_plain_files_reads_each_right(tmp_path):
    rng = np.random.default_rng(3)
    slices = [rng.integers(-1000, 3000, size=(64, 64)).astype(np.int16) for _ in range(3)]
    for i, (stored, compress) in enumerate(zip(slices, [None, RLELossless, None], strict=True)):
        write_slice(tmp_path / f"{i}.dcm", z=2.5 * i, stored=stored, compress=compress)
    _, volume = read_series(sorted(tmp_path.iterdir()))
    np.testing.assert_array_equal(volume, np.stack(slices) - 1024)
