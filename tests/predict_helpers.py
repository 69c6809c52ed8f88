"""Small real CT series (written by tests/dicom_writer.py) for the ``lungseg predict`` writers'
tests: :func:`probe_series`.

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
from dicom_writer import WrittenSeries, write_series
from pydicom import dcmread
from pydicom.uid import generate_uid

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


def probe_series(folder: Path, orientation: Orientation, seed: int = 0) -> WrittenSeries:
    """``N_SLICES`` files ``1-NNN.dcm`` of unique HU (tests/dicom_writer.py writes them);
    instance 1 first (see ``descending``); a new series, study and frame of reference."""
    rng = np.random.default_rng(seed)
    hu_volume = (rng.permutation(N_SLICES * ROWS * COLUMNS) - 300).reshape(N_SLICES, ROWS, COLUMNS)
    return write_series(
        folder,
        hu_volume,
        step=SLICE_STEP,
        origin=ORIGIN,
        orientation=(*orientation.row, *orientation.column),
        pixel_spacing=PIXEL_SPACING,
        dtype=orientation.dtype,
        intercept=RESCALE_INTERCEPT,
        descending=orientation.descending,
        series_uid=generate_uid(),
        study_uid=generate_uid(),
        frame_uid=generate_uid(),
    )


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
