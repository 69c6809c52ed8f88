"""NIfTI-1 output (``.nii.gz``) that 3D Slicer, ITK and nibabel place where the CT lies.

The array is stored in NIfTI's (x, y, z) = (column, row, slice) order with the RAS affine of
:func:`lungseg.predict.geometry.affine_ras` as both qform and sform (code 1, scanner), so every
reader, whichever form it prefers, puts a voxel at the same patient position as the DICOM.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from lungseg.core.atomic import atomic_path
from lungseg.core.errors import OutputError
from lungseg.predict.geometry import affine_ras

__all__ = ["affine_ras", "write_nifti"]

#: qform/sform code 1: "scanner-based anatomical coordinates" (the DICOM patient frame)
SCANNER = 1
#: integer types a NIfTI-1 image keeps as they are (HU image int16, label maps uint8/uint16)
KEPT_DTYPES = (np.int16, np.uint8, np.uint16, np.int32, np.uint32, np.float32)


def write_nifti(
    path: str | os.PathLike[str],
    volume_zyx: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float],
) -> Path:
    """Write a (z, y, x) volume as ``path`` (``.nii.gz``), atomically; returns the path.

    The dtype is kept (no scaling): int16 HU stays int16, a uint8/uint16 label map stays a
    label map. gzip without a timestamp, so the same volume gives the same bytes.
    """
    target = Path(path)
    if not target.name.endswith(".nii.gz"):
        raise OutputError(f"{target}: a NIfTI output must end in .nii.gz")
    volume = np.asarray(volume_zyx)
    if volume.ndim != 3:
        raise ValueError(f"{target}: expected a 3-D (z, y, x) volume, got shape {volume.shape}")
    if volume.dtype not in KEPT_DTYPES:
        raise ValueError(f"{target}: dtype {volume.dtype} not one of {KEPT_DTYPES}")
    affine = affine_ras(spacing, origin, direction)
    image = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), affine)
    image.set_data_dtype(volume.dtype)
    image.set_qform(affine, code=SCANNER)
    image.set_sform(affine, code=SCANNER)
    image.header.set_xyzt_units(xyz="mm")
    image.header["scl_slope"], image.header["scl_inter"] = 1.0, 0.0
    with (
        atomic_path(target) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as gz,
    ):
        image.to_stream(gz)
    return target
