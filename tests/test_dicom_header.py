"""The quick header reader against pydicom.dcmread, on real files of every kind it must tell apart.

Table-driven: each case writes a file, then says whether the quick reader takes it (uncompressed
little-endian Part 10 files) or leaves it to dcmread (None). Where it takes a file, every
selected element and the pixel data location must equal what dcmread reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from test_dicom_io import write_slice

from lungseg.ingest.dicom import (
    HEADER_TAGS,
    PIXEL_TAGS,
    DicomFileError,
    header_from_dataset,
    hu_into,
    native_layout,
    read_header,
    read_header_and_pixel_offset,
    slice_hu_into,
)
from lungseg.ingest.dicom_header import read_selected

SELECTED = [tag_for_keyword(keyword) for keyword in HEADER_TAGS + PIXEL_TAGS]
STORED = np.arange(-40, 24, dtype=np.int16).reshape(8, 8) * 37


def _explicit(path: Path) -> Path:
    return write_slice(path, stored=STORED)


def _implicit(path: Path) -> Path:
    return write_slice(path, stored=STORED, transfer_syntax=ImplicitVRLittleEndian)


def _unsigned_12_bit(path: Path) -> Path:
    stored = (STORED + 2000).astype(np.uint16)
    return write_slice(path, stored=stored, signed=False, bits_stored=12, intercept=-1000.0)


def _long_header(path: Path) -> Path:
    """A header longer than the quick reader's first read (a large private element)."""
    ds = pydicom.dcmread(_explicit(path))
    block = ds.private_block(0x0009, "LUNGSEG TEST", create=True)
    block.add_new(0x01, "OB", bytes(range(256)) * 400)  # 100 KB
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size > (1 << 16) + STORED.nbytes
    return path


def _big_endian(path: Path) -> Path:
    ds = pydicom.dcmread(_explicit(path))
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    pydicom.dcmwrite(path, ds, little_endian=False, implicit_vr=False, force_encoding=True)
    return path


def _compressed(path: Path) -> Path:
    return write_slice(path, stored=STORED, compress=RLELossless)


def _no_preamble(path: Path) -> Path:
    ds = pydicom.dcmread(_explicit(path))
    del ds.file_meta
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    return path


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
    ds = pydicom.dcmread(_explicit(path))
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    return path


def _not_dicom(path: Path) -> Path:
    path.write_text("Rows,Columns\n512,512\n" * 20)
    return path


# (case, writer, taken by the quick reader, pixel data read straight from the file)
CASES = [
    ("explicit VR little endian", _explicit, True, True),
    ("implicit VR little endian", _implicit, True, True),
    ("unsigned, 12 of 16 bits", _unsigned_12_bit, True, True),
    ("no pixel data", _no_pixel_data, True, False),
    ("header longer than the first read", _long_header, True, True),
    ("explicit VR big endian", _big_endian, False, False),
    ("RLE compressed", _compressed, False, False),
    ("no preamble nor file meta", _no_preamble, False, False),
    ("file meta without group length", _meta_without_group_length, False, True),
    ("implicit VR announced, explicit VR written", _says_implicit_is_explicit, False, True),
    ("not a DICOM file", _not_dicom, False, False),
]
#: dcmread's own complaint about the mislabelled file (it reads it anyway)
QUIET = pytest.mark.filterwarnings("ignore:Expected implicit VR:UserWarning")
TABLE = pytest.mark.parametrize(
    ("writer", "taken", "has_location"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)


@QUIET
@TABLE
def test_quick_reader_equals_dcmread_or_leaves_the_file_to_it(
    tmp_path, writer, taken, has_location
):
    path = writer(tmp_path / "slice.dcm")
    selected = read_selected(path, SELECTED)
    assert (selected is not None) == taken
    if not taken:
        return
    ds, location = selected
    reference = pydicom.dcmread(path)
    # Header fields first, while both datasets still hold raw elements (reading a value
    # makes pydicom convert and keep it).
    header = header_from_dataset(ds, path)
    assert header == header_from_dataset(reference, path)
    assert (header.rows, header.columns) == (reference.Rows, reference.Columns)  # pydicom's
    assert ds.file_meta.TransferSyntaxUID == reference.file_meta.TransferSyntaxUID
    assert set(ds.keys()) == {tag for tag in [*SELECTED, 0x00080005] if tag in reference}
    for element in ds:
        assert element.value == reference[element.tag].value, element.keyword
    assert (location is not None) == has_location
    if has_location:
        offset, length = location
        assert path.read_bytes()[offset : offset + length] == reference.PixelData


@QUIET
@TABLE
def test_index_and_convert_read_the_same_header_whoever_parses_it(
    tmp_path, writer, taken, has_location
):
    """Through the quick reader or through dcmread: the same fields, or the same refusal."""
    path = writer(tmp_path / "slice.dcm")
    try:
        reference = header_from_dataset(pydicom.dcmread(path, stop_before_pixels=True), path)
    except InvalidDicomError:
        with pytest.raises(DicomFileError, match="not a DICOM file"):
            read_header(path)
        with pytest.raises(DicomFileError, match=str(path)):
            read_header_and_pixel_offset(path)
        return
    assert read_header(path) == reference
    ds, location = read_header_and_pixel_offset(path)
    assert header_from_dataset(ds, path) == reference
    assert (location is not None) == has_location
    if has_location:
        offset, length = location
        assert path.read_bytes()[offset : offset + length] == pydicom.dcmread(path).PixelData


#: The real files pydicom ships for its own tests (scanners' CT and MR slices, DICOMDIR series,
#: every transfer syntax, truncated and odd files): the quick reader meets the wild here.
PYDICOM_FILES = sorted(
    path
    for path in (Path(pydicom.data.__file__).parent / "test_files").rglob("*")
    if path.is_file() and path.suffix not in (".txt", ".py", ".gz", ".bz2", ".json")
)


def test_pydicom_ships_its_test_files_and_a_real_ct_slice_takes_the_quick_path():
    assert len(PYDICOM_FILES) > 100  # else the test below would check next to nothing
    ct_slice = next(path for path in PYDICOM_FILES if path.name == "CT_small.dcm")  # GE scanner
    ds, location = read_selected(ct_slice, SELECTED)
    assert native_layout(ds) is not None and location is not None  # pixels read straight


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    "path", PYDICOM_FILES, ids=[str(p.relative_to(p.parents[1])) for p in PYDICOM_FILES]
)
def test_quick_reader_on_real_files_equals_dcmread_or_leaves_them(path):
    selected = read_selected(path, SELECTED)
    try:
        reference = pydicom.dcmread(path)
    except Exception:  # noqa: BLE001 - files dcmread refuses must not be taken either
        assert selected is None
        return
    if selected is None:
        return
    ds, location = selected
    layout = native_layout(ds)  # before any value is converted (see above)
    if layout is not None and location is not None and len(reference.PixelData) >= layout.nbytes:
        quick, full = (np.empty((layout.rows, layout.columns), np.int16) for _ in range(2))
        slice_hu_into(ds, location, str(path), quick)
        hu_into(reference, path, full)
        np.testing.assert_array_equal(quick, full)
    for element in ds:
        assert element.value == reference[element.tag].value, element.keyword
    if location is not None and isinstance(reference.get("PixelData"), bytes):
        offset, length = location
        assert path.read_bytes()[offset : offset + length] == reference.PixelData
