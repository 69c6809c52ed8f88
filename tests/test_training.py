"""Training: data checks, augmentation, determinism, resume after a kill, load_model/predict, rule.

Crops are synthetic spheres written in the crops.h5 / crops.csv / split.csv contract format; the
model, loss, HDF5 files and Snakemake are the real ones.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from workflow_helpers import copy_workflow, write_config

from lungseg.cli import main
from lungseg.inference.checkpoint import read_checkpoint
from lungseg.inference.intensity import normalise_hu
from lungseg.inference.metrics import dice
from lungseg.inference.model import load_model, predict
from lungseg.training.data import augment, load_crop_sets, read_subset_indices
from lungseg.training.trainer import METRICS_COLUMNS, resumable, train

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

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
COMPARED = ["epoch", "train_loss", "train_dice", "val_loss", "val_dice"]


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


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_crops(tmp_path_factory.mktemp("crops"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """One uninterrupted run of SETTINGS: its folder and metrics."""
    out_dir = tmp_path_factory.mktemp("reference")
    return out_dir, run_training(data, out_dir, SETTINGS)


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


# -- training ----------------------------------------------------------------------------------
def test_metrics_and_checkpoints(reference):
    out_dir, metrics = reference
    written = pd.read_csv(out_dir / "metrics.csv")
    assert list(written.columns) == METRICS_COLUMNS
    assert written["epoch"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(written[COMPARED], metrics[COMPARED], check_dtype=False)
    assert written[["train_dice", "val_dice"]].stack().between(0, 1).all()
    assert (written["seconds"] > 0).all() and (written["peak_memory_mb"] > 0).all()
    last, best = read_checkpoint(out_dir / "last.pt"), read_checkpoint(out_dir / "best.pt")
    assert last["epoch"] == 4 and last["settings"] == SETTINGS
    assert best["epoch"] == int(written["val_dice"].idxmax()) + 1
    assert best["best_val_dice"] == written["val_dice"].max()
    assert set(best["loss"]) == {"log_variances"}  # learned weights are checkpointed
    # the model carries the grid of the crops it learnt from (crops.h5's attributes)
    grid = {"crop_size": [16, 16, 16], "target_spacing": [1.0, 1.0, 1.0]}
    assert best["crop_grid"] == last["crop_grid"] == grid
    assert not list(out_dir.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_same_config_same_metrics(data, reference, caplog):
    out_dir, metrics = reference
    with caplog.at_level(logging.INFO, logger="lungseg.training.trainer"):
        again = run_training(data, out_dir, SETTINGS)  # a finished run trains again from scratch
    assert "a finished run, training again from scratch" in caplog.text
    pd.testing.assert_frame_equal(again[COMPARED], metrics[COMPARED])


def test_killed_run_resumes_to_the_same_metrics(data, reference, tmp_path, caplog):
    _, metrics = reference
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump({"training": SETTINGS}))
    command = [
        sys.executable, "-m", "lungseg.cli", "train",
        "--crops", str(data["crops.h5"]), "--table", str(data["crops.csv"]),
        "--split", str(data["split.csv"]), "--metrics", str(tmp_path / "metrics.csv"),
        "--best", str(tmp_path / "best.pt"), "--configfile", str(settings_file), "--threads", "1",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not (tmp_path / "metrics.csv").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "training subprocess wrote no epoch in 120 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    killed_at = read_checkpoint(tmp_path / "last.pt")["epoch"]
    assert 1 <= killed_at < SETTINGS["epochs"], "the run was not killed mid-way"
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == killed_at
    (tmp_path / "best.pt").unlink()  # as Snakemake does with a declared output before a rerun

    with caplog.at_level(logging.INFO, logger="lungseg.training.trainer"):
        resumed = run_training(data, tmp_path, SETTINGS)
    assert f"resuming after epoch {killed_at}" in caplog.text
    pd.testing.assert_frame_equal(resumed[COMPARED], metrics[COMPARED])
    written = pd.read_csv(tmp_path / "metrics.csv")
    pd.testing.assert_frame_equal(written[COMPARED], metrics[COMPARED], check_dtype=False)
    best = read_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == int(metrics["val_dice"].idxmax()) + 1
    assert best["best_val_dice"] == metrics["val_dice"].max()


def test_resume_only_same_settings_and_data(reference, tmp_path):
    out_dir, _ = reference
    unfinished = read_checkpoint(out_dir / "last.pt")
    unfinished["epoch"] = 2
    torch.save(unfinished, tmp_path / "last.pt")
    fingerprint = unfinished["data_fingerprint"]
    assert resumable(tmp_path / "last.pt", SETTINGS, fingerprint) is not None
    assert resumable(tmp_path / "last.pt", {**SETTINGS, "lr": 0.02}, fingerprint) is None
    assert resumable(tmp_path / "last.pt", SETTINGS, "other data") is None
    assert resumable(tmp_path / "missing.pt", SETTINGS, fingerprint) is None


def test_load_model_and_predict_reproduce_val_dice(data, reference):
    out_dir, metrics = reference
    model, settings = load_model(out_dir / "best.pt")
    assert settings == SETTINGS and not model.training
    with h5py.File(data["crops.h5"], "r") as file:
        images, masks = file["image"][()], file["mask"][()]
    val = read_subset_indices(data["crops.csv"], data["split.csv"])["val"]
    probabilities = predict(model, images[val], settings, batch_size=4)
    assert probabilities.shape == images[val].shape and probabilities.dtype == np.float32
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    dices = [dice(p > 0.5, m) for p, m in zip(probabilities, masks[val], strict=True)]
    assert np.mean(dices) == pytest.approx(metrics["val_dice"].max(), abs=1e-6)


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


@pytest.mark.parametrize("arch", ["unet", "iunet"])
def test_models_learn_spheres(data, tmp_path, arch):
    settings = {
        **SETTINGS,
        "arch": arch,
        "channels": 8,
        "deep_supervision": False,
        "scale_weights": "equal",
        "epochs": 20,
        "lr": 0.003,
    }
    metrics = run_training(data, tmp_path, settings)
    assert metrics["val_dice"].max() >= 0.7, metrics.to_string()


def write_workflow(workdir: Path, crops: dict[str, Path]) -> dict:
    """A copy of the train stage (the repo's rules, schema, config) with tiny settings."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["training"].update(channels=4, levels=2, epochs=1, batch_size=8)
    # Two of the default variants keep the test short; both are edited below.
    config["models"] = {name: config["models"][name] for name in ("iunet_ms", "iunet_msw")}
    snakefile = (
        "from snakemake.utils import validate\n"
        'from lungseg.core.settings import SCHEMA_PATH\n\nconfigfile: "config.yaml"\n\n'
        "validate(config, str(SCHEMA_PATH))\n\n"
        'include: "rules/common.smk"\ninclude: "rules/train.smk"\n'
    )
    copy_workflow(workdir, {}, snakefile=snakefile)
    write_config(workdir, config)
    for folder, names in (("crops", ("crops.h5", "crops.csv")), ("split", ("split.csv",))):
        (workdir / "results" / folder).mkdir(parents=True)
        for name in names:
            shutil.copy2(crops[name], workdir / "results" / folder / name)
    return config


def snakemake(workdir: Path, *args: str) -> str:
    command = [str(Path(sys.executable).with_name("snakemake")), "--cores", "2", *args]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


#: the train jobs' outputs (``train_all`` also asks for every volume, which this copy of the
#: train stage alone cannot build)
TRAINED = [f"results/models/{m}/metrics.csv" for m in ("iunet_ms", "iunet_msw")]


@pytest.mark.slow
def test_rule_trains_every_variant_and_reruns_only_an_edited_one(data, tmp_path):
    config = write_workflow(tmp_path, data)
    snakemake(tmp_path, *TRAINED)
    for model in ("iunet_ms", "iunet_msw"):
        metrics = pd.read_csv(tmp_path / f"results/models/{model}/metrics.csv")
        assert list(metrics.columns) == METRICS_COLUMNS and len(metrics) == 1
        assert (tmp_path / f"results/models/{model}/last.pt").exists()
        assert "epoch 1/1: train loss" in (tmp_path / f"logs/train/{model}.log").read_text()
    settings = read_checkpoint(tmp_path / "results/models/iunet_ms/best.pt")["settings"]
    assert settings["deep_supervision"] is True and settings["channels"] == 4

    config["training"]["resources"]["threads"] = 2  # resources are not settings
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert "Nothing to be done" in snakemake(tmp_path, "-n", *TRAINED)

    config["models"]["iunet_msw"]["scale_weights"] = "learned"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    planned = re.findall(r"wildcards: model=(\S+)", snakemake(tmp_path, "-n", *TRAINED))
    assert planned == ["iunet_msw"]


def test_lidc_override_file_is_valid_and_fits_the_model():
    import jsonschema
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "config" / "lidc.yaml").read_text()))
    schema = REPO / "src" / "lungseg" / "data" / "config.schema.yaml"
    jsonschema.validate(config, yaml.safe_load(schema.read_text()))
    factor = 2 ** (config["training"]["levels"] - 1)
    assert all(size % factor == 0 for size in config["crops"]["size"])
    assert config["training"]["resources"]["gpu"] == 1
