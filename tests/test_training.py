"""Training runs: metrics and checkpoints, determinism, resume after a kill, load_model/predict,
both architectures learning, the Snakemake rule.

Crops are synthetic spheres written in the crops.h5 / crops.csv / split.csv contract format
(tests/training_helpers.py); the model, loss, HDF5 files and Snakemake are the real ones. Input
checks, augmentation and bad settings: test_training_inputs.py.
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
from training_helpers import SETTINGS, run_training, write_crops
from workflow_helpers import copy_workflow, write_config

from lungseg.core.errors import SettingsError
from lungseg.core.settings import load_schema
from lungseg.inference.checkpoint import read_checkpoint
from lungseg.inference.metrics import dice
from lungseg.inference.model import load_model, predict
from lungseg.training.data import read_subset_indices
from lungseg.training.trainer import METRICS_COLUMNS, resumable

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

COMPARED = ["epoch", "train_loss", "train_dice", "val_loss", "val_dice"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_crops(tmp_path_factory.mktemp("crops"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """One uninterrupted run of SETTINGS: its folder and metrics."""
    out_dir = tmp_path_factory.mktemp("reference")
    return out_dir, run_training(data, out_dir, SETTINGS)


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
    # best.pt chosen by another metric: a fresh run, not a mix of two selections
    assert resumable(tmp_path / "last.pt", SETTINGS, fingerprint, "val_balanced_dice") is None


def test_balanced_selection_with_empty_crops(data, reference, tmp_path):
    """With a target in every crop the balanced Dice is the Dice; with empty validation crops
    (the second stage's false positives) select="val_balanced_dice" keeps its best epoch."""
    _, metrics = reference
    assert metrics["val_balanced_dice"].tolist() == metrics["val_dice"].tolist()
    copied = {name: tmp_path / path.name for name, path in data.items()}
    for name, path in data.items():
        shutil.copy(path, copied[name])
    with h5py.File(copied["crops.h5"], "r+") as file:
        masks = file["mask"][()]
        masks[::3] = 0  # val crops 0, 1, 10, 11: crop 0 empty
        file["mask"][...] = masks
    out_dir = tmp_path / "run"
    run = run_training(copied, out_dir, SETTINGS, select="val_balanced_dice")
    assert (run["val_balanced_dice"] != run["val_dice"]).any()
    best = read_checkpoint(out_dir / "best.pt")
    assert best["select"] == "val_balanced_dice"
    assert best["epoch"] == int(run["val_balanced_dice"].idxmax()) + 1
    assert best["best_val_dice"] == run["val_balanced_dice"].max()
    with pytest.raises(SettingsError, match="select: 'val_loss' is not one of"):
        run_training(copied, tmp_path / "bad", SETTINGS, select="val_loss")


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
    jsonschema.validate(config, load_schema())  # its section files inlined
    factor = 2 ** (config["training"]["levels"] - 1)
    assert all(size % factor == 0 for size in config["crops"]["size"])
    assert config["training"]["resources"]["gpu"] == 1
