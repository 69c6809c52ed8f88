"""Training inputs: HU normalisation, augmentation, crop-set checks naming the file, and bad
settings or checkpoints named before training.

Crops are synthetic spheres written in the crops.h5 / crops.csv / split.csv contract format
(tests/training_helpers.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from training_helpers import SETTINGS, run_training, write_crops

from lungseg.cli import main
from lungseg.inference.intensity import normalise_hu
from lungseg.inference.model import load_model
from lungseg.training.data import augment, load_crop_sets, read_subset_indices

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_crops(tmp_path_factory.mktemp("crops"))


# -- data --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hu", "expected"),
    [(-2000, 0.0), (-1000, 0.0), (-300, 0.5), (400, 1.0), (3000, 1.0), (50, 0.75)],
)
def test_normalise_hu(hu, expected):
    images = np.full((1, 2, 2, 2), hu, dtype=np.int16)
    out = normalise_hu(images, -1000, 400)
    assert out.dtype == np.float32
    assert np.allclose(out, expected)
    assert torch.allclose(normalise_hu(torch.from_numpy(images), -1000, 400), torch.tensor(out))


def test_augment_flips_image_and_mask_alike_and_is_seeded():
    masks = (torch.rand(8, 1, 6, 6, 6, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    images = masks.clone()
    flipped_images, flipped_masks = augment(
        images, masks, torch.Generator().manual_seed(1), flip=True, intensity_jitter=0.0
    )
    assert torch.equal(flipped_images, flipped_masks)
    assert not torch.equal(flipped_masks, masks)
    assert torch.equal(flipped_masks.sum((1, 2, 3, 4)), masks.sum((1, 2, 3, 4)))
    again, _ = augment(images, masks, torch.Generator().manual_seed(1), True, 0.0)
    assert torch.equal(again, flipped_images)


def test_intensity_jitter_is_a_bounded_affine_map():
    images = torch.linspace(0, 1, 64).view(1, 1, 4, 4, 4).repeat(16, 1, 1, 1, 1)
    masks = torch.zeros_like(images)
    jittered, _ = augment(images, masks, torch.Generator().manual_seed(0), False, 0.1)
    for original, changed in zip(images, jittered, strict=True):
        shift = changed.flatten()[0]
        scale = changed.flatten()[-1] - shift
        assert abs(float(shift)) <= 0.1 and abs(float(scale) - 1) <= 0.1
        assert torch.allclose(changed, original * scale + shift, atol=1e-6)


def test_load_crop_sets(data):
    sets, fingerprint = load_crop_sets(
        data["crops.h5"], data["crops.csv"], data["split.csv"], -1000, 400
    )
    split = pd.read_csv(data["split.csv"])
    assert sets["val"].nodule_ids == split.loc[split.subset == "val", "nodule_id"].tolist()
    assert len(sets["train"]) + len(sets["val"]) == len(split)
    assert sets["train"].images.shape[1:] == (1, 16, 16, 16)
    assert sets["train"].images.dtype == torch.float32
    assert set(sets["train"].masks.unique().tolist()) == {0.0, 1.0}
    assert len(fingerprint) == 64


def corrupt(data: dict[str, Path], folder: Path, what: str) -> dict[str, Path]:
    """A copy of the crops with one defect."""
    paths = {name: Path(shutil.copy2(path, folder / name)) for name, path in data.items()}
    split = pd.read_csv(paths["split.csv"])
    if what == "no subset column":
        split.drop(columns="subset").to_csv(paths["split.csv"], index=False)
    elif what == "unknown subset":
        split.assign(subset=split.subset.replace("val", "test")).to_csv(paths["split.csv"])
    elif what == "unsplit nodule":
        split.iloc[1:].to_csv(paths["split.csv"], index=False)
    elif what == "no val crops":
        split.assign(subset="train").to_csv(paths["split.csv"], index=False)
    elif what == "row count":
        crops = pd.read_csv(paths["crops.csv"])
        crops.iloc[:-2].to_csv(paths["crops.csv"], index=False)
        split.iloc[:-2].to_csv(paths["split.csv"], index=False)
    elif what == "no mask":
        with h5py.File(paths["crops.h5"], "a") as file:
            del file["mask"]
    return paths


@pytest.mark.parametrize(
    ("what", "file", "message"),
    [
        ("no subset column", "split.csv", "missing column\\(s\\) \\['subset'\\]"),
        ("unknown subset", "split.csv", "unknown subset value\\(s\\) \\['test'\\]"),
        ("unsplit nodule", "split.csv", "no subset for crop nodule"),
        ("no val crops", "split.csv", "no crops in subset 'val'"),
        ("row count", "crops.h5", "20 crops but crops.csv has 18 rows"),
        ("no mask", "crops.h5", "no dataset 'mask'"),
    ],
)
def test_bad_inputs_are_named(data, tmp_path, what, file, message):
    paths = corrupt(data, tmp_path, what)
    with pytest.raises(ValueError, match=message) as error:
        load_crop_sets(paths["crops.h5"], paths["crops.csv"], paths["split.csv"], -1000, 400)
    assert str(paths[file]) in str(error.value)


def test_crop_size_must_suit_the_levels(data, tmp_path):
    with pytest.raises(ValueError, match="crop size \\(16, 16, 16\\) is not divisible by"):
        run_training(data, tmp_path, {**SETTINGS, "levels": 6})


def test_subset_indices_follow_crops_csv_order(data):
    indices = read_subset_indices(data["crops.csv"], data["split.csv"])
    assert sorted(np.concatenate(list(indices.values())).tolist()) == list(range(20))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--epoch", "2"], "unrecognized arguments: --epoch"),  # a typo is no silent default
        (["--epochs", "abc"], "training.epochs: 'abc' is not of type 'integer'"),
        (["--epochs", "0"], "training.epochs: 0 is less than the minimum of 1"),
        (["--arch", "vnet"], "training.arch: 'vnet' is not one of"),
        (["--hu_min", "500"], "training.hu_min (500) must be below training.hu_max (400)"),
    ],
)
def test_bad_training_settings_are_named_before_training(data, tmp_path, capsys, options, message):
    argv = [
        "train", "--crops", str(data["crops.h5"]), "--table", str(data["crops.csv"]),
        "--split", str(data["split.csv"]), "--metrics", str(tmp_path / "metrics.csv"),
        "--best", str(tmp_path / "best.pt"), *options,
    ]  # fmt: skip
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: an option that is no setting
        code = exit_.code
    assert code in (1, 2)
    stderr = capsys.readouterr().err
    assert message in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "metrics.csv").exists()


def test_train_help_lists_every_setting_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key, default in (("--epochs", "30"), ("--hu_max", "400"), ("--arch", "'iunet'")):
        assert key in text
        assert f"[default: {default}]" in text


def test_bad_checkpoint_is_named(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="broken.pt: not a readable lungseg checkpoint"):
        load_model(path)
