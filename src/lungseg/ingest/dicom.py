"""DICOM reading: header index, series grouping, slice ordering, quirk detection, HU pixels.

Files are grouped by SeriesInstanceUID, never by folder name (LIDC-IDRI exists both in the old UID
folder layout and in NBIA's descriptive one). :func:`plan_series` turns one series' headers into
a decision (status ``ok`` / ``excluded`` / ``skipped`` with a reason) and the ordered slices; the
index and the conversion both use it, so they cannot disagree.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from lungseg.ingest.dicom_header import pixel_data_location, read_selected
from lungseg.ingest.status import STATUS_EXCLUDED, STATUS_OK, STATUS_SKIPPED, spacing_problem

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


#: Two slices closer than this along the normal (mm) share a position.
DUPLICATE_TOLERANCE_MM = 0.01
#: A series needs this many distinct slice positions to form a volume.
MIN_SLICES = 3


class DicomFileError(ValueError):
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
#: tag numbers, looked up once
_TAGS = {keyword: tag_for_keyword(keyword) for keyword in HEADER_TAGS + PIXEL_TAGS}
_HEADER_TAG_NUMBERS = [_TAGS[keyword] for keyword in HEADER_TAGS]
_CONVERT_TAG_NUMBERS = list(_TAGS.values())


def _text(ds: Dataset, keyword: str) -> str:
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


def _unsigned(ds: Dataset, keyword: str):
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


def header_from_dataset(ds: Dataset, path: str | os.PathLike[str]) -> SliceHeader:
    """Extract a :class:`SliceHeader`; raises :class:`DicomFileError` without a series UID."""
    series_uid = _text(ds, "SeriesInstanceUID")
    if not series_uid:
        raise DicomFileError(f"{path}: DICOM file without SeriesInstanceUID")
    meta = getattr(ds, "file_meta", None)
    thickness = _text(ds, "SliceThickness")
    instance = _text(ds, "InstanceNumber")
    image_type = _text(ds, "ImageType")
    try:
        return SliceHeader(
            path=str(path),
            patient_id=_text(ds, "PatientID"),
            study_uid=_text(ds, "StudyInstanceUID"),
            series_uid=series_uid,
            sop_uid=_text(ds, "SOPInstanceUID"),
            modality=_text(ds, "Modality").upper(),
            instance_number=int(float(instance)) if instance else None,
            image_type=tuple(t.strip() for t in image_type.split("\\")) if image_type else (),
            position=_floats(_text(ds, "ImagePositionPatient"), 3),
            orientation=_floats(_text(ds, "ImageOrientationPatient"), 6),
            rows=int(_unsigned(ds, "Rows") or 0),
            columns=int(_unsigned(ds, "Columns") or 0),
            pixel_spacing=_floats(_text(ds, "PixelSpacing"), 2),
            slice_thickness=float(thickness) if thickness else None,
            transfer_syntax=str(getattr(meta, "TransferSyntaxUID", "") or ""),
        )
    except (TypeError, ValueError) as error:
        raise DicomFileError(f"{path}: malformed DICOM header ({error})") from error


def read_header(path: str | os.PathLike[str]) -> SliceHeader:
    """Read only the header tags the index needs (no pixel data)."""
    selected = read_selected(path, _HEADER_TAG_NUMBERS)
    if selected is not None:
        return header_from_dataset(selected[0], path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except InvalidDicomError as error:
        raise DicomFileError(f"{path}: not a DICOM file ({error})") from error
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DicomFileError(f"{path}: unreadable DICOM file ({error})") from error
    return header_from_dataset(ds, path)


def _try_read_header(path: str) -> SliceHeader | str:
    try:
        return read_header(path)
    except DicomFileError as error:
        return str(error)


def iter_files(root: str | os.PathLike[str]) -> Iterator[str]:
    """Every regular file under ``root``, in a stable (sorted) order; hidden files skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {root}")
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(folder, name)


def scan_folder(
    root: str | os.PathLike[str], workers: int = 1
) -> tuple[list[SliceHeader], list[str]]:
    """Read the headers of every file under ``root``.

    Returns ``(headers, problems)``: ``problems`` holds one message per file that is not a
    usable DICOM file (non-DICOM, unreadable, no series UID); those files are skipped.
    """
    paths = list(iter_files(root))
    if workers > 1 and len(paths) > 200:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_try_read_header, paths, chunksize=256))
    else:
        results = [_try_read_header(p) for p in paths]
    headers = [r for r in results if isinstance(r, SliceHeader)]
    problems = [r for r in results if isinstance(r, str)]
    return headers, problems


def group_by_series(headers: Iterable[SliceHeader]) -> dict[str, list[SliceHeader]]:
    """Headers by SeriesInstanceUID (insertion order of first appearance)."""
    groups: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in headers:
        groups[header.series_uid].append(header)
    return dict(groups)


@dataclass
class SeriesPlan:
    """The decision for one series and, when usable, its slices in volume order."""

    series_uid: str
    patient_id: str
    study_uid: str
    modality: str
    n_files: int
    status: str = STATUS_OK
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # handled quirks (ok series)
    slices: list[SliceHeader] = field(default_factory=list)  # kept, z ascending
    z_positions: list[float] = field(default_factory=list)  # along the normal, mm
    spacing: tuple[float, float, float] | None = None  # (z, y, x) mm
    origin: tuple[float, float, float] | None = None  # voxel [0,0,0], patient (z, y, x) mm
    direction: tuple[float, ...] | None = None  # rows: array axes z, y, x in patient (z, y, x)
    slice_thickness: float | None = None
    rows: int = 0
    columns: int = 0
    transfer_syntaxes: tuple[str, ...] = ()

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons + self.notes)

    def skip(self, reason: str) -> SeriesPlan:
        self.status = STATUS_SKIPPED
        self.reasons.append(reason)
        self.slices, self.z_positions = [], []
        return self


def _describe_counts(counter: Counter, unit: str = "files") -> str:
    return ", ".join(f"{value} ({n} {unit})" for value, n in counter.most_common())


def _single(values: list, what: str, plan: SeriesPlan) -> bool:
    """True when all values agree; otherwise marks the plan skipped with a reason."""
    counts = Counter(values)
    if len(counts) > 1:
        plan.skip(f"mixed {what}: {_describe_counts(counts)}")
        return False
    return True


def plan_series(headers: list[SliceHeader], spacing_tolerance: float = 0.05) -> SeriesPlan:
    """Decide what to do with one series and order its slices.

    - non-CT modality (CR, DX, ...) -> skipped; localizer images (ImageType LOCALIZER) dropped;
    - mixed matrix size, pixel spacing or orientation, missing position -> skipped;
    - duplicate slice positions -> one kept (lowest InstanceNumber, then path), noted;
    - missing slices or irregular spacing (deviation from the median spacing above
      ``spacing_tolerance`` as a fraction) -> excluded, with the reason; the volume uses the
      median spacing.
    """
    if not headers:
        raise ValueError("plan_series needs at least one header")
    first = headers[0]
    plan = SeriesPlan(
        series_uid=first.series_uid,
        patient_id=first.patient_id,
        study_uid=first.study_uid,
        modality=Counter(h.modality for h in headers).most_common(1)[0][0],
        n_files=len(headers),
    )
    if not _single([h.patient_id for h in headers], "PatientID", plan):
        return plan
    if plan.modality != "CT" or not _single([h.modality for h in headers], "modality", plan):
        return plan.skip(f"modality {plan.modality or 'missing'}, not CT")
    images = [h for h in headers if not h.is_localizer]
    if len(images) < len(headers):
        plan.notes.append(f"dropped {len(headers) - len(images)} localizer image(s)")
    if len(images) < MIN_SLICES:
        return plan.skip(f"only {len(images)} CT image(s), need {MIN_SLICES}")
    unplaced = [h for h in images if h.position is None or h.orientation is None]
    if unplaced:
        return plan.skip(
            f"{len(unplaced)} image(s) without ImagePositionPatient/ImageOrientationPatient, "
            f"e.g. {Path(unplaced[0].path).name}"
        )
    if not _single([f"{h.rows}x{h.columns}" for h in images], "matrix sizes", plan):
        return plan
    if not _single([h.pixel_spacing for h in images], "pixel spacings", plan):
        return plan
    orientations = [tuple(round(v, 4) for v in h.orientation) for h in images]
    if not _single(orientations, "orientations", plan):
        return plan

    row_dir = np.array(images[0].orientation[:3])
    col_dir = np.array(images[0].orientation[3:])
    normal = np.cross(row_dir, col_dir)
    along = np.array([float(np.dot(normal, h.position)) for h in images])
    numbers = [h.instance_number if h.instance_number is not None else 1 << 30 for h in images]
    order = sorted(range(len(images)), key=lambda i: (along[i], numbers[i], images[i].path))

    kept: list[int] = []
    for i in order:
        if kept and abs(along[i] - along[kept[-1]]) < DUPLICATE_TOLERANCE_MM:
            continue
        kept.append(i)
    if len(kept) < len(order):
        plan.notes.append(f"dropped {len(order) - len(kept)} image(s) at duplicate positions")
    if len(kept) < MIN_SLICES:
        return plan.skip(f"only {len(kept)} distinct slice positions, need {MIN_SLICES}")

    plan.slices = [images[i] for i in kept]
    plan.z_positions = [float(along[i]) for i in kept]
    step = float(np.median(np.diff(plan.z_positions)))
    problem = spacing_problem(plan.z_positions, spacing_tolerance)
    if problem:
        plan.reasons.append(problem)
        plan.status = STATUS_EXCLUDED

    first_slice = plan.slices[0]
    pixel_spacing = first_slice.pixel_spacing or (1.0, 1.0)
    plan.spacing = (step, float(pixel_spacing[0]), float(pixel_spacing[1]))
    x, y, z = first_slice.position
    plan.origin = (z, y, x)
    # Array axis (z, y, x) -> unit vectors in patient (z, y, x): normal, column dir, row dir.
    axes = [normal, col_dir, row_dir]
    plan.direction = tuple(float(v) for axis in axes for v in axis[::-1])
    thicknesses = [h.slice_thickness for h in plan.slices if h.slice_thickness is not None]
    plan.slice_thickness = float(np.median(thicknesses)) if thicknesses else step
    plan.rows, plan.columns = first_slice.rows, first_slice.columns
    plan.transfer_syntaxes = tuple(sorted({h.transfer_syntax for h in plan.slices}))
    return plan


#: Uncompressed little-endian transfer syntaxes (what LIDC-IDRI uses): their 16-bit pixels are
#: read straight from the file (see :func:`native_layout`).
NATIVE_LITTLE_ENDIAN = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian})


@dataclass(frozen=True)
class NativeLayout:
    """Pixel storage lungseg reads itself: uncompressed little-endian 16-bit, one frame."""

    rows: int
    columns: int
    signed: bool
    unused_bits: int  # BitsAllocated - BitsStored

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int16 if self.signed else np.uint16)

    @property
    def nbytes(self) -> int:
        return 2 * self.rows * self.columns

    @property
    def stored_range(self) -> tuple[int, int]:
        """The values BitsStored allows, once the unused bits are dropped."""
        bits = 16 - self.unused_bits
        if self.signed:
            return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return 0, (1 << bits) - 1

    def correct(self, stored: np.ndarray) -> np.ndarray:
        """As pydicom: drop the bits above BitsStored (sign-extending signed data), in place."""
        if self.unused_bits:
            np.left_shift(stored, self.unused_bits, out=stored)
            np.right_shift(stored, self.unused_bits, out=stored)
        return stored


def native_layout(ds: Dataset) -> NativeLayout | None:
    """The layout of a slice whose pixels lungseg reads straight from the file, else None.

    For these files lungseg gives the values of pydicom's ``pixel_array`` (tested) without its
    per-file validation and copies, which cost a third of the read time of a CT series;
    everything else (compressed, big-endian, other bit depths) is decoded by pydicom.
    """
    meta = getattr(ds, "file_meta", None)
    if sys.byteorder != "little":
        return None
    if getattr(meta, "TransferSyntaxUID", None) not in NATIVE_LITTLE_ENDIAN:
        return None
    bits_allocated = _unsigned(ds, "BitsAllocated")
    bits_stored = _unsigned(ds, "BitsStored")
    bits_stored = bits_allocated if bits_stored is None else bits_stored
    representation = _unsigned(ds, "PixelRepresentation")
    rows, columns = int(_unsigned(ds, "Rows") or 0), int(_unsigned(ds, "Columns") or 0)
    if (
        bits_allocated != 16
        or not isinstance(bits_stored, int)
        or not 1 <= bits_stored <= 16
        or representation not in (0, 1)
        or int(_unsigned(ds, "SamplesPerPixel") or 1) != 1
        or _text(ds, "NumberOfFrames") not in ("", "1")
        or rows * columns == 0
    ):
        return None
    return NativeLayout(rows, columns, bool(representation), 16 - bits_stored)


def _native_pixels(ds: Dataset, layout: NativeLayout | None = None) -> np.ndarray | None:
    """The stored values of a whole dataset with a :func:`native_layout`, else None."""
    layout = layout or native_layout(ds)
    data = ds.get("PixelData") if layout else None
    if layout is None or not isinstance(data, bytes) or len(data) < layout.nbytes:
        return None
    pixels = np.frombuffer(data, dtype=layout.dtype, count=layout.rows * layout.columns)
    return layout.correct(pixels.reshape(layout.rows, layout.columns).copy())


def read_header_and_pixel_offset(
    path: str | os.PathLike[str],
) -> tuple[Dataset, tuple[int, int] | None]:
    """The header elements conversion uses (pixel data not read) and where the pixel data lie."""
    selected = read_selected(path, _CONVERT_TAG_NUMBERS)
    if selected is not None:
        return selected
    try:
        with open(path, "rb") as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            location = None
            if syntax in NATIVE_LITTLE_ENDIAN:
                location = pixel_data_location(f)
    except InvalidDicomError as error:
        raise DicomFileError(f"{path}: not a DICOM file ({error})") from error
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DicomFileError(f"{path}: unreadable DICOM file ({error})") from error
    return ds, location


def _read_native_into(
    path: str, location: tuple[int, int], layout: NativeLayout, out: np.ndarray
) -> np.ndarray:
    """Read a slice's stored values straight into ``out`` (int16 memory); return them typed."""
    offset, length = location
    if length < layout.nbytes or out.shape != (layout.rows, layout.columns):
        raise DicomFileError(
            f"{path}: pixel data of {length} bytes, expected {layout.nbytes} for "
            f"{layout.rows} x {layout.columns} 16-bit pixels"
        )
    with open(path, "rb") as f:
        f.seek(offset)
        read = f.readinto(memoryview(out).cast("B"))
    if read != layout.nbytes:
        raise DicomFileError(f"{path}: pixel data truncated ({read} of {layout.nbytes} bytes)")
    return layout.correct(out.view(layout.dtype))


def _decode(ds: Dataset, path: str | os.PathLike[str]) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as error:  # pydicom raises many types for broken pixel data
        raise DicomFileError(f"{path}: cannot decode pixel data ({error})") from error
    if pixels.ndim != 2:
        raise DicomFileError(f"{path}: expected a single 2-D frame, got shape {pixels.shape}")
    return pixels


def _fits_int16_after_shift(pixels: np.ndarray, shift: int, bounds: tuple[int, int] | None) -> bool:
    """Whether every ``value + shift`` fits int16 and ``value`` itself reads the same as int16.

    ``bounds`` (from BitsStored) usually settles it; otherwise only the bound at risk is
    computed from the data: one pass over the slice instead of two.
    """
    info = np.iinfo(np.int16)
    if bounds is None:
        bounds = int(np.iinfo(pixels.dtype).min), int(np.iinfo(pixels.dtype).max)
    low, high = bounds
    if low + shift < info.min:
        low = int(pixels.min())
    if high > info.max or high + shift > info.max:
        high = int(pixels.max())
    return info.min <= low + shift and high <= info.max and high + shift <= info.max


def rescale(ds: Dataset, path: str | os.PathLike[str]) -> tuple[float, float]:
    """``(RescaleSlope, RescaleIntercept)``; absent, empty or zero slope 1, intercept 0."""
    try:
        slope = float(_text(ds, "RescaleSlope") or 1) or 1.0
        intercept = float(_text(ds, "RescaleIntercept") or 0)
    except ValueError as error:
        raise DicomFileError(f"{path}: malformed rescale slope or intercept ({error})") from error
    return slope, intercept


def _write_hu(
    ds: Dataset,
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    bounds: tuple[int, int] | None,
    out: np.ndarray,
) -> None:
    """HU = stored value * RescaleSlope + RescaleIntercept, rounded and clipped, into ``out``.

    ``pixels`` may share ``out``'s memory. The common case (slope 1, integer intercept, no
    possible overflow) is one int16 addition.
    """
    slope, intercept = rescale(ds, path)
    if slope == 1 and intercept.is_integer() and pixels.dtype in (np.int16, np.uint16):
        shift = int(intercept)
        if _fits_int16_after_shift(pixels, shift, bounds):
            np.add(pixels.view(np.int16), np.int16(shift), out=out)
            return
    if slope == 1 and intercept.is_integer():
        hu = pixels.astype(np.int32) + int(intercept)
    else:
        hu = np.rint(pixels.astype(np.float32) * slope + intercept)
    info = np.iinfo(np.int16)
    np.clip(hu, info.min, info.max, out=hu)
    out[...] = hu


def hu_into(ds: Dataset, path: str | os.PathLike[str], out: np.ndarray) -> None:
    """Decode one slice of a whole dataset and write it in Hounsfield units into ``out``.

    pydicom honours PixelRepresentation (signed/unsigned storage) and decodes compressed
    transfer syntaxes through pylibjpeg; see :func:`_write_hu` for the arithmetic.
    """
    layout = native_layout(ds)
    pixels = _native_pixels(ds, layout) if layout else None
    bounds = layout.stored_range if pixels is not None else None
    if pixels is None:
        pixels = _decode(ds, path)
    if pixels.shape != out.shape:
        raise DicomFileError(f"{path}: pixel data {pixels.shape} differs from {out.shape}")
    _write_hu(ds, path, pixels, bounds, out)


def slice_hu_into(
    header: Dataset, location: tuple[int, int] | None, path: str, out: np.ndarray
) -> None:
    """One slice in HU into ``out``: read straight from the file where possible, else pydicom."""
    layout = native_layout(header)
    if location is None or layout is None:
        hu_into(read_dataset(path), path, out)
        return
    pixels = _read_native_into(path, location, layout, out)
    _write_hu(header, path, pixels, layout.stored_range, out)


def hu_from_dataset(ds: Dataset, path: str | os.PathLike[str]) -> np.ndarray:
    """One slice in Hounsfield units as a new int16 ``(rows, columns)`` array."""
    out = np.empty((int(ds.Rows), int(ds.Columns)), dtype=np.int16)
    hu_into(ds, path, out)
    return out


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """A whole DICOM file; :class:`DicomFileError` names the file when that fails."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as error:
        raise DicomFileError(f"{path}: not a DICOM file ({error})") from error
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DicomFileError(f"{path}: unreadable DICOM file ({error})") from error


def read_hu(path: str | os.PathLike[str]) -> np.ndarray:
    """One file's slice in HU (see :func:`hu_from_dataset`)."""
    return hu_from_dataset(read_dataset(path), path)


def read_series(
    paths: Iterable[str | os.PathLike[str]], spacing_tolerance: float = 0.05
) -> tuple[SeriesPlan, np.ndarray | None]:
    """Read one series' files; return its plan and int16 HU volume ``(z, y, x)``.

    The volume is None when the plan says ``skipped``. The headers are read first (not the
    pixel data); once the slice order is known each slice's pixels are read straight from its
    file into the volume (pydicom decodes compressed ones), so the peak memory is one volume.
    """
    found: dict[str, tuple[Dataset, tuple[int, int] | None]] = {}
    headers: list[SliceHeader] = []
    for path in paths:
        ds, location = read_header_and_pixel_offset(path)
        header = header_from_dataset(ds, path)
        headers.append(header)
        found[header.path] = (ds, location)
    if not headers:
        raise ValueError("read_series got no files")
    plan = plan_series(headers, spacing_tolerance)
    if plan.status == STATUS_SKIPPED:
        return plan, None
    volume = np.empty((plan.n_slices, plan.rows, plan.columns), dtype=np.int16)
    for k, header in enumerate(plan.slices):
        ds, location = found.pop(header.path)
        slice_hu_into(ds, location, header.path, volume[k])
    return plan, volume
