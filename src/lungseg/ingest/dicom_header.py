"""Selected header elements of a DICOM file, read at twice the speed of ``pydicom.dcmread``.

Both the index and every convert job read the header of each file; for a CT slice that is most
of pydicom's read time. ``dcmread(stop_before_pixels=True)`` spends half of it around the
elements: validating the file meta group into a dataset, building a ``FileDataset`` (which
stats the file), keeping every element. For the files LIDC-IDRI consists of (Part 10 files,
uncompressed little-endian) :func:`read_selected` does only the element reading, with
pydicom's own reader (:func:`pydicom.filereader.read_dataset`, what ``dcmread`` runs inside),
keeping only the wanted tags: the values are pydicom's, converted by pydicom on access. The
file is read in one go of 16 KB and parsed in memory (a longer header is read again whole).

Anything else (no "DICM" prefix, other transfer syntaxes, a file meta group without its
length, explicit/implicit VR contrary to the transfer syntax, any read error) gives None: the
caller then reads the file with ``dcmread``, which handles it or names the problem.
"""

from __future__ import annotations

import io
import os
import struct

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import data_element_generator, read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

#: (0002,0000) File Meta Information Group Length, explicit VR "UL", value length 4
_META_LENGTH_ELEMENT = b"\x02\x00\x00\x00UL\x04\x00"
_TRANSFER_SYNTAX_TAG = 0x00020010
#: (7FE0,0010) Pixel Data, as its tag is written in a little-endian file
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
#: the elements dcmread(stop_before_pixels=True) stops at: (float / double float) pixel data
_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
#: The first read of a file: LIDC-IDRI's headers take 1-10 KB; a longer one is read again
#: whole. Small, because the index reads only headers, off a cold disk: 16 KB is about what
#: dcmread's 8 KB buffered reads fetched (64 KB would read 16 GB of the 130 GB collection).
_HEAD_BYTES = 1 << 14
_SYNTAXES = {ImplicitVRLittleEndian: True, ExplicitVRLittleEndian: False}  # -> implicit VR?


def _at_pixel_data(tag, vr, length) -> bool:
    return tag in _PIXEL_DATA_TAGS


def _transfer_syntax(f) -> str | None:
    """The transfer syntax from a Part 10 file's meta group; None where it is not plain."""
    if f.read(132)[128:] != b"DICM":
        return None
    head = f.read(12)
    if len(head) != 12 or head[:8] != _META_LENGTH_ELEMENT:
        return None
    (length,) = struct.unpack("<L", head[8:])
    meta = io.BytesIO(f.read(length))
    for element in data_element_generator(meta, is_implicit_VR=False, is_little_endian=True):
        if element.tag == _TRANSFER_SYNTAX_TAG:
            return element.value.decode("ascii").rstrip("\0 ")
    return None


def _vr_is_implicit(f) -> bool:
    """Whether the element at the file's position has no explicit VR (as pydicom tests it)."""
    start = f.tell()
    vr = f.read(6)[4:]
    f.seek(start)
    return len(vr) < 2 or not (b"AA" <= vr <= b"ZZ")


def pixel_data_location(f) -> tuple[int, int] | None:
    """(offset, length) of the Pixel Data value whose element starts at the file's position.

    The element's own bytes tell explicit from implicit VR (as an implicit VR length, "OW"
    or "OB" followed by two zero bytes would be odd: impossible for pixel data), so a file
    whose meta group announces the wrong one is still read right. None when no (7FE0,0010)
    element of defined length starts there (absent, encapsulated, or float pixel data):
    pydicom reads those files.
    """
    start = f.tell()
    head = f.read(12)
    if len(head) < 8 or head[:4] != _PIXEL_DATA_TAG:
        return None
    if head[4:8] in (b"OW\0\0", b"OB\0\0"):
        if len(head) < 12:
            return None
        length, header_bytes = int.from_bytes(head[8:12], "little"), 12
    else:
        length, header_bytes = int.from_bytes(head[4:8], "little"), 8
    if length == 0xFFFFFFFF:
        return None
    return start + header_bytes, length


def _parse(f, tags: list[int]) -> tuple[str, Dataset, tuple[int, int] | None] | None:
    syntax = _transfer_syntax(f)
    implicit = _SYNTAXES.get(syntax)
    if implicit is None or _vr_is_implicit(f) != implicit:
        return None
    ds = read_dataset(f, implicit, True, stop_when=_at_pixel_data, specific_tags=tags)
    return syntax, ds, pixel_data_location(f)


def read_selected(
    path: str | os.PathLike[str], tags: list[int]
) -> tuple[Dataset, tuple[int, int] | None] | None:
    """``(dataset, pixel data location)`` of an uncompressed little-endian file, else None.

    ``dataset`` holds those of ``tags`` found before the pixel data (and the character set),
    with ``file_meta.TransferSyntaxUID`` set; the location is :func:`pixel_data_location`'s.
    """
    try:
        with open(path, "rb") as f:  # buffered: read() returns less only at the end of the file
            head = f.read(_HEAD_BYTES)
        parsed = _parse(io.BytesIO(head), tags)
        if parsed is not None and parsed[2] is None and len(head) == _HEAD_BYTES:
            with open(path, "rb") as f:  # a header longer than the first read: all of it
                parsed = _parse(f, tags)
    except Exception:  # noqa: BLE001 - any surprise: dcmread reads the file and reports it
        return None
    if parsed is None:
        return None
    syntax, ds, location = parsed
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    return ds, location
