"""Bad detection settings fail before training, naming the key (check_detection_config)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lungseg.core.errors import SettingsError
from lungseg.detection import check_detection_config
from lungseg.detection.settings import DetectorSettings, detector_settings, merged_detector_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_shipped_configs_pass(config):
    check_detection_config(config)
    lidc = yaml.safe_load((REPO / "config" / "lidc.yaml").read_text())
    merged = {**config, **{k: {**config.get(k, {}), **v} for k, v in lidc.items()}}
    merged["detection"]["volumes"] = {
        **config["detection"]["volumes"],
        **lidc.get("detection", {}).get("volumes", {}),
    }
    check_detection_config(merged)


def test_merge_inherits_unset_and_null_keys(config):
    config["detectors"]["unet_patch"]["lr"] = None
    merged = merged_detector_config(config, "unet_patch")
    assert merged["lr"] == config["detection"]["lr"]
    assert merged["arch"] == "unet" and "volumes" not in merged and "resources" not in merged
    assert isinstance(detector_settings(config, "unet_patch"), DetectorSettings)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda c: c["detectors"]["unet_patch"].update(patch_size=[32, 48, 128]), "patch_size"),
        (lambda c: c["detection"]["volumes"].update(spacing=[4.0, 0.0, 4.0]), "spacing"),
        (lambda c: c["detection"]["volumes"].update(spacing=[4.0, -1.0, 4.0]), "spacing"),
        (lambda c: c["detection"]["volumes"].update(shape=[90, 80, 96]), "detection.volumes.shape"),
        (lambda c: c["detectors"]["unet_patch"].update(patch_size=[30, 48, 48]), "patch_size"),
        (lambda c: c["detectors"]["iunet_whole"].update(batch_size=2), "batch_size"),
        (lambda c: c["detectors"]["iunet_whole"].update(hu_min=500), "hu_min"),
        (lambda c: c["detectors"]["iunet_whole"].update(colour="red"), "colour"),
        (lambda c: c.update(detectors={}), "detectors"),
        (lambda c: c["detection"].update(heatmap_sigma_mm=0.0), "detection.heatmap_sigma_mm"),
        (lambda c: c["detectors"]["unet_patch"].update(heatmap_sigma_mm=-2), "heatmap_sigma_mm"),
        (lambda c: c["detectors"]["unet_patch_fpr"].update(stage1=None), "detection.stage1"),
        (
            lambda c: c["detectors"]["unet_patch_fpr"].update(stage1="unet_pach"),
            "stage1.*unet_pach",
        ),
        (lambda c: c["detectors"]["unet_patch_fpr"].update(stage1="unet_patch_fpr"), "itself"),
        (lambda c: c["detectors"]["unet_patch"].update(stage1="iunet_whole"), "only a detector"),
        (lambda c: c["detectors"]["unet_patch_fpr"].update(loss="focal"), "detection.loss"),
        (
            lambda c: c["detectors"]["unet_patch_fpr"].update(rescore_crop_size=[32, 30, 32]),
            "rescore_crop_size",
        ),
        (
            lambda c: c["detectors"]["unet_patch_fpr"].update(rescore_crop_spacing=[1, 0, 1]),
            "rescore_crop_spacing",
        ),
        (lambda c: c["detectors"]["unet_patch_fpr"].update(rescore_copies=-1), "rescore_copies"),
        (lambda c: c["detection"].update(test_spacing=[2.5, 0.0, 2.5]), "test_spacing"),
        (lambda c: c["detectors"]["unet_patch"].update(test_spacing=[2.5, 2.5]), "test_spacing"),
    ],
    ids=[
        "patch larger than volume",
        "zero spacing",
        "negative spacing",
        "canvas not divisible",
        "patch not divisible",
        "whole batch > 1",
        "hu window",
        "unknown key",
        "no detector",
        "heatmap width 0",
        "heatmap width < 0",
        "rescore without stage1",
        "stage1 not a detector",
        "stage1 itself rescore",
        "stage1 on a stage-1 detector",
        "rescore with the focal loss",
        "rescore crop not divisible",
        "rescore crop spacing 0",
        "rescore copies < 0",
        "test spacing 0",
        "test spacing of 2 axes",
    ],
)
def test_bad_settings_name_the_key(config, change, key):
    change(config)
    with pytest.raises(SettingsError, match=key):
        check_detection_config(config)


def test_levels_change_checks_the_canvas_again(config):
    config["detectors"]["iunet_whole"]["levels"] = 5  # 88 is not divisible by 16
    with pytest.raises(SettingsError, match=r"detectors.iunet_whole.levels = 5"):
        check_detection_config(config)
