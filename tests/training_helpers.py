"""Synthetic crops for the training tests (test_training, test_training_inputs).

- ``SETTINGS``: a tiny training configuration with everything that carries state across epochs
  (learned loss weights, augmentation, shuffling);
- ``write_crops(folder, n, size, seed)``: spheres in the crops.h5 / crops.csv / split.csv contract
  format;
- ``run_training(data, out_dir, settings, **kwargs)``: ``train`` on such crops.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from lungseg.training.trainer import train

# Everything that carries state across epochs: learned loss weights, augmentation, shuffling.
SETTINGS = {
    "arch": "iunet",
    "channels": 4,
    "levels": 2,
    "blocks_per_level": 1,
    "deep_supervision": True,
    "memory_efficient": True,
    "lean_memory": "auto",
    "loss": "dice_bce",
    "scale_weights": "learned",
    "target_downsampling": "area",
    "epochs": 4,
    "batch_size": 4,
    "lr": 0.01,
    "weight_decay": 0.0,
    "seed": 3,
    "hu_min": -1000,
    "hu_max": 400,
    "flip": True,
    "intensity_jitter": 0.05,
    "amp": True,
}


def write_crops(folder: Path, n: int = 20, size: int = 16, seed: int = 0) -> dict[str, Path]:
    """Spheres of soft tissue (~20 HU) in noisy lung (~-800 HU), two per patient, 1 in 5 val."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:size, :size, :size]
    images, masks, ids = [], [], []
    for i in range(n):
        radius = rng.uniform(2, size / 3)
        centre = size / 2 - 0.5 + rng.uniform(-1, 1, 3)
        mask = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
        image = rng.normal(-800, 80, mask.shape)
        image[mask] = rng.normal(20, 60, mask.sum())
        images.append(image.astype(np.int16))
        masks.append(mask.astype(np.uint8))
        ids.append(f"LIDC-IDRI-{i // 2:04d}_0000000{i % 2}_01")
    paths = {name: folder / name for name in ("crops.h5", "crops.csv", "split.csv")}
    with h5py.File(paths["crops.h5"], "w") as file:
        file["image"] = np.stack(images)
        file["mask"] = np.stack(masks)
        file["other"] = np.zeros((n, size, size, size), np.uint8)
        file.attrs["size"] = [size] * 3  # the crop grid, as the crops rule records it
        file.attrs["target_spacing"] = str([1.0, 1.0, 1.0])
    patients = [nodule_id[:14] for nodule_id in ids]
    pd.DataFrame({"nodule_id": ids, "patient_id": patients}).to_csv(paths["crops.csv"], index=False)
    subsets = ["val" if (i // 2) % 5 == 0 else "train" for i in range(n)]
    split = pd.DataFrame({"nodule_id": ids, "patient_id": patients, "subset": subsets})
    split.to_csv(paths["split.csv"], index=False)
    return paths


def run_training(data: dict[str, Path], out_dir: Path, settings: dict, **kwargs) -> pd.DataFrame:
    return train(
        data["crops.h5"], data["crops.csv"], data["split.csv"], out_dir, settings, **kwargs
    )
