"""Settings of the prediction stage (config section ``predict``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lungseg.core.settings import StageSettings


@dataclass(frozen=True)
class PredictorSettings(StageSettings):
    """Rule ``predictor``: which trained detector and crop model ``lungseg predict`` uses."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("predict",)

    detector_name: str
    segmenter_name: str


@dataclass(frozen=True)
class PredictSettings(StageSettings):
    """``lungseg predict`` and rule ``predict``: one CT series to segmented, measured nodules."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("predict", "ingest")

    mask_threshold: float
    min_diameter_mm: float
    radiomics_params: str
    device: str
    spacing_tolerance: float  # ingest's: a series is read as the workflow reads it
