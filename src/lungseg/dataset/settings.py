"""Settings of the dataset jobs: crops, their overview figure and the split."""

from __future__ import annotations

from dataclasses import dataclass

from lungseg.core.errors import SettingsError
from lungseg.core.settings import StageSettings


@dataclass(frozen=True)
class CropSettings(StageSettings):
    """Rule ``crops``: crop grid, resampling and codec."""

    SECTIONS = ("crops",)
    size: tuple[int, int, int]
    target_spacing: tuple[float | None, float | None, float | None] | None
    mask_interpolation: str
    compression: str

    @property
    def spacing(self) -> tuple[float | None, ...] | None:
        """``target_spacing``, None when every axis stays native."""
        if self.target_spacing is None or all(s is None for s in self.target_spacing):
            return None
        return self.target_spacing


@dataclass(frozen=True)
class CropsOverviewSettings(StageSettings):
    """Rule ``crops_overview``."""

    SECTIONS = ("crops",)
    overview_max: int


@dataclass(frozen=True)
class SplitSettings(StageSettings):
    """Rule ``split``: patient-level train/validation split."""

    SECTIONS = ("split",)
    val_fraction: float
    seed: int
    size_bins_mm: tuple[float, ...]
    folds: int
    val_fold: int

    def check(self) -> None:
        if self.folds >= 2 and not 0 <= self.val_fold < self.folds:
            raise SettingsError(
                f"split.val_fold = {self.val_fold} must be in 0 .. split.folds - 1 "
                f"(split.folds = {self.folds})"
            )
        if list(self.size_bins_mm) != sorted(set(self.size_bins_mm)):
            raise SettingsError(f"split.size_bins_mm must increase: {list(self.size_bins_mm)}")
