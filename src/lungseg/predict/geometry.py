"""lungseg's (z, y, x) geometry -> the (x, y, z) conventions of NIfTI and ITK.

lungseg keeps volumes as array axes (z, y, x) with ``spacing`` (z, y, x) mm, ``origin`` the
patient position of voxel [0, 0, 0] in (z, y, x) order and ``direction`` row a = array axis a in
patient (z, y, x) (:class:`lungseg.ingest.series.SeriesPlan`). NIfTI and ITK index voxels as
(i, j, k) = (column, row, slice) = (x, y, z) and give positions as (x, y, z): DICOM LPS for ITK,
RAS (x and y negated) for NIfTI. One conversion here serves both writers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: LPS -> RAS: x (left) and y (posterior) change sign.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_geometry(
    spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    """ITK's ``(spacing_xyz, origin_lps, direction)`` of a lungseg (z, y, x) geometry.

    ``direction`` is 3x3 with column c the LPS unit vector of index axis c (x, y, z), ITK's
    convention (``SetDirection`` takes it row-major).
    """
    spacing_zyx = np.asarray(spacing, dtype=float).reshape(3)
    origin_zyx = np.asarray(origin, dtype=float).reshape(3)
    rows = np.asarray(direction, dtype=float).reshape(3, 3)  # row a: array axis a, patient zyx
    # index axis c (x, y, z) is array axis 2 - c; its patient vector reversed to (x, y, z) order
    columns = rows[::-1, ::-1].T
    return tuple(spacing_zyx[::-1].tolist()), tuple(origin_zyx[::-1].tolist()), columns


def affine_lps(
    spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]
) -> np.ndarray:
    """4x4 affine: voxel index (x, y, z) -> DICOM LPS mm."""
    spacing_xyz, origin_lps, columns = lps_geometry(spacing, origin, direction)
    affine = np.eye(4)
    affine[:3, :3] = columns * np.asarray(spacing_xyz)
    affine[:3, 3] = origin_lps
    return affine


def affine_ras(
    spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]
) -> np.ndarray:
    """4x4 affine: NIfTI voxel index (i, j, k) = (x, y, z) -> RAS mm (as Slicer and ITK read it)."""
    affine = affine_lps(spacing, origin, direction)
    affine[:3] = LPS_TO_RAS @ affine[:3]
    return affine
