"""DICOM headers: walking the tree, header reading, series grouping, slice ordering, quirks.

Headers are read with ``pydicom.dcmread`` (only the wanted tags; the pixel data are not read,
only where they lie: :func:`pixel_data_location`). Files are grouped by SeriesInstanceUID, never
by folder name (LIDC-IDRI exists both in the old UID folder layout and in NBIA's descriptive
one). :func:`plan_series` turns one series' headers into a decision (status ``ok`` /
``excluded`` / ``skipped`` with a reason) and the ordered slices; the index and the conversion
both use it, so they cannot disagree. Pixel reading and HU: :mod:`lungseg.ingest.pixels`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from lungseg.core.errors import InputError

log = logging.getLogger(__name__)

#: The only tags the index reads (pixel data is never touched there).
HEADER_TAGS = [
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "Modality",
    "InstanceNumber",
    "ImageType",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "Rows",
    "Columns",
    "PixelSpacing",
    "SliceThickness",
]


class DicomFileError(InputError, ValueError):
    """A file that is not a usable DICOM image (message names the file and the problem)."""


@dataclass(frozen=True)
class SliceHeader:
    """What the index needs to know about one DICOM file."""

    path: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    instance_number: int | None
    image_type: tuple[str, ...]
    position: tuple[float, float, float] | None  # ImagePositionPatient (x, y, z) mm
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (row dir, column dir)
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm
    slice_thickness: float | None
    transfer_syntax: str
    #: why this file's pixel data cannot be read (e.g. the file is shorter than they are), or ""
    pixel_problem: str = ""

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in {part.upper() for part in self.image_type}


#: What conversion reads besides: the pixel layout (:func:`native_layout`) and HU rescaling.
PIXEL_TAGS = [
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "NumberOfFrames",
    "RescaleIntercept",
    "RescaleSlope",
]
#: (7FE0,0010) Pixel Data: read as a deferred element, i.e. only its offset and length
PIXEL_DATA_TAG = 0x7FE00010
#: tag numbers, looked up once; both lists end with Pixel Data
_TAGS = {keyword: tag_for_keyword(keyword) for keyword in HEADER_TAGS + PIXEL_TAGS}
INDEX_TAG_NUMBERS = [_TAGS[keyword] for keyword in HEADER_TAGS] + [PIXEL_DATA_TAG]
CONVERT_TAG_NUMBERS = [*_TAGS.values(), PIXEL_DATA_TAG]
#: element values longer than this are not read, only located (in practice: the pixel data)
DEFER_BYTES = 4096


def read_selected(path: str | os.PathLike[str], tags: list[int]) -> Dataset:
    """The elements ``tags`` of a DICOM file, through ``pydicom.dcmread``.

    Values longer than :data:`DEFER_BYTES` (the pixel data) are deferred: pydicom skips them
    and keeps their offset and length (:func:`pixel_data_location`). :class:`DicomFileError`
    names the file when pydicom cannot read it.
    """
    try:
        return pydicom.dcmread(path, defer_size=DEFER_BYTES, specific_tags=tags)
    except InvalidDicomError as error:
        raise DicomFileError(f"{path}: not a DICOM file ({error})") from error
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DicomFileError(f"{path}: unreadable DICOM file ({error})") from error


def pixel_data_location(ds: Dataset) -> tuple[int, int] | None:
    """``(offset, length)`` of the Pixel Data value in the file, as pydicom read the element.

    None: no pixel data, encapsulated (compressed) pixel data of undefined length, or an
    element pydicom has converted already. The offset and length are pydicom's
    (``RawDataElement.value_tell``, ``length``), so a file whose meta group announces the
    wrong VR is located right too.
    """
    elem = ds.get_item(PIXEL_DATA_TAG, keep_deferred=True)
    if elem is None or not hasattr(elem, "value_tell"):
        return None
    length = getattr(elem, "length", None)
    if length is None or length == 0xFFFFFFFF:
        return None
    return int(elem.value_tell), int(length)


def pixel_problem(ds: Dataset, path: str | os.PathLike[str], size: int | None = None) -> str:
    """Why the pixel data of a slice cannot be read, judged from the header alone, or "".

    Only what the file itself shows: no Pixel Data element, or a file ending before the
    pixel data it declares (a half-written or truncated download).
    """
    if ds.get_item(PIXEL_DATA_TAG, keep_deferred=True) is None:
        return "no pixel data"
    location = pixel_data_location(ds)
    if location is None:
        return ""
    offset, length = location
    size = os.path.getsize(path) if size is None else size
    if size < offset + length:
        have = max(0, size - offset)
        return f"pixel data truncated ({have} of {length} bytes; file of {size} bytes)"
    return ""


def element_text(ds: Dataset, keyword: str) -> str:
    """A text element's value without pydicom's per-element conversion (the index reads
    hundreds of thousands of headers; converting DS/IS/UI values dominated its time).
    Multiple values come back joined by backslashes, as stored."""
    elem = ds.get_item(_TAGS[keyword])
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def element_unsigned(ds: Dataset, keyword: str):
    """A US element's value (Rows, BitsStored, ...), None when absent or empty.

    Like :func:`_text`, the common case (two little-endian bytes, as read) skips pydicom's
    conversion; anything else is converted by pydicom.
    """
    elem = ds.get_item(_TAGS[keyword])
    if elem is None or elem.value is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        if len(value) == 2 and elem.VR in (None, "US") and getattr(elem, "is_little_endian", 0):
            return int.from_bytes(value, "little")
        value = ds[_TAGS[keyword]].value
    return None if value == b"" else value


def _floats(text: str, count: int) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        numbers = tuple(float(v) for v in text.split("\\"))
    except ValueError:
        return None
    return numbers if len(numbers) == count else None


def header_from_dataset(
    ds: Dataset, path: str | os.PathLike[str], problem: str = ""
) -> SliceHeader:
    """Extract a :class:`SliceHeader`; raises :class:`DicomFileError` without a series UID.

    ``problem``: the file's :func:`pixel_problem` (the index checks it; conversion reads the
    pixels and reports what it finds)."""
    series_uid = element_text(ds, "SeriesInstanceUID")
    if not series_uid:
        raise DicomFileError(f"{path}: DICOM file without SeriesInstanceUID")
    meta = getattr(ds, "file_meta", None)
    thickness = element_text(ds, "SliceThickness")
    instance = element_text(ds, "InstanceNumber")
    image_type = element_text(ds, "ImageType")
    try:
        return SliceHeader(
            path=str(path),
            patient_id=element_text(ds, "PatientID"),
            study_uid=element_text(ds, "StudyInstanceUID"),
            series_uid=series_uid,
            sop_uid=element_text(ds, "SOPInstanceUID"),
            modality=element_text(ds, "Modality").upper(),
            instance_number=int(float(instance)) if instance else None,
            image_type=tuple(t.strip() for t in image_type.split("\\")) if image_type else (),
            position=_floats(element_text(ds, "ImagePositionPatient"), 3),
            orientation=_floats(element_text(ds, "ImageOrientationPatient"), 6),
            rows=int(element_unsigned(ds, "Rows") or 0),
            columns=int(element_unsigned(ds, "Columns") or 0),
            pixel_spacing=_floats(element_text(ds, "PixelSpacing"), 2),
            slice_thickness=float(thickness) if thickness else None,
            transfer_syntax=str(getattr(meta, "TransferSyntaxUID", "") or ""),
            pixel_problem=problem,
        )
    except (TypeError, ValueError) as error:
        raise DicomFileError(f"{path}: malformed DICOM header ({error})") from error


def read_header(path: str | os.PathLike[str]) -> SliceHeader:
    """The header tags the index needs and whether the file holds all its pixel data.

    The pixel data are not read: pydicom locates them, and the file size tells whether the
    file ends before they do (:func:`pixel_problem`).
    """
    ds = read_selected(path, INDEX_TAG_NUMBERS)
    return header_from_dataset(ds, path, pixel_problem(ds, path))


def _try_read_header(path: str) -> SliceHeader | str:
    try:
        return read_header(path)
    except DicomFileError as error:
        return str(error)


def _walk_error(unreadable: list[tuple[str, str]]):
    def record(error: OSError) -> None:
        unreadable.append((str(error.filename), error.strerror or str(error)))

    return record


def check_root(root: str | os.PathLike[str]) -> Path:
    """``root`` as a Path; :class:`InputError` unless it is an existing folder."""
    root = Path(root)
    if not root.exists():
        raise InputError(
            f"DICOM folder not found: {root} (set lidc_root to the folder that holds the "
            "patient folders of the LIDC-IDRI download)"
        )
    if not root.is_dir():
        raise InputError(
            f"{root} is a file, not a folder: lidc_root must be the folder that holds the "
            "patient folders (LIDC-IDRI-0001, ...)"
        )
    return root


def iter_files(
    root: str | os.PathLike[str], unreadable: list[tuple[str, str]] | None = None
) -> Iterator[str]:
    """Every regular file under ``root``, in a stable (sorted) order; hidden files skipped.

    Folder links are followed (data spread over disks), each real folder once: a link back to
    a folder already walked (a loop) is logged and not entered again. Folders that cannot be
    listed are appended to ``unreadable`` as ``(path, error)`` (and logged) instead of
    vanishing; without the list they raise :class:`InputError`.
    """
    root = check_root(root)
    failed: list[tuple[str, str]] = [] if unreadable is None else unreadable
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True, onerror=_walk_error(failed)):
        real = os.path.realpath(folder)
        if real in seen:
            log.warning("not walking %s again: it leads to %s, walked already", folder, real)
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(folder, name)
    if unreadable is None and failed:
        path, error = failed[0]
        raise InputError(f"cannot read folder {path}: {error}")


def scan_folder(
    root: str | os.PathLike[str], workers: int = 1
) -> tuple[list[SliceHeader], list[str], list[tuple[str, str]]]:
    """Read the headers of every file under ``root``.

    Returns ``(headers, problems, unreadable)``: ``problems`` holds one message per file that
    is not a usable DICOM file (non-DICOM, unreadable, no series UID), skipped;
    ``unreadable`` the ``(path, error)`` of every folder that could not be listed.
    """
    unreadable: list[tuple[str, str]] = []
    paths = list(iter_files(root, unreadable))
    if unreadable and unreadable[0][0] == str(root):
        raise InputError(f"cannot read the DICOM folder {root}: {unreadable[0][1]}")
    if workers > 1 and len(paths) > 200:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_try_read_header, paths, chunksize=256))
    else:
        results = [_try_read_header(p) for p in paths]
    headers = [r for r in results if isinstance(r, SliceHeader)]
    problems = [r for r in results if isinstance(r, str)]
    return headers, problems, unreadable
