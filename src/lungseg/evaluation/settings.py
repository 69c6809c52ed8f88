"""Settings of the evaluation jobs."""

from __future__ import annotations

from dataclasses import dataclass

from lungseg.core.errors import SettingsError
from lungseg.core.settings import StageSettings


@dataclass(frozen=True)
class BucketSettings(StageSettings):
    """Rule ``evaluate_summary``: the nodule size buckets."""

    SECTIONS = ("evaluation",)
    size_buckets_mm: tuple[float, ...]

    def check(self) -> None:
        edges = list(self.size_buckets_mm)
        if edges != sorted(set(edges)):
            raise SettingsError(f"evaluation.size_buckets_mm must increase: {edges}")


@dataclass(frozen=True)
class EvaluationSettings(BucketSettings):
    """Rule ``evaluate``: one checkpoint on the validation crops."""

    threshold: float
    batch_size: int
    device: str


@dataclass(frozen=True)
class CrossValidationSettings(StageSettings):
    """Rule ``cv_summary``: the comparison of the model variants over the cross-validation folds
    (paired cluster bootstrap of the Dice differences against a baseline variant)."""

    SECTIONS = ("cv",)
    baseline: str
    bootstrap_draws: int
    bootstrap_seed: int
    confidence: float
