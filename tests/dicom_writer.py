"""The tests' one DICOM writer: CT Image Storage slices and series, written with plain pydicom.

Independent of the code under test (no lungseg import): what lungseg reads back is checked
against what was written here. Every test that needs a DICOM file writes it with this module;
tests/test_architecture.py checks that no other test module calls ``save_as`` / ``dcmwrite``.

- :func:`write_slice` ``(path, stored=None, *, ...)``: one file. Geometry (``z`` or
  ``position``, ``orientation``, ``pixel_spacing``, ``thickness``), identity (``series_uid``,
  ``study_uid``, ``frame_uid``, ``patient_id``, ``instance``, ``modality``, ``image_type``),
  pixels (``stored`` int16 -> PixelRepresentation 1, uint16 -> 0; without it a synthetic
  ``shape`` matrix of ``dtype`` whose values are ``1000 + index % 50 + int(z)``), rescale
  (``slope``, ``intercept``), ``bits_stored``, encoding (``transfer_syntax``: explicit or
  implicit VR little endian, explicit VR big endian; ``compress`` with a pydicom compression
  UID; ``file_meta=False``: no file meta group, the dataset right after the preamble).
  Faults: ``tags`` sets (or, with ``None``, deletes) any element by keyword after the standard
  header, e.g. ``{"PixelData": None}`` or ``{"PixelData": b"short"}``; ``edit(ds)`` changes
  the dataset in any other way (private elements) just before it is written.
- :func:`write_series` ``(folder, hu=None, *, zs=None, step=2.5, ...)``: one file per slice,
  slice k at ``origin + offset_k * normal`` (``offset_k = zs[k]``, else ``k * step``); pixels
  from ``hu`` (z, y, x; stored = (HU - intercept) / slope as ``dtype``) or ``stored`` (2-D: every
  slice, 3-D: per slice) or synthetic. ``descending``: instance 1 is the last slice along the
  normal. ``name``: file name pattern, formatted with the instance number. ``slice_tags``:
  per-instance ``tags``. Every other keyword goes to :func:`write_slice`. Returns a
  :class:`WrittenSeries` (paths in instance order, series uid, each file's HU).
- :func:`rewrite` ``(path, edit)``: a written file read back, changed by ``edit(ds)`` and written
  again as it was (a file damaged after the fact: short pixel data).

Defaults: one fixed series / study / frame of reference, so that slices written one by one
form one series; pass ``series_uid`` (e.g. ``generate_uid()``) for a second series. Decimal
strings are written with up to 10 significant digits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.uid import CTImageStorage, ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

SERIES_UID = "1.2.826.0.1.3680043.8.498.1"
STUDY_UID = "1.2.826.0.1.3680043.8.498.2"
FRAME_UID = "1.2.826.0.1.3680043.8.498.3"
PATIENT_ID = "LIDC-IDRI-9001"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ORIGIN = (-100.0, -120.0, 0.0)  # LPS mm of the slice at offset 0 (z = 0)
CT_IMAGE = ("ORIGINAL", "PRIMARY", "AXIAL")

Edit = Callable[[Dataset], None]


def _ds(values) -> list[str]:
    return [f"{float(v):.10g}" for v in values]


def _synthetic(shape: tuple[int, int], z: float, dtype) -> np.ndarray:
    base = 1000 + np.arange(shape[0] * shape[1]).reshape(shape) % 50
    return (base + int(z)).astype(dtype)


def write_slice(
    path: Path,
    stored: np.ndarray | None = None,
    *,
    z: float = 0.0,
    position: Sequence[float] | None = None,
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    thickness: float = 2.5,
    shape: tuple[int, int] = (8, 8),
    dtype=np.int16,
    slope: float = 1.0,
    intercept: float = -1024.0,
    bits_stored: int = 16,
    series_uid: str = SERIES_UID,
    study_uid: str = STUDY_UID,
    frame_uid: str = FRAME_UID,
    patient_id: str = PATIENT_ID,
    patient_name: str = "TEST^LUNGSEG",
    instance: int = 1,
    modality: str = "CT",
    image_type: Sequence[str] = CT_IMAGE,
    transfer_syntax: str = ExplicitVRLittleEndian,
    compress: str | None = None,
    file_meta: bool = True,
    tags: Mapping[str, Any] | None = None,
    edit: Edit | None = None,
) -> Path:
    """Write one CT slice the way a scanner would; see the module's docstring."""
    position = (ORIGIN[0], ORIGIN[1], z) if position is None else tuple(position)
    if stored is None:
        stored = _synthetic(shape, position[2], dtype)
    stored = np.asarray(stored)
    if stored.dtype not in (np.int16, np.uint16) or stored.ndim != 2:
        raise ValueError(f"stored pixels must be 2-D int16 or uint16, not {stored.dtype}")
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyDate = ds.SeriesDate = "20000101"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "lungseg tests"
    ds.ReferringPhysicianName = ""
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.PatientBirthDate = ds.PatientSex = ""
    ds.SliceThickness = f"{thickness:.10g}"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyID = ""
    ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 3000, instance, 1
    ds.ImagePositionPatient = _ds(position)
    ds.ImageOrientationPatient = _ds(orientation)
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = _ds(pixel_spacing)
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = (
        f"{intercept:.10g}",
        f"{slope:.10g}",
        "HU",
    )
    ds.PixelData = stored.astype(stored.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW"
    if compress:
        ds.compress(compress)
    for keyword, value in (tags or {}).items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if edit is not None:
        edit(ds)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not file_meta:  # the dataset right after the preamble and "DICM"
        del ds.file_meta
        ds.preamble = b"\0" * 128
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    elif transfer_syntax == ExplicitVRBigEndian:  # pydicom only re-encodes when forced
        ds.preamble = b"\0" * 128
        validate_file_meta(ds.file_meta, enforce_standard=True)
        ds.file_meta.FileMetaInformationGroupLength = 0  # present: dcmwrite sets its value
        pydicom.dcmwrite(path, ds, little_endian=False, implicit_vr=False, force_encoding=True)
    else:
        ds.save_as(path, enforce_file_format=True)
    return path


@dataclass(frozen=True)
class WrittenSeries:
    series_uid: str
    paths: list[Path] = field(default_factory=list)  # in instance order
    hu: dict[Path, np.ndarray] = field(default_factory=dict)  # each file's HU, (rows, columns)


def write_series(
    folder: Path,
    hu: np.ndarray | None = None,
    *,
    zs: Sequence[float] | None = None,
    step: float = 2.5,
    origin: Sequence[float] = ORIGIN,
    orientation: Sequence[float] = AXIAL,
    stored: np.ndarray | None = None,
    dtype=np.int16,
    slope: float = 1.0,
    intercept: float = -1024.0,
    descending: bool = False,
    name: str = "1-{:03d}.dcm",
    series_uid: str = SERIES_UID,
    thickness: float | None = None,
    slice_tags: Mapping[int, Mapping[str, Any]] | None = None,
    tags: Mapping[str, Any] | None = None,
    **slice_options,
) -> WrittenSeries:
    """Write a CT series, one file per slice; see the module's docstring."""
    volume = None
    if hu is not None:
        hu = np.asarray(hu)
        volume = np.rint((hu - intercept) / slope).astype(dtype)
    elif stored is not None and np.ndim(stored) == 3:
        volume = np.asarray(stored)
    n = len(zs) if zs is not None else len(volume) if volume is not None else None
    if n is None:
        raise ValueError("write_series needs zs, hu or a 3-D stored volume")
    if volume is not None and len(volume) != n:
        raise ValueError(f"{len(volume)} slices of pixels for {n} positions")
    offsets = [float(z) for z in zs] if zs is not None else [k * step for k in range(n)]
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, column)
    order = range(n - 1, -1, -1) if descending else range(n)
    written = WrittenSeries(series_uid)
    for instance, k in enumerate(order, start=1):
        position = np.asarray(origin, dtype=float) + offsets[k] * normal
        pixels = volume[k] if volume is not None else stored
        if pixels is None:
            pixels = _synthetic(slice_options.get("shape", (8, 8)), position[2], dtype)
        path = write_slice(
            Path(folder) / name.format(instance),
            pixels,
            position=position,
            orientation=orientation,
            thickness=step if thickness is None else thickness,
            slope=slope,
            intercept=intercept,
            series_uid=series_uid,
            instance=instance,
            tags={**(tags or {}), **(slice_tags or {}).get(instance, {})},
            **slice_options,
        )
        written.paths.append(path)
        written.hu[path] = np.asarray(pixels, dtype=float) * slope + intercept
    return written


def rewrite(path: Path, edit: Edit) -> Path:
    """Read a written file, change it with ``edit(ds)`` and write it back as it was encoded."""
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path)
    return path


def short_pixel_data(n_bytes: int = 10) -> Edit:
    """An ``edit``: pixel data cut to ``n_bytes`` (a consistent header, too few pixels)."""

    def cut(ds: Dataset) -> None:
        ds.PixelData = ds.PixelData[:n_bytes]

    return cut
