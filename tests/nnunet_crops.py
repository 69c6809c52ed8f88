"""A small crops set in the crops.h5 / crops.csv / split.csv contract, for the nnU-Net tests:
a sphere per crop on an anisotropic grid (so that swapped axes or spacings show), two crops per
patient, optionally with cross-validation folds (one per patient)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

SPACING = (2.5, 0.75, 0.5)  # z, y, x (mm): all different
SHAPE = (8, 16, 24)  # z, y, x: all different


def write_crop_set(folder: Path, n: int = 6, folds: bool = False) -> dict[str, Path]:
    """crops.h5 / crops.csv / split.csv in the contract format: a sphere per crop."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.arange(s) * d for s, d in zip(SHAPE, SPACING, strict=True)),
                          indexing="ij")  # fmt: skip
    centre = [(s - 1) * d / 2 for s, d in zip(SHAPE, SPACING, strict=True)]
    images, masks = [], []
    for i in range(n):
        radius = 3.0 + i / 2
        mask = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
        noise = rng.normal(0, 30, SHAPE)
        images.append(np.where(mask, 40, -800).astype(np.int16) + noise.astype(np.int16))
        masks.append(mask.astype(np.uint8))
    paths = {name: folder / name for name in ("crops.h5", "crops.csv", "split.csv")}
    with h5py.File(paths["crops.h5"], "w") as file:
        file["image"], file["mask"] = np.stack(images), np.stack(masks)
        file["other"] = np.zeros((n, *SHAPE), np.uint8)
        file.attrs["size"] = list(SHAPE)
        file.attrs["target_spacing"] = str(list(SPACING))
    ids = [f"LIDC-IDRI-{9000 + i // 2:04d}_1234.{i}_{i % 2 + 1:02d}" for i in range(n)]
    patients = [nodule_id[:14] for nodule_id in ids]
    crops = pd.DataFrame({"nodule_id": ids, "patient_id": patients})
    for axis, spacing in zip("zyx", SPACING, strict=True):
        crops[f"spacing_{axis}"] = spacing
    crops["diameter_mm"], crops["n_readers"] = 6.0, 4
    crops.to_csv(paths["crops.csv"], index=False)
    split = pd.DataFrame({"nodule_id": ids, "patient_id": patients})
    split["subset"] = ["val" if i // 2 == 1 else "train" for i in range(n)]
    if folds:
        split["fold"] = [i // 2 for i in range(n)]
    split.to_csv(paths["split.csv"], index=False)
    return paths
