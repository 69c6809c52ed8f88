"""Synthetic chest volumes written with lungseg's HDF5 writer, for the detection tests.

``chest_volume(...)``: an air background, a soft-tissue body ellipse (40 HU), two lungs (-850 HU)
inside it, and bright spheres (nodules, 30 HU) in the lungs with their label map; written as a
real ``results/volumes/<patient>/<series>.h5`` plus the matching results/nodules.csv rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.io.hdf5 import write_volume

SHAPE = (40, 96, 96)
SPACING = (2.5, 1.0, 1.0)
ORIGIN = (-100.0, -48.0, -48.0)


def sphere(shape, centre, radius_vox) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius_vox, strict=True))
    return r2 <= 1.0


def chest_volume(
    root: Path,
    patient: str,
    series: str,
    nodules: list[tuple[tuple[float, float, float], float, bool]],
    seed: int = 0,
) -> tuple[Path, pd.DataFrame]:
    """Write one volume; ``nodules``: (centre voxel zyx, diameter mm, in_cohort)."""
    rng = np.random.default_rng(seed)
    image = np.full(SHAPE, -1000.0, dtype=np.float32)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    body = ((y - 48) / 40) ** 2 + ((x - 48) / 44) ** 2 <= 1
    image[:, body[0]] = 40.0
    for cx in (28, 68):
        lung = (((y - 46) / 28) ** 2 + ((x - cx) / 15) ** 2 <= 1) & (z >= 4) & (z < 36)
        image[lung] = -850.0
    mask = np.zeros(SHAPE, dtype=np.uint8)
    rows = []
    for label, (centre, diameter, in_cohort) in enumerate(nodules, start=1):
        radius = [diameter / 2 / s for s in SPACING]
        ball = sphere(SHAPE, centre, radius)
        image[ball] = 30.0
        mask[ball] = label
        rows.append(
            {
                "nodule_id": f"{patient}_{series[-8:]}_{label:02d}",
                "patient_id": patient,
                "series_uid": series,
                "label": label,
                "n_readers": 4 if in_cohort else 1,
                "centroid_z": centre[0],
                "centroid_y": centre[1],
                "centroid_x": centre[2],
                "diameter_mm": diameter,
                "series_status": "ok",
                "in_cohort": in_cohort,
            }
        )
    image += rng.normal(0, 10, SHAPE).astype(np.float32)
    path = root / patient / f"{series}.h5"
    attrs = {
        "patient_id": patient,
        "study_uid": "1.2.3",
        "series_uid": series,
        "spacing": SPACING,
        "origin": ORIGIN,
        "direction": (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
    }
    write_volume(path, np.rint(image).astype(np.int16), mask, attrs)
    columns = ["nodule_id", "patient_id", "series_uid", "label", "n_readers", "centroid_z"]
    columns += ["centroid_y", "centroid_x", "diameter_mm", "series_status", "in_cohort"]
    return path, pd.DataFrame(rows, columns=columns)
