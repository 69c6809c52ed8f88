"""Header and pixel reading against plain pydicom, on real files of every kind lungseg meets.

Headers are read with ``dcmread(specific_tags=..., defer_size=...)``; the pixels of
uncompressed little-endian files straight from the offset pydicom located. Table-driven: each
case writes a file; the header fields must equal those of a full ``dcmread``, the located pixel
data must be ``dcmread``'s ``PixelData`` bytes, and the HU of the straight read must equal HU
from pydicom's ``pixel_array``. The same checks run over the real files pydicom ships.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_writer import write_slice
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from lungseg.ingest.dicom import (
    CONVERT_TAG_NUMBERS,
    DicomFileError,
    header_from_dataset,
    read_header,
)
from lungseg.ingest.pixels import (
    hu_into,
    native_layout,
    read_header_and_pixel_offset,
    slice_hu_into,
)

SELECTED = [tag for tag in CONVERT_TAG_NUMBERS if tag != 0x7FE00010]
STORED = np.arange(-40, 24, dtype=np.int16).reshape(8, 8) * 37


def _explicit(path: Path) -> Path:
    return write_slice(path, stored=STORED)


def _implicit(path: Path) -> Path:
    return write_slice(path, stored=STORED, transfer_syntax=ImplicitVRLittleEndian)


def _unsigned_12_bit(path: Path) -> Path:
    stored = (STORED + 2000).astype(np.uint16)
    return write_slice(path, stored=stored, bits_stored=12, intercept=-1000.0)


def _long_header(path: Path) -> Path:
    """A header of 100 KB (a large private element): deferred, not read."""

    def large_private_element(ds: pydicom.Dataset) -> None:
        block = ds.private_block(0x0009, "LUNGSEG TEST", create=True)
        block.add_new(0x01, "OB", bytes(range(256)) * 400)  # 100 KB

    write_slice(path, stored=STORED, edit=large_private_element)
    assert path.stat().st_size > (1 << 16) + STORED.nbytes
    return path


def _big_endian(path: Path) -> Path:
    return write_slice(path, stored=STORED, transfer_syntax=ExplicitVRBigEndian)


def _compressed(path: Path) -> Path:
    return write_slice(path, stored=STORED, compress=RLELossless)


def _no_preamble(path: Path) -> Path:
    return write_slice(path, stored=STORED, file_meta=False)


def _meta_without_group_length(path: Path) -> Path:
    data = _explicit(path).read_bytes()
    assert data[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
    path.write_bytes(data[:132] + data[144:])  # drop (0002,0000), 12 bytes
    return path


def _says_implicit_is_explicit(path: Path) -> Path:
    """Explicit VR elements under a meta group that announces implicit VR (dcmread copes)."""
    data = _explicit(path).read_bytes()
    explicit = ExplicitVRLittleEndian.encode() + b"\0"  # 20 bytes, as written
    implicit = ImplicitVRLittleEndian.encode().ljust(len(explicit), b"\0")
    assert data.count(explicit) == 1
    path.write_bytes(data.replace(explicit, implicit))
    return path


def _no_pixel_data(path: Path) -> Path:
    return write_slice(path, stored=STORED, tags={"PixelData": None})


def _truncated(path: Path) -> Path:
    """A half-written slice: the file ends 40 bytes into its pixel data."""
    data = _explicit(path).read_bytes()
    path.write_bytes(data[: len(data) - STORED.nbytes + 40])
    return path


def _not_dicom(path: Path) -> Path:
    path.write_text("Rows,Columns\n512,512\n" * 20)
    return path


# (case, writer, pixel data located for the straight read, index's pixel problem)
CASES = [
    ("explicit VR little endian", _explicit, True, ""),
    ("implicit VR little endian", _implicit, True, ""),
    ("unsigned, 12 of 16 bits", _unsigned_12_bit, True, ""),
    ("no pixel data", _no_pixel_data, False, "no pixel data"),
    ("header longer than 64 KB", _long_header, True, ""),
    ("explicit VR big endian", _big_endian, False, ""),
    ("RLE compressed", _compressed, False, ""),
    ("no preamble nor file meta", _no_preamble, False, ""),
    ("file meta without group length", _meta_without_group_length, True, ""),
    ("implicit VR announced, explicit VR written", _says_implicit_is_explicit, True, ""),
    ("truncated pixel data", _truncated, True, "pixel data truncated (40 of 128 bytes"),
    ("not a DICOM file", _not_dicom, False, None),
]
#: dcmread's own complaint about the mislabelled file (it reads it anyway)
QUIET = pytest.mark.filterwarnings("ignore:Expected implicit VR:UserWarning")
TABLE = pytest.mark.parametrize(
    ("writer", "located", "problem"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)


@QUIET
@TABLE
def test_headers_equal_a_full_dcmread_and_the_pixel_data_are_located(
    tmp_path, writer, located, problem
):
    path = writer(tmp_path / "slice.dcm")
    if problem is None:  # not DICOM: both refuse, naming the file
        with pytest.raises(InvalidDicomError):
            pydicom.dcmread(path)
        with pytest.raises(DicomFileError, match=rf"{path}: not a DICOM file"):
            read_header(path)
        with pytest.raises(DicomFileError, match=str(path)):
            read_header_and_pixel_offset(path)
        return
    reference = pydicom.dcmread(path, stop_before_pixels=True)
    header = read_header(path)
    assert header == header_from_dataset(reference, path, problem=header.pixel_problem)
    assert header.pixel_problem.startswith(problem)
    ds, location = read_header_and_pixel_offset(path)
    assert header_from_dataset(ds, path) == header_from_dataset(reference, path)
    syntax = getattr(reference.file_meta, "TransferSyntaxUID", None)
    assert getattr(ds.file_meta, "TransferSyntaxUID", None) == syntax
    assert set(ds.keys()) <= {*SELECTED, 0x00080005, 0x7FE00010}
    for element in ds:
        if element.tag != 0x7FE00010:
            assert element.value == reference[element.tag].value, element.keyword
    assert (location is not None) == located
    if located and not problem:
        offset, length = location
        assert path.read_bytes()[offset : offset + length] == pydicom.dcmread(path).PixelData


@QUIET
@TABLE
def test_straight_pixel_read_gives_the_hu_of_pydicoms_pixel_array(
    tmp_path, writer, located, problem
):
    path = writer(tmp_path / "slice.dcm")
    if problem is None or problem:  # nothing to decode
        return
    reference = pydicom.dcmread(path)
    full = np.empty((reference.Rows, reference.Columns), np.int16)
    ds, location = read_header_and_pixel_offset(path)
    straight = np.empty_like(full)
    try:
        hu_into(reference, path, full)
    except DicomFileError:  # pydicom cannot decode it (no transfer syntax): neither can we
        with pytest.raises(DicomFileError, match=str(path)):
            slice_hu_into(ds, location, str(path), straight)
        return
    slice_hu_into(ds, location, str(path), straight)
    np.testing.assert_array_equal(straight, full)
    if located:  # the straight path was taken
        assert native_layout(ds) is not None


#: The real files pydicom ships for its own tests (scanners' CT and MR slices, DICOMDIR series,
#: every transfer syntax, truncated and odd files).
PYDICOM_FILES = sorted(
    path
    for path in (Path(pydicom.data.__file__).parent / "test_files").rglob("*")
    if path.is_file() and path.suffix not in (".txt", ".py", ".gz", ".bz2", ".json")
)


def test_pydicom_ships_its_test_files_and_a_real_ct_slice_is_read_straight():
    assert len(PYDICOM_FILES) > 100  # else the test below would check next to nothing
    ct_slice = next(path for path in PYDICOM_FILES if path.name == "CT_small.dcm")  # GE scanner
    ds, location = read_header_and_pixel_offset(ct_slice)
    assert native_layout(ds) is not None and location is not None  # pixels read straight


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    "path", PYDICOM_FILES, ids=[str(p.relative_to(p.parents[1])) for p in PYDICOM_FILES]
)
def test_header_and_pixels_of_real_files_equal_dcmread(path):
    try:
        reference = pydicom.dcmread(path)
    except Exception:  # noqa: BLE001 - files dcmread refuses: lungseg may refuse them too
        return
    try:
        ds, location = read_header_and_pixel_offset(path)
    except DicomFileError:
        pytest.fail(f"dcmread reads {path.name}, lungseg's header read refuses it")
    layout = native_layout(ds)  # before any value is converted
    for element in ds:
        if element.tag != 0x7FE00010:
            assert element.value == reference[element.tag].value, element.keyword
    data = reference.get("PixelData")
    if location is not None and isinstance(data, bytes):
        offset, length = location
        assert path.read_bytes()[offset : offset + length] == data
        if layout is not None and len(data) >= layout.nbytes:
            straight, full = (np.empty((layout.rows, layout.columns), np.int16) for _ in range(2))
            slice_hu_into(ds, location, str(path), straight)
            hu_into(reference, path, full)
            np.testing.assert_array_equal(straight, full)
