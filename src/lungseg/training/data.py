"""Training data: the crops of one split subset, intensity normalisation and light augmentation.

The crops are read into memory once, as float32 (image and mask: 8 bytes a voxel, 2 MB a 64^3
crop; ~1200 LIDC nodules at 64^3 ~2.5 GB, config/lidc.yaml sizes the train jobs for it); batches
are drawn by a seeded ``torch.Generator`` so that shuffling and augmentation are reproducible and
their state can be checkpointed (see :mod:`lungseg.training.trainer`).
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hdf5plugin  # noqa: F401 (registers the Blosc filters the crops may be written with)
import numpy as np
import pandas as pd
import torch

from lungseg.dataset.split import SUBSETS
from lungseg.inference.intensity import normalise_hu
from lungseg.io.hdf5 import REBUILD_CROPS, open_hdf5


@dataclass
class CropSet:
    """Normalised images ``(N, 1, D, H, W)`` float32 and binary masks of one subset."""

    images: torch.Tensor
    masks: torch.Tensor
    nodule_ids: list[str]

    def __len__(self) -> int:
        return len(self.nodule_ids)


def read_subset_indices(crops_csv: str | Path, split_csv: str | Path) -> dict[str, np.ndarray]:
    """Row indices into crops.h5 of each subset, matched by ``nodule_id``."""
    crops = pd.read_csv(crops_csv)
    split = pd.read_csv(split_csv)
    for frame, path, columns in (
        (crops, crops_csv, ["nodule_id"]),
        (split, split_csv, ["nodule_id", "subset"]),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
    unknown = sorted(set(split["subset"]) - set(SUBSETS))
    if unknown:
        raise ValueError(f"{split_csv}: unknown subset value(s) {unknown}; expected {SUBSETS}")
    subset_of = dict(zip(split["nodule_id"], split["subset"], strict=True))
    unsplit = sorted(set(crops["nodule_id"]) - set(subset_of))
    if unsplit:
        raise ValueError(f"{split_csv}: no subset for crop nodule(s) {unsplit[:5]}")
    subsets = crops["nodule_id"].map(subset_of).to_numpy()
    indices = {name: np.flatnonzero(subsets == name) for name in SUBSETS}
    for name, rows in indices.items():
        if len(rows) == 0:
            raise ValueError(f"{split_csv}: no crops in subset {name!r} ({crops_csv})")
    return indices


def read_crops(crops_h5: str | Path, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` int16 and ``mask`` uint8 arrays of crops.h5, checked against the contract."""
    with open_hdf5(crops_h5, REBUILD_CROPS) as file:
        for name in ("image", "mask"):
            if name not in file:
                raise ValueError(f"{crops_h5}: no dataset {name!r}")
        images, masks = file["image"][()], file["mask"][()]
    if images.ndim != 4 or images.shape != masks.shape:
        raise ValueError(
            f"{crops_h5}: expected image and mask of one shape (N, D, H, W), "
            f"got {images.shape} and {masks.shape}"
        )
    if len(images) != n_rows:
        raise ValueError(f"{crops_h5}: {len(images)} crops but crops.csv has {n_rows} rows")
    return images, masks


def crop_grid(crops_h5: str | Path) -> dict[str, Any]:
    """The grid the crops were cut on, as crops.h5 records it (``crops`` rule): ``crop_size``
    (voxels) and ``target_spacing`` (mm, z y x; None: each scan's own). A model's checkpoint
    keeps it, so the predictor cuts crops as the model was trained on, whatever the config says
    now."""
    with open_hdf5(crops_h5, REBUILD_CROPS) as file:
        if "size" not in file.attrs or "target_spacing" not in file.attrs:
            raise ValueError(f"{crops_h5}: no crop grid attributes (size, target_spacing)")
        size, spacing = file.attrs["size"], file.attrs["target_spacing"]
    spacing = ast.literal_eval(spacing) if isinstance(spacing, str) else spacing
    return {
        "crop_size": [int(s) for s in size],
        "target_spacing": None if spacing is None else [float(s) for s in spacing],
    }


def load_crop_sets(
    crops_h5: str | Path,
    crops_csv: str | Path,
    split_csv: str | Path,
    hu_min: float,
    hu_max: float,
) -> tuple[dict[str, CropSet], str]:
    """The ``train`` and ``val`` crop sets, and a fingerprint of the data they hold.

    The fingerprint (SHA-256 of the crops and the subset assignment) lets a resumed run check that
    it continues on the same data.
    """
    indices = read_subset_indices(crops_csv, split_csv)
    nodule_ids = pd.read_csv(crops_csv)["nodule_id"].astype(str).tolist()
    images, masks = read_crops(crops_h5, len(nodule_ids))
    digest = hashlib.sha256()
    for part in (images, masks, indices["train"], indices["val"]):
        digest.update(np.ascontiguousarray(part).tobytes())
    sets = {
        name: CropSet(
            images=torch.from_numpy(normalise_hu(images[rows], hu_min, hu_max)).unsqueeze(1),
            masks=torch.from_numpy((masks[rows] > 0).astype(np.float32)).unsqueeze(1),
            nodule_ids=[nodule_ids[i] for i in rows],
        )
        for name, rows in indices.items()
    }
    return sets, digest.hexdigest()


def augment(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    flip: bool,
    intensity_jitter: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips along each spatial axis and a random intensity scale and shift per crop.

    Flips are applied to image and mask alike; the jitter multiplies each normalised crop by
    ``1 + u`` and adds ``v`` with ``u, v`` uniform in ``[-intensity_jitter, intensity_jitter]``.
    Random numbers come from ``generator`` alone (reproducible, checkpointable).
    """
    images, masks = images.clone(), masks.clone()
    if flip:
        flips = torch.rand(len(images), 3, generator=generator) < 0.5
        for i, axes in enumerate(flips.tolist()):
            dims = [1 + axis for axis, flipped in enumerate(axes) if flipped]  # (1, D, H, W)
            if dims:
                images[i] = images[i].flip(dims)
                masks[i] = masks[i].flip(dims)
    if intensity_jitter > 0:
        scale_shift = (torch.rand(len(images), 2, generator=generator) * 2 - 1) * intensity_jitter
        images = images * (1 + scale_shift[:, 0].view(-1, 1, 1, 1, 1))
        images = images + scale_shift[:, 1].view(-1, 1, 1, 1, 1)
    return images, masks


def batches(n_items: int, batch_size: int, generator: torch.Generator | None) -> list[np.ndarray]:
    """Index batches covering ``range(n_items)``: shuffled by ``generator``, or in order if None."""
    order = torch.randperm(n_items, generator=generator) if generator else torch.arange(n_items)
    return [order[i : i + batch_size].numpy() for i in range(0, n_items, batch_size)]
