"""lungseg's crops as an nnU-Net v2 raw dataset: nnU-Net trains on exactly our crops and split.

One case per crop of crops.h5 whose nodule split.csv places in a subset; the case id is the
nodule id made safe for file names (:func:`case_id`). Per case ``imagesTr/<case>_0000.nii.gz``
(int16 HU) and ``labelsTr/<case>.nii.gz`` (uint8, 1 = this crop's nodule; other nodules in the
crop are background, as in lungseg's training), ``dataset.json`` and ``splits_final.json``
(our split as nnU-Net folds: one fold for a train/val split; with split.csv's ``fold`` column one
entry per fold, that fold as validation). nnU-Net does not read ``splits_final.json`` from the
raw folder: :func:`lungseg.bench.nnunet.run_bench_nnunet` copies it into the preprocessed one.

Axes: lungseg's arrays are ``(z, y, x)``; a NIfTI file stores ``(i, j, k) = (x, y, z)`` with the
voxel sizes ``(sx, sy, sz)`` in its affine and header, which nnU-Net's readers (SimpleITK and
nibabel alike) turn back into ``(z, y, x)`` with spacing ``(sz, sy, sx)``. Every file is written
atomically (:mod:`lungseg.core.atomic`).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.core.atomic import atomic_path, write_text_atomic

DATASET_NAME = "LungsegCrops"
FILE_ENDING = ".nii.gz"
CHANNEL = "_0000"
SPACING_COLUMNS = ["spacing_z", "spacing_y", "spacing_x"]


def dataset_folder_name(dataset_id: int) -> str:
    """nnU-Net's name of the dataset: ``Dataset<id:03d>_LungsegCrops``."""
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"an nnU-Net dataset id lies in 1..999, got {dataset_id}")
    return f"Dataset{dataset_id:03d}_{DATASET_NAME}"


def case_id(nodule_id: str) -> str:
    """The nodule id made safe for nnU-Net's file names: letters, digits, ``-`` and ``_`` kept,
    anything else ``_``."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", str(nodule_id))
    if not safe:
        raise ValueError(f"empty nodule id {nodule_id!r}")
    return safe


def nifti_bytes(array_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> bytes:
    """A gzipped NIfTI-1 file of a ``(z, y, x)`` array: stored as ``(x, y, z)`` with the affine
    ``diag(sx, sy, sz)``, the dtype kept."""
    import nibabel

    spacing = [float(s) for s in spacing_zyx]
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (z, y, x), got {spacing_zyx}")
    affine = np.diag([*spacing[::-1], 1.0])
    image = nibabel.Nifti1Image(np.ascontiguousarray(np.transpose(array_zyx, (2, 1, 0))), affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def read_nifti_zyx(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI file written by :func:`nifti_bytes` back as ``(z, y, x)`` array and spacing."""
    import nibabel

    image = nibabel.load(str(path))
    data = np.asarray(image.dataobj)
    zooms = image.header.get_zooms()[:3]
    return np.transpose(data, (2, 1, 0)), tuple(float(z) for z in zooms[::-1])


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def export_cases(crops_csv: str | Path, split_csv: str | Path) -> pd.DataFrame:
    """crops.csv's rows with a subset in split.csv, their row in crops.h5 and their case id."""
    crops, split = pd.read_csv(crops_csv), pd.read_csv(split_csv)
    for frame, path, columns in (
        (crops, crops_csv, ["nodule_id", *SPACING_COLUMNS]),
        (split, split_csv, ["nodule_id", "subset"]),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
    crops["row"] = np.arange(len(crops))
    keep = ["nodule_id", "subset", *(["fold"] if "fold" in split.columns else [])]
    cases = crops.merge(split[keep], on="nodule_id", how="inner", validate="one_to_one")
    if cases.empty:
        raise ValueError(f"{split_csv}: none of the nodules of {crops_csv} has a subset")
    cases["case"] = cases["nodule_id"].map(case_id)
    clashes = cases["case"][cases["case"].duplicated()].tolist()
    if clashes:
        raise ValueError(f"nodule ids that give the same case id: {clashes[:5]}")
    return cases.sort_values("row").reset_index(drop=True)


def nnunet_splits(cases: pd.DataFrame) -> list[dict[str, list[str]]]:
    """Our split as nnU-Net folds: ``[{"train": [...], "val": [...]}, ...]``. Without a ``fold``
    column one fold (train/val as ``subset``); with it one fold per value, that fold as val."""
    if "fold" not in cases.columns:
        return [
            {
                "train": cases.loc[cases["subset"] == "train", "case"].tolist(),
                "val": cases.loc[cases["subset"] == "val", "case"].tolist(),
            }
        ]
    return [
        {
            "train": cases.loc[cases["fold"] != fold, "case"].tolist(),
            "val": cases.loc[cases["fold"] == fold, "case"].tolist(),
        }
        for fold in sorted(cases["fold"].unique())
    ]


def validation_fold(cases: pd.DataFrame) -> int:
    """The nnU-Net fold whose validation cases are split.csv's ``val`` subset."""
    val = set(cases.loc[cases["subset"] == "val", "case"])
    for index, fold in enumerate(nnunet_splits(cases)):
        if set(fold["val"]) == val:
            return index
    raise ValueError("no fold of the split has the val subset as its validation cases")


def _remove_stale(folder: Path, cases: set[str]) -> None:
    """Remove cases of an earlier export that this one does not have (nnU-Net takes every
    file of imagesTr)."""
    for sub, suffix in (("imagesTr", CHANNEL + FILE_ENDING), ("labelsTr", FILE_ENDING)):
        for path in (folder / sub).glob(f"*{FILE_ENDING}"):
            if path.name.removesuffix(suffix) not in cases:
                path.unlink()


def export_dataset(
    crops_h5: str | Path,
    crops_csv: str | Path,
    split_csv: str | Path,
    raw_dir: str | Path,
    dataset_id: int,
) -> Path:
    """Write ``<raw_dir>/Dataset<id>_LungsegCrops/`` (nnU-Net's raw layout) from the crops and
    the split; returns that folder."""
    from lungseg.training.data import crop_grid, read_crops

    cases = export_cases(crops_csv, split_csv)
    images, masks = read_crops(crops_h5, len(pd.read_csv(crops_csv, usecols=["nodule_id"])))
    grid = crop_grid(crops_h5)["target_spacing"]
    spacings = cases[SPACING_COLUMNS].to_numpy(float)
    if grid is not None and not np.allclose(spacings, grid, atol=1e-6):
        raise ValueError(f"{crops_csv}: crop spacings differ from {crops_h5}'s grid {grid}")
    labels = np.unique(masks[cases["row"].to_numpy()])
    if not set(labels.tolist()) <= {0, 1}:
        raise ValueError(f"{crops_h5}: mask values {labels.tolist()}; expected 0 and 1")
    folder = Path(raw_dir) / dataset_folder_name(dataset_id)
    for case in cases.itertuples(index=False):
        spacing = [case.spacing_z, case.spacing_y, case.spacing_x]
        image = images[case.row].astype(np.int16, copy=False)
        label = masks[case.row].astype(np.uint8, copy=False)
        image_file = folder / "imagesTr" / f"{case.case}{CHANNEL}{FILE_ENDING}"
        _write_bytes(image_file, nifti_bytes(image, spacing))
        _write_bytes(folder / "labelsTr" / f"{case.case}{FILE_ENDING}", nifti_bytes(label, spacing))
    _remove_stale(folder, set(cases["case"]))
    dataset = {
        "name": DATASET_NAME,
        "description": f"lungseg crops ({Path(crops_h5).name}) and split ({Path(split_csv).name})",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "nodule": 1},
        "numTraining": len(cases),
        "file_ending": FILE_ENDING,
    }
    write_text_atomic(folder / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    splits = json.dumps(nnunet_splits(cases), indent=2) + "\n"
    write_text_atomic(folder / "splits_final.json", splits)
    return folder
