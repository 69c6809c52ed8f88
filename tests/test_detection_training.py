"""A short real detector training on synthetic chests: metrics, checkpoints, exact resume,
patch mode with sliding-window validation, then candidates and the LUNA16 evaluation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from detection_helpers import chest_volume

from lungseg.detection.predict import COLUMNS, detect
from lungseg.detection.scans import write_scan_table
from lungseg.detection.settings import DetectorSettings, VolumeSettings
from lungseg.detection.train import (
    DetectionTrainer,
    masked_loss,
    nodule_balance,
    train_detector,
)
from lungseg.detection.volumes import detection_volume
from lungseg.evaluation.detection import SUMMARY_COLUMNS, evaluate_detector
from lungseg.inference.checkpoint import read_checkpoint
from lungseg.inference.model import load_model
from lungseg.training.trainer import METRICS_COLUMNS

torch.set_num_threads(1)

TINY = {
    "channels": 2,
    "levels": 2,
    "epochs": 3,
    "patch_size": [8, 16, 16],
    "patches_per_epoch": 4,
    "bootstrap_draws": 50,
    "candidate_threshold": 0.05,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("detection")
    nodules, volumes, split = [], [], []
    layout = [
        ("LIDC-IDRI-9101", "train", [((20.0, 46.0, 28.0), 12.0, True), ((14, 40, 70), 6.0, False)]),
        ("LIDC-IDRI-9102", "train", [((16.0, 50.0, 66.0), 10.0, True)]),
        ("LIDC-IDRI-9103", "val", [((22.0, 44.0, 30.0), 12.0, True)]),
        ("LIDC-IDRI-9104", "val", []),  # no nodule: scored for its false positives (LUNA16)
    ]
    settings = VolumeSettings.from_config({"spacing": [5.0, 4.0, 4.0], "shape": [16, 24, 24]})
    for k, (patient, subset, findings) in enumerate(layout):
        series = f"1.2.826.0.{k}"
        path, table = chest_volume(root / "volumes", patient, series, findings, seed=k)
        nodules.append(table)
        split.append({"patient_id": patient, "subset": subset, "n_nodules": len(table)})
        out = root / "detection_volumes" / patient / f"{series}.h5"
        table.to_csv(root / "own.csv", index=False)
        detection_volume(
            volume=str(path), nodules=str(root / "own.csv"), detection=str(out), settings=settings
        )
        volumes.append(str(out))
    pd.concat(nodules).to_csv(root / "nodules.csv", index=False)
    pd.DataFrame(split).to_csv(root / "patients.csv", index=False)
    write_scan_table(
        volumes=volumes, patients=str(root / "patients.csv"), table=str(root / "scans.csv")
    )
    return root, volumes


def train(data, out, **changes):
    root, volumes = data
    settings = DetectorSettings.from_config({**TINY, **changes})
    train_detector(
        scans=str(root / "scans.csv"),
        volumes=volumes,
        metrics=str(out / "metrics.csv"),
        best=str(out / "best.pt"),
        settings=settings,
    )
    return pd.read_csv(out / "metrics.csv"), settings


def test_scan_table(data):
    root, _ = data
    table = pd.read_csv(root / "scans.csv")
    assert table["subset"].tolist() == ["train", "train", "val", "val"]
    assert table["n_nodules"].tolist() == [1, 1, 1, 0]
    assert table["n_ignored"].tolist() == [1, 0, 0, 0]


def test_whole_training_checkpoints_and_exact_resume(data, tmp_path, monkeypatch):
    metrics, settings = train(data, tmp_path / "full")
    assert list(metrics.columns) == METRICS_COLUMNS and metrics["epoch"].tolist() == [1, 2, 3]
    assert np.isfinite(metrics[["train_loss", "val_loss", "peak_memory_mb"]].to_numpy()).all()
    best = read_checkpoint(tmp_path / "full" / "best.pt")
    assert best["settings"]["volumes"]["spacing"] == [5.0, 4.0, 4.0]
    assert best["settings"]["hu_min"] == -1000 and best["settings"]["mode"] == "whole"
    model, trained = load_model(tmp_path / "full" / "best.pt")
    assert trained["arch"] == "iunet" and not model.training

    # a run killed after epoch 2 resumes from last.pt and ends with the same metrics
    original = DetectionTrainer.on_epoch_end

    def killed(self, row):
        original(self, row)
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(DetectionTrainer, "on_epoch_end", killed)
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path / "killed")
    monkeypatch.setattr(DetectionTrainer, "on_epoch_end", original)
    assert len(pd.read_csv(tmp_path / "killed" / "metrics.csv")) == 2
    resumed, _ = train(data, tmp_path / "killed")
    columns = [c for c in METRICS_COLUMNS if c not in ("seconds", "peak_memory_mb")]
    pd.testing.assert_frame_equal(resumed[columns], metrics[columns])


def test_patch_training_detect_and_evaluate(data, tmp_path):
    root, volumes = data
    out = tmp_path / "unet_patch"
    metrics, settings = train(data, out, mode="patch", arch="unet", batch_size=2, epochs=2)
    assert len(metrics) == 2
    detect(
        scans=str(root / "scans.csv"),
        volumes=volumes,
        best=str(out / "best.pt"),
        candidates=str(out / "candidates.csv"),
        settings=settings,
    )
    found = pd.read_csv(out / "candidates.csv")
    assert list(found.columns) == COLUMNS
    assert set(found["seriesuid"]) <= {"1.2.826.0.2", "1.2.826.0.3"}
    evaluate_detector(
        candidates=str(out / "candidates.csv"),
        scans=str(root / "scans.csv"),
        nodules=str(root / "nodules.csv"),
        metrics=str(out / "metrics.csv"),
        froc=str(out / "froc.csv"),
        bootstrap_table=str(out / "froc_bootstrap.csv"),
        summary=str(out / "summary.csv"),
        operating_point=str(out / "operating_point.json"),
        detector="unet_patch",
        settings=settings,
    )
    froc = pd.read_csv(out / "froc.csv")
    assert list(froc.columns) == ["fps_per_scan", "sensitivity", "threshold"]
    assert froc.iloc[0].tolist()[:2] == [0, 0]
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert summary["scans"].item() == 2 and summary["nodules"].item() == 1  # the empty scan counts
    fps_on_empty_scan = (found["seriesuid"] == "1.2.826.0.3").sum()
    assert froc["fps_per_scan"].max() >= fps_on_empty_scan / 2
    point = json.loads((out / "operating_point.json").read_text())
    assert point["fps_per_scan_target"] == 1.0


def test_masked_loss_skips_ignored_voxels():
    logits = torch.zeros(1, 1, 4, 4, 4)
    target = torch.zeros(1, 1, 4, 4, 4)
    valid = torch.ones(1, 1, 4, 4, 4)
    base = masked_loss("bce", logits, torch.cat([target, valid], 1))
    logits[0, 0, 0, 0, 0] = 50.0  # a confident false positive ...
    assert masked_loss("bce", logits, torch.cat([target, valid], 1)) > base
    valid[0, 0, 0, 0, 0] = 0  # ... on an ignored voxel costs nothing
    ignored = masked_loss("bce", logits, torch.cat([target, valid], 1))
    assert ignored == pytest.approx(float(base))
    confident = torch.full_like(logits, -50.0)
    confident[0, 0, 0, 0, 0] = 50.0  # background everywhere but the ignored voxel
    assert masked_loss("dice", confident, torch.cat([target, valid], 1)) == pytest.approx(0.0)
    valid[0, 0, 0, 0, 0] = 1
    assert masked_loss("dice", confident, torch.cat([target, valid], 1)) >= 0.5  # 1 - 1 / (1 + 1)


@pytest.mark.parametrize(
    ("sizes", "balance", "expected"),
    [
        ([1, 8], 27, [27.0, 27 / 8]),  # small nodules weigh as if they had 27 voxels
        ([27, 64], 27, [1.0, 1.0]),  # as large or larger: unchanged
        ([5], 0, [1.0]),  # 0: off
    ],
)
def test_nodule_balance_weighs_small_nodules_up(sizes, balance, expected):
    nodule = np.zeros((100, 4, 4), dtype=bool)
    z = 0
    for size in sizes:  # separate runs of voxels along z, one nodule each
        nodule[z : z + size, 0, 0] = True
        z += size + 2
    weights = nodule_balance(nodule, balance)
    assert weights[~nodule].tolist() == [1.0] * int((~nodule).sum())
    z = 0
    for size, factor in zip(sizes, expected, strict=True):
        assert weights[z : z + size, 0, 0] == pytest.approx(factor)
        z += size + 2


def test_the_balance_channel_scales_the_bce_of_nodule_voxels():
    logits = torch.zeros(1, 1, 4, 4, 4)
    target = torch.zeros(1, 1, 4, 4, 4)
    target[0, 0, 0, 0, 0] = 1
    valid = torch.ones_like(target)
    plain = masked_loss("bce", logits, torch.cat([target, valid], 1), 1.0)
    weight = torch.ones_like(target)
    assert masked_loss("bce", logits, torch.cat([target, valid, weight], 1), 1.0) == plain
    weight[0, 0, 0, 0, 0] = 5.0  # the nodule voxel counts five times: same mean of log 2
    assert masked_loss("bce", logits, torch.cat([target, valid, weight], 1), 1.0) == (
        pytest.approx(float(plain))
    )
    logits[0, 0, 0, 0, 0] = 3.0  # ... but its (now smaller) error weighs five times more
    a = masked_loss("bce", logits, torch.cat([target, valid], 1), 1.0)
    b = masked_loss("bce", logits, torch.cat([target, valid, weight], 1), 1.0)
    assert b < a


@pytest.mark.parametrize(
    ("schedule", "epoch", "factor"),
    [("constant", 1, 1.0), ("constant", 9, 1.0), ("cosine", 1, 1.0), ("cosine", 6, 0.5),
     ("cosine", 11, 0.0)],
)  # fmt: skip
def test_learning_rate_schedules(schedule, epoch, factor):
    settings = DetectorSettings.from_config({**TINY, "epochs": 10, "lr": 0.02,
                                             "lr_schedule": schedule})  # fmt: skip
    trainer = SimpleNamespace(detector=settings)
    assert DetectionTrainer.epoch_lr(trainer, epoch) == pytest.approx(0.02 * factor, abs=1e-12)


def test_training_with_balance_and_cosine_runs(data, tmp_path):
    metrics, _ = train(data, tmp_path, nodule_balance_voxels=27, lr_schedule="cosine")
    assert len(metrics) >= 1 and np.isfinite(metrics["train_loss"]).all()


def test_bench_detection_trains_each_seed_and_reports_the_spread(data, tmp_path):
    from lungseg.bench.detection import (
        SEED_COLUMNS,
        SPREAD_COLUMNS,
        bench_detection,
        summarise_seeds,
    )

    root, volumes = data
    settings = DetectorSettings.from_config({**TINY, "epochs": 1})
    table = tmp_path / "iunet_whole" / "seeds.csv"
    bench_detection(
        scans=str(root / "scans.csv"),
        volumes=volumes,
        nodules=str(root / "nodules.csv"),
        table=str(table),
        detector="iunet_whole",
        seeds=["0", "3"],  # as the shell passes them
        settings=settings,
    )
    seeds = pd.read_csv(table)
    assert list(seeds.columns) == SEED_COLUMNS and seeds["seed"].tolist() == [0, 3]
    for seed in (0, 3):  # each seed trained with its own seed, its own folder
        best = read_checkpoint(tmp_path / "iunet_whole" / f"seed{seed}" / "best.pt")
        assert best["settings"]["seed"] == seed
    other = tmp_path / "other.csv"
    seeds.assign(detector="unet_patch", cpm=[0.2, 0.6]).to_csv(other, index=False)
    summarise_seeds(
        tables=[str(table), str(other)],
        table=str(tmp_path / "all.csv"),
        spread=str(tmp_path / "spread.csv"),
    )
    spread = pd.read_csv(tmp_path / "spread.csv")
    assert list(spread.columns) == SPREAD_COLUMNS
    assert spread["detector"].tolist() == ["iunet_whole", "unet_patch"]
    row = spread.iloc[1]
    assert (row["seeds"], row["cpm_mean"], row["cpm_min"], row["cpm_max"]) == (2, 0.4, 0.2, 0.6)
    assert row["cpm_sd"] == pytest.approx(np.std([0.2, 0.6], ddof=1))
    assert len(pd.read_csv(tmp_path / "all.csv")) == 4


def test_bench_rescorer_runs_the_second_stage_over_each_stage1_seed(data, tmp_path):
    """The whole second stage on real volumes, once per seed over stage 1's run of that seed:
    training crops, the crop model (its seed), re-scored candidates and their LUNA16 row."""
    from lungseg.bench.detection import SEED_COLUMNS, bench_detection, bench_rescorer

    root, volumes = data
    stage1 = tmp_path / "iunet_whole" / "seeds.csv"
    sources = [str(p) for p in sorted((root / "volumes").rglob("*.h5"))]
    common = {"scans": str(root / "scans.csv"), "volumes": volumes,
              "nodules": str(root / "nodules.csv"), "seeds": [1, 2]}  # fmt: skip
    # stage 1 with test-time zoom: both its validation and its training scans searched at 2.5 mm
    first_settings = DetectorSettings.from_config(
        {**TINY, "epochs": 1, "test_spacing": [2.5, 2.0, 2.0]}
    )
    bench_detection(table=str(stage1), detector="iunet_whole", settings=first_settings,
                    source_volumes=sources, **common)  # fmt: skip
    second = {**TINY, "mode": "rescore", "stage1": "iunet_whole", "arch": "unet",
              "loss": "dice_bce", "epochs": 1, "batch_size": 4, "rescore_negatives": 5,
              "rescore_crop_size": [16, 16, 16],
              "rescore_crop_spacing": [2.0, 2.0, 2.0]}  # fmt: skip
    table = tmp_path / "fpr" / "seeds.csv"
    bench_rescorer(stage1_table=str(stage1), table=str(table), detector="fpr",
                   source_volumes=sources,
                   settings=DetectorSettings.from_config(second), **common)  # fmt: skip
    seeds = pd.read_csv(table)
    assert list(seeds.columns) == SEED_COLUMNS and seeds["seed"].tolist() == [1, 2]
    assert (seeds["detector"] == "fpr").all() and seeds["cpm"].between(0, 1).all()
    for seed in (1, 2):
        out, first = tmp_path / "fpr" / f"seed{seed}", tmp_path / "iunet_whole" / f"seed{seed}"
        assert read_checkpoint(first / "best.pt")["settings"]["test_spacing"] == [2.5, 2.0, 2.0]
        best = read_checkpoint(out / "best.pt")
        assert best["settings"]["seed"] == seed and best["settings"]["mode"] == "rescore"
        assert best["crop_grid"] == {"crop_size": [16, 16, 16], "target_spacing": [2.0] * 3}
        crops = pd.read_csv(out / "samples.csv")
        # two training scans: one cohort nodule each plus 3 jittered copies, at most 5 stage-1
        # candidates each; validation: the one cohort nodule and stage 1's candidates
        train = crops[crops["subset"] == "train"]
        assert (train["kind"] == "nodule").sum() == 2 and (train["kind"] == "jittered").sum() == 6
        assert (train["kind"] == "candidate").sum() <= 10
        assert (crops[crops["subset"] == "val"]["kind"] == "nodule").sum() == 1
        found, before = pd.read_csv(out / "candidates.csv"), pd.read_csv(first / "candidates.csv")
        assert list(found.columns) == COLUMNS and len(found) == len(before)
        assert set(found["seriesuid"]) <= set(before["seriesuid"])
        assert (
            found.groupby("seriesuid")["probability"]
            .apply(lambda p: p.is_monotonic_decreasing)
            .all()
        )
