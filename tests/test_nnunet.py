"""nnU-Net v2 as the peer (lungseg.bench.nnunet_export): the crops as an nnU-Net raw dataset that
nnU-Net's own checker accepts, read back with nibabel and nnU-Net's reader; broken exports fail.

Crops: a small set in the crops.h5 / crops.csv / split.csv contract (spheres on an anisotropic
grid, so that swapped axes or spacings show). Needs the optional install (``make nnunet``; CI has
it): without nnunetv2 these tests skip, or fail where ``CI`` is set.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from nnunet_crops import SPACING, write_crop_set

from lungseg.bench.nnunet_export import (
    case_id,
    dataset_folder_name,
    export_cases,
    export_dataset,
    nifti_bytes,
    nnunet_splits,
    read_nifti_zyx,
    validation_fold,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def crop_set(tmp_path) -> dict[str, Path]:
    return write_crop_set(tmp_path)


def export(paths: dict[str, Path], raw: Path) -> Path:
    return export_dataset(paths["crops.h5"], paths["crops.csv"], paths["split.csv"], raw, 7)


def verify(folder: Path) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(folder), num_processes=1)


def test_export_passes_nnunets_check_and_reads_back(nnunetv2, crop_set, tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    folder = export(crop_set, tmp_path / "raw")
    assert folder == tmp_path / "raw" / "Dataset007_LungsegCrops"
    verify(folder)  # nnU-Net's own checker: no exception
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT"}
    assert dataset["labels"] == {"background": 0, "nodule": 1}
    assert dataset["numTraining"] == 6 and dataset["file_ending"] == ".nii.gz"
    cases = sorted(p.name.removesuffix("_0000.nii.gz") for p in (folder / "imagesTr").iterdir())
    assert cases == sorted(case_id(n) for n in pd.read_csv(crop_set["crops.csv"])["nodule_id"])
    assert all("." not in case for case in cases)  # the nodule ids' "." made safe
    with h5py.File(crop_set["crops.h5"]) as file:
        images, masks = file["image"][()], file["mask"][()]
    for row, case in enumerate(case_id(n) for n in pd.read_csv(crop_set["crops.csv"])["nodule_id"]):
        image_file = folder / "imagesTr" / f"{case}_0000.nii.gz"
        image, spacing = read_nifti_zyx(image_file)
        assert image.dtype == np.int16 and np.array_equal(image, images[row])
        assert spacing == pytest.approx(SPACING)
        label, spacing = read_nifti_zyx(folder / "labelsTr" / f"{case}.nii.gz")
        assert np.array_equal(label, masks[row]) and spacing == pytest.approx(SPACING)
        # nnU-Net's reader sees (channel, z, y, x) and the spacing in z, y, x
        data, properties = SimpleITKIO().read_images([str(image_file)])
        assert np.array_equal(data[0], images[row])
        assert properties["spacing"] == pytest.approx(SPACING)
    splits = json.loads((folder / "splits_final.json").read_text())
    assert splits == [{"train": [cases[i] for i in (0, 1, 4, 5)], "val": cases[2:4]}]


def test_broken_exports_fail_nnunets_check(nnunetv2, crop_set, tmp_path):
    folder = export(crop_set, tmp_path / "raw")
    label_file = next((folder / "labelsTr").iterdir())
    label, spacing = read_nifti_zyx(label_file)
    label_file.write_bytes(nifti_bytes(np.where(label > 0, 2, 0).astype(np.uint8), spacing))
    with pytest.raises(RuntimeError, match="label"):
        verify(folder)
    export(crop_set, tmp_path / "raw")  # a new export repairs it
    verify(folder)
    next((folder / "imagesTr").iterdir()).unlink()
    with pytest.raises((AssertionError, FileNotFoundError)):
        verify(folder)
    image_file = next((folder / "imagesTr").iterdir())
    image, _ = read_nifti_zyx(image_file)
    export(crop_set, tmp_path / "raw")
    image_file.write_bytes(nifti_bytes(image, (1.0, 1.0, 1.0)))  # spacing of image != label's
    with pytest.raises(RuntimeError):
        verify(folder)


def test_folds_become_nnunet_folds(tmp_path):
    paths = write_crop_set(tmp_path, folds=True)
    folder = export(paths, tmp_path / "raw")
    splits = json.loads((folder / "splits_final.json").read_text())
    cases = export_cases(paths["crops.csv"], paths["split.csv"])["case"].tolist()
    assert len(splits) == 3
    for fold, entry in enumerate(splits):
        assert entry["val"] == cases[2 * fold : 2 * fold + 2]
        assert sorted(entry["train"] + entry["val"]) == sorted(cases)
    assert validation_fold(export_cases(paths["crops.csv"], paths["split.csv"])) == 1


def test_an_export_drops_cases_it_no_longer_has(tmp_path):
    paths = write_crop_set(tmp_path)
    folder = export(paths, tmp_path / "raw")
    split = pd.read_csv(paths["split.csv"])
    split.iloc[1:].to_csv(paths["split.csv"], index=False)  # the first nodule has no subset now
    export(paths, tmp_path / "raw")
    assert len(list((folder / "imagesTr").iterdir())) == len(list((folder / "labelsTr").iterdir()))
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 5
    assert len(list((folder / "imagesTr").iterdir())) == 5
    assert nnunet_splits(export_cases(paths["crops.csv"], paths["split.csv"]))[0]["val"]


def test_case_ids_and_dataset_names():
    assert case_id("LIDC-IDRI-0001_1.2.3_01") == "LIDC-IDRI-0001_1_2_3_01"
    assert dataset_folder_name(501) == "Dataset501_LungsegCrops"
    with pytest.raises(ValueError, match="1..999"):
        dataset_folder_name(1000)


def test_clashing_case_ids_are_refused(tmp_path):
    paths = write_crop_set(tmp_path)
    crops = pd.read_csv(paths["crops.csv"])
    split = pd.read_csv(paths["split.csv"])
    for frame, path in ((crops, paths["crops.csv"]), (split, paths["split.csv"])):
        frame.loc[0, "nodule_id"], frame.loc[1, "nodule_id"] = "A.1", "A_1"
        frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match="same case id"):
        export(paths, tmp_path / "raw")


def test_trainer_lookup_and_epochs(nnunetv2):
    from lungseg.bench.nnunet import trainer_epochs
    from lungseg.bench.nnunet_run import trainer_class

    assert trainer_class("nnUNetTrainer_5epochs").__name__ == "nnUNetTrainer_5epochs"
    assert trainer_epochs("nnUNetTrainer_5epochs") == 5
    assert trainer_epochs("nnUNetTrainer_1epoch") == 1
    with pytest.raises(ValueError, match="unknown nnU-Net trainer"):
        trainer_class("nnUNetTrainerPrimus")
