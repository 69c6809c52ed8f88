"""Detector training data streamed from the detection volumes' HDF5 files.

:func:`index_scans` reads every volume of a subset once, keeping only what is small: its path,
its nodule voxels (for foreground patches) and nodule centres (for heatmaps). Images and targets
are read back as they are needed (:meth:`ScanIndex.read`: a whole scan, or only a patch's box),
so a training job's memory is one batch, whatever the number of training scans (docs/detection.md
has the measured figures; tests/test_detection_stream.py checks it with N and 10 N volumes).

The target channels of a read box (``(C, D, H, W)`` float32):

0. loss ``focal``: the Gaussian heatmap of the scan's nodule centres
   (:func:`lungseg.detection.heatmap.gaussian_heatmap`, ``heatmap_sigma_mm``); else the nodule mask;
1. 1 where the voxel counts, 0 on the ignore label (other annotated findings);
2. only with ``nodule_balance_voxels`` > 0 and a mask target: the nodule voxels' extra BCE weight
   (:func:`nodule_balance`, over the components within the box).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hdf5plugin  # noqa: F401 (registers the Blosc filters of the detection volumes)
import numpy as np
import torch
from scipy import ndimage

from lungseg.detection.heatmap import centres_of, gaussian_heatmap
from lungseg.detection.volumes import IGNORE, NODULE
from lungseg.inference.intensity import normalise_hu
from lungseg.io.hdf5 import read_volume


def nodule_balance(nodule: np.ndarray, balance_voxels: int) -> np.ndarray:
    """Per voxel: ``max(1, balance_voxels / n)`` on a nodule of n voxels, 1 elsewhere."""
    labels, n = ndimage.label(nodule, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float32)
    factor = np.maximum(1.0, balance_voxels / np.maximum(sizes, 1.0))
    factor[0] = 1.0
    return factor[labels]


@dataclass(frozen=True)
class TargetSpec:
    """How a read box becomes network input and target channels."""

    hu_min: float
    hu_max: float
    heatmap: bool
    sigma_vox: tuple[float, float, float]
    balance_voxels: int


@dataclass
class ScanIndex:
    """One subset's scans: paths and small per-scan facts; images stay on disk."""

    paths: list[str]
    series_uids: list[str]
    shape: tuple[int, int, int]
    foreground: list[np.ndarray]  # per scan: (K, 3) nodule voxels
    centres: list[np.ndarray]  # per scan: (M, 3) nodule centres (voxels)
    spec: TargetSpec

    def __len__(self) -> int:
        return len(self.paths)

    def read(
        self, scan: int, corner: Sequence[int] | None = None, size: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image ``(1, D, H, W)`` and target channels of a box (default: all)."""
        if corner is None:
            corner, size = (0, 0, 0), self.shape
        box = tuple(slice(int(c), int(c) + int(s)) for c, s in zip(corner, size, strict=True))
        image_hu, labels, _ = read_volume(self.paths[scan], box)
        spec = self.spec
        image = normalise_hu(image_hu, spec.hu_min, spec.hu_max)[None]
        nodule = labels == NODULE
        if spec.heatmap:
            first = gaussian_heatmap(labels.shape, self.centres[scan], spec.sigma_vox, corner)
        else:
            first = nodule.astype(np.float32)
        channels = [first, (labels != IGNORE).astype(np.float32)]
        if spec.balance_voxels > 0 and not spec.heatmap:
            channels.append(nodule_balance(nodule, spec.balance_voxels))
        return torch.from_numpy(image), torch.from_numpy(np.stack(channels).astype(np.float32))


def index_scans(
    paths: Sequence[str], series_uids: Sequence[str], spec: TargetSpec, digest
) -> ScanIndex:
    """Read each volume once (one at a time) for its nodule voxels and centres."""
    foreground, centres, shapes = [], [], set()
    for path in paths:
        image, labels, _ = read_volume(path)
        digest.update(image.tobytes() + labels.tobytes())
        nodule = labels == NODULE
        foreground.append(np.argwhere(nodule).astype(np.int32))
        centres.append(centres_of(nodule))
        shapes.add(tuple(int(s) for s in labels.shape))
    if len(shapes) > 1:
        raise ValueError(f"detection volumes of different shapes {sorted(shapes)}: {paths[:3]}")
    return ScanIndex(
        paths=[str(Path(p)) for p in paths],
        series_uids=list(series_uids),
        shape=shapes.pop(),
        foreground=foreground,
        centres=centres,
        spec=spec,
    )


def new_digest():
    return hashlib.sha256()
