"""Small real CT series written with pydicom, for the ``lungseg predict`` writers' tests.

Each voxel's HU is unique (a permutation), so a voxel read from the wrong place never matches;
the pixel spacing differs between rows and columns and from the slice step, and the matrix is
not square, so a swapped axis moves voxels. :func:`voxel_lps` computes a pixel's patient
position from its file alone (ImagePositionPatient + PixelSpacing + ImageOrientationPatient),
independently of lungseg's geometry.

:func:`export_series` copies a sample series into a flat folder of renamed files (a user's
export); :func:`start_predict` starts the real ``lungseg predict`` command line in a new process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

N_SLICES, ROWS, COLUMNS = 6, 12, 10
PIXEL_SPACING = (0.7, 0.9)  # (between rows, between columns) mm, DICOM order
SLICE_STEP = 1.5
RESCALE_INTERCEPT = -1024


def _rotation(z_degrees: float, x_degrees: float) -> np.ndarray:
    a, b = np.radians(z_degrees), np.radians(x_degrees)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


_OBLIQUE = _rotation(30, 20)


@dataclass(frozen=True)
class Orientation:
    """One way a series lies in the patient and is stored."""

    name: str
    row: tuple[float, float, float]  # ImageOrientationPatient[:3], LPS
    column: tuple[float, float, float]  # ImageOrientationPatient[3:], LPS
    descending: bool = False  # instance 1 (first file) is the last slice along the normal
    dtype: type = np.int16  # stored pixel type (PixelRepresentation 1 or 0)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row, self.column)


ORIENTATIONS = [
    Orientation("axial", (1, 0, 0), (0, 1, 0)),
    Orientation("oblique", tuple(_OBLIQUE[:, 0]), tuple(_OBLIQUE[:, 1]), dtype=np.uint16),
    Orientation("axial-descending", (1, 0, 0), (0, 1, 0), descending=True),
    Orientation("coronal-descending", (1, 0, 0), (0, 0, -1), descending=True, dtype=np.uint16),
]
ORIGIN = np.array([-120.5, 33.25, -80.0])  # LPS of the first slice along the normal


@dataclass(frozen=True)
class WrittenSeries:
    paths: list[Path]  # in file (instance) order
    hu: dict[Path, np.ndarray]  # each file's pixels in HU, (rows, columns)


def write_ct_series(folder: Path, orientation: Orientation, seed: int = 0) -> WrittenSeries:
    """Write ``N_SLICES`` files ``1-NNN.dcm``; instance 1 first (see ``descending``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hu_volume = (rng.permutation(N_SLICES * ROWS * COLUMNS) - 300).reshape(N_SLICES, ROWS, COLUMNS)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    order = range(N_SLICES - 1, -1, -1) if orientation.descending else range(N_SLICES)
    written = WrittenSeries([], {})
    for instance, k in enumerate(order, start=1):
        position = ORIGIN + k * SLICE_STEP * orientation.normal
        stored = (hu_volume[k] - RESCALE_INTERCEPT).astype(orientation.dtype)
        ds = _slice(study, series, frame, instance, position, orientation, stored)
        path = folder / f"1-{instance:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.paths.append(path)
        written.hu[path] = hu_volume[k].astype(np.int16)
    return written


def _slice(study, series, frame, instance, position, orientation, stored) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyDate = ds.SeriesDate = "20000101"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "lungseg tests"
    ds.ReferringPhysicianName = ""
    ds.PatientName, ds.PatientID = "TEST^PREDICT", "LIDC-IDRI-9999"
    ds.PatientBirthDate = ds.PatientSex = ""
    ds.SliceThickness = f"{SLICE_STEP:g}"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyID = ""
    ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 3000, instance, 1
    ds.ImagePositionPatient = [f"{v:.10g}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.10g}" for v in (*orientation.row, *orientation.column)]
    ds.FrameOfReferenceUID = frame
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [f"{v:g}" for v in PIXEL_SPACING]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{RESCALE_INTERCEPT}", "1", "HU"
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def voxel_lps(path: Path, row: int, column: int) -> np.ndarray:
    """DICOM patient position (LPS mm) of pixel (row, column) of the slice in ``path``."""
    ds = dcmread(path, stop_before_pixels=True)
    position = np.array(ds.ImagePositionPatient, dtype=float)
    cosines = np.array(ds.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    # the column index moves along the row direction (IOP[:3]) by the column spacing (PixelSpacing
    # [1]); the row index along the column direction (IOP[3:]) by the row spacing ([0])
    return position + column * column_spacing * cosines[:3] + row * row_spacing * cosines[3:]


def lps_to_ras(point: np.ndarray) -> np.ndarray:
    return np.asarray(point, dtype=float) * np.array([-1.0, -1.0, 1.0])


#: (file index, row, column) probed in each series: corners, an inner voxel, other slices
PROBES = [(0, 0, 0), (0, ROWS - 1, 0), (0, 0, COLUMNS - 1), (2, 5, 7), (N_SLICES - 1, 11, 9)]


# --- `lungseg predict` as a user runs it (tests/test_predict.py, tests/test_predict_outdir.py) --

#: the real command line, in a new process
LUNGSEG = [sys.executable, "-m", "lungseg.cli"]


def export_series(sample_lidc, dest: Path) -> tuple[Path, str]:
    """The first sample series copied into a non-LIDC layout: one flat folder, files renamed."""
    scan = sample_lidc.scans[0]
    source = next(p for p in sample_lidc.lidc_root.rglob("*.dcm")).parent
    dest.mkdir(parents=True)
    for k, path in enumerate(sorted(source.glob("*.dcm"))):
        shutil.copy(path, dest / f"IMG{k:05d}")
    assert dcmread(next(dest.iterdir())).SeriesInstanceUID == scan.series_uid
    return dest, scan.series_uid


def start_predict(*args, cwd: Path) -> subprocess.Popen:
    """``lungseg predict ARGS`` started in a new process (stdout and stderr to a pipe)."""
    return subprocess.Popen(
        [*LUNGSEG, "predict", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
