"""Pixel data: each slice's stored values straight from its file into the volume, in HU.

Uncompressed little-endian 16-bit slices (all of LIDC-IDRI) are read from the offset pydicom
located (:func:`lungseg.ingest.dicom.pixel_data_location`) straight into the volume's memory;
every other file is decoded by pydicom (``pixel_array``, compressed transfer syntaxes through
pylibjpeg). :func:`read_series` reads one series: headers, plan, then the pixels in volume
order.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from lungseg.core.settings import schema_defaults
from lungseg.ingest.dicom import (
    CONVERT_TAG_NUMBERS,
    DicomFileError,
    SliceHeader,
    element_text,
    element_unsigned,
    header_from_dataset,
    pixel_data_location,
    read_selected,
)
from lungseg.ingest.series import SeriesPlan, plan_series
from lungseg.ingest.status import STATUS_SKIPPED

#: Uncompressed little-endian transfer syntaxes (what LIDC-IDRI uses): their 16-bit pixels are
#: read straight from the file (see :func:`native_layout`).
#: The schema's ``ingest.spacing_tolerance``: :func:`read_series`' default for callers without
#: settings (``lungseg predict``, the throughput benchmark); read from the schema, not repeated.
SPACING_TOLERANCE: float = schema_defaults("ingest")["spacing_tolerance"]
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
    bits_allocated = element_unsigned(ds, "BitsAllocated")
    bits_stored = element_unsigned(ds, "BitsStored")
    bits_stored = bits_allocated if bits_stored is None else bits_stored
    representation = element_unsigned(ds, "PixelRepresentation")
    rows, columns = (
        int(element_unsigned(ds, "Rows") or 0),
        int(element_unsigned(ds, "Columns") or 0),
    )
    if (
        bits_allocated != 16
        or not isinstance(bits_stored, int)
        or not 1 <= bits_stored <= 16
        or representation not in (0, 1)
        or int(element_unsigned(ds, "SamplesPerPixel") or 1) != 1
        or element_text(ds, "NumberOfFrames") not in ("", "1")
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
    """The header elements conversion uses (pixel data not read) and where the pixel data lie.

    The location is given for uncompressed little-endian files only (read straight from the
    file); None sends the slice through pydicom's decoder.
    """
    ds = read_selected(path, CONVERT_TAG_NUMBERS)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    location = pixel_data_location(ds) if syntax in NATIVE_LITTLE_ENDIAN else None
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
        slope = float(element_text(ds, "RescaleSlope") or 1) or 1.0
        intercept = float(element_text(ds, "RescaleIntercept") or 0)
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
    paths: Iterable[str | os.PathLike[str]], spacing_tolerance: float = SPACING_TOLERANCE
) -> tuple[SeriesPlan, np.ndarray | None]:
    """Read one series' files; return its plan and int16 HU volume ``(z, y, x)``.

    ``spacing_tolerance`` (see :func:`plan_series`) defaults to the schema's
    ``ingest.spacing_tolerance`` (:data:`SPACING_TOLERANCE`); the convert job passes its own.

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
