"""Settings of the detection stage: detection volumes, and one detector per ``detectors`` entry.

``detection.volumes`` (:class:`VolumeSettings`) makes the per-scan detection volumes, shared by
every detector. The other keys of ``detection`` are every detector's defaults; a detector's
entry in ``detectors`` overrides any of them (null or unset keys inherit), giving its
:class:`DetectorSettings`. :func:`check_detection_config` checks the whole configuration before
any job runs (the Snakefile calls it right after the schema validation): settings the networks
cannot take fail there with a message naming the keys. No torch here: the Snakefile imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from lungseg.core.errors import SettingsError
from lungseg.core.settings import StageSettings

MODES = ("whole", "patch", "rescore")
#: the mask losses a second stage (mode rescore) trains its crop model with
MASK_LOSSES = ("dice_bce", "dice", "bce")
#: Keys of ``detection`` that are not detector settings.
NOT_DETECTOR_KEYS = frozenset({"volumes", "resources"})


@dataclass(frozen=True)
class VolumeSettings(StageSettings):
    """``detection.volumes``: the scan cropped to the lungs, resampled, on a fixed canvas."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("detection.volumes",)

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    body_threshold_hu: float
    margin_mm: float
    pad_hu: int
    compression: str

    def check(self) -> None:
        if len(self.spacing) != 3 or any(s <= 0 for s in self.spacing):
            raise SettingsError(
                f"detection.volumes.spacing: three spacings (mm, z y x) > 0 needed, "
                f"got {list(self.spacing)}"
            )
        if len(self.shape) != 3 or any(int(s) < 1 for s in self.shape):
            raise SettingsError(
                f"detection.volumes.shape: three sizes (voxels, z y x) >= 1 needed, "
                f"got {list(self.shape)}"
            )


@dataclass(frozen=True)
class DetectorSettings(StageSettings):
    """One detector: ``detection`` (less volumes, resources) with its ``detectors`` entry."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("detection",)

    mode: str
    arch: str
    channels: int
    levels: int
    blocks_per_level: int
    memory_efficient: bool
    lean_memory: str | bool
    loss: str
    foreground_weight: float
    nodule_balance_voxels: int
    epochs: int
    batch_size: int
    patch_size: tuple[int, int, int]
    foreground_fraction: float
    patches_per_epoch: int
    lr: float
    lr_schedule: str
    weight_decay: float
    seed: int
    hu_min: float
    hu_max: float
    flip: bool
    intensity_jitter: float
    amp: bool
    sw_overlap: float
    sw_batch_size: int
    candidate_threshold: float
    max_candidates: int
    heatmap_sigma_mm: float
    candidate_method: str
    test_flips: bool
    test_spacing: tuple[float, float, float] | None
    bootstrap_draws: int
    bootstrap_seed: int
    operating_fps: float
    stage1: str | None
    rescore_crop_size: tuple[int, int, int]
    rescore_crop_spacing: tuple[float, float, float]
    rescore_negatives: int
    rescore_copies: int
    rescore_jitter_mm: float
    rescore_stage1_weight: float
    rescore_shape_weight: float
    device: str

    def check(self) -> None:
        if self.hu_max <= self.hu_min:
            raise SettingsError(
                f"detection.hu_min, detection.hu_max: need hu_min < hu_max, "
                f"got {self.hu_min}, {self.hu_max}"
            )
        if not self.heatmap_sigma_mm > 0:
            raise SettingsError(
                f"detection.heatmap_sigma_mm: the heatmap's width (mm) must be > 0, "
                f"got {self.heatmap_sigma_mm}"
            )
        if self.mode == "whole" and self.batch_size != 1:
            raise SettingsError(
                f"detection.batch_size: mode whole trains one whole volume a step (batch 1), "
                f"got {self.batch_size}"
            )
        if self.test_spacing is not None and (
            len(self.test_spacing) != 3 or any(not s > 0 for s in self.test_spacing)
        ):
            raise SettingsError(
                f"detection.test_spacing: three spacings (mm, z y x) > 0 or null needed, "
                f"got {list(self.test_spacing)}"
            )
        factor = 2 ** (self.levels - 1)
        if self.mode == "rescore":
            self.check_rescore(factor)
        elif self.stage1 is not None:
            raise SettingsError(
                f"detection.stage1: only a detector of mode rescore has a stage 1, "
                f"got stage1 {self.stage1!r} with mode {self.mode}"
            )
        if self.mode == "patch" and any(int(s) % factor for s in self.patch_size):
            raise SettingsError(
                f"detection.patch_size {list(self.patch_size)} is not divisible by "
                f"2**(levels-1) = {factor} (detection.levels = {self.levels})"
            )

    def check_rescore(self, factor: int) -> None:
        if not self.stage1:
            raise SettingsError(
                "detection.stage1: mode rescore re-scores the candidates of a stage-1 detector; "
                "name it (a key of detectors)"
            )
        if self.loss not in MASK_LOSSES:
            raise SettingsError(
                f"detection.loss: mode rescore trains a crop model on nodule masks, one of "
                f"{list(MASK_LOSSES)}; got {self.loss}"
            )
        if any(int(s) % factor for s in self.rescore_crop_size):
            raise SettingsError(
                f"detection.rescore_crop_size {list(self.rescore_crop_size)} is not divisible "
                f"by 2**(levels-1) = {factor} (detection.levels = {self.levels})"
            )

    def model_settings(self) -> dict[str, Any]:
        """The dict lungseg's model, loss and trainer builders take."""
        return {**self.to_config(), "deep_supervision": False}

    @classmethod
    def check_config(cls, config: Mapping[str, Any]) -> None:
        for name in config.get("detectors") or {}:
            detector_settings(config, name)


def merged_detector_config(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``config["detection"]`` less volumes and resources, then detector ``name``'s non-null keys.

    The same merge as ``detector_settings`` in rules/common.smk (a train job's params).
    """
    shared = {
        k: v for k, v in (config.get("detection") or {}).items() if k not in NOT_DETECTOR_KEYS
    }
    overrides = (config.get("detectors") or {}).get(name) or {}
    return {**shared, **{k: v for k, v in overrides.items() if v is not None}}


def _prefixed(error: SettingsError, name: str) -> SettingsError:
    return SettingsError(f"detectors.{name} (merged over detection): {error}")


def detector_settings(config: Mapping[str, Any], name: str) -> DetectorSettings:
    """The checked settings of detector ``name``."""
    try:
        return DetectorSettings.from_config(merged_detector_config(config, name))
    except SettingsError as error:
        raise _prefixed(error, name) from None


def check_fits_volume(settings: DetectorSettings, volumes: VolumeSettings, name: str) -> None:
    """Raise unless the detector can run on the detection volumes' canvas."""
    shape = [int(s) for s in volumes.shape]
    factor = 2 ** (settings.levels - 1)
    if settings.mode == "whole" and any(s % factor for s in shape):
        raise SettingsError(
            f"detection.volumes.shape {shape} is not divisible by 2**(levels-1) = {factor} "
            f"(detectors.{name}.levels = {settings.levels}; mode whole takes the whole volume)"
        )
    if settings.mode == "patch" and any(
        p > s for p, s in zip(settings.patch_size, shape, strict=True)
    ):
        raise SettingsError(
            f"detectors.{name}.patch_size {list(settings.patch_size)} is larger than the "
            f"detection volume (detection.volumes.shape {shape})"
        )


def check_detection_config(config: Mapping[str, Any]) -> None:
    """Check ``detection`` and every ``detectors`` entry; SettingsError naming the key if bad."""
    volumes = VolumeSettings.from_config((config.get("detection") or {}).get("volumes"))
    detectors = config.get("detectors") or {}
    if not detectors:
        raise SettingsError("detectors: at least one detector is needed")
    for name in detectors:
        settings = detector_settings(config, name)
        if settings.mode != "rescore":
            check_fits_volume(settings, volumes, name)
        elif settings.stage1 not in detectors:
            raise SettingsError(
                f"detectors.{name}.stage1: {settings.stage1!r} is not a detector "
                f"(detectors: {', '.join(detectors)})"
            )
        elif detector_settings(config, settings.stage1).mode == "rescore":
            raise SettingsError(
                f"detectors.{name}.stage1: {settings.stage1!r} is itself of mode rescore; "
                "a second stage needs a stage-1 detector (mode whole or patch)"
            )
